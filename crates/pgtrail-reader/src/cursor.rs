//! Where a consumer stands in a journal, saved so that a restart resumes exactly there.
//!
//! # File format
//!
//! Text, one item per line:
//!
//! ```text
//! 1234                      the sequence number of the last record consumed
//! instance db-prod-1        the journal's instance
//! hash 5f0c…                that record's chain hash, hex
//! ticked 1764580000000000   consumer state: any other `key value` (or bare `key`) lines
//! gap
//! ```
//!
//! A file with only the first line (written by versions before the reader crate) is
//! read as a cursor that names no instance or hash; the next save adds them. Saving writes
//! a temporary file, fsyncs it, renames it over the old one and fsyncs the directory, so a
//! crash leaves either the old cursor or the new one, never a mix.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use pgtrail_journal::Hash;

use crate::ReadError;

/// A consumer's position and its own state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last record consumed (0: none yet).
    pub seq: u64,
    /// The instance of the journal it was consumed from.
    pub instance: Option<String>,
    /// The chain hash of record `seq`.
    pub hash: Option<Hash>,
    /// What the consumer keeps alongside its position (keys without spaces or newlines).
    pub state: BTreeMap<String, String>,
}

/// A cursor file.
#[derive(Debug, Clone)]
pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved cursor, or the start of the journal when there is no file yet.
    pub fn load(&self) -> Result<Cursor, ReadError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Cursor::default()),
            Err(source) => return Err(ReadError::CursorIo { action: "read", path: self.path.clone(), source }),
        };
        Cursor::parse(&text).map_err(|problem| ReadError::CursorFormat { path: self.path.clone(), problem })
    }

    /// Replaces the saved cursor atomically and durably.
    pub fn save(&self, cursor: &Cursor) -> Result<(), ReadError> {
        let text = cursor.to_text();
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| ReadError::CursorIo { action, path, source }
        };
        // FILE.tmp beside FILE: the cursors of several instances (FILE.<instance>) must not
        // share one temporary file, as with_extension would make them.
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_data()).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io("replace", &self.path))?;
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync the directory of", &self.path))
    }
}

impl Cursor {
    /// The cursor in the text format above (a cursor file's content, or a stored value).
    pub fn to_text(&self) -> String {
        let mut text = format!("{}\n", self.seq);
        if let Some(instance) = &self.instance {
            text.push_str(&format!("instance {instance}\n"));
        }
        if let Some(hash) = &self.hash {
            text.push_str(&format!("hash {}\n", hex::encode(hash)));
        }
        for (key, value) in &self.state {
            debug_assert!(!key.contains([' ', '\n']) && !value.contains('\n'));
            if value.is_empty() {
                text.push_str(&format!("{key}\n"));
            } else {
                text.push_str(&format!("{key} {value}\n"));
            }
        }
        text
    }

    /// Reads the text format above; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Cursor, String> {
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default().trim();
        let seq = first.parse().map_err(|_| format!("the first line {first:?} is not a sequence number"))?;
        let mut cursor = Cursor { seq, ..Cursor::default() };
        for line in lines.map(str::trim).filter(|l| !l.is_empty()) {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "instance" => cursor.instance = Some(value.to_owned()),
                "hash" => {
                    let bytes = hex::decode(value).map_err(|_| format!("hash {value:?} is not hex"))?;
                    cursor.hash = Some(bytes.try_into().map_err(|_| "hash is not 32 bytes".to_owned())?);
                }
                _ => {
                    cursor.state.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        Ok(cursor)
    }
}

/// Where a consumer keeps its cursor: a [`CursorFile`] here, or a store elsewhere (the
/// audit stream's key-value bucket), so that a consumer needs no disk of its own.
pub trait CursorStore: std::fmt::Debug + Send + Sync {
    /// The saved cursor, or the default (the start) when none was saved yet.
    fn load(&self) -> Result<Cursor, ReadError>;
    /// Replaces the saved cursor; returns once it is durable.
    fn save(&self, cursor: &Cursor) -> Result<(), ReadError>;
}

impl CursorStore for CursorFile {
    fn load(&self) -> Result<Cursor, ReadError> {
        CursorFile::load(self)
    }

    fn save(&self, cursor: &Cursor) -> Result<(), ReadError> {
        CursorFile::save(self, cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_old_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = CursorFile::new(dir.path().join("c.cursor"));
        assert_eq!(file.load().unwrap(), Cursor::default());
        let mut cursor = Cursor { seq: 42, instance: Some("db-1".into()), hash: Some([7; 32]), ..Cursor::default() };
        cursor.state.insert("ticked".into(), "1700000000000000".into());
        cursor.state.insert("gap".into(), String::new());
        file.save(&cursor).unwrap();
        assert_eq!(file.load().unwrap(), cursor);
        assert!(!dir.path().join("c.cursor.tmp").exists(), "the temporary file is renamed away");
        // The alerting consumer's files of earlier versions: a number, then its own lines.
        std::fs::write(file.path(), "17\nticked 5\ngap\n").unwrap();
        let old = file.load().unwrap();
        assert_eq!((old.seq, old.instance, old.hash), (17, None, None));
        assert_eq!(old.state.get("gap").map(String::as_str), Some(""));
        std::fs::write(file.path(), "seventeen\n").unwrap();
        assert!(file.load().unwrap_err().to_string().contains("not a pgtrail cursor"));
    }

    /// Issue 18: `archive --nats` with two instances failed with "cannot replace the cursor
    /// file archive.cursor.db-west-2: No such file or directory": the cursors
    /// archive.cursor.db-east-2 and archive.cursor.db-west-2, saved at once, both wrote and
    /// renamed archive.cursor.tmp.
    #[test]
    fn regression_the_cursors_of_two_instances_shared_one_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // What the shared temporary file would be: a directory, so that using it fails.
        std::fs::create_dir(dir.path().join("archive.cursor.tmp")).unwrap();
        for instance in ["db-east-2", "db-west-2"] {
            let file = CursorFile::new(dir.path().join(format!("archive.cursor.{instance}")));
            let cursor = Cursor { seq: 7, instance: Some(instance.into()), ..Cursor::default() };
            file.save(&cursor).unwrap();
            assert_eq!(file.load().unwrap(), cursor);
        }
    }
}
