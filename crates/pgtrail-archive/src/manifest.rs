//! The manifest: one entry per archived file, each an object of its own under
//! `_manifest/`, chained by hash. An entry names the file, the journal records whose events
//! it holds (instance, first and last record seq, the chain hash of the last), its row
//! count and its SHA-256, so that the archive can be checked against the journal and its
//! signed checkpoints.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where the entries live, under the archive's root.
pub const MANIFEST_DIR: &str = "_manifest";

/// One archived file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// 1 for the first file, then one more for each.
    pub seq: u64,
    /// The file, relative to the archive's root.
    pub path: String,
    /// The journal instance and the partition date of its rows.
    pub instance: String,
    pub date: String,
    pub first_record_seq: u64,
    pub last_record_seq: u64,
    /// The journal chain hash of record `last_record_seq` (hex).
    pub last_record_hash: String,
    pub rows: u64,
    /// SHA-256 of the file's bytes (hex).
    pub sha256: String,
    /// The hash of the entry before (hex; 64 zeros for the first).
    pub prev: String,
    /// SHA-256 over this entry's fields but `hash` (hex).
    pub hash: String,
}

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl Entry {
    /// The hash this entry must carry: over its canonical JSON without `hash`.
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let json = serde_json::to_vec(&unhashed).expect("an entry serializes");
        hex::encode(Sha256::digest(json))
    }

    /// Seals the entry: sets `hash`.
    pub fn sealed(mut self) -> Self {
        self.hash = self.compute_hash();
        self
    }

    /// The entry's object name under the archive's root.
    pub fn object_name(seq: u64) -> String {
        format!("{MANIFEST_DIR}/{seq:010}.json")
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
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let e = Entry {
                    seq,
                    path: format!("date=2026-12-01/instance=db1/part-{seq:08}.parquet"),
                    instance: "db1".into(),
                    date: "2026-12-01".into(),
                    first_record_seq: seq * 10,
                    last_record_seq: seq * 10 + 9,
                    last_record_hash: "ab".repeat(32),
                    rows: 100,
                    sha256: "cd".repeat(32),
                    prev: prev.clone(),
                    hash: String::new(),
                }
                .sealed();
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
        resealed[1] = resealed[1].clone().sealed();
        assert_eq!(check_chain(&resealed), Err(ChainError::Unlinked(2)));
    }
}
