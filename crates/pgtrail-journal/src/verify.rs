//! Verification of a whole journal with public material only: CRCs, record hashes, the
//! hash chain (within and across segments), sequence continuity, checkpoint signatures,
//! and, given a witness, that the journal still holds every witnessed checkpoint.
//!
//! What each tamper shows up as:
//! - a changed byte: a CRC, hash or header mismatch (or, if the attacker recomputed those,
//!   a checkpoint whose signed hash no longer matches the chain);
//! - a deleted, inserted or reordered record: a sequence gap or a broken link;
//! - a deleted first segment: the journal no longer starts at sequence 1 and genesis (a
//!   journal pruned by its owner starts at its signed anchor instead, see the `prune` module);
//! - records cut from the end: a witnessed checkpoint the journal no longer has.
//!
//! The first failure stops verification: everything after it is unproven.

use std::path::{Path, PathBuf};

use crate::anchor::{Anchor, read_anchor};
use crate::checkpoint::{Checkpoint, VerifierSet, read_witness};
use crate::format::{
    Decoded, Hash, Record, RecordKind, SEGMENT_HEADER_LEN, SegmentHeader, decode_record, genesis_hash, list_segments,
};
use crate::{JournalError, io_err};

/// What a successful verification saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub instance: String,
    pub segments: usize,
    pub envelopes: u64,
    pub checkpoints: u64,
    /// The last sequence number (0 for an empty journal).
    pub last_seq: u64,
    pub last_hash: Option<Hash>,
    /// Sequence number covered by the last valid checkpoint (0 if none).
    pub last_checkpoint_seq: u64,
    /// Records after the last checkpoint: chained, but not yet signed.
    pub uncovered: u64,
    /// Checkpoints found in the witness (all of them matched the journal).
    pub witnessed: u64,
    /// The first record held, when the journal was pruned (its anchor verified); 0 if not.
    pub pruned_before: u64,
    /// Witnessed checkpoints of pruned records (not checkable against the journal).
    pub witnessed_pruned: u64,
    /// Segments before the anchor that a prune has not deleted yet (not checked).
    pub leftover_segments: usize,
    /// Every checkpoint verified, in journal order.
    pub signed: Vec<Signed>,
}

/// A verified checkpoint: the record it signs, that record's chain hash and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub seq: u64,
    pub hash: Hash,
    pub key_id: String,
}

impl VerifyReport {
    /// The first verified checkpoint that signs record `seq` (through the chain: a
    /// checkpoint signs every record up to its own).
    pub fn signing(&self, seq: u64) -> Option<&Signed> {
        let at = self.signed.partition_point(|s| s.seq < seq);
        self.signed.get(at)
    }
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    pub segment: PathBuf,
    pub offset: u64,
    /// The sequence number of the bad record, when known.
    pub seq: Option<u64>,
    pub problem: String,
}

impl std::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => {
                write!(f, "record {seq} ({} offset {}): {}", self.segment.display(), self.offset, self.problem)
            }
            None => write!(f, "{} offset {}: {}", self.segment.display(), self.offset, self.problem),
        }
    }
}

/// Verifies the journal in `dir`. `Err(JournalError)` when it cannot be read at all,
/// `Ok(Err(failure))` when it was read and is not intact.
pub fn verify_dir(
    dir: &Path,
    keys: &VerifierSet,
    witness: Option<&Path>,
) -> Result<Result<VerifyReport, VerifyFailure>, JournalError> {
    if !dir.is_dir() {
        return Err(JournalError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "journal directory does not exist"),
        });
    }
    let anchor = read_anchor(dir)?;
    let mut segments = Vec::new();
    for (_, path) in list_segments(dir).map_err(io_err(dir))? {
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        segments.push((path, bytes));
    }
    let witnessed = match witness {
        None => None,
        Some(wdir) => {
            // The witness is keyed by instance, which the first segment names.
            let instance = segments.first().and_then(|(_, b)| SegmentHeader::decode(b).ok()).map(|h| h.instance);
            match instance {
                Some(instance) => Some(read_witness(wdir, &instance)?),
                None => None,
            }
        }
    };
    Ok(verify_segments(&segments, keys, witnessed.as_deref(), witness.is_some(), anchor.as_ref()))
}

/// Verifies segments given as (path, bytes), in file-name order. `witness` holds the
/// witnessed checkpoints; `witness_expected` says a witness was configured (so an
/// empty journal with a missing first segment is not silently fine). With the `anchor` of
/// a pruned journal, verification starts where the anchor says, once its signature holds.
pub fn verify_segments(
    segments: &[(PathBuf, Vec<u8>)],
    keys: &VerifierSet,
    witness: Option<&[Checkpoint]>,
    witness_expected: bool,
    anchor: Option<&Anchor>,
) -> Result<VerifyReport, VerifyFailure> {
    let mut report = VerifyReport::default();
    let mut expected_seq = 1u64;
    let mut last_hash: Option<Hash> = None;
    let mut instance: Option<String> = None;
    let mut segments = segments;
    if let Some(anchor) = anchor {
        let fail = |problem: String| VerifyFailure {
            segment: PathBuf::from(crate::anchor::ANCHOR_FILE),
            offset: 0,
            seq: None,
            problem,
        };
        anchor.verify(keys).map_err(fail)?;
        last_hash = Some(anchor.start_hash().map_err(fail)?);
        instance = Some(anchor.instance.clone());
        expected_seq = anchor.first_seq;
        report.pruned_before = anchor.first_seq;
        // Segments a prune has not deleted yet: the anchor replaces them.
        let leftovers = segments
            .iter()
            .take_while(|(path, _)| segment_first(path).is_some_and(|first| first < anchor.first_seq))
            .count();
        report.leftover_segments = leftovers;
        segments = &segments[leftovers..];
    }
    let base_seq = expected_seq;
    report.segments = segments.len();
    // The hash of every record from `base_seq` on, to check the witness against.
    let mut hashes: Vec<Hash> = Vec::new();

    for (index, (path, bytes)) in segments.iter().enumerate() {
        let fail = |offset: u64, seq: Option<u64>, problem: String| VerifyFailure {
            segment: path.clone(),
            offset,
            seq,
            problem,
        };
        let header = SegmentHeader::decode(bytes).map_err(|what| fail(0, None, what.to_owned()))?;
        let name_seq =
            segment_first(path).ok_or_else(|| fail(0, None, "segment file name is not a sequence number".into()))?;
        if name_seq != header.first_seq {
            return Err(fail(0, None, format!("file name says sequence {name_seq}, header says {}", header.first_seq)));
        }
        match &instance {
            None => instance = Some(header.instance.clone()),
            Some(i) if *i != header.instance => {
                return Err(fail(0, None, format!("segment of instance {:?} in a journal of {i:?}", header.instance)));
            }
            Some(_) => {}
        }
        if header.first_seq != expected_seq {
            let problem = if index == 0 && base_seq > 1 {
                format!(
                    "journal starts at sequence {} but its prune anchor says {base_seq}: segments are missing",
                    header.first_seq
                )
            } else if index == 0 {
                format!("journal starts at sequence {} instead of 1: earlier segments are missing", header.first_seq)
            } else {
                format!("segment starts at sequence {} where {expected_seq} was expected", header.first_seq)
            };
            return Err(fail(0, None, problem));
        }
        let chain_before = last_hash.unwrap_or_else(|| genesis_hash(&header.instance));
        if header.start_hash != chain_before {
            return Err(fail(0, None, "segment start hash does not continue the chain".into()));
        }
        let mut prev = header.start_hash;
        let mut chain = Chain::resume(&header.instance, expected_seq - 1, prev);
        let mut offset = SEGMENT_HEADER_LEN;
        while offset < bytes.len() {
            let record = match decode_record(&bytes[offset..]) {
                Decoded::Record(record, n) => {
                    offset += n;
                    record
                }
                Decoded::Incomplete => {
                    return Err(fail(
                        offset as u64,
                        Some(expected_seq),
                        "incomplete record (a torn tail: open the journal for writing to recover it, or the file was cut)"
                            .into(),
                    ));
                }
                Decoded::Corrupt(what) => return Err(fail(offset as u64, Some(expected_seq), what)),
            };
            let record_offset = offset as u64 - (crate::format::RECORD_HEADER_LEN + record.payload.len()) as u64;
            chain.push(&record, Some(keys)).map_err(|problem| fail(record_offset, Some(record.seq), problem))?;
            prev = record.hash;
            hashes.push(record.hash);
            expected_seq += 1;
        }
        last_hash = Some(prev);
        chain.absorb_into(&mut report);
    }
    report.instance = instance.unwrap_or_default();
    report.last_seq = expected_seq - 1;
    report.last_hash = last_hash;

    if let Some(witnessed) = witness {
        let where_ = segments.last().map(|(p, _)| p.clone()).unwrap_or_default();
        for checkpoint in witnessed {
            let fail = |problem: String| VerifyFailure {
                segment: where_.clone(),
                offset: 0,
                seq: Some(checkpoint.seq),
                problem,
            };
            checkpoint.verify(keys).map_err(|what| fail(format!("witness: {what}")))?;
            if checkpoint.instance != report.instance {
                return Err(fail("witness checkpoint names another instance".into()));
            }
            if checkpoint.seq < base_seq {
                // Of a pruned record: the anchor stands for it.
                report.witnessed_pruned += 1;
                continue;
            }
            let index = (checkpoint.seq - base_seq) as usize;
            match hashes.get(index) {
                None => {
                    return Err(fail(format!(
                        "journal truncated: the witness has a checkpoint at record {} but the journal ends at {}",
                        checkpoint.seq, report.last_seq
                    )));
                }
                Some(hash) if *hash != checkpoint.hash => {
                    return Err(fail(format!(
                        "record {} differs from the witnessed checkpoint: the journal was rewritten",
                        checkpoint.seq
                    )));
                }
                Some(_) => {}
            }
            // The witnessed checkpoint itself must still be in the journal right after it.
            if hashes.get(index + 1).is_none() {
                return Err(fail(format!("journal truncated: the checkpoint after record {} is gone", checkpoint.seq)));
            }
            report.witnessed += 1;
        }
    } else if witness_expected && segments.is_empty() {
        return Err(VerifyFailure {
            segment: PathBuf::new(),
            offset: 0,
            seq: None,
            problem: "journal is empty".into(),
        });
    }
    Ok(report)
}

/// Checks records one at a time, as a transport hands them over: each must be the next in
/// sequence, link to the one before, and every checkpoint must sign the chain as it is
/// (with `keys`, its signature too). The same checks [`verify_segments`] makes inside a
/// segment; CRCs and a record's own hash are checked when it is parsed.
#[derive(Debug, Clone)]
pub struct Chain {
    instance: String,
    next_seq: u64,
    prev: Hash,
    report: VerifyReport,
}

impl Chain {
    /// At the start of an instance's journal: record 1 links to the genesis hash.
    pub fn new(instance: &str) -> Chain {
        Chain::resume(instance, 0, genesis_hash(instance))
    }

    /// After record `seq`, whose hash is `hash` (a cursor, or a verified anchor).
    pub fn resume(instance: &str, seq: u64, hash: Hash) -> Chain {
        Chain { instance: instance.to_owned(), next_seq: seq + 1, prev: hash, report: VerifyReport::default() }
    }

    /// The sequence number the next record must have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last record checked (the genesis or resume hash before any).
    pub fn last_hash(&self) -> Hash {
        self.prev
    }

    /// What the records checked so far were: envelopes, checkpoints, the signed ones.
    pub fn report(&self) -> VerifyReport {
        let mut report = self.report.clone();
        report.instance = self.instance.clone();
        report.last_seq = self.next_seq - 1;
        report.last_hash = Some(self.prev);
        report
    }

    /// Checks `record` as the next one; `Err` says what is wrong (nothing is taken in then).
    pub fn push(&mut self, record: &Record, keys: Option<&VerifierSet>) -> Result<(), String> {
        if record.seq != self.next_seq {
            return Err(format!("sequence {} where {} was expected", record.seq, self.next_seq));
        }
        if record.prev_hash != self.prev {
            return Err(
                "previous-hash does not match the record before it (a record was removed, inserted or moved)".into()
            );
        }
        match record.kind {
            RecordKind::Envelope => {
                self.report.envelopes += 1;
                self.report.uncovered += 1;
            }
            RecordKind::Checkpoint => {
                let checkpoint = Checkpoint::parse(&record.payload).map_err(str::to_owned)?;
                if checkpoint.instance != self.instance {
                    return Err("checkpoint names another instance".into());
                }
                if checkpoint.seq + 1 != record.seq || checkpoint.hash != self.prev {
                    return Err(format!(
                        "checkpoint signs record {} with a hash that is not the chain's: records before it were changed",
                        checkpoint.seq
                    ));
                }
                if let Some(keys) = keys {
                    checkpoint.verify(keys)?;
                    self.report.checkpoints += 1;
                    self.report.last_checkpoint_seq = checkpoint.seq;
                    self.report.signed.push(Signed {
                        seq: checkpoint.seq,
                        hash: checkpoint.hash,
                        key_id: checkpoint.key_id,
                    });
                    self.report.uncovered = 0;
                }
            }
        }
        self.prev = record.hash;
        self.next_seq += 1;
        Ok(())
    }

    /// Adds this chain's counts to a journal's report (one chain per segment there).
    fn absorb_into(self, report: &mut VerifyReport) {
        report.envelopes += self.report.envelopes;
        report.checkpoints += self.report.checkpoints;
        if self.report.checkpoints > 0 {
            report.last_checkpoint_seq = self.report.last_checkpoint_seq;
            report.uncovered = self.report.uncovered;
        } else {
            report.uncovered += self.report.uncovered;
        }
        report.signed.extend(self.report.signed);
    }
}

/// The sequence number a segment's file name gives.
fn segment_first(path: &std::path::Path) -> Option<u64> {
    path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok())
}
