//! The single writer of a journal directory: recovery on open, appends, rotation, fsync.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::format::{
    Decoded, MAX_PAYLOAD, SEGMENT_HEADER_LEN, check_segment_header, decode_record, encode_record, list_segments,
    segment_header, segment_path,
};
use crate::{JournalError, io_err};

/// Tunables of the writer.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// A new segment is started once the current one reaches this size.
    pub segment_max_bytes: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self { segment_max_bytes: 64 << 20 }
    }
}

/// An open journal, ready to append. Only one may be open per directory at a time
/// (the caller owns that: the proxy holds the only writer).
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    options: JournalOptions,
    file: File,
    path: PathBuf,
    len: u64,
    next_seq: u64,
    scratch: Vec<u8>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, truncating a torn tail.
    pub fn open(dir: impl AsRef<Path>, options: JournalOptions) -> Result<Self, JournalError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let segments = list_segments(&dir).map_err(io_err(&dir))?;
        let Some((first_seq, path)) = segments.last().cloned() else {
            return Self::create_segment(dir, options, 1);
        };
        let (len, next_seq) = recover_segment(&path, first_seq)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io_err(&path))?;
        Ok(Self { dir, options, file, path, len, next_seq, scratch: Vec::new() })
    }

    fn create_segment(dir: PathBuf, options: JournalOptions, first_seq: u64) -> Result<Self, JournalError> {
        let path = segment_path(&dir, first_seq);
        let mut file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_err(&path))?;
        file.write_all(&segment_header()).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        // Make the new file name itself durable.
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err(&dir))?;
        Ok(Self { dir, options, file, path, len: SEGMENT_HEADER_LEN as u64, next_seq: first_seq, scratch: Vec::new() })
    }

    /// The sequence number the next appended record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record; it is durable only after [`Journal::sync`].
    pub fn append(&mut self, timestamp_micros: i64, payload: &[u8]) -> Result<u64, JournalError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(JournalError::PayloadTooLarge { len: payload.len(), max: MAX_PAYLOAD });
        }
        // A segment always holds at least one record, however small the limit.
        if self.len >= self.options.segment_max_bytes && self.len > SEGMENT_HEADER_LEN as u64 {
            self.rotate()?;
        }
        let seq = self.next_seq;
        self.scratch.clear();
        encode_record(&mut self.scratch, seq, timestamp_micros, payload);
        if let Err(source) = self.file.write_all(&self.scratch) {
            // A partial write leaves a torn tail; cut it now so the next append starts clean.
            let _ = self.file.set_len(self.len);
            return Err(JournalError::Io { path: self.path.clone(), source });
        }
        self.len += self.scratch.len() as u64;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Makes everything appended so far durable (fsync).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        self.sync()?;
        let next = Self::create_segment(self.dir.clone(), self.options.clone(), self.next_seq)?;
        info!(segment = %next.path.display(), "journal segment started");
        *self = next;
        Ok(())
    }
}

/// Scans a segment and truncates it after its last valid record. Returns the valid length
/// and the next sequence number.
fn recover_segment(path: &Path, first_seq: u64) -> Result<(u64, u64), JournalError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(path))?;
    if bytes.len() < SEGMENT_HEADER_LEN {
        // Crashed while creating the segment: start it again.
        warn!(segment = %path.display(), bytes = bytes.len(), "journal segment header torn; rewriting it");
        std::fs::write(path, segment_header()).map_err(io_err(path))?;
        return Ok((SEGMENT_HEADER_LEN as u64, first_seq));
    }
    if !check_segment_header(&bytes) {
        return Err(JournalError::NotASegment { path: path.to_path_buf() });
    }
    let mut offset = SEGMENT_HEADER_LEN;
    let mut expected = first_seq;
    let reason = loop {
        if offset == bytes.len() {
            break None;
        }
        match decode_record(&bytes[offset..]) {
            Decoded::Record(record, n) if record.seq == expected => {
                offset += n;
                expected += 1;
            }
            Decoded::Record(record, _) => {
                break Some(format!("sequence {} where {expected} was expected", record.seq));
            }
            Decoded::Incomplete => break Some("incomplete record".to_owned()),
            Decoded::Corrupt(what) => break Some(what),
        }
    };
    if let Some(reason) = reason {
        let cut = bytes.len() - offset;
        warn!(
            segment = %path.display(),
            offset,
            bytes_cut = cut,
            reason = %reason,
            "journal recovery truncated a torn tail"
        );
        let file = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
        file.set_len(offset as u64).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
    }
    Ok((offset as u64, expected))
}
