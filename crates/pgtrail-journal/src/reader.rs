//! Reading a journal from a cursor (a sequence number), optionally following new records.
//!
//! Readers never modify the journal and may run while the writer appends: an incomplete
//! record at the end of the last segment means "not written yet", not corruption.
//!
//! Readers check what they read: every record's CRC and own hash, and that it links to
//! the record before it (the hash chain), also across segments. A record that fails is
//! an error naming the segment and offset; the reader stops there.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::format::{Decoded, Hash, SEGMENT_HEADER_LEN, SegmentHeader, decode_record, list_segments};
use crate::{JournalError, Record, io_err};

/// Iterates records with `seq >= from`, in order.
#[derive(Debug)]
pub struct JournalReader {
    dir: PathBuf,
    /// The sequence number of the next record to return.
    next_seq: u64,
    current: Option<OpenSegment>,
    /// Set after the iterator returned an error, so that it ends instead of repeating it.
    failed: bool,
    /// The hash of the last record read (or skipped), when known.
    last_hash: Option<Hash>,
    /// The instance named by the segment headers read so far.
    instance: Option<String>,
    /// Records this reader was asked for that a prune removed (first, last).
    pruned: Option<(u64, u64)>,
}

#[derive(Debug)]
struct OpenSegment {
    path: PathBuf,
    file: File,
    /// Bytes read from the file but not yet consumed.
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    offset: u64,
}

impl JournalReader {
    /// A reader positioned at the first record with `seq >= from` (1 for the beginning).
    pub fn open(dir: impl AsRef<Path>, from: u64) -> Result<Self, JournalError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(JournalError::Io {
                path: dir,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "journal directory does not exist"),
            });
        }
        Ok(Self {
            dir,
            next_seq: from.max(1),
            current: None,
            failed: false,
            last_hash: None,
            instance: None,
            pruned: None,
        })
    }

    /// The instance of the journal in `dir`, from its first segment's header (`None` while
    /// it has no segment).
    pub fn instance_of(dir: impl AsRef<Path>) -> Result<Option<String>, JournalError> {
        let dir = dir.as_ref();
        let Some((_, path)) = list_segments(dir).map_err(io_err(dir))?.into_iter().next() else {
            return Ok(None);
        };
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        let mut file = File::open(&path).map_err(io_err(&path))?;
        match file.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(JournalError::Io { path, source: e }),
        }
        let header = SegmentHeader::decode(&header).map_err(|what| JournalError::Corrupt {
            path: path.clone(),
            offset: 0,
            what: what.into(),
        })?;
        Ok(Some(header.instance))
    }

    /// The cursor: the sequence number of the next record this reader will return.
    pub fn position(&self) -> u64 {
        self.next_seq
    }

    /// Records this reader was to read that had been pruned from the journal (first, last):
    /// it read on from the prune anchor.
    pub fn pruned(&self) -> Option<(u64, u64)> {
        self.pruned
    }

    /// The journal's instance (the DAS `instanceId`), known once a segment has been opened.
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// The next record, or `Ok(None)` when the reader has caught up with the writer.
    /// Calling again later returns records appended since.
    pub fn next_record(&mut self) -> Result<Option<Record>, JournalError> {
        loop {
            if self.current.is_none() && !self.open_segment_for(self.next_seq)? {
                return Ok(None);
            }
            let segment = self.current.as_mut().expect("segment opened above");
            let record = segment.next()?;
            if let Some(record) = &record {
                if let Some(last) = self.last_hash
                    && record.prev_hash != last
                {
                    return Err(JournalError::Corrupt {
                        path: segment.path.clone(),
                        offset: segment.offset,
                        what: format!(
                            "record {} does not link to the record before it (hash chain broken)",
                            record.seq
                        ),
                    });
                }
                self.last_hash = Some(record.hash);
            }
            match record {
                Some(record) if record.seq < self.next_seq => continue,
                Some(record) if record.seq == self.next_seq => {
                    self.next_seq += 1;
                    return Ok(Some(record));
                }
                Some(record) => {
                    return Err(JournalError::Corrupt {
                        path: segment.path.clone(),
                        offset: segment.offset,
                        what: format!("sequence jumps from {} to {}", self.next_seq - 1, record.seq),
                    });
                }
                None => {
                    // End of this segment's bytes. If a later segment starts where we are,
                    // the writer has rotated: move on. Otherwise we are at the live tail.
                    let next_path = crate::format::segment_path(&self.dir, self.next_seq);
                    if next_path != segment.path && next_path.exists() {
                        if !segment.buf.is_empty() {
                            return Err(JournalError::Corrupt {
                                path: segment.path.clone(),
                                offset: segment.offset,
                                what: "incomplete record before the next segment".into(),
                            });
                        }
                        self.current = None;
                        continue;
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Opens the segment that holds `seq`; false if there is none yet.
    fn open_segment_for(&mut self, seq: u64) -> Result<bool, JournalError> {
        let mut seq = seq;
        // Records before a prune anchor are gone (kept in the archive): read on from it.
        if let Some(start) = crate::anchor::read_anchor(&self.dir)?.map(|anchor| anchor.first_seq)
            && seq < start
        {
            warn!(
                journal = %self.dir.display(),
                from = seq,
                to = start - 1,
                "records were pruned from the journal (kept in the archive): reading on from its prune anchor"
            );
            self.pruned = Some((seq, start - 1));
            self.next_seq = start;
            self.last_hash = None;
            seq = start;
        }
        let segments = list_segments(&self.dir).map_err(io_err(&self.dir))?;
        let Some((_, path)) = segments.iter().rev().find(|(first, _)| *first <= seq) else {
            return match segments.first() {
                None => Ok(false), // no segment yet: the writer has not started
                Some((first, path)) => Err(JournalError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    what: format!(
                        "the journal starts at record {first} and has no prune anchor: records {seq} to {} are missing",
                        first - 1
                    ),
                }),
            };
        };
        let mut file = File::open(path).map_err(io_err(path))?;
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        match file.read_exact(&mut header) {
            Ok(()) => {}
            // The writer is creating this segment right now.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => {
                return Err(JournalError::Io { path: path.clone(), source: e });
            }
        }
        let header = SegmentHeader::decode(&header).map_err(|what| JournalError::Corrupt {
            path: path.clone(),
            offset: 0,
            what: what.into(),
        })?;
        match self.last_hash {
            Some(last) if header.start_hash != last => {
                return Err(JournalError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    what: "segment does not continue the hash chain of the segment before it".into(),
                });
            }
            _ => self.last_hash = Some(header.start_hash),
        }
        match &self.instance {
            Some(known) if *known != header.instance => {
                return Err(JournalError::InstanceMismatch {
                    path: path.clone(),
                    found: header.instance,
                    configured: known.clone(),
                });
            }
            _ => self.instance = Some(header.instance),
        }
        self.current =
            Some(OpenSegment { path: path.clone(), file, buf: Vec::new(), offset: SEGMENT_HEADER_LEN as u64 });
        Ok(true)
    }
}

impl Iterator for JournalReader {
    type Item = Result<Record, JournalError>;

    /// Ends at the live tail, or after the first error (which is returned once).
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.next_record().transpose();
        self.failed = matches!(item, Some(Err(_)));
        item
    }
}

impl OpenSegment {
    fn next(&mut self) -> Result<Option<Record>, JournalError> {
        loop {
            match decode_record(&self.buf) {
                Decoded::Record(record, n) => {
                    self.buf.drain(..n);
                    self.offset += n as u64;
                    return Ok(Some(record));
                }
                Decoded::Corrupt(what) => {
                    return Err(JournalError::Corrupt { path: self.path.clone(), offset: self.offset, what });
                }
                Decoded::Incomplete => {
                    if !self.fill()? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Reads more bytes; false when the file has nothing more right now.
    fn fill(&mut self) -> Result<bool, JournalError> {
        let read_at = self.offset + self.buf.len() as u64;
        self.file.seek(SeekFrom::Start(read_at)).map_err(io_err(&self.path))?;
        let mut chunk = vec![0u8; 256 * 1024];
        let n = self.file.read(&mut chunk).map_err(io_err(&self.path))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }
}

/// Where a segment's chain ends.
pub(crate) struct SegmentHead {
    pub next_seq: u64,
    pub last_hash: Hash,
}

/// Reads a whole (closed) segment and returns its chain head.
pub(crate) fn segment_head(path: &Path) -> Result<SegmentHead, JournalError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let header = SegmentHeader::decode(&bytes).map_err(|what| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        what: what.into(),
    })?;
    let mut head = SegmentHead { next_seq: header.first_seq, last_hash: header.start_hash };
    let mut offset = SEGMENT_HEADER_LEN;
    while let Decoded::Record(record, n) = decode_record(&bytes[offset..]) {
        head = SegmentHead { next_seq: record.seq + 1, last_hash: record.hash };
        offset += n;
    }
    Ok(head)
}
