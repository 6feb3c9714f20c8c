//! `pgtrail verify --archive`: proves an archive complete and unaltered.
//!
//! On its own, for each instance: the manifest chain (no entry missing, extra, changed or
//! moved), every entry's signature by an archive key among the verification keys, that
//! the entries tile the journal from record 1 with no gap or overlap, and that every file
//! an entry names is there with its SHA-256 and row count, its rows of that instance, date
//! and record range; a data file no entry names is extra. Expired files (named by a
//! retention entry) may be gone.
//!
//! With the journal: the journal verifies (checkpoint signatures, chain, prune anchor);
//! each entry's last record is the journal's record with that chain hash; every row comes
//! from an envelope record and every envelope record of a range has rows; and the manifest
//! entry a prune anchor pins is in the chain, so an archive cut short below what the prune
//! relied on is detected. (Entries after the pin and after the journal's tail are only as
//! good as the archive key: a cut there looks like an archive that is behind.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path as FsPath;
use std::sync::Arc;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMicrosecondType, UInt32Type, UInt64Type};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pgtrail_journal::{JournalReader, RecordKind, VerifierSet};
use sha2::{Digest, Sha256};

use crate::ArchiveError;
use crate::manifest::{self, Entry, EntryKind, MANIFEST_DIR};

/// What the verification of one instance saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceReport {
    pub instance: String,
    pub entries: u64,
    /// Files checked (hash, rows).
    pub files: u64,
    pub rows: u64,
    /// The archive covers the journal's records 1 to this.
    pub through_record_seq: u64,
    /// Files deleted by retention, and those of them not deleted yet.
    pub expired_files: u64,
    pub expired_present: u64,
    /// The journal's records checked against the manifest (first, last), with --journal.
    pub journal_checked: Option<(u64, u64)>,
    /// The manifest entry a prune anchor pins, with --journal.
    pub pinned_entry: Option<u64>,
    /// The archive keys that signed the entries.
    pub key_ids: BTreeSet<String>,
    /// The manifest's last entry (seq and hash, hex).
    pub last_entry: Option<(u64, String)>,
}

/// What was verified of the instance, in words: one line, then a line for each extra fact.
impl std::fmt::Display for InstanceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.key_ids.iter().map(String::as_str).collect();
        write!(
            f,
            "instance {}: {} manifest entries signed by {}, {} files, {} rows, journal records 1 to {} with none left out",
            self.instance,
            self.entries,
            keys.join(", "),
            self.files,
            self.rows,
            self.through_record_seq
        )?;
        if self.expired_files > 0 {
            write!(
                f,
                "\n  {} files deleted by retention ({} of them not deleted yet)",
                self.expired_files, self.expired_present
            )?;
        }
        match self.journal_checked {
            Some((first, last)) => write!(f, "\n  checked against the journal's records {first} to {last}")?,
            None => write!(f, "\n  not checked against a journal (give --journal for that instance)")?,
        }
        if let Some(pinned) = self.pinned_entry {
            write!(f, "\n  the journal's prune anchor pins manifest entry {pinned}: present")?;
        }
        Ok(())
    }
}

/// What the verification saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    pub instances: Vec<InstanceReport>,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFailure {
    pub instance: Option<String>,
    pub problem: String,
}

impl std::fmt::Display for ArchiveFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.instance {
            Some(instance) => write!(f, "instance {instance}: {}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

fn store_error(e: object_store::Error) -> ArchiveError {
    ArchiveError::Store(e.to_string())
}

/// The journal records an archive is checked against.
struct JournalFacts {
    /// The first record held (after a prune) and whether each record from it on is an envelope.
    base: u64,
    envelope: Vec<bool>,
    hashes: HashMap<u64, String>,
    anchor: Option<pgtrail_journal::Anchor>,
}

impl JournalFacts {
    fn holds(&self, seq: u64) -> Option<bool> {
        seq.checked_sub(self.base).and_then(|i| self.envelope.get(i as usize).copied())
    }
}

/// Verifies the archive at `target` with `keys` (archive keys, and with `journal` the
/// checkpoint keys too). `Err` when it cannot be read at all, `Ok(Err(failure))` when it
/// was read and does not hold together.
pub fn verify_archive(
    target: &str,
    keys: &VerifierSet,
    journal: Option<&FsPath>,
) -> Result<Result<ArchiveReport, ArchiveFailure>, ArchiveError> {
    let store = crate::store::open(target)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ArchiveError::Io)?;
    runtime.block_on(verify_store(store, keys, journal))
}

async fn verify_store(
    store: Arc<dyn ObjectStore>,
    keys: &VerifierSet,
    journal: Option<&FsPath>,
) -> Result<Result<ArchiveReport, ArchiveFailure>, ArchiveError> {
    let objects: Vec<String> =
        store.list(None).map_ok(|meta| meta.location.to_string()).try_collect().await.map_err(store_error)?;
    let fail = |instance: Option<&str>, problem: String| {
        Ok(Err(ArchiveFailure { instance: instance.map(str::to_owned), problem }))
    };
    let mut instances = BTreeSet::new();
    for name in objects.iter().filter(|o| o.starts_with(&format!("{MANIFEST_DIR}/"))) {
        let instance = name
            .strip_prefix(&format!("{MANIFEST_DIR}/instance="))
            .and_then(|rest| rest.split_once('/'))
            .filter(|(_, file)| file.len() == 15 && file.ends_with(".json"))
            .map(|(instance, _)| instance);
        match instance {
            Some(instance) => instances.insert(instance.to_owned()),
            None => return fail(None, format!("{name} is not a manifest entry's name")),
        };
    }
    // The journal must verify; its records are read once its instance's entries are known.
    let journal = match journal {
        None => None,
        Some(dir) => {
            let journal_error =
                |e: pgtrail_journal::JournalError| ArchiveError::Manifest(format!("reading the journal: {e}"));
            match pgtrail_journal::verify_dir(dir, keys, None).map_err(journal_error)? {
                Ok(verified) => {
                    if !instances.contains(&verified.instance) && verified.envelopes > 0 {
                        return fail(
                            Some(&verified.instance),
                            "the archive holds nothing of the journal's instance".into(),
                        );
                    }
                    Some((dir, verified.instance))
                }
                Err(failure) => return fail(None, format!("journal {}: does not verify: {failure}", dir.display())),
            }
        }
    };
    let mut report = ArchiveReport::default();
    let mut named = BTreeSet::new();
    for instance in &instances {
        let dir = journal.as_ref().filter(|(_, of)| of == instance).map(|(dir, _)| *dir);
        match verify_instance(store.as_ref(), instance, keys, dir, &mut named).await? {
            Ok(one) => report.instances.push(one),
            Err(problem) => return fail(Some(instance), problem),
        }
    }
    if let Some(extra) = objects.iter().find(|o| o.ends_with(".parquet") && !named.contains(o.as_str())) {
        return fail(None, format!("{extra} is in no manifest entry: an extra file"));
    }
    Ok(Ok(report))
}

/// Reads the journal (verified already): each record's kind, and the hashes of `needed`.
fn journal_facts(dir: &FsPath, needed: &BTreeSet<u64>) -> Result<JournalFacts, ArchiveError> {
    let journal_error = |e: pgtrail_journal::JournalError| ArchiveError::Manifest(format!("reading the journal: {e}"));
    let anchor = pgtrail_journal::read_anchor(dir).map_err(journal_error)?;
    let base = anchor.as_ref().map_or(1, |a| a.first_seq);
    let mut facts = JournalFacts { base, envelope: Vec::new(), hashes: HashMap::new(), anchor };
    let mut reader = JournalReader::open(dir, base).map_err(journal_error)?;
    while let Some(record) = reader.next_record().map_err(journal_error)? {
        let envelope = record.kind == RecordKind::Envelope;
        facts.envelope.push(envelope);
        if envelope && needed.contains(&record.seq) {
            facts.hashes.insert(record.seq, hex::encode(record.hash));
        }
    }
    Ok(facts)
}

async fn verify_instance(
    store: &dyn ObjectStore,
    instance: &str,
    keys: &VerifierSet,
    journal: Option<&FsPath>,
    named: &mut BTreeSet<String>,
) -> Result<Result<InstanceReport, String>, ArchiveError> {
    let entries = match crate::archiver::read_manifest(store, instance).await {
        Ok(entries) => entries,
        Err(ArchiveError::Manifest(problem)) => return Ok(Err(problem)),
        Err(other) => return Err(other),
    };
    if let Err(e) = manifest::check_chain(&entries) {
        return Ok(Err(format!("archive manifest: {e}")));
    }
    let mut report =
        InstanceReport { instance: instance.to_owned(), entries: entries.len() as u64, ..Default::default() };
    let mut expired = BTreeSet::new();
    let mut through = 0u64;
    // (from, through) of each run, and whether any of its files expired.
    let mut runs: BTreeMap<(u64, u64), bool> = BTreeMap::new();
    for entry in &entries {
        if let Err(e) = entry.verify_signature(keys) {
            return Ok(Err(format!("manifest entry {}: {e}", entry.seq)));
        }
        report.key_ids.insert(entry.key_id.clone());
        if entry.instance != instance || !crate::archiver::is_file_of(&entry.path, instance) {
            return Ok(Err(format!("manifest entry {} names a file of another instance", entry.seq)));
        }
        match entry.kind {
            EntryKind::Events => {
                if !runs.contains_key(&(entry.from_record_seq, entry.through_record_seq)) {
                    if entry.from_record_seq != through + 1 || entry.through_record_seq < entry.from_record_seq {
                        return Ok(Err(format!(
                            "manifest entry {} covers records {} to {} where record {} was next: records are missing or archived twice",
                            entry.seq,
                            entry.from_record_seq,
                            entry.through_record_seq,
                            through + 1
                        )));
                    }
                    through = entry.through_record_seq;
                    runs.insert((entry.from_record_seq, through), false);
                }
            }
            EntryKind::Retention => {
                for seq in &entry.expired {
                    let target = entries.get((*seq as usize).wrapping_sub(1));
                    if *seq >= entry.seq || target.is_none_or(|t| t.kind != EntryKind::Events) || !expired.insert(*seq)
                    {
                        return Ok(Err(format!("retention entry {} expires entry {seq}, which it cannot", entry.seq)));
                    }
                    let target = target.expect("checked");
                    runs.insert((target.from_record_seq, target.through_record_seq), true);
                }
            }
        }
    }
    report.through_record_seq = through;
    report.expired_files = expired.len() as u64;
    report.last_entry = entries.last().map(|e| (e.seq, e.hash.clone()));
    let facts = match journal {
        None => None,
        Some(dir) => {
            let needed = entries.iter().map(|e| e.through_record_seq).collect();
            Some(journal_facts(dir, &needed)?)
        }
    };
    let facts = facts.as_ref();

    let mut rows_seen: Vec<bool> = facts.map(|f| vec![false; f.envelope.len()]).unwrap_or_default();
    for entry in &entries {
        let path = Path::from(entry.path.as_str());
        let got = match store.get(&path).await {
            Ok(got) => Some(got.bytes().await.map_err(store_error)?),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(store_error(e)),
        };
        named.insert(entry.path.clone());
        let Some(bytes) = got else {
            if expired.contains(&entry.seq) {
                continue;
            }
            return Ok(Err(format!("{} (manifest entry {}) is missing", entry.path, entry.seq)));
        };
        if expired.contains(&entry.seq) {
            report.expired_present += 1;
            continue;
        }
        if hex::encode(Sha256::digest(&bytes)) != entry.sha256 {
            return Ok(Err(format!(
                "{} was modified: its SHA-256 is not the manifest's (entry {})",
                entry.path, entry.seq
            )));
        }
        if let Err(problem) = check_rows(&bytes, entry, instance, facts, &mut rows_seen) {
            return Ok(Err(format!("{} (manifest entry {}): {problem}", entry.path, entry.seq)));
        }
        report.files += 1;
        report.rows += entry.rows;
    }

    let Some(facts) = facts else { return Ok(Ok(report)) };
    let last = facts.base + facts.envelope.len() as u64 - 1;
    report.journal_checked = Some((facts.base, last));
    for entry in entries.iter().filter(|e| e.kind == EntryKind::Events) {
        let seq = entry.through_record_seq;
        if seq < facts.base {
            continue; // pruned: the anchor's pin stands for it
        }
        match facts.hashes.get(&seq) {
            Some(hash) if *hash == entry.through_record_hash => {}
            Some(_) => {
                return Ok(Err(format!(
                    "manifest entry {} says record {seq} has a chain hash the journal's record does not have",
                    entry.seq
                )));
            }
            None if seq > last => {
                return Ok(Err(format!(
                    "manifest entry {} covers record {seq}, past the journal's end ({last})",
                    entry.seq
                )));
            }
            None => {
                return Ok(Err(format!("manifest entry {} ends at record {seq}, which is not an envelope", entry.seq)));
            }
        }
    }
    for ((from, to), any_expired) in &runs {
        if *any_expired {
            continue;
        }
        for seq in (*from).max(facts.base)..=(*to).min(last) {
            let i = (seq - facts.base) as usize;
            if facts.envelope[i] && !rows_seen[i] {
                return Ok(Err(format!(
                    "record {seq} is in the range of records {from} to {to} but none of its events is in the archive"
                )));
            }
        }
    }
    if let Some(anchor) = &facts.anchor {
        if let Some(kept) = &anchor.kept_in {
            match entries.get((kept.manifest_seq as usize).wrapping_sub(1)) {
                Some(entry) if entry.hash == kept.manifest_hash => report.pinned_entry = Some(kept.manifest_seq),
                _ => {
                    return Ok(Err(format!(
                        "the journal's prune anchor pins manifest entry {} ({}), which the archive does not have: the manifest was cut short or rewritten",
                        kept.manifest_seq, kept.manifest_hash
                    )));
                }
            }
        }
        if through + 1 < anchor.first_seq {
            return Ok(Err(format!(
                "the journal was pruned before record {} but the archive ends at record {through}",
                anchor.first_seq
            )));
        }
    }
    Ok(Ok(report))
}

/// The rows of one file hold what its entry says.
fn check_rows(
    bytes: &Bytes,
    entry: &Entry,
    instance: &str,
    facts: Option<&JournalFacts>,
    rows_seen: &mut [bool],
) -> Result<(), String> {
    let unreadable = |e: parquet::errors::ParquetError| format!("not a readable Parquet file: {e}");
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).map_err(unreadable)?;
    let mask = ProjectionMask::leaves(builder.parquet_schema(), [0, 1, 2, 16]);
    let reader = builder.with_projection(mask).build().map_err(unreadable)?;
    let mut count = 0u64;
    let mut previous: Option<(u64, u32)> = None;
    for batch in reader {
        let batch = batch.map_err(|e| format!("not a readable Parquet file: {e}"))?;
        let column = |name: &str| batch.column_by_name(name).ok_or_else(|| format!("has no column {name}"));
        let instances = column("journal_instance")?.as_string_opt::<i32>().ok_or("journal_instance is not text")?;
        let seqs = column("record_seq")?.as_primitive_opt::<UInt64Type>().ok_or("record_seq is not a u64")?;
        let indexes = column("event_index")?.as_primitive_opt::<UInt32Type>().ok_or("event_index is not a u32")?;
        let times =
            column("log_time")?.as_primitive_opt::<TimestampMicrosecondType>().ok_or("log_time is not a time")?;
        for row in 0..batch.num_rows() {
            count += 1;
            if instances.is_null(row) || instances.value(row) != instance {
                return Err(format!("row {count} is not of instance {instance}"));
            }
            let date = chrono::DateTime::from_timestamp_micros(times.value(row))
                .map(|t| t.date_naive().format("%Y-%m-%d").to_string());
            if entry.kind == EntryKind::Events && date.as_deref() != Some(entry.date.as_str()) {
                return Err(format!("row {count} is not of {}", entry.date));
            }
            let (seq, index) = (seqs.value(row), indexes.value(row));
            match entry.kind {
                EntryKind::Retention if seq != 0 => return Err(format!("row {count} names a journal record")),
                EntryKind::Events if seq < entry.from_record_seq || seq > entry.through_record_seq => {
                    return Err(format!("row {count} is of record {seq}, outside the entry's records"));
                }
                _ => {}
            }
            if previous.is_some_and(|p| p >= (seq, index)) {
                return Err(format!("row {count} is out of order or repeated"));
            }
            previous = Some((seq, index));
            if let Some(facts) = facts.filter(|_| entry.kind == EntryKind::Events) {
                match facts.holds(seq) {
                    Some(true) => rows_seen[(seq - facts.base) as usize] = true,
                    Some(false) => return Err(format!("row {count} is of record {seq}, which is not an envelope")),
                    None if seq < facts.base => {}
                    None => return Err(format!("row {count} is of record {seq}, past the journal's end")),
                }
            }
        }
    }
    if count != entry.rows {
        return Err(format!("holds {count} rows where the manifest says {}", entry.rows));
    }
    Ok(())
}
