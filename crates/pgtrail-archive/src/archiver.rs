//! The archive consumer: gathers each record's events into rows per partition (the event's
//! UTC date and the journal instance), and rolls them into Parquet files every N events or
//! T seconds. A file is put whole (the local store writes a temporary file and renames it;
//! an S3 PUT is atomic), then its manifest entry, and only then is the cursor saved.
//!
//! Restarts neither repeat nor skip: the manifest says how far the archive reaches, so
//! records the cursor had not yet recorded as archived are skipped, and a file put without
//! its manifest entry (a crash between the two) is deleted before anything is written.
//!
//! Each journal instance has its own manifest chain and its own files, so the archivers of
//! several instances can share one archive. An archiver learns its instance from the first
//! record it reads, and only then reads that instance's manifest.
//!
//! Retention: with `retention_days`, the files of dates older than that are deleted once
//! a day (at start and after each roll): first a file with a control event `ARCHIVE
//! RETENTION` is put, then a signed `retention` manifest entry naming the expired entries,
//! then the files go. A crash before the deletions is finished by the next run.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use pgtrail_event::ActivityEvent;
use pgtrail_reader::{Consumer, ConsumerError, Cursor, Opened, Step};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use pgtrail_journal::CheckpointSigner;

use crate::ArchiveError;
use crate::manifest::{self, Entry, EntryKind, MANIFEST_DIR};
use crate::schema::{Rows, schema};

/// When a file is rolled.
#[derive(Debug, Clone, Copy)]
pub struct Roll {
    /// After this many events (over all partitions).
    pub events: usize,
    /// When the oldest pending event has waited this long (with `--follow`).
    pub age: Duration,
}

impl Roll {
    /// The default `events`.
    pub const EVENTS: usize = 1_000_000;
    /// The default `age`, in seconds.
    pub const AGE_SECS: u64 = 60;
}

impl Default for Roll {
    fn default() -> Self {
        Roll { events: Self::EVENTS, age: Duration::from_secs(Self::AGE_SECS) }
    }
}

/// Counts for progress and the summary line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    pub records: u64,
    pub events: u64,
    pub files: u64,
    /// Records skipped because an earlier run had archived them already.
    pub skipped: u64,
}

/// Rows of one partition waiting for the next roll.
#[derive(Debug, Default)]
struct Part {
    rows: Rows,
}

/// What the archive holds of the instance being archived.
#[derive(Debug)]
struct Instance {
    name: String,
    /// The manifest's last entry: its seq and hash.
    manifest_seq: u64,
    manifest_hash: String,
    /// The last journal record an entry covers.
    archived_through: u64,
    /// Events entries not expired yet: (date, entry seq, file).
    live: Vec<(String, u64, String)>,
    /// The UTC day retention last ran.
    retention_checked: Option<chrono::NaiveDate>,
}

/// The archive consumer.
#[derive(Debug)]
pub struct Archiver {
    runtime: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    signer: CheckpointSigner,
    roll: Roll,
    follow: bool,
    retention_days: Option<u32>,
    instance: Option<Instance>,
    parts: BTreeMap<chrono::NaiveDate, Part>,
    pending: usize,
    pending_since: Option<Instant>,
    /// The last record read (seq and chain hash): where the next roll's range ends.
    last_read: Option<(u64, String)>,
    progress: Progress,
    show_progress: bool,
}

fn store_error(e: object_store::Error) -> ArchiveError {
    ArchiveError::Store(e.to_string())
}

/// Whether `path` (relative to the archive's root) is a data file of `instance`.
pub(crate) fn is_file_of(path: &str, instance: &str) -> bool {
    path.ends_with(".parquet") && !path.starts_with(MANIFEST_DIR) && path.contains(&format!("/instance={instance}/"))
}

impl Archiver {
    /// An archiver writing into `store`, sealing manifest entries with `signer` (the
    /// archive key). Nothing is read until the first record says which instance it is.
    pub fn open(
        store: Arc<dyn ObjectStore>,
        signer: CheckpointSigner,
        roll: Roll,
        follow: bool,
    ) -> Result<Self, ArchiveError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ArchiveError::Io)?;
        Ok(Archiver {
            runtime,
            store,
            signer,
            roll,
            follow,
            retention_days: None,
            instance: None,
            parts: BTreeMap::new(),
            pending: 0,
            pending_since: None,
            last_read: None,
            progress: Progress::default(),
            show_progress: false,
        })
    }

    /// Delete the files of dates more than `days` days before today (UTC).
    pub fn set_retention_days(&mut self, days: Option<u32>) {
        self.retention_days = days;
    }

    /// Reads and checks `name`'s manifest, finishes what a crashed run left (files without
    /// an entry are deleted, expired files still there are deleted), and applies retention.
    /// Done on the first record if not before.
    pub fn load(&mut self, name: &str) -> Result<(), ArchiveError> {
        let entries = self.runtime.block_on(read_manifest(self.store.as_ref(), name))?;
        manifest::check_chain(&entries)?;
        let expired: HashSet<u64> = entries.iter().flat_map(|e| e.expired.iter().copied()).collect();
        let named: HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let files: Vec<Path> = self
            .runtime
            .block_on(self.store.list(None).try_collect::<Vec<_>>())
            .map_err(store_error)?
            .into_iter()
            .map(|meta| meta.location)
            .filter(|p| is_file_of(p.as_ref(), name))
            .collect();
        let earlier_format = self
            .runtime
            .block_on(self.store.list(Some(&Path::from(MANIFEST_DIR))).try_collect::<Vec<_>>())
            .map_err(store_error)?
            .into_iter()
            .find(|meta| !meta.location.as_ref().starts_with(&format!("{MANIFEST_DIR}/instance=")));
        if let Some(meta) = earlier_format {
            return Err(ArchiveError::Manifest(format!(
                "{} is a manifest entry of an earlier pgtrail (one unsigned chain for the whole archive): \
                 nothing was changed; archive into a new target",
                meta.location
            )));
        }
        for orphan in files.iter().filter(|p| !named.contains(p.as_ref())) {
            warn!(file = %orphan, "deleting an archive file without a manifest entry (an earlier run stopped before recording it)");
            self.runtime.block_on(self.store.delete(orphan)).map_err(store_error)?;
        }
        for entry in entries.iter().filter(|e| expired.contains(&e.seq)) {
            if files.iter().any(|p| p.as_ref() == entry.path) {
                info!(file = %entry.path, "deleting an expired file an earlier run had not deleted yet");
                self.runtime.block_on(self.store.delete(&Path::from(entry.path.as_str()))).map_err(store_error)?;
            }
        }
        let last = entries.last();
        self.instance = Some(Instance {
            name: name.to_owned(),
            manifest_seq: last.map_or(0, |e| e.seq),
            manifest_hash: last.map_or_else(|| manifest::GENESIS.to_owned(), |e| e.hash.clone()),
            archived_through: entries.iter().map(|e| e.through_record_seq).max().unwrap_or(0),
            live: entries
                .iter()
                .filter(|e| e.kind == EntryKind::Events && !expired.contains(&e.seq))
                .map(|e| (e.date.clone(), e.seq, e.path.clone()))
                .collect(),
            retention_checked: None,
        });
        self.apply_retention()
    }

    /// The last journal record an entry covers (0: none, or the instance is not known yet).
    pub fn archived_through(&self) -> u64 {
        self.instance.as_ref().map_or(0, |i| i.archived_through)
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Whether to show a progress line on standard error (for a terminal).
    pub fn show_progress(&mut self, show: bool) {
        self.show_progress = show;
    }

    /// Ends the progress line.
    pub fn finish_progress(&self) {
        if self.show_progress {
            eprintln!();
        }
    }

    /// Rows wait for the next roll.
    pub fn has_pending(&self) -> bool {
        self.pending > 0
    }

    fn report(&self) {
        if self.show_progress && self.progress.records.is_multiple_of(10_000) {
            let p = self.progress;
            eprint!("\r{} records, {} events, {} files...", p.records, p.events, p.files);
        }
    }

    fn add(&mut self, instance: &str, opened: &Opened, events: &[ActivityEvent]) {
        for (index, event) in events.iter().enumerate() {
            let part = self.parts.entry(event.log_time.date_naive()).or_default();
            part.rows.push(instance, opened.seq, index as u32, event);
        }
        self.pending += events.len();
        if !events.is_empty() && self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
    }

    /// The number the instance's next manifest entry takes.
    fn next_entry_seq(&self) -> u64 {
        self.instance.as_ref().expect("entries are written after load").manifest_seq + 1
    }

    /// Puts `bytes` as the entry's file, then the entry (sealed here: chained and signed).
    fn put(&mut self, bytes: Vec<u8>, mut entry: Entry) -> Result<Entry, ArchiveError> {
        let instance = self.instance.as_mut().expect("put after load");
        entry.prev = instance.manifest_hash.clone();
        entry.sha256 = hex::encode(Sha256::digest(&bytes));
        let entry = entry.sealed(&self.signer);
        let manifest = Path::from(Entry::object_name(&instance.name, entry.seq));
        let json = serde_json::to_vec(&entry).expect("an entry serializes");
        let file = Path::parse(&entry.path).expect("Entry::new encodes the path");
        self.runtime
            .block_on(async {
                self.store.put(&file, Bytes::from(bytes).into()).await?;
                self.store.put(&manifest, Bytes::from(json).into()).await
            })
            .map_err(store_error)?;
        instance.manifest_seq = entry.seq;
        instance.manifest_hash.clone_from(&entry.hash);
        instance.archived_through = instance.archived_through.max(entry.through_record_seq);
        Ok(entry)
    }

    /// Writes every pending partition as a file, each followed by its manifest entry.
    pub fn flush(&mut self) -> Result<(), ArchiveError> {
        let parts = std::mem::take(&mut self.parts);
        let (through, through_hash) = self.last_read.clone().unwrap_or_default();
        let from = self.archived_through() + 1;
        for (date, mut part) in parts {
            let date = date.format("%Y-%m-%d").to_string();
            let name = self.instance.as_ref().expect("rows come after load").name.clone();
            let mut entry = Entry::new(self.next_entry_seq(), EntryKind::Events, &name, &date, "part");
            entry.from_record_seq = from;
            entry.through_record_seq = through;
            entry.through_record_hash.clone_from(&through_hash);
            entry.rows = part.rows.len() as u64;
            let entry = self.put(parquet_bytes(&mut part.rows)?, entry)?;
            info!(file = %entry.path, rows = entry.rows, "archived");
            self.instance.as_mut().expect("loaded").live.push((date, entry.seq, entry.path));
            self.progress.files += 1;
        }
        self.pending = 0;
        self.pending_since = None;
        self.apply_retention()
    }

    /// Deletes the files of expired dates, once per UTC day, saying so in a control event
    /// (a file of its own) and a manifest entry.
    fn apply_retention(&mut self) -> Result<(), ArchiveError> {
        let (Some(days), Some(instance)) = (self.retention_days, self.instance.as_mut()) else {
            return Ok(());
        };
        let now = chrono::Utc::now();
        let today = now.date_naive();
        if instance.retention_checked == Some(today) {
            return Ok(());
        }
        instance.retention_checked = Some(today);
        let oldest_kept = (today - chrono::Duration::days(i64::from(days))).format("%Y-%m-%d").to_string();
        let (expired, live): (Vec<_>, Vec<_>) =
            std::mem::take(&mut instance.live).into_iter().partition(|(date, _, _)| *date < oldest_kept);
        instance.live = live;
        if expired.is_empty() {
            return Ok(());
        }
        let name = instance.name.clone();
        let (first, last) = (expired.iter().map(|e| &e.0).min().cloned(), expired.iter().map(|e| &e.0).max().cloned());
        let detail = format!(
            "archive retention ({days} days): deleted {} files of instance {name}, dates {} to {}, older than {oldest_kept}",
            expired.len(),
            first.unwrap_or_default(),
            last.unwrap_or_default()
        );
        let mut event = pgtrail_event::control_event("ARCHIVE RETENTION", detail);
        event.log_time = now;
        let mut rows = Rows::default();
        rows.push(&name, 0, 0, &event);
        let date = today.format("%Y-%m-%d").to_string();
        let mut entry = Entry::new(self.next_entry_seq(), EntryKind::Retention, &name, &date, "retention");
        entry.rows = 1;
        entry.expired = expired.iter().map(|e| e.1).collect();
        self.put(parquet_bytes(&mut rows)?, entry)?;
        for (_, _, file) in &expired {
            self.runtime.block_on(self.store.delete(&Path::from(file.as_str()))).map_err(store_error)?;
        }
        info!(files = expired.len(), oldest_kept = %oldest_kept, "archive retention deleted expired files");
        Ok(())
    }
}

/// The rows as one Parquet file (zstd).
fn parquet_bytes(rows: &mut Rows) -> Result<Vec<u8>, ArchiveError> {
    let batch = rows.finish();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("3 is a zstd level")))
        .set_max_row_group_row_count(Some(256 * 1024))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema(), Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(out)
}

/// The manifest entries of `instance`, in order.
pub(crate) async fn read_manifest(store: &dyn ObjectStore, instance: &str) -> Result<Vec<Entry>, ArchiveError> {
    let mut names: Vec<Path> = store
        .list(Some(&Path::from(Entry::dir(instance))))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(store_error)?;
    names.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        let bytes = store.get(&name).await.map_err(store_error)?.bytes().await.map_err(store_error)?;
        let entry: Entry = serde_json::from_slice(&bytes)
            .map_err(|e| ArchiveError::Manifest(format!("{name} is not a manifest entry: {e}")))?;
        if name.as_ref() != Entry::object_name(instance, entry.seq) {
            return Err(ArchiveError::Manifest(format!(
                "{name} holds entry {} of instance {:?}",
                entry.seq, entry.instance
            )));
        }
        entries.push(entry);
    }
    Ok(entries)
}

impl Consumer for Archiver {
    fn record(
        &mut self,
        opened: &Opened,
        events: Vec<ActivityEvent>,
        _replay: bool,
        cursor: &mut Cursor,
    ) -> Result<Step, ConsumerError> {
        self.progress.records += 1;
        self.report();
        let instance = cursor.instance.clone().unwrap_or_else(|| "unknown".into());
        match &self.instance {
            None => self.load(&instance).map_err(ConsumerError::consumer)?,
            Some(known) if known.name != instance => {
                return Err(ConsumerError::consumer(ArchiveError::Manifest(format!(
                    "one archiver reads one journal: record {} is of instance {instance:?}, not {:?}",
                    opened.seq, known.name
                ))));
            }
            Some(_) => {}
        }
        if opened.seq <= self.archived_through() {
            // Archived by a run that stopped before it saved its cursor.
            self.progress.skipped += 1;
            return Ok(Step::Continue);
        }
        self.progress.events += events.len() as u64;
        self.last_read = Some((opened.seq, hex::encode(opened.hash)));
        self.add(&instance, opened, &events);
        if self.pending >= self.roll.events {
            self.flush().map_err(ConsumerError::consumer)?;
            return Ok(Step::Save);
        }
        Ok(if self.pending == 0 { Step::Save } else { Step::Continue })
    }

    fn caught_up(&mut self, _cursor: &mut Cursor) -> Result<Step, ConsumerError> {
        self.apply_retention().map_err(ConsumerError::consumer)?;
        let due = !self.follow || self.pending_since.is_some_and(|since| since.elapsed() >= self.roll.age);
        if self.pending > 0 && due {
            self.flush().map_err(ConsumerError::consumer)?;
            return Ok(Step::Save);
        }
        Ok(if self.pending == 0 { Step::Save } else { Step::Continue })
    }
}
