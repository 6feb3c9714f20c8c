//! The manifest: one chain of entries per journal instance, each entry an object of its
//! own under `_manifest/instance=NAME/`, chained by hash and signed with the archive key.
//!
//! An `events` entry names a file and the journal records its run covered: every record
//! from `from_record_seq` to `through_record_seq` (the first one after the previous run's
//! last, so that the entries of an instance tile its journal with no gap), the chain hash
//! of the last, and the file's row count and SHA-256. One run writes one file per date, so
//! consecutive entries may share a range. A `retention` entry names the entries whose files
//! it deleted, and a file holding the control event that says so.
//!
//! So the archive can be checked against the journal and its signed checkpoints (the
//! record hashes), against a prune anchor (which pins an entry), and on its own (chain,
//! signatures, hashes, rows): see `pgtrail verify --archive`.

use pgtrail_journal::{CheckpointSigner, VerifierSet};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where the entries live, under the archive's root.
pub const MANIFEST_DIR: &str = "_manifest";
const CONTEXT: &[u8] = b"pgtrail archive manifest v1\0";

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A file of events.
    Events,
    /// Expired files deleted, and a file with the control event saying so.
    Retention,
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// 1 for the instance's first entry, then one more for each.
    pub seq: u64,
    pub kind: EntryKind,
    /// The file, relative to the archive's root.
    pub path: String,
    /// The journal instance and the partition date of its rows.
    pub instance: String,
    pub date: String,
    /// The journal records the run covered (0 and 0 for a retention entry).
    pub from_record_seq: u64,
    pub through_record_seq: u64,
    /// The journal chain hash of record `through_record_seq` (hex).
    pub through_record_hash: String,
    pub rows: u64,
    /// SHA-256 of the file's bytes (hex).
    pub sha256: String,
    /// A retention entry: the entries whose files it deleted.
    pub expired: Vec<u64>,
    /// The hash of the entry before (hex; 64 zeros for the first).
    pub prev: String,
    /// SHA-256 over this entry's JSON with `hash` and `signature` empty (hex).
    pub hash: String,
    /// The archive key's id, and its ed25519 signature over `hash` (hex).
    pub key_id: String,
    pub signature: String,
}

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl Entry {
    /// Entry `seq` of `instance` for a new file of `date` named `{stem}-{seq}.parquet`, not
    /// sealed yet; the caller fills in what the file holds.
    pub fn new(seq: u64, kind: EntryKind, instance: &str, date: &str, stem: &str) -> Entry {
        Entry {
            seq,
            kind,
            // Encoded as the object store encodes path parts.
            path: object_store::path::Path::from_iter([
                format!("date={date}"),
                format!("instance={instance}"),
                format!("{stem}-{seq:08}.parquet"),
            ])
            .to_string(),
            instance: instance.to_owned(),
            date: date.to_owned(),
            from_record_seq: 0,
            through_record_seq: 0,
            through_record_hash: String::new(),
            rows: 0,
            sha256: String::new(),
            expired: Vec::new(),
            prev: String::new(),
            hash: String::new(),
            key_id: String::new(),
            signature: String::new(),
        }
    }

    /// The hash this entry must carry: over its JSON without `hash` and `signature`.
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        unhashed.signature = String::new();
        let json = serde_json::to_vec(&unhashed).expect("an entry serializes");
        hex::encode(Sha256::digest(json))
    }

    /// Seals the entry: sets `hash`, `key_id` and `signature`.
    pub fn sealed(mut self, signer: &CheckpointSigner) -> Self {
        self.key_id = signer.id().to_owned();
        self.hash = self.compute_hash();
        self.signature = hex::encode(signer.sign_detached(CONTEXT, self.hash.as_bytes()));
        self
    }

    /// Checks the signature with `keys`.
    pub fn verify_signature(&self, keys: &VerifierSet) -> Result<(), String> {
        let signature = hex::decode(&self.signature).map_err(|_| "the signature is not hex".to_owned())?;
        keys.verify_detached(&self.key_id, CONTEXT, self.hash.as_bytes(), &signature)
    }

    /// The directory of an instance's entries.
    pub fn dir(instance: &str) -> String {
        format!("{MANIFEST_DIR}/instance={instance}")
    }

    /// The entry's object name under the archive's root.
    pub fn object_name(instance: &str, seq: u64) -> String {
        format!("{}/{seq:010}.json", Self::dir(instance))
    }
}

/// Why a manifest does not hold together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("manifest entry {found} is where entry {expected} should be (an entry is missing or extra)")]
    Gap { expected: u64, found: u64 },
    #[error("manifest entry {0} was modified: its hash does not match its contents")]
    Modified(u64),
    #[error("manifest entry {0} does not link to the entry before it")]
    Unlinked(u64),
}

/// Checks that `entries` (in order) form one unbroken chain from the first.
pub fn check_chain(entries: &[Entry]) -> Result<(), ChainError> {
    let mut prev = GENESIS.to_owned();
    for (i, entry) in entries.iter().enumerate() {
        let expected = i as u64 + 1;
        if entry.seq != expected {
            return Err(ChainError::Gap { expected, found: entry.seq });
        }
        if entry.hash != entry.compute_hash() {
            return Err(ChainError::Modified(entry.seq));
        }
        if entry.prev != prev {
            return Err(ChainError::Unlinked(entry.seq));
        }
        prev.clone_from(&entry.hash);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<Entry> {
        let signer = CheckpointSigner::generate();
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let e = Entry {
                    seq,
                    kind: EntryKind::Events,
                    path: format!("date=2026-12-01/instance=db1/part-{seq:08}.parquet"),
                    instance: "db1".into(),
                    date: "2026-12-01".into(),
                    from_record_seq: seq * 10 - 9,
                    through_record_seq: seq * 10,
                    through_record_hash: "ab".repeat(32),
                    rows: 100,
                    sha256: "cd".repeat(32),
                    expired: Vec::new(),
                    prev: prev.clone(),
                    hash: String::new(),
                    key_id: String::new(),
                    signature: String::new(),
                }
                .sealed(&signer);
                prev.clone_from(&e.hash);
                e
            })
            .collect()
    }

    #[test]
    fn a_modified_missing_or_reordered_entry_breaks_the_chain() {
        let good = chain(4);
        assert_eq!(check_chain(&good), Ok(()));
        let mut modified = good.clone();
        modified[2].rows += 1;
        assert_eq!(check_chain(&modified), Err(ChainError::Modified(3)));
        let mut missing = good.clone();
        missing.remove(1);
        assert_eq!(check_chain(&missing), Err(ChainError::Gap { expected: 2, found: 3 }));
        // Renumbered and resealed to hide the gap: the link to the one before breaks.
        let mut resealed = missing;
        resealed[1].seq = 2;
        resealed[1] = resealed[1].clone().sealed(&CheckpointSigner::generate());
        assert_eq!(check_chain(&resealed), Err(ChainError::Unlinked(2)));
    }
}
