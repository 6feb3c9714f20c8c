//! Where records come from. A source hands over records in sequence order, each already
//! checked: its CRC, its own hash, its link to the record before it, and that no sequence
//! number is missing. Today the only source is a local journal directory; a transport
//! (JetStream) will be another.

use std::path::PathBuf;

use pgtrail_journal::{JournalError, JournalReader, Record};

/// An ordered, checked stream of journal records.
pub trait RecordSource: std::fmt::Debug {
    /// The next record, or `Ok(None)` when the source has nothing more right now.
    fn next_record(&mut self) -> Result<Option<Record>, JournalError>;

    /// The instance whose records these are, once known.
    fn instance(&self) -> Option<&str>;
}

/// A journal directory on this machine, read while its writer may still append.
#[derive(Debug)]
pub struct JournalSource {
    reader: JournalReader,
}

impl JournalSource {
    /// Positioned at the first record with `seq >= from` (1 for the beginning). Records
    /// before it are still read to check the chain, but not returned.
    pub fn open(dir: impl Into<PathBuf>, from: u64) -> Result<Self, JournalError> {
        Ok(Self { reader: JournalReader::open(dir.into(), from)? })
    }
}

impl RecordSource for JournalSource {
    fn next_record(&mut self) -> Result<Option<Record>, JournalError> {
        self.reader.next_record()
    }

    fn instance(&self) -> Option<&str> {
        self.reader.instance()
    }
}
