//! The archive consumer: gathers each record's events into rows per partition (the event's
//! UTC date and the journal instance), and rolls them into Parquet files every N events or
//! T seconds. A file is put whole (the local store writes a temporary file and renames it;
//! an S3 PUT is atomic), then its manifest entry, and only then is the cursor saved.
//!
//! Restarts neither repeat nor skip: the manifest says how far the archive reaches, so
//! records the cursor had not yet recorded as archived are skipped, and a file put without
//! its manifest entry (a crash between the two) is deleted before anything is written.

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

use crate::ArchiveError;
use crate::manifest::{self, Entry, MANIFEST_DIR};
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
#[derive(Debug)]
struct Part {
    rows: Rows,
    instance: String,
    first_record_seq: u64,
    last_record_seq: u64,
    last_record_hash: String,
}

/// The archive consumer.
#[derive(Debug)]
pub struct Archiver {
    runtime: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    roll: Roll,
    follow: bool,
    parts: BTreeMap<chrono::NaiveDate, Part>,
    pending: usize,
    pending_since: Option<Instant>,
    /// The manifest's last entry: its seq and hash.
    manifest_seq: u64,
    manifest_hash: String,
    /// The last journal record the archive holds events of.
    archived_through: u64,
    progress: Progress,
    show_progress: bool,
}

fn store_error(e: object_store::Error) -> ArchiveError {
    ArchiveError::Store(e.to_string())
}

impl Archiver {
    /// Opens the archive in `store`: reads and checks its manifest, and deletes files that
    /// no manifest entry names (left by a run that stopped between the two).
    pub fn open(store: Arc<dyn ObjectStore>, roll: Roll, follow: bool) -> Result<Self, ArchiveError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ArchiveError::Io)?;
        let entries = runtime.block_on(read_manifest(store.as_ref()))?;
        manifest::check_chain(&entries)?;
        let named: HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let files: Vec<Path> = runtime
            .block_on(store.list(None).try_collect::<Vec<_>>())
            .map_err(store_error)?
            .into_iter()
            .map(|meta| meta.location)
            .filter(|p| p.as_ref().ends_with(".parquet") && !p.as_ref().starts_with(MANIFEST_DIR))
            .collect();
        for orphan in files.iter().filter(|p| !named.contains(p.as_ref())) {
            warn!(file = %orphan, "deleting an archive file without a manifest entry (an earlier run stopped before recording it)");
            runtime.block_on(store.delete(orphan)).map_err(store_error)?;
        }
        let last = entries.last();
        Ok(Archiver {
            runtime,
            store,
            roll,
            follow,
            parts: BTreeMap::new(),
            pending: 0,
            pending_since: None,
            manifest_seq: last.map_or(0, |e| e.seq),
            manifest_hash: last.map_or_else(|| manifest::GENESIS.to_owned(), |e| e.hash.clone()),
            archived_through: entries.iter().map(|e| e.last_record_seq).max().unwrap_or(0),
            progress: Progress::default(),
            show_progress: false,
        })
    }

    /// The last journal record whose events the archive holds (0: none).
    pub fn archived_through(&self) -> u64 {
        self.archived_through
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
        let hash = hex::encode(opened.hash);
        for (index, event) in events.iter().enumerate() {
            // One journal is one instance: a run's partitions differ by date only.
            let part = self.parts.entry(event.log_time.date_naive()).or_insert_with(|| Part {
                rows: Rows::default(),
                instance: instance.to_owned(),
                first_record_seq: opened.seq,
                last_record_seq: opened.seq,
                last_record_hash: String::new(),
            });
            part.rows.push(instance, opened.seq, index as u32, event);
            part.last_record_seq = opened.seq;
            part.last_record_hash.clone_from(&hash);
        }
        self.pending += events.len();
        if !events.is_empty() && self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
    }

    /// Writes every pending partition as a file, each followed by its manifest entry.
    pub fn flush(&mut self) -> Result<(), ArchiveError> {
        let parts = std::mem::take(&mut self.parts);
        for (date, mut part) in parts {
            let date = date.format("%Y-%m-%d").to_string();
            let instance = std::mem::take(&mut part.instance);
            let rows = part.rows.len() as u64;
            let bytes = parquet_bytes(&mut part.rows)?;
            let seq = self.manifest_seq + 1;
            let path = Path::from_iter([
                format!("date={date}"),
                format!("instance={instance}"),
                format!("part-{seq:08}.parquet"),
            ]);
            let entry = Entry {
                seq,
                path: path.to_string(),
                instance,
                date,
                first_record_seq: part.first_record_seq,
                last_record_seq: part.last_record_seq,
                last_record_hash: part.last_record_hash,
                rows,
                sha256: hex::encode(Sha256::digest(&bytes)),
                prev: self.manifest_hash.clone(),
                hash: String::new(),
            }
            .sealed();
            let manifest = Path::from(Entry::object_name(seq));
            let json = serde_json::to_vec(&entry).expect("an entry serializes");
            self.runtime
                .block_on(async {
                    self.store.put(&path, Bytes::from(bytes).into()).await?;
                    self.store.put(&manifest, Bytes::from(json).into()).await
                })
                .map_err(store_error)?;
            info!(file = %path, rows = entry.rows, "archived");
            self.manifest_seq = seq;
            self.manifest_hash = entry.hash;
            self.archived_through = self.archived_through.max(entry.last_record_seq);
            self.progress.files += 1;
        }
        self.pending = 0;
        self.pending_since = None;
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

/// The manifest's entries, in order.
pub(crate) async fn read_manifest(store: &dyn ObjectStore) -> Result<Vec<Entry>, ArchiveError> {
    let mut names: Vec<Path> = store
        .list(Some(&Path::from(MANIFEST_DIR)))
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
        if opened.seq <= self.archived_through {
            // Archived by a run that stopped before it saved its cursor.
            self.progress.skipped += 1;
            return Ok(Step::Continue);
        }
        let instance = cursor.instance.clone().unwrap_or_else(|| "unknown".into());
        self.progress.events += events.len() as u64;
        self.add(&instance, opened, &events);
        if self.pending >= self.roll.events {
            self.flush().map_err(ConsumerError::consumer)?;
            return Ok(Step::Save);
        }
        Ok(if self.pending == 0 { Step::Save } else { Step::Continue })
    }

    fn caught_up(&mut self, _cursor: &mut Cursor) -> Result<Step, ConsumerError> {
        let due = !self.follow || self.pending_since.is_some_and(|since| since.elapsed() >= self.roll.age);
        if self.pending > 0 && due {
            self.flush().map_err(ConsumerError::consumer)?;
            return Ok(Step::Save);
        }
        Ok(if self.pending == 0 { Step::Save } else { Step::Continue })
    }
}
