//! `[pgaudit]` in `pgtrail.toml`: ingest pgAudit's log records in the proxy process, into
//! the same journal, joined to the proxy's sessions.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::prefix::PrefixError;
use crate::{Format, IngestConfig, Prefix};

/// Which of PostgreSQL's log formats to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `*.log` files, read with their `log_line_prefix`.
    Stderr,
    /// `*.csv` files (the most session facts, with jsonlog).
    Csvlog,
    /// `*.json` files.
    Jsonlog,
}

impl LogFormat {
    /// The reader's format; stderr needs the log_line_prefix.
    pub fn format(self, log_line_prefix: &str) -> Result<Format, PrefixError> {
        Ok(match self {
            LogFormat::Stderr => Format::Stderr(Prefix::compile(log_line_prefix)?),
            LogFormat::Csvlog => Format::Csvlog,
            LogFormat::Jsonlog => Format::Jsonlog,
        })
    }
}

/// A `[pgaudit]` section that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PgauditConfigError {
    #[error("pgaudit.log_line_prefix is not a usable log_line_prefix")]
    Prefix(#[source] PrefixError),
}

/// `[pgaudit]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgauditSection {
    /// PostgreSQL's log directory.
    pub log_dir: PathBuf,
    /// "stderr", "csvlog" or "jsonlog".
    pub format: LogFormat,
    /// log_line_prefix, for the stderr format.
    #[serde(default = "default_log_line_prefix")]
    pub log_line_prefix: String,
    /// Position file (default: `<journal dir>.ingest-position`).
    pub state: Option<PathBuf>,
}

/// PostgreSQL's default-ish prefix with what the reader needs: time, pid, user, database.
pub fn default_log_line_prefix() -> String {
    "%m [%p] %q%u@%d ".into()
}

impl PgauditSection {
    pub fn validate(&self) -> Result<(), PgauditConfigError> {
        self.format.format(&self.log_line_prefix).map(drop).map_err(PgauditConfigError::Prefix)
    }

    /// What the ingest loop runs with, for the journal in `journal_dir`.
    pub fn ingest_config(&self, journal_dir: &Path) -> Result<IngestConfig, PgauditConfigError> {
        Ok(IngestConfig {
            log_dir: self.log_dir.clone(),
            format: self.format.format(&self.log_line_prefix).map_err(PgauditConfigError::Prefix)?,
            state: self.state.clone().unwrap_or_else(|| journal_dir.with_extension("ingest-position")),
        })
    }
}
