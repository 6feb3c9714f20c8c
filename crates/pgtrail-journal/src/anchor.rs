//! The prune anchor: the signed statement a prune leaves in a journal directory (the
//! `prune` module makes it; `verify` and readers start from it).
//!
//! # Anchor file
//!
//! `<journal>/anchor.json`, one JSON object (see [`Anchor`]). Its signature is ed25519 over
//! `pgtrail prune anchor v1\0` and the object's JSON with `signature` empty. A later prune
//! replaces it. It is written (temporary file, fsync, rename) before any segment is
//! deleted: a crash in between leaves segments before the anchor, which `verify` and
//! readers ignore and the next prune deletes.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointSigner, VerifierSet};
use crate::format::Hash;
use crate::{JournalError, io_err};

/// The anchor's file name in a journal directory.
pub const ANCHOR_FILE: &str = "anchor.json";
const CONTEXT: &[u8] = b"pgtrail prune anchor v1\0";

/// The signed statement a prune leaves behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// The anchor format: 1.
    pub pgtrail_anchor: u32,
    pub instance: String,
    /// The first record the journal still holds; records before it were pruned.
    pub first_seq: u64,
    /// The chain hash of record `first_seq - 1` (hex): the start hash of the first segment kept.
    pub start_hash: String,
    /// When the prune was made, µs since the Unix epoch.
    pub pruned_at_micros: i64,
    /// Where the pruned records are kept, as the pruner vouched for it.
    pub kept_in: Option<KeptIn>,
    /// The signing key's id and the signature (hex).
    pub key_id: String,
    pub signature: String,
}

/// The archive that held the pruned records when they were pruned: its last manifest
/// entry for this instance is pinned here, so that `pgtrail verify --archive` can tell
/// a manifest cut short from one that is merely behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptIn {
    /// The archive target as given (a directory or s3:// URL).
    pub archive: String,
    /// The manifest entry (its seq and hash, hex) the archive had reached.
    pub manifest_seq: u64,
    pub manifest_hash: String,
    /// The last journal record that entry covers.
    pub through_record_seq: u64,
}

impl Anchor {
    /// Sets `key_id` and `signature`: signed with `signer`.
    pub(crate) fn sign(&mut self, signer: &CheckpointSigner) {
        self.key_id = signer.id().to_owned();
        self.signature = hex::encode(signer.sign_detached(CONTEXT, &self.message()));
    }

    /// Writes the anchor into the journal `dir` durably (a temporary file, fsync, rename).
    pub(crate) fn write(&self, dir: &Path) -> Result<(), JournalError> {
        let path = dir.join(ANCHOR_FILE);
        let temp = dir.join(format!("{ANCHOR_FILE}.tmp"));
        let mut json = serde_json::to_vec_pretty(self).expect("an anchor serializes");
        json.push(b'\n');
        let mut file = std::fs::File::create(&temp).map_err(io_err(&temp))?;
        file.write_all(&json).and_then(|_| file.sync_all()).map_err(io_err(&temp))?;
        std::fs::rename(&temp, &path).map_err(io_err(&path))?;
        crate::sync_dir(dir)
    }

    fn message(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature = String::new();
        serde_json::to_vec(&unsigned).expect("an anchor serializes")
    }

    /// Checks the signature with `keys`.
    pub fn verify(&self, keys: &VerifierSet) -> Result<(), String> {
        if self.pgtrail_anchor != 1 {
            return Err(format!("unsupported anchor format {}", self.pgtrail_anchor));
        }
        let signature = hex::decode(&self.signature).map_err(|_| "the anchor's signature is not hex".to_owned())?;
        keys.verify_detached(&self.key_id, CONTEXT, &self.message(), &signature)
            .map_err(|what| format!("prune anchor: {what}"))
    }

    /// The chain hash the first kept record links to.
    pub fn start_hash(&self) -> Result<Hash, String> {
        hex::decode(&self.start_hash)
            .ok()
            .and_then(|bytes| Hash::try_from(bytes.as_slice()).ok())
            .ok_or_else(|| "the anchor's start hash is not 32 bytes of hex".to_owned())
    }
}

/// Reads the anchor of the journal in `dir`, if it has been pruned.
pub fn read_anchor(dir: &Path) -> Result<Option<Anchor>, JournalError> {
    let path = dir.join(ANCHOR_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(JournalError::Io { path, source: e }),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| JournalError::Corrupt {
        path,
        offset: 0,
        what: format!("not a prune anchor: {e}"),
    })
}
