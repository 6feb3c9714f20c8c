//! The ingest loop (`pgtrail ingest`, and `[pgaudit]` in the proxy): pgAudit's records from
//! PostgreSQL's log files into the journal, through the same recorder, envelope and hash
//! chain as the proxy's events.
//!
//! Each poll's events are made durable (the recorder's fsync) before the follower's position
//! is saved, so a restart resumes after the last ingested entry. A line that cannot be read is
//! counted, logged once per kind (without its content: it may hold SQL), and recorded as a
//! `LOG PARSE ERROR` control event naming its file and line.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgtrail_event::{ActivityEvent, control_event};
use pgtrail_journal::{JournalError, Recorder};
use tracing::{info, warn};

use crate::correlate::Correlator;
use crate::{Follower, Format, to_event};

/// Errors of the ingest loop.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot follow the logs in {dir}")]
    Follow {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot save the ingest position in {path}")]
    SavePosition {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the journal did not make ingested events durable")]
    NotDurable(#[source] JournalError),
    #[error("the ingest task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// What to ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    pub log_dir: PathBuf,
    pub format: Format,
    /// Where the follower's position is saved.
    pub state: PathBuf,
}

/// What an ingest run did.
#[derive(Debug, Default, Clone)]
pub struct IngestStats {
    pub entries: u64,
    pub events: u64,
    pub parse_errors: u64,
    /// DIRECT CONNECTION events (with a correlator).
    pub bypasses: u64,
}

/// Follows the log directory until `stop`, handing events to `recorder`. With a
/// correlator (the ingester inside the proxy), events of proxied backends take their proxy
/// session, and logins no proxy session accounts for become DIRECT CONNECTION events.
pub async fn run(
    recorder: Recorder<ActivityEvent>,
    config: IngestConfig,
    stop: Arc<AtomicBool>,
    mut correlator: Option<Correlator>,
) -> Result<IngestStats, IngestError> {
    let follow_error = |source| IngestError::Follow { dir: config.log_dir.clone(), source };
    let follower = Follower::open(&config.log_dir, config.format.clone(), &config.state).map_err(follow_error)?;
    recorder.record(control_event(
        "INGEST STARTED",
        format!("pgaudit logs in {} ({})", config.log_dir.display(), crate::follow::extension(&config.format)),
    ));
    info!(log_dir = %config.log_dir.display(), "pgAudit ingest started");
    let mut stats = IngestStats::default();
    let mut kinds_logged: HashSet<&'static str> = HashSet::new();
    let mut follower = follower;
    loop {
        let polled;
        (follower, polled) = tokio::task::spawn_blocking(move || {
            let items = follower.poll();
            (follower, items)
        })
        .await?;
        let items = polled.map_err(follow_error)?;
        let idle = items.is_empty();
        let mut durable = Vec::new();
        for item in items {
            stats.entries += 1;
            let event = item.entry.and_then(|entry| to_event(&entry));
            match event {
                Ok(Some(event)) => {
                    stats.events += 1;
                    let ready = match correlator.as_mut() {
                        Some(correlator) => correlator.enrich(event, item.start),
                        None => Some(event),
                    };
                    if let Some(event) = ready {
                        durable.push(recorder.record_durable(event));
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    stats.parse_errors += 1;
                    if kinds_logged.insert(error.kind) {
                        warn!(file = %item.file, line = error.line, kind = error.kind, "log line not understood; recorded as LOG PARSE ERROR (further ones of this kind are counted, not logged)");
                    }
                    let detail = format!("{}:{}: {}", item.file, error.line, error.kind);
                    durable.push(recorder.record_durable(control_event("LOG PARSE ERROR", detail)));
                }
            }
        }
        let stopping = stop.load(Ordering::Relaxed);
        if let Some(correlator) = correlator.as_mut() {
            for ready in correlator.judge() {
                stats.bypasses += u64::from(ready.command == "DIRECT CONNECTION");
                durable.push(recorder.record_durable(ready));
            }
            if stopping {
                for ready in correlator.release_all() {
                    durable.push(recorder.record_durable(ready));
                }
            }
        }
        for done in durable {
            done.await.map_err(IngestError::NotDurable)?;
        }
        // Never past a record that waits for its proxy event: a restart reads it again.
        let saved = match correlator.as_ref().and_then(Correlator::held_from) {
            Some(from) => follower.commit_at(from),
            None => follower.commit(),
        };
        saved.map_err(|source| IngestError::SavePosition { path: config.state.clone(), source })?;
        if stopping {
            info!(
                entries = stats.entries,
                events = stats.events,
                parse_errors = stats.parse_errors,
                bypasses = stats.bypasses,
                "pgAudit ingest stopped"
            );
            return Ok(stats);
        }
        if idle {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
