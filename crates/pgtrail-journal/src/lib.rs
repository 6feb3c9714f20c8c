//! The journal: an append-only sequence of records in segment files.
//!
//! Owns: the segment format, appending with fsync and group commit (the recorder), torn
//! tail recovery, signed checkpoints, reading back with every check, and `verify`. Must
//! not: know what a payload holds (envelopes are opaque bytes here).
//!
//! # On-disk format, version 2
//!
//! A journal is a directory of segment files named `<first-seq, 20 digits>.seg`, for one
//! *instance* (the DAS `instanceId`). Each segment starts with a 128-byte header:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `PGTRJRN2` |
//! | 8..12 | format version, u32 LE, `2` |
//! | 12..16 | CRC32C of bytes 16..128 |
//! | 16..24 | sequence number of the segment's first record, u64 LE |
//! | 24..56 | chain hash before the first record: the previous segment's last record hash, or for the first segment the genesis hash SHA-256(`pgtrail journal v2 genesis\0` instance) |
//! | 56 | instance length (1..=64) |
//! | 57..121 | instance, UTF-8, zero padded |
//! | 121..128 | reserved, zero |
//!
//! followed by records, each a 96-byte header and the payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | payload length, u32 LE, at most [`MAX_PAYLOAD`] |
//! | 4..8 | CRC32C (Castagnoli) of bytes 8.. of the header and the payload, u32 LE |
//! | 8 | kind: 1 envelope (a DAS record, opaque here), 2 signed checkpoint |
//! | 9..16 | reserved, zero |
//! | 16..24 | sequence number, u64 LE: the first record of the journal is 1, then +1 each |
//! | 24..32 | timestamp, microseconds since the Unix epoch, i64 LE |
//! | 32..64 | previous record's hash (the segment's start hash for its first record) |
//! | 64..96 | this record's hash: SHA-256(prev hash, kind, seq, timestamp, payload length, payload), integers LE |
//! | 96.. | payload |
//!
//! Checkpoint payloads are described in [`checkpoint`].
//!
//! Invariants: sequence numbers are contiguous across segments and each record links to
//! the one before it; a segment's first record has the sequence number in its file name;
//! only the last segment is ever appended to; a checkpoint signs the record just before it.
//!
//! Recovery: when a journal is opened for writing, the last segment is scanned. A torn
//! tail is what a crash during a write leaves: an incomplete last record (or zeros) with
//! no valid record after it. It is truncated, a warning names the segment, the offset and
//! the number of bytes cut, and [`Journal::recovery`] reports it so the capture side can
//! record it in the journal itself. Anything else is damage or tampering: a complete
//! record that fails its CRC or hash or breaks the sequence or the chain, or any bad
//! record with a valid record after it. Then opening fails with
//! [`JournalError::Damaged`], naming the record, and nothing is changed; only with
//! [`JournalOptions::set_aside_damage`] is the damaged segment moved aside intact and the
//! journal continued after its last valid record. Checkpointed records are never deleted.
//! Earlier segments are never modified; damage there is reported by readers and `verify`.

pub mod anchor;
pub mod checkpoint;
pub mod config;
mod format;
pub mod prune;
mod reader;
mod recorder;
pub mod ship;
mod verify;
mod writer;

pub use anchor::{ANCHOR_FILE, Anchor, KeptIn, read_anchor};
pub use checkpoint::{Checkpoint, CheckpointSigner, CheckpointVerifier, VerifierSet};
pub use config::{InstanceSection, JournalConfigError, JournalSection, RecorderSection};
pub use format::{Hash, MAX_PAYLOAD, Record, RecordKind, genesis_hash};
pub use prune::{Before, PruneReport, prune};
pub use reader::JournalReader;
pub use recorder::{
    Durable, EncodeFn, HeartbeatFn, LossCause, LossFn, Recorder, RecorderConfig, RecorderStats, WriterParts,
};
pub use verify::{Chain, Signed, VerifyFailure, VerifyReport, verify_dir, verify_segments};
pub use writer::{Journal, JournalOptions, Mark, Recovery};

use std::path::PathBuf;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a pgtrail journal segment (bad magic or version)")]
    NotASegment { path: PathBuf },
    #[error("record at {path} offset {offset} is corrupt: {what}")]
    Corrupt { path: PathBuf, offset: u64, what: String },
    #[error("payload of {len} bytes exceeds the record limit of {max}")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("the recorder has stopped")]
    RecorderStopped,
    #[error(
        "the journal is damaged: record {seq} in {path} at offset {offset} fails its checks ({what}). \
         This is damage or tampering, not a torn write, and nothing was changed. `pgtrail verify` shows it; \
         starting with --set-aside-damaged-journal moves the segment aside intact and continues after record {}",
        seq.saturating_sub(1)
    )]
    Damaged { path: PathBuf, offset: u64, seq: u64, what: String },
    #[error("journal instance {0:?} must be 1 to 64 bytes")]
    BadInstance(String),
    #[error("{path} belongs to instance {found:?}, not the configured {configured:?}")]
    InstanceMismatch { path: PathBuf, found: String, configured: String },
    #[error("invalid key: {0}")]
    BadKey(&'static str),
}

pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Makes a directory's entries (new, renamed or deleted names) durable.
pub(crate) fn sync_dir(dir: &std::path::Path) -> Result<(), JournalError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> JournalError {
    let path = path.into();
    move |source| JournalError::Io { path, source }
}
