//! Reads a journal back, for every consumer: `tail`, `export`, the alerting consumer, and
//! the archive, forwarders and console that come after them.
//!
//! Owns: where records come from ([`RecordSource`], [`Origin`]: a local journal directory,
//! or a [`RemoteSource`] such as the fleet's audit stream),
//! opening and decoding them ([`Reader`]: the DAS envelope decrypted with a key ring, the
//! inner record decoded into events), the durable [`Cursor`] a consumer resumes from, and
//! the one loop every consumer runs ([`consume`]). Records are checked while they are read:
//! CRC, hash chain and sequence continuity (by the source), and, on resume, that the record
//! at the cursor is the one the cursor names (same instance, same hash).
//!
//! Must not: write to a journal, sign or verify checkpoints (`pgtrail verify` does), or
//! know what a consumer does with an event. It never logs event contents.

mod consume;
mod cursor;
mod source;
pub mod view;

use std::path::PathBuf;

use pgtrail_envelope::{EnvelopeError, KeyRing, Opener};
use pgtrail_event::{ActivityEvent, ActivityRecord};
use pgtrail_journal::{Hash, JournalError, RecordKind};

pub use consume::{Consumer, ConsumerError, Follow, Resume, Step, consume, each_origin, save};
pub use cursor::{Cursor, CursorFile, CursorStore};
pub use source::{JournalSource, Origin, RecordSource, RemoteSource};

/// Errors reading a journal back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the journal")]
    Journal(#[from] JournalError),
    #[error("record {seq} cannot be opened")]
    Open {
        seq: u64,
        #[source]
        source: EnvelopeError,
    },
    #[error("record {seq}: the payload is not a DAS activity record")]
    Decode {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot {action} the cursor file {path}")]
    CursorIo {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {action} the cursor {name}: {message}")]
    CursorStore { action: &'static str, name: String, message: String },
    #[error("{path} is not a pgtrail cursor: {problem}")]
    CursorFormat { path: PathBuf, problem: String },
    #[error(
        "the cursor does not belong to this journal: it names record {seq} of instance {cursor_instance:?}, \
         but the journal {found}"
    )]
    CursorMismatch { seq: u64, cursor_instance: String, found: String },
}

/// One envelope record, opened.
#[derive(Debug)]
pub struct Opened {
    pub seq: u64,
    /// The record's chain hash (what a cursor saves).
    pub hash: Hash,
    /// Microseconds since the Unix epoch, when the record was appended.
    pub timestamp_micros: i64,
    /// The DAS record exactly as written (still encrypted).
    pub envelope: Vec<u8>,
    /// The decrypted, inflated inner record JSON.
    pub inner: Vec<u8>,
}

impl Opened {
    /// The events of the record.
    pub fn events(&self) -> Result<Vec<ActivityEvent>, ReadError> {
        decode_inner(&self.inner).map_err(|source| ReadError::Decode { seq: self.seq, source })
    }
}

/// Decodes one inner DAS record (decrypted) into its events.
pub fn decode_inner(inner: &[u8]) -> Result<Vec<ActivityEvent>, serde_json::Error> {
    // UTF-8 is checked once for the whole record, not string by string (from_slice does
    // that for every field of every event).
    let text = std::str::from_utf8(inner)
        .map_err(|e| serde_json::Error::io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let record: ActivityRecord = serde_json::from_str(text)?;
    Ok(record.database_activity_event_list)
}

/// Reads envelope records from a source in order and opens each with a key ring.
/// Checkpoint records are skipped here (`pgtrail verify` checks their signatures).
#[derive(Debug)]
pub struct Reader<S = JournalSource> {
    source: S,
    opener: Opener,
}

impl Reader<JournalSource> {
    /// A reader of the journal in `dir` from its first record.
    pub fn open(dir: impl Into<PathBuf>, ring: KeyRing) -> Result<Self, ReadError> {
        Ok(Self::new(JournalSource::open(dir, 1)?, ring))
    }

    /// A reader of the journal in `dir` positioned for a consumer that resumes from
    /// `cursor` as `resume` says: at the cursor's record (which [`consume`] checks), or
    /// at the beginning for a replay.
    pub fn resume_at(
        dir: impl Into<PathBuf>,
        ring: KeyRing,
        cursor: &Cursor,
        resume: Resume,
    ) -> Result<Self, ReadError> {
        let from = match resume {
            Resume::AfterCursor => cursor.seq.max(1),
            Resume::ReplayToCursor => 1,
        };
        Ok(Self::new(JournalSource::open(dir, from)?, ring))
    }
}

impl Reader<Box<dyn RecordSource>> {
    /// As [`Reader::resume_at`], from any [`Origin`]: a journal here or the audit stream.
    pub fn resume_from(origin: &Origin, ring: KeyRing, cursor: &Cursor, resume: Resume) -> Result<Self, ReadError> {
        let from = match resume {
            Resume::AfterCursor => cursor.seq.max(1),
            Resume::ReplayToCursor => 1,
        };
        Ok(Self::new(origin.open(from)?, ring))
    }
}

impl<S: RecordSource> Reader<S> {
    pub fn new(source: S, ring: KeyRing) -> Self {
        Self { source, opener: Opener::new(ring) }
    }

    /// The source's instance, once known.
    pub fn instance(&self) -> Option<&str> {
        self.source.instance()
    }

    /// Tells the source that every record up to `seq` is consumed and the cursor saved
    /// (the audit stream acknowledges them to its durable consumer).
    pub fn consumed(&mut self, seq: u64) -> Result<(), ReadError> {
        Ok(self.source.consumed(seq)?)
    }

    /// The next envelope, or `None` at the live tail (calling again later returns records
    /// appended since).
    pub fn next_envelope(&mut self) -> Result<Option<Opened>, ReadError> {
        while let Some(record) = self.source.next_record()? {
            if record.kind != RecordKind::Envelope {
                continue;
            }
            let inner =
                self.opener.open(&record.payload).map_err(|source| ReadError::Open { seq: record.seq, source })?;
            return Ok(Some(Opened {
                seq: record.seq,
                hash: record.hash,
                timestamp_micros: record.timestamp_micros,
                envelope: record.payload,
                inner,
            }));
        }
        Ok(None)
    }
}

/// Every event currently in a journal (tests and tools).
pub fn read_all(dir: &std::path::Path, ring: KeyRing) -> Result<Vec<ActivityEvent>, ReadError> {
    let mut reader = Reader::open(dir, ring)?;
    let mut events = Vec::new();
    while let Some(opened) = reader.next_envelope()? {
        events.extend(opened.events()?);
    }
    Ok(events)
}
