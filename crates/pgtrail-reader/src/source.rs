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

    /// Every record up to `seq` is consumed and the consumer's cursor saved: a source that
    /// tracks its readers' progress (a durable consumer of the audit stream) records it.
    fn consumed(&mut self, _seq: u64) -> Result<(), JournalError> {
        Ok(())
    }
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

impl<S: RecordSource + ?Sized> RecordSource for Box<S> {
    fn next_record(&mut self) -> Result<Option<Record>, JournalError> {
        (**self).next_record()
    }

    fn instance(&self) -> Option<&str> {
        (**self).instance()
    }

    fn consumed(&mut self, seq: u64) -> Result<(), JournalError> {
        (**self).consumed(seq)
    }
}

/// A source on another machine (the fleet's audit stream), opened at a record.
pub trait RemoteSource: std::fmt::Debug + Send + Sync {
    /// The records from `from` on (records before it may be read to check the chain).
    fn open(&self, from: u64) -> Result<Box<dyn RecordSource>, JournalError>;
    /// The instance whose records these are.
    fn instance(&self) -> &str;
    /// Where a consumer of this source keeps its cursor, when the source has a place for
    /// it (a key-value bucket beside the stream); `None`: a local file.
    fn cursor_store(&self) -> Option<std::sync::Arc<dyn crate::CursorStore>> {
        None
    }
}

/// Where a consumer reads records from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A journal directory on this machine.
    Journal(PathBuf),
    /// One instance's records elsewhere (`--nats`).
    Remote(std::sync::Arc<dyn RemoteSource>),
}

impl From<PathBuf> for Origin {
    fn from(dir: PathBuf) -> Self {
        Origin::Journal(dir)
    }
}

impl Origin {
    /// The records from `from` on.
    pub fn open(&self, from: u64) -> Result<Box<dyn RecordSource>, JournalError> {
        match self {
            Origin::Journal(dir) => Ok(Box::new(JournalSource::open(dir.clone(), from)?)),
            Origin::Remote(remote) => remote.open(from),
        }
    }

    /// What to call it in messages: the instance for the stream, the directory for a journal.
    pub fn name(&self) -> String {
        match self {
            Origin::Journal(dir) => dir.display().to_string(),
            Origin::Remote(remote) => remote.instance().to_owned(),
        }
    }

    /// Where a consumer of this origin keeps its cursor: the source's own store when it
    /// has one (the audit stream read through a named consumer), else the file `state`
    /// ([`Origin::cursor_path`]); `None` when neither is there.
    pub fn cursor(
        &self,
        state: Option<&std::path::Path>,
        several: bool,
    ) -> Option<std::sync::Arc<dyn crate::CursorStore>> {
        if let Origin::Remote(remote) = self
            && let Some(store) = remote.cursor_store()
        {
            return Some(store);
        }
        state.map(|state| std::sync::Arc::new(crate::CursorFile::new(self.cursor_path(state, several))) as _)
    }

    /// The cursor file of this origin when a consumer reads several: FILE.<name>.
    pub fn cursor_path(&self, state: &std::path::Path, several: bool) -> PathBuf {
        if !several {
            return state.to_path_buf();
        }
        let mut path = state.as_os_str().to_owned();
        path.push(format!(".{}", self.name()));
        PathBuf::from(path)
    }

    /// The instance whose records these are, once known (a journal not yet written has none).
    pub fn instance(&self) -> Result<Option<String>, JournalError> {
        match self {
            Origin::Journal(dir) => JournalReader::instance_of(dir),
            Origin::Remote(remote) => Ok(Some(remote.instance().to_owned())),
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Journal(dir) => write!(f, "{}", dir.display()),
            Origin::Remote(remote) => write!(f, "the audit stream's instance {}", remote.instance()),
        }
    }
}
