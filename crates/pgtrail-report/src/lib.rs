//! Owns: `pgtrail report`: the compliance reports computed from the archive (which rows
//! each kind selects, the summary and the chart), their HTML, CSV and JSON forms, the
//! integrity statement every report ends with (the journal positions it covers, the
//! checkpoints that sign them, the archive manifest, the result of verifying them), and
//! the report's detached signature.
//! Must not: write to the archive or the journal.

mod integrity;
mod kind;
mod render;
mod select;
mod signature;

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, Utc};

pub use integrity::{InstanceIntegrity, Integrity};
pub use kind::Kind;
pub use signature::{SIGNATURE_SUFFIX, Signature, sign_file, signature_path, verify_file};

/// The form of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One self-contained printable page: summary, chart, rows, integrity statement.
    Html,
    /// A header row, the rows, then the integrity statement as lines starting with `#`.
    Csv,
    /// One JSON document: the report's parameters, summary, chart series, rows and the
    /// integrity statement (structured, and in words).
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "html" => Ok(Format::Html),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            _ => Err(format!("unknown report format {s:?}: html, csv or json")),
        }
    }
}

/// What a report is asked for.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The archive: a directory or `s3://BUCKET/PREFIX`.
    pub archive: String,
    pub kind: Kind,
    /// Events logged at or after `from` and before `to`.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Only this database user.
    pub user: Option<String>,
    /// Only this person (identity name, email or subject from the identity provider).
    pub person: Option<String>,
    /// Only events on this object (a table, view, function... as the events name it).
    pub object: Option<String>,
    /// Journals to check the archive against and take the checkpoints from, any instance.
    pub journals: Vec<PathBuf>,
    /// At most this many rows in an HTML report (the summary counts them all).
    pub html_rows: usize,
    /// Coverage reports list stretches longer than this with no event at all.
    pub gap_secs: u64,
}

impl Spec {
    /// The default cap on the rows an HTML page lists.
    pub const HTML_ROWS: usize = 10_000;
    /// The default gap: twelve heartbeats (one every 5 s by default) missed.
    pub const GAP_SECS: u64 = 60;
}

/// A time given as RFC 3339 (`2026-12-01T09:00:00Z`) or a UTC date (`2026-12-01`): a date
/// is its first instant, or with `end_of_day` the first instant of the next day (so that
/// `--to 2026-12-01` takes in the whole of that day).
pub fn parse_time(s: &str, end_of_day: bool) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time (2026-12-01T09:00:00Z) nor a date (2026-12-01)"))?;
    let date = if end_of_day { date.succ_opt().ok_or("date out of range")? } else { date };
    Ok(date.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
}

/// What can go wrong while making or checking a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Query(#[from] pgtrail_query::QueryError),
    #[error("querying the archive: {0}")]
    DataFusion(#[from] pgtrail_query::datafusion::error::DataFusionError),
    #[error("reading query results: {0}")]
    Arrow(#[from] pgtrail_query::datafusion::arrow::error::ArrowError),
    #[error(transparent)]
    Archive(#[from] pgtrail_archive::ArchiveError),
    #[error(transparent)]
    Journal(#[from] pgtrail_journal::JournalError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("writing the report: {0}")]
    Write(#[from] std::io::Error),
}

/// What a written report says about itself.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Rows the report selects (all of them, even where an HTML page lists fewer).
    pub rows: u64,
    /// Rows written out.
    pub written: u64,
    pub integrity: Integrity,
}

/// A report written to a file and signed.
#[derive(Debug, Clone)]
pub struct Written {
    pub outcome: Outcome,
    /// The detached signature beside the report (`FILE.sig`).
    pub signature: PathBuf,
}

/// Writes the report to `output` and signs it with `signer`. The report is written
/// beside `output` and renamed into place, so a report file is always whole; the
/// signature follows it. A report that says NOT VERIFIED is written and signed too (the
/// caller decides what that means for its exit status).
pub async fn write_signed(
    spec: &Spec,
    format: Format,
    keys: &pgtrail_journal::VerifierSet,
    signer: &pgtrail_journal::CheckpointSigner,
    output: &std::path::Path,
) -> Result<Written, ReportError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    let outcome = {
        let mut out = std::io::BufWriter::new(file.as_file_mut());
        let outcome = generate(spec, format, keys, &mut out).await?;
        out.flush()?;
        outcome
    };
    file.persist(output).map_err(|e| io(output)(e.error))?;
    let signature = sign_file(output, signer)?;
    Ok(Written { outcome, signature })
}

/// Computes the report `spec` asks for and writes it to `out` in `format`; `keys` verify
/// the archive manifest and the journals' checkpoints.
pub async fn generate(
    spec: &Spec,
    format: Format,
    keys: &pgtrail_journal::VerifierSet,
    out: &mut dyn Write,
) -> Result<Outcome, ReportError> {
    if spec.to <= spec.from {
        return Err(ReportError::Invalid(format!(
            "--to ({}) must be after --from ({})",
            spec.to.to_rfc3339(),
            spec.from.to_rfc3339()
        )));
    }
    if spec.kind == Kind::Person && spec.person.is_none() {
        return Err(ReportError::Invalid("a person report needs --person (a name, email or subject)".into()));
    }
    let ctx = pgtrail_query::session(&spec.archive).await?;
    let selection = select::Selection::new(spec);
    // Verifying reads the whole archive (and the journals): it runs on a thread of its own
    // (outside the async runtime, as the archive's verifier has its own) while the
    // report's queries run.
    let verifying = {
        let (spec, keys) = (spec.clone(), keys.clone());
        std::thread::spawn(move || integrity::verify(&spec, &keys))
    };
    let summary = selection.summary(&ctx).await?;
    let covered = selection.covered(&ctx).await?;
    let verified = verifying.join().map_err(|_| ReportError::Invalid("the verification thread panicked".into()))??;
    let integrity = integrity::state(&covered, verified);
    let head = render::Head { spec, generated: Utc::now(), summary: &summary };
    let limit = (format == Format::Html).then_some(spec.html_rows);
    let mut sink = render::sink(format, out);
    sink.begin(&head)?;
    let written = selection.rows(&ctx, limit, &mut |cells| sink.row(cells)).await?;
    sink.end(&head, written, &integrity)?;
    Ok(Outcome { rows: summary.rows, written, integrity })
}
