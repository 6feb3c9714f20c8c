//! Pruning: removing a journal's oldest segments once their records are kept elsewhere
//! (the archive), leaving a signed anchor so that what remains still verifies.
//!
//! Without an anchor, a journal that no longer starts at record 1 is a journal whose head
//! was deleted, and `verify` fails. The anchor says, under the checkpoint signing key, "the
//! records before `first_seq` were pruned, and the chain hash they ended with is
//! `start_hash`": verification starts there instead of at genesis. Only the holder of the
//! signing key can prune; a stranger who deletes segments still breaks verification.
//!
//! The anchor's format is in the `anchor` module.

use std::path::{Path, PathBuf};

use tracing::info;

use crate::anchor::{Anchor, KeptIn, read_anchor};
use crate::checkpoint::{CheckpointSigner, VerifierSet};
use crate::format::{Decoded, SEGMENT_HEADER_LEN, SegmentHeader, decode_record, list_segments};
use crate::verify::verify_segments;
use crate::{JournalError, io_err};

/// Which records a prune may remove: those before a sequence number, or those appended
/// before a time (µs since the Unix epoch). Only whole segments go, never the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    Seq(u64),
    Time(i64),
}

/// `--before` as a user writes it: a record sequence number, a date (`YYYY-MM-DD`, UTC
/// midnight) or an RFC 3339 time.
impl std::str::FromStr for Before {
    type Err = String;

    fn from_str(text: &str) -> Result<Before, String> {
        if let Ok(seq) = text.parse::<u64>() {
            return Ok(Before::Seq(seq));
        }
        if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc();
            return Ok(Before::Time(midnight.timestamp_micros()));
        }
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|time| Before::Time(time.timestamp_micros()))
            .map_err(|_| format!("{text:?}: give a record sequence number, a date YYYY-MM-DD or an RFC 3339 time"))
    }
}

/// What a prune did.
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// The segments deleted.
    pub deleted: Vec<PathBuf>,
    /// The first record the journal holds now.
    pub first_seq: u64,
    /// The anchor written (none when nothing could be pruned).
    pub anchor: Option<Anchor>,
    /// Why the prune stopped where it did, in words.
    pub stopped_by: String,
}

/// What the prune did, in words (`journal` is the directory pruned).
impl PruneReport {
    pub fn describe(&self, journal: &Path) -> String {
        match &self.anchor {
            Some(anchor) => format!(
                "pruned {} segments: the journal now starts at record {} (anchor {}, signed by {})\nstopped there because {}",
                self.deleted.len(),
                anchor.first_seq,
                journal.join(crate::ANCHOR_FILE).display(),
                anchor.key_id,
                self.stopped_by
            ),
            None if self.deleted.is_empty() => format!("nothing to prune: {}", self.stopped_by),
            None => format!("deleted {} segments an earlier prune had left", self.deleted.len()),
        }
    }
}

/// Prunes the journal in `dir`: deletes its oldest segments whose records are all before
/// `before` and at most `kept_through` (the last record kept elsewhere), after checking
/// the whole journal with `keys` and writing an anchor signed by `signer`.
pub fn prune(
    dir: &Path,
    before: Before,
    kept_through: u64,
    kept_in: Option<KeptIn>,
    signer: &CheckpointSigner,
    keys: &VerifierSet,
) -> Result<PruneReport, JournalError> {
    let mut keys = keys.clone();
    keys.add(signer.verifying_key());
    let anchor = read_anchor(dir)?;
    let segments = list_segments(dir).map_err(io_err(dir))?;
    let Some(((_, active), closed)) = segments.split_last() else {
        return Ok(PruneReport { stopped_by: "the journal is empty".into(), ..PruneReport::default() });
    };
    // Never anchor a journal that does not verify. The last segment may be written to
    // right now: only its link to the ones before is checked.
    let mut loaded = Vec::with_capacity(closed.len());
    for (first, path) in closed {
        if anchor.as_ref().is_none_or(|a| *first >= a.first_seq) {
            loaded.push((path.clone(), std::fs::read(path).map_err(io_err(path))?));
        }
    }
    let report = verify_segments(&loaded, &keys, None, false, anchor.as_ref()).map_err(|failure| {
        JournalError::Corrupt { path: failure.segment.clone(), offset: failure.offset, what: failure.problem }
    })?;
    let active_header = read_header(active)?;
    if let Some(head) = report.last_hash
        && active_header.start_hash != head
    {
        return Err(JournalError::Corrupt {
            path: active.clone(),
            offset: 0,
            what: "segment start hash does not continue the chain".into(),
        });
    }
    let instance = active_header.instance;
    let first_kept_now = anchor.as_ref().map_or(1, |a| a.first_seq);
    let mut cut = first_kept_now;
    let mut stopped_by = String::from("the last segment is never pruned");
    for window in segments.windows(2) {
        let ((first, path), (next_first, _)) = (&window[0], &window[1]);
        if *next_first <= first_kept_now {
            continue; // left over from a prune that stopped before deleting it
        }
        let last = next_first - 1;
        let allowed = match before {
            Before::Seq(seq) => last < seq,
            Before::Time(micros) => last_timestamp(path, *first)? < micros,
        };
        if !allowed {
            stopped_by = format!("segment {} holds records from the --before point on", path.display());
            break;
        }
        if last > kept_through {
            stopped_by =
                format!("segment {} holds records after {kept_through}, the last one kept elsewhere", path.display());
            break;
        }
        cut = *next_first;
    }
    let mut out = PruneReport { first_seq: cut, stopped_by, ..PruneReport::default() };
    if cut > first_kept_now {
        let (_, kept) = segments.iter().find(|(first, _)| *first == cut).expect("cut is a segment's first record");
        let header = read_header(kept)?;
        let mut new = Anchor {
            pgtrail_anchor: 1,
            instance,
            first_seq: cut,
            start_hash: hex::encode(header.start_hash),
            pruned_at_micros: crate::now_micros(),
            kept_in,
            key_id: String::new(),
            signature: String::new(),
        };
        new.sign(signer);
        new.write(dir)?;
        info!(journal = %dir.display(), first_seq = cut, "journal pruned: anchor written");
        out.anchor = Some(new);
    }
    // Delete what the anchor (new or old) leaves before it.
    let first_kept = out.anchor.as_ref().map_or(first_kept_now, |a| a.first_seq);
    if first_kept > 1 {
        for (first, path) in &segments {
            if *first < first_kept {
                std::fs::remove_file(path).map_err(io_err(path))?;
                out.deleted.push(path.clone());
            }
        }
        crate::sync_dir(dir)?;
    }
    Ok(out)
}

fn read_header(path: &Path) -> Result<SegmentHeader, JournalError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    SegmentHeader::decode(&bytes).map_err(|what| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        what: what.into(),
    })
}

/// The timestamp of a (verified, complete) segment's last record.
fn last_timestamp(path: &Path, first: u64) -> Result<i64, JournalError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let mut offset = SEGMENT_HEADER_LEN;
    let mut last = i64::MIN;
    while offset < bytes.len() {
        match decode_record(&bytes[offset..]) {
            Decoded::Record(record, n) => {
                last = record.timestamp_micros;
                offset += n;
            }
            _ => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    offset: offset as u64,
                    what: format!("unreadable record in the segment starting at {first}"),
                });
            }
        }
    }
    Ok(last)
}
