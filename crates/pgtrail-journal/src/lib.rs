//! The journal: an append-only sequence of records in segment files.
//!
//! # On-disk format, version 1
//!
//! A journal is a directory of segment files named `<first-seq, 20 digits>.seg`. Each
//! segment starts with a 16-byte header:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `PGTRJRN1` |
//! | 8..12 | format version, u32 little-endian, `1` |
//! | 12..16 | reserved, zero |
//!
//! followed by records, each a 24-byte header and the payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | payload length, u32 LE, at most [`MAX_PAYLOAD`] |
//! | 4..8 | CRC32C (Castagnoli) of bytes 8.. of the header and the payload, u32 LE |
//! | 8..16 | sequence number, u64 LE: the first record of the journal is 1, then +1 each |
//! | 16..24 | timestamp, microseconds since the Unix epoch, i64 LE |
//! | 24.. | payload: opaque bytes (the journal never interprets them) |
//!
//! Invariants: sequence numbers are contiguous across segments; a segment's first record
//! has the sequence number in its file name; only the last segment is ever appended to.
//!
//! Recovery: when a journal is opened for writing, the last segment is scanned. The first
//! record that is incomplete, fails its CRC or breaks the sequence marks a torn tail (a
//! crash during a write): the file is truncated there and a warning names the segment,
//! the offset and the number of bytes cut. Earlier segments are never modified; damage
//! there is reported by readers, not repaired.

mod format;
mod reader;
mod recorder;
mod writer;

pub use format::{MAX_PAYLOAD, Record};
pub use reader::JournalReader;
pub use recorder::{Recorder, RecorderConfig, RecorderStats};
pub use writer::{Journal, JournalOptions};

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
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> JournalError {
    let path = path.into();
    move |source| JournalError::Io { path, source }
}
