//! Owns: the archive consumer (journal events into Hive-partitioned Parquet files with a
//! hash-chained manifest), the archive's column schema, and the archive targets.
//! Must not: write to the journal, or know how events are captured.

mod archiver;
pub mod manifest;
mod schema;
mod store;

pub use archiver::{Archiver, Progress, Roll};
pub use schema::{Rows, schema};
pub use store::open as open_target;

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
    pub journal: std::path::PathBuf,
    /// A directory (or `file://` URL), or `s3://BUCKET/PREFIX`.
    pub target: String,
    /// The cursor file; without one, the run reads the journal from its start and skips
    /// what the manifest says is archived.
    pub state: Option<std::path::PathBuf>,
    /// Keep following the journal until `stop`.
    pub follow: bool,
    pub roll: Roll,
    /// Show progress on standard error.
    pub progress: bool,
}

/// Archives the journal as `run` says: what it holds (then returns), or with `follow`
/// everything until `stop` says so (pending rows are written before returning).
pub fn run(
    run: &ArchiveRun,
    ring: pgtrail_envelope::KeyRing,
    stop: &dyn Fn() -> bool,
) -> Result<Progress, pgtrail_reader::ConsumerError> {
    use pgtrail_reader::{ConsumerError, Cursor, CursorFile, Follow, Reader, Resume, consume};
    let store = open_target(&run.target).map_err(ConsumerError::consumer)?;
    let mut archiver = Archiver::open(store, run.roll, run.follow).map_err(ConsumerError::consumer)?;
    archiver.show_progress(run.progress);
    let file = run.state.as_ref().map(CursorFile::new);
    let cursor = match &file {
        Some(file) => file.load()?,
        None => Cursor::default(),
    };
    let mut reader = Reader::resume_at(&run.journal, ring, &cursor, Resume::AfterCursor)?;
    let follow = if run.follow { Follow::every(std::time::Duration::from_millis(200)) } else { Follow::NO };
    let cursor = consume(&mut reader, cursor, file.as_ref(), &mut archiver, follow, stop)?;
    // Stopped while following: what is pending goes out before the process ends.
    if archiver.has_pending() {
        archiver.flush().map_err(ConsumerError::consumer)?;
        if let Some(file) = &file {
            file.save(&cursor)?;
        }
    }
    archiver.finish_progress();
    Ok(archiver.progress())
}
