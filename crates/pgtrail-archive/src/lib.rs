//! Owns: the archive consumer (journal events into Hive-partitioned Parquet files with a
//! hash-chained manifest), the archive's column schema, and the archive targets.
//! Must not: write to the journal, or know how events are captured.

mod archiver;
pub mod manifest;
mod schema;
mod store;
mod verify;

pub use archiver::{Archiver, Progress, Roll};
pub use schema::{Rows, schema};
pub use store::open as open_target;
pub use verify::{ArchiveFailure, ArchiveReport, InstanceReport, verify_archive};

/// What can go wrong while archiving.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    Target(String),
    #[error("archive store: {0}")]
    Store(String),
    #[error("archive manifest: {0}")]
    Manifest(String),
    #[error("archive manifest: {0}")]
    Chain(#[from] manifest::ChainError),
    #[error("writing Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Io(std::io::Error),
}

/// One `pgtrail archive` run.
#[derive(Debug, Clone)]
pub struct ArchiveRun {
    /// Where the events come from: a journal directory, or one instance of the audit stream.
    pub journal: pgtrail_reader::Origin,
    /// A directory (or `file://` URL), or `s3://BUCKET/PREFIX`.
    pub target: String,
    /// The cursor file; without one, the run reads the journal from its start and skips
    /// what the manifest says is archived.
    pub state: Option<std::sync::Arc<dyn pgtrail_reader::CursorStore>>,
    /// Keep following the journal until `stop`.
    pub follow: bool,
    pub roll: Roll,
    /// Show progress on standard error.
    pub progress: bool,
    /// Seals the manifest entries (the archive key).
    pub signer: pgtrail_journal::CheckpointSigner,
    /// Delete files of dates older than this many days.
    pub retention_days: Option<u32>,
}

/// Archives the journal as `run` says: what it holds (then returns), or with `follow`
/// everything until `stop` says so (pending rows are written before returning).
pub fn run(
    run: &ArchiveRun,
    ring: pgtrail_envelope::KeyRing,
    stop: &dyn Fn() -> bool,
) -> Result<Progress, pgtrail_reader::ConsumerError> {
    use pgtrail_reader::{ConsumerError, Cursor, Follow, Reader, Resume, consume};
    let store = open_target(&run.target).map_err(ConsumerError::consumer)?;
    let mut archiver =
        Archiver::open(store, run.signer.clone(), run.roll, run.follow).map_err(ConsumerError::consumer)?;
    archiver.set_retention_days(run.retention_days);
    // The instance's manifest is read now, so that retention runs with nothing new to archive.
    let instance = run
        .journal
        .instance()
        .map_err(|e| ConsumerError::consumer(ArchiveError::Manifest(format!("reading the journal: {e}"))))?;
    if let Some(instance) = instance {
        archiver.load(&instance).map_err(ConsumerError::consumer)?;
    }
    archiver.show_progress(run.progress);
    let file = run.state.as_deref();
    let cursor = match file {
        Some(file) => file.load()?,
        None => Cursor::default(),
    };
    let mut reader = Reader::resume_from(&run.journal, ring, &cursor, Resume::AfterCursor)?;
    let follow = if run.follow { Follow::every(std::time::Duration::from_millis(200)) } else { Follow::NO };
    let cursor = consume(&mut reader, cursor, file, &mut archiver, follow, stop)?;
    // Stopped while following: what is pending goes out before the process ends.
    if archiver.has_pending() {
        archiver.flush().map_err(ConsumerError::consumer)?;
        if let Some(file) = file {
            pgtrail_reader::save(&mut reader, file, &cursor)?;
        }
    }
    archiver.finish_progress();
    Ok(archiver.progress())
}

/// The `[archive]` table of a configuration file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSection {
    /// Delete files of dates older than this many days.
    pub retention_days: Option<u32>,
}

impl ArchiveSection {
    /// The `[archive]` table of the TOML file at `path` (other tables are for other commands).
    pub fn load(path: &std::path::Path) -> Result<ArchiveSection, ArchiveError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ArchiveError::Target(format!("cannot read {}: {e}", path.display())))?;
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| ArchiveError::Target(format!("{}: {e}", path.display())))?;
        match table.remove("archive") {
            None => Ok(ArchiveSection::default()),
            Some(section) => {
                section.try_into().map_err(|e| ArchiveError::Target(format!("{}: [archive]: {e}", path.display())))
            }
        }
    }
}

/// Prunes `journal` of what the archive at `target` holds: the archive and the journal are
/// verified first (with `keys`: the checkpoint and archive verification keys), then the
/// segments before `before` whose records the archive covers are deleted, and the anchor,
/// signed with `signer` (the checkpoint signing key), pins the archive's last entry.
pub fn prune_journal(
    journal: &std::path::Path,
    target: &str,
    before: pgtrail_journal::Before,
    signer: &pgtrail_journal::CheckpointSigner,
    keys: &pgtrail_journal::VerifierSet,
) -> Result<pgtrail_journal::PruneReport, ArchiveError> {
    let report = match verify_archive(target, keys, Some(journal))? {
        Ok(report) => report,
        Err(failure) => {
            return Err(ArchiveError::Manifest(format!("the archive does not verify, nothing pruned: {failure}")));
        }
    };
    let instance = report.instances.iter().find(|i| i.journal_checked.is_some());
    let Some(instance) = instance else {
        return Err(ArchiveError::Manifest(format!("{target} holds nothing of this journal: nothing pruned")));
    };
    let kept_in = instance.last_entry.as_ref().map(|(seq, hash)| pgtrail_journal::KeptIn {
        archive: target.to_owned(),
        manifest_seq: *seq,
        manifest_hash: hash.clone(),
        through_record_seq: instance.through_record_seq,
    });
    pgtrail_journal::prune(journal, before, instance.through_record_seq, kept_in, signer, keys)
        .map_err(|e| ArchiveError::Manifest(format!("pruning {}: {e}", journal.display())))
}
