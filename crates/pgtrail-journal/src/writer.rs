//! The single writer of a journal directory: recovery on open, appends, rotation, fsync.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::checkpoint::{CheckpointSigner, append_witness};
use crate::format::{
    Decoded, Hash, MAX_INSTANCE_LEN, MAX_PAYLOAD, RecordKind, SEGMENT_HEADER_LEN, SegmentHeader, decode_record,
    encode_record, genesis_hash, list_segments, segment_path,
};
use crate::{JournalError, io_err, now_micros};

/// Tunables of the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalOptions {
    /// A new segment is started once the current one reaches this size.
    pub segment_max_bytes: u64,
    /// The instance this journal records (DAS `instanceId`); fixed for the journal's life.
    pub instance: String,
    /// Signs checkpoints. Without it no checkpoints are written (tests of the format only).
    pub signer: Option<CheckpointSigner>,
    /// A checkpoint after this many records...
    pub checkpoint_every_records: u64,
    /// ...or this long after the last one, whichever comes first (checked at appends and
    /// by [`Journal::checkpoint_if_due`]).
    pub checkpoint_every: Duration,
    /// Where a copy of every checkpoint is appended (another mount or host).
    pub witness_dir: Option<PathBuf>,
    /// When the last segment is damaged (a complete record fails its checks and valid
    /// records follow it), set it aside intact as `<segment>.damaged-<unix seconds>`
    /// and continue in a new segment holding the valid records before the damage,
    /// instead of refusing to open. Reported by [`Journal::recovery`].
    pub set_aside_damage: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            segment_max_bytes: 64 << 20,
            instance: "pgtrail".into(),
            signer: None,
            checkpoint_every_records: 1000,
            checkpoint_every: Duration::from_secs(10),
            witness_dir: None,
            set_aside_damage: false,
        }
    }
}

/// A position in the journal (see [`Journal::mark`]).
#[derive(Debug, Clone)]
pub struct Mark {
    path: PathBuf,
    len: u64,
    next_seq: u64,
    last_hash: Hash,
    records_since_checkpoint: u64,
}

/// What recovery did when the journal was opened: cut a torn tail, or (with
/// [`JournalOptions::set_aside_damage`]) set a damaged segment aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes_cut: u64,
    pub reason: String,
    /// Where the damaged segment was moved, intact; `None` for a torn tail.
    pub set_aside: Option<PathBuf>,
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
    last_hash: Hash,
    records_since_checkpoint: u64,
    last_checkpoint: Instant,
    recovery: Option<Recovery>,
    scratch: Vec<u8>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, truncating a torn tail.
    pub fn open(dir: impl AsRef<Path>, options: JournalOptions) -> Result<Self, JournalError> {
        let dir = dir.as_ref().to_path_buf();
        if options.instance.is_empty() || options.instance.len() > MAX_INSTANCE_LEN {
            return Err(JournalError::BadInstance(options.instance.clone()));
        }
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let segments = list_segments(&dir).map_err(io_err(&dir))?;
        let Some((first_seq, path)) = segments.last().cloned() else {
            let start = genesis_hash(&options.instance);
            return Self::create_segment(dir, options, 1, start);
        };
        let recovered = recover_segment(&path, first_seq, &options)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io_err(&path))?;
        Ok(Self {
            dir,
            options,
            file,
            path,
            len: recovered.len,
            next_seq: recovered.next_seq,
            last_hash: recovered.last_hash,
            // Records written before a crash may not be covered: checkpoint them soon.
            records_since_checkpoint: recovered.records,
            last_checkpoint: Instant::now(),
            recovery: recovered.cut,
            scratch: Vec::new(),
        })
    }

    fn create_segment(
        dir: PathBuf,
        options: JournalOptions,
        first_seq: u64,
        start_hash: Hash,
    ) -> Result<Self, JournalError> {
        let path = segment_path(&dir, first_seq);
        let header = SegmentHeader { first_seq, start_hash, instance: options.instance.clone() };
        let mut file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_err(&path))?;
        file.write_all(&header.encode()).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        // Make the new file name itself durable.
        crate::sync_dir(&dir)?;
        Ok(Self {
            dir,
            options,
            file,
            path,
            len: SEGMENT_HEADER_LEN as u64,
            next_seq: first_seq,
            last_hash: start_hash,
            records_since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            recovery: None,
            scratch: Vec::new(),
        })
    }

    /// The sequence number the next appended record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last record (the chain head).
    pub fn last_hash(&self) -> Hash {
        self.last_hash
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn instance(&self) -> &str {
        &self.options.instance
    }

    /// What recovery cut when this journal was opened, if anything.
    pub fn recovery(&self) -> Option<&Recovery> {
        self.recovery.as_ref()
    }

    /// Appends one envelope record; it is durable only after [`Journal::sync`].
    pub fn append(&mut self, timestamp_micros: i64, payload: &[u8]) -> Result<u64, JournalError> {
        let seq = self.append_kind(RecordKind::Envelope, timestamp_micros, payload)?;
        self.records_since_checkpoint += 1;
        Ok(seq)
    }

    fn append_kind(&mut self, kind: RecordKind, timestamp_micros: i64, payload: &[u8]) -> Result<u64, JournalError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(JournalError::PayloadTooLarge { len: payload.len(), max: MAX_PAYLOAD });
        }
        // A segment always holds at least one record, however small the limit.
        if self.len >= self.options.segment_max_bytes && self.len > SEGMENT_HEADER_LEN as u64 {
            self.rotate()?;
        }
        let seq = self.next_seq;
        self.scratch.clear();
        let hash = encode_record(&mut self.scratch, kind, seq, timestamp_micros, &self.last_hash, payload);
        if let Err(source) = self.file.write_all(&self.scratch) {
            // A partial write leaves a torn tail; cut it now so the next append starts clean.
            let _ = self.file.set_len(self.len);
            return Err(JournalError::Io { path: self.path.clone(), source });
        }
        self.len += self.scratch.len() as u64;
        self.next_seq += 1;
        self.last_hash = hash;
        Ok(seq)
    }

    /// Makes everything appended so far durable (fsync).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }

    /// True when records are waiting for a checkpoint and its count or time has come.
    pub fn checkpoint_due(&self) -> bool {
        self.options.signer.is_some()
            && self.records_since_checkpoint > 0
            && (self.records_since_checkpoint >= self.options.checkpoint_every_records
                || self.last_checkpoint.elapsed() >= self.options.checkpoint_every)
    }

    /// Writes a checkpoint if one is due (see [`Journal::checkpoint_due`]); syncs it.
    pub fn checkpoint_if_due(&mut self) -> Result<bool, JournalError> {
        if !self.checkpoint_due() {
            return Ok(false);
        }
        self.checkpoint()?;
        Ok(true)
    }

    /// Signs the chain head into a checkpoint record, makes it durable, then hands a copy
    /// to the witness. Does nothing without a signer or when nothing is uncovered.
    pub fn checkpoint(&mut self) -> Result<(), JournalError> {
        let Some(signer) = self.options.signer.clone() else { return Ok(()) };
        if self.records_since_checkpoint == 0 {
            return Ok(());
        }
        let payload = signer.sign(&self.options.instance, self.next_seq - 1, &self.last_hash, now_micros());
        self.append_kind(RecordKind::Checkpoint, now_micros(), &payload)?;
        self.sync()?;
        // Only a durable checkpoint goes to the witness: the witness is never ahead.
        if let Some(dir) = &self.options.witness_dir {
            append_witness(dir, &self.options.instance, &payload)?;
        }
        self.records_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Where the journal ends now, to [`Journal::rewind`] to if a group of appends fails.
    pub fn mark(&self) -> Mark {
        Mark {
            path: self.path.clone(),
            len: self.len,
            next_seq: self.next_seq,
            last_hash: self.last_hash,
            records_since_checkpoint: self.records_since_checkpoint,
        }
    }

    /// Cuts everything appended since `mark` (also a segment started since), so that a
    /// failed batch can be written again without leaving half of it behind.
    pub fn rewind(&mut self, mark: Mark) -> Result<(), JournalError> {
        if self.path != mark.path {
            std::fs::remove_file(&self.path).map_err(io_err(&self.path))?;
            self.file = OpenOptions::new().append(true).open(&mark.path).map_err(io_err(&mark.path))?;
            self.path = mark.path;
        }
        self.file.set_len(mark.len).map_err(io_err(&self.path))?;
        self.len = mark.len;
        self.next_seq = mark.next_seq;
        self.last_hash = mark.last_hash;
        self.records_since_checkpoint = mark.records_since_checkpoint;
        Ok(())
    }

    /// A clean shutdown: a final checkpoint and fsync.
    pub fn close(mut self) -> Result<(), JournalError> {
        self.checkpoint()?;
        self.sync()
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        self.sync()?;
        let mut next = Self::create_segment(self.dir.clone(), self.options.clone(), self.next_seq, self.last_hash)?;
        next.records_since_checkpoint = self.records_since_checkpoint;
        next.last_checkpoint = self.last_checkpoint;
        info!(segment = %next.path.display(), "journal segment started");
        *self = next;
        Ok(())
    }
}

struct Recovered {
    len: u64,
    next_seq: u64,
    last_hash: Hash,
    /// Envelope records since the segment's last checkpoint.
    records: u64,
    cut: Option<Recovery>,
}

/// Scans the last segment and truncates a torn tail: a last record that is incomplete (or
/// a run of zeros a crash left). A complete record that fails its CRC, hash, sequence or
/// link, or any bad record with a valid record after it, is damage or tampering: the
/// segment is left as it is and opening fails, unless `set_aside_damage`.
fn recover_segment(path: &Path, first_seq: u64, options: &JournalOptions) -> Result<Recovered, JournalError> {
    let instance = options.instance.as_str();
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(path))?;
    let header = match SegmentHeader::decode(&bytes) {
        Ok(header) => header,
        Err(what) if bytes.len() < SEGMENT_HEADER_LEN => {
            // Crashed while creating the segment; the previous segment holds the chain head.
            return recreate_torn_segment(path, first_seq, instance, what);
        }
        Err(_) => return Err(JournalError::NotASegment { path: path.to_path_buf() }),
    };
    if header.instance != instance {
        return Err(JournalError::InstanceMismatch {
            path: path.to_path_buf(),
            found: header.instance,
            configured: instance.to_owned(),
        });
    }
    if header.first_seq != first_seq {
        return Err(JournalError::NotASegment { path: path.to_path_buf() });
    }
    let mut offset = SEGMENT_HEADER_LEN;
    let mut expected = first_seq;
    let mut last_hash = header.start_hash;
    let mut records = 0;
    let reason = loop {
        if offset == bytes.len() {
            break None;
        }
        match decode_record(&bytes[offset..]) {
            Decoded::Record(record, n) if record.seq == expected && record.prev_hash == last_hash => {
                offset += n;
                expected += 1;
                last_hash = record.hash;
                records = if record.kind == RecordKind::Checkpoint { 0 } else { records + 1 };
            }
            Decoded::Record(record, _) if record.seq != expected => {
                break Some((format!("sequence {} where {expected} was expected", record.seq), false));
            }
            Decoded::Record(..) => break Some(("record does not link to the previous hash".to_owned(), false)),
            Decoded::Incomplete => break Some(("incomplete record".to_owned(), true)),
            Decoded::Corrupt(_) if bytes[offset..].iter().all(|&b| b == 0) => {
                break Some(("zeros after the last record".to_owned(), true));
            }
            Decoded::Corrupt(what) => break Some((what, false)),
        }
    };
    let mut cut = None;
    if let Some((reason, incomplete)) = reason {
        let follows = valid_record_after(&bytes, offset);
        // A record the witness holds a checkpoint for was durable: it cannot be torn.
        let witnessed = last_witnessed(options).filter(|&durable| durable >= expected);
        if !incomplete || follows.is_some() || witnessed.is_some() {
            let damage = JournalError::Damaged {
                path: path.to_path_buf(),
                offset: offset as u64,
                seq: expected,
                what: match (follows, witnessed) {
                    (Some(at), _) => format!("{reason}; a valid record follows at offset {at}"),
                    (None, Some(durable)) => format!("{reason}; the witness holds a checkpoint of record {durable}"),
                    (None, None) => format!("{reason}; the record is complete, so this is no torn write"),
                },
            };
            if !options.set_aside_damage {
                return Err(damage);
            }
            return set_aside(path, &bytes[..offset], damage).map(|cut| Recovered {
                len: offset as u64,
                next_seq: expected,
                last_hash,
                records,
                cut: Some(cut),
            });
        }
        let bytes_cut = (bytes.len() - offset) as u64;
        warn!(
            segment = %path.display(),
            offset,
            bytes_cut,
            reason = %reason,
            "journal recovery truncated a torn tail"
        );
        let file = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
        file.set_len(offset as u64).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        cut = Some(Recovery { segment: path.to_path_buf(), offset: offset as u64, bytes_cut, reason, set_aside: None });
    }
    Ok(Recovered { len: offset as u64, next_seq: expected, last_hash, records, cut })
}

/// The last record the witness knows was durable (a checkpoint's own record follows the
/// one it signs), if there is a witness with checkpoints.
fn last_witnessed(options: &JournalOptions) -> Option<u64> {
    let dir = options.witness_dir.as_ref()?;
    let checkpoints = crate::checkpoint::read_witness(dir, &options.instance).ok()?;
    checkpoints.iter().map(|c| c.seq + 1).max()
}

/// The offset of the first record after `from` that decodes (CRC and hash good), if any:
/// what tells damage in the middle of a segment from a torn tail at its end, even when the
/// damage is in a length field.
fn valid_record_after(bytes: &[u8], from: usize) -> Option<usize> {
    (from + 1..bytes.len().saturating_sub(crate::format::RECORD_HEADER_LEN - 1)).find(|&at| {
        let header = &bytes[at..];
        // Cheap filters first: a known kind and zero reserved bytes.
        matches!(header[8], 1 | 2)
            && header[9..16].iter().all(|&b| b == 0)
            && matches!(decode_record(header), Decoded::Record(..))
    })
}

/// Moves a damaged segment aside intact and writes, in its place, a segment holding only
/// its valid records before the damage, so the journal continues from there.
fn set_aside(path: &Path, valid_prefix: &[u8], damage: JournalError) -> Result<Recovery, JournalError> {
    let JournalError::Damaged { offset, seq, what, .. } = &damage else { return Err(damage) };
    let seconds = now_micros() / 1_000_000;
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".damaged-{seconds}"));
    let aside = PathBuf::from(aside);
    let staging = path.with_extension("seg.repairing");
    std::fs::write(&staging, valid_prefix).map_err(io_err(&staging))?;
    File::open(&staging).and_then(|f| f.sync_all()).map_err(io_err(&staging))?;
    std::fs::rename(path, &aside).map_err(io_err(path))?;
    std::fs::rename(&staging, path).map_err(io_err(path))?;
    crate::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    let bytes_cut = std::fs::metadata(&aside).map(|m| m.len()).unwrap_or(0).saturating_sub(*offset);
    warn!(
        segment = %path.display(),
        set_aside = %aside.display(),
        record = seq,
        offset,
        "journal damage set aside; continuing after the last valid record"
    );
    Ok(Recovery {
        segment: path.to_path_buf(),
        offset: *offset,
        bytes_cut,
        reason: format!("record {seq} is damaged ({what})"),
        set_aside: Some(aside),
    })
}

/// The last segment's header was torn: rewrite it from the end of the previous segment.
fn recreate_torn_segment(path: &Path, first_seq: u64, instance: &str, what: &str) -> Result<Recovered, JournalError> {
    warn!(segment = %path.display(), reason = what, "journal segment header torn; rewriting it");
    let start_hash = if first_seq == 1 {
        genesis_hash(instance)
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        let previous = list_segments(dir)
            .map_err(io_err(dir))?
            .into_iter()
            .rfind(|(first, _)| *first < first_seq)
            .ok_or_else(|| JournalError::NotASegment { path: path.to_path_buf() })?;
        let head = crate::reader::segment_head(&previous.1)?;
        if head.next_seq != first_seq {
            return Err(JournalError::NotASegment { path: path.to_path_buf() });
        }
        head.last_hash
    };
    let header = SegmentHeader { first_seq, start_hash, instance: instance.to_owned() };
    std::fs::write(path, header.encode()).map_err(io_err(path))?;
    Ok(Recovered {
        len: SEGMENT_HEADER_LEN as u64,
        next_seq: first_seq,
        last_hash: start_hash,
        records: 0,
        cut: Some(Recovery {
            segment: path.to_path_buf(),
            offset: 0,
            bytes_cut: 0,
            reason: "segment header torn".into(),
            set_aside: None,
        }),
    })
}
