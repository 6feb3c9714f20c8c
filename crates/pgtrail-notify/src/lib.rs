//! Notifiers: where alerts go.
//!
//! Owns: destinations, their queues, retries and delivery counts. Must not: decide when an
//! alert fires (pgtrail-rules does) or read the journal.
//!
//! Each configured destination gets its own queue and its own task, so a destination that
//! is slow or down delays only itself. [`Notifier::notify`] never blocks the caller: it
//! puts the alert on each matching destination's queue, and when a queue is full the alert
//! is dropped for that destination, counted and logged (never silently).
//!
//! A task sends its queue in order (a PagerDuty resolve never overtakes its trigger),
//! retrying retriable failures with exponential backoff and jitter (or the server's
//! `Retry-After`), and counts each outcome: sent, failed (given up), retried (attempts
//! after the first) and dropped (queue full).
//!
//! What is queued but unsent when the process stops is lost for that destination: the
//! alert itself stays in the alert log, and [`Notifier::close`] reports the count.

pub mod config;
pub mod format;
mod send;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pgtrail_rules::{Alert, AlertStatus};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use config::{Destination, Kind, NotifyConfig, RetryPolicy};
pub use send::{Failure, Notice, Outcome};

/// A destinations file or destination that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{file}: {message}")]
    Config { file: String, message: String },
    #[error("destination {destination:?}: {message}")]
    Setup { destination: String, message: String },
}

#[derive(Debug, Default)]
struct Counters {
    /// Taken onto the queue.
    accepted: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
}

/// One destination's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationStats {
    pub name: String,
    pub kind: &'static str,
    pub sent: u64,
    pub failed: u64,
    pub retried: u64,
    pub dropped: u64,
    /// Taken but not yet sent or given up on (waiting in the queue or being sent).
    pub queued: u64,
}

#[derive(Debug)]
struct Handle {
    destination: Destination,
    queue: mpsc::Sender<Notice>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

/// The running notifiers. Made inside a tokio runtime; [`Notifier::notify`] may be called
/// from any thread.
#[derive(Debug)]
pub struct Notifier {
    handles: Vec<Handle>,
}

impl Destination {
    /// Does this alert go here?
    pub fn wants(&self, alert: &Alert) -> bool {
        alert.severity >= self.min_severity
            && (self.rules.is_empty() || self.rules.contains(&alert.rule))
            && (self.send_resolved || alert.status == AlertStatus::Firing)
    }
}

impl Notifier {
    /// Starts one task per destination. Needs a tokio runtime.
    pub fn start(config: &NotifyConfig) -> Result<Notifier, NotifyError> {
        let mut handles = Vec::new();
        for destination in &config.destinations {
            let mut channel = send::Channel::open(destination, &config.retry)?;
            let (queue, mut rx) = mpsc::channel::<Notice>(config.retry.queue.max(1));
            let counters = Arc::new(Counters::default());
            let policy = config.retry.clone();
            let task_counters = Arc::clone(&counters);
            let task = tokio::spawn(async move {
                let counters = task_counters;
                while let Some(notice) = rx.recv().await {
                    let on_retry = || {
                        counters.retried.fetch_add(1, Ordering::Relaxed);
                    };
                    let outcome = send::deliver(&mut channel, &notice, &policy, &on_retry).await;
                    match outcome.result {
                        Ok(()) => counters.sent.fetch_add(1, Ordering::Relaxed),
                        Err(failure) => {
                            warn!(
                                destination = channel.name(),
                                rule = %notice.alert.rule,
                                attempts = outcome.attempts,
                                error = %failure,
                                "notification failed; giving up on it"
                            );
                            counters.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            });
            info!(destination = %destination.name, kind = destination.kind.as_str(), "notifier started");
            handles.push(Handle { destination: destination.clone(), queue, counters, task });
        }
        Ok(Notifier { handles })
    }

    /// Hands the alert to every destination that wants it. Never waits.
    pub fn notify(&self, alert: &Alert) {
        let alert = Arc::new(alert.clone());
        for handle in &self.handles {
            if !handle.destination.wants(&alert) {
                continue;
            }
            if handle.queue.try_send(Notice::new(Arc::clone(&alert))).is_ok() {
                handle.counters.accepted.fetch_add(1, Ordering::Relaxed);
            } else {
                handle.counters.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(
                    destination = %handle.destination.name,
                    rule = %alert.rule,
                    "notification queue full; alert not sent to this destination"
                );
            }
        }
    }

    /// Counters per destination, in configuration order.
    pub fn stats(&self) -> Vec<DestinationStats> {
        self.handles.iter().map(|h| h.counters.snapshot(&h.destination)).collect()
    }

    /// Stops taking alerts and gives queued ones up to `within` to go out. Returns the
    /// final counters; `queued` is what was left unsent.
    pub async fn close(self, within: Duration) -> Vec<DestinationStats> {
        let deadline = tokio::time::Instant::now() + within;
        let mut stats = Vec::new();
        for handle in self.handles {
            let Handle { destination, queue, counters, mut task } = handle;
            drop(queue);
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
            stats.push(counters.snapshot(&destination));
        }
        stats
    }
}

impl Counters {
    fn snapshot(&self, destination: &Destination) -> DestinationStats {
        let sent = self.sent.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        DestinationStats {
            name: destination.name.clone(),
            kind: destination.kind.as_str(),
            sent,
            failed,
            retried: self.retried.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queued: self.accepted.load(Ordering::Relaxed).saturating_sub(sent + failed),
        }
    }
}

/// The result of `pgtrail alerts test` for one destination.
#[derive(Debug)]
pub struct TestResult {
    pub name: String,
    pub kind: &'static str,
    /// One outcome per notification sent: the test alert, and its resolve where the
    /// destination keeps incidents (PagerDuty, Opsgenie) so that no test incident stays open.
    pub outcomes: Vec<(&'static str, Outcome)>,
}

impl TestResult {
    pub fn ok(&self) -> bool {
        self.outcomes.iter().all(|(_, o)| o.result.is_ok())
    }
}

/// Sends a test notification to every destination (all at once) and reports each result.
pub async fn test_all(config: &NotifyConfig) -> Result<Vec<TestResult>, NotifyError> {
    let mut channels = Vec::new();
    for destination in &config.destinations {
        channels.push((destination.clone(), send::Channel::open(destination, &config.retry)?));
    }
    let runs = channels.into_iter().map(|(destination, mut channel)| {
        let policy = config.retry.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let firing = send::deliver(
                &mut channel,
                &Notice::new(Arc::new(format::test_alert(AlertStatus::Firing))),
                &policy,
                &|| {},
            )
            .await;
            let fired = firing.result.is_ok();
            outcomes.push(("trigger", firing));
            if fired && matches!(destination.kind, Kind::PagerDuty(_) | Kind::Opsgenie(_)) {
                // Same dedup key as the trigger: the test incident closes again.
                let resolve = format::test_alert(AlertStatus::Resolved);
                let outcome = send::deliver(&mut channel, &Notice::new(Arc::new(resolve)), &policy, &|| {}).await;
                outcomes.push(("resolve", outcome));
            }
            TestResult { name: destination.name.clone(), kind: destination.kind.as_str(), outcomes }
        })
    });
    let mut results = Vec::new();
    for run in runs.collect::<Vec<_>>() {
        results.push(run.await.expect("test task does not panic"));
    }
    Ok(results)
}
