//! The alerting consumer (`pgtrail alerts run`, and quickstart's alerts).
//!
//! Owns: running the rules over the journal as a consumer of pgtrail-reader (never slowing
//! capture), the gap alert (no record, not even a heartbeat, for too long), what the
//! consumer reports to `/metrics` and `/readyz`, and handing alerts to the notifiers.
//! Must not: decide what a rule means (pgtrail-rules does) or how a destination is sent
//! to (pgtrail-notify does).
//!
//! Restarts give no duplicate alerts: the engine's state depends only on the events and
//! the ticks of the wall clock, so on start the consumer replays the journal up to its saved
//! cursor without emitting (rebuilding windows, alarms and suppressions exactly), replays
//! the last tick that emitted (so resolves already sent stay sent), and emits from there
//! on. The cursor (saved after every record) also remembers that tick (`ticked`) and an
//! open gap alert (`gap`). Replay reads the journal from its start: a snapshot of the
//! engine's state would make restarts of a long journal cheaper.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgtrail_envelope::KeyRing;
use pgtrail_event::ActivityEvent;
use pgtrail_metrics::{EventCounts, Family, MetricsError};
use pgtrail_notify::{Notifier, NotifyConfig, NotifyError};
use pgtrail_reader::{Consumer, ConsumerError, Cursor, CursorStore, Follow, Opened, Reader, Resume, Step, consume};
use pgtrail_rules::{Alarm, Alert, AlertStatus, Engine, RuleSet, Severity};
use tracing::{info, warn};

/// Errors of the alerting consumer.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error(transparent)]
    Consume(#[from] ConsumerError),
    #[error("cannot open {path} for the alerts")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the notifiers")]
    Notify(#[from] NotifyError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("the alerting consumer's task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Where `alerts run` reads and writes.
#[derive(Debug)]
pub struct AlertsRun {
    /// Where the events come from: a journal directory, or one instance of the audit stream.
    pub journal: pgtrail_reader::Origin,
    pub rules: RuleSet,
    /// Where the cursor is kept (a file, or the audit stream's bucket).
    pub state: Arc<dyn CursorStore>,
    /// Alert when no record at all (not even a heartbeat) arrives for this long.
    pub gap: Duration,
    /// Live counters for the metrics endpoint.
    pub status: Arc<ConsumerStatus>,
}

/// What the consumer has done, for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct ConsumerStatus {
    pub events: EventCounts,
    pub records: AtomicU64,
    /// Newest event time seen, µs since the epoch.
    pub newest_event_micros: AtomicU64,
    /// How old the last event was when the rules saw it, in µs.
    pub processing_lag_micros: AtomicU64,
    /// Replayed up to the cursor and following the journal live.
    pub caught_up: AtomicBool,
    /// Per rule: matches and alarm state.
    pub rules: Mutex<Vec<(String, u64, Alarm)>>,
    /// Alerts emitted, by (rule, status).
    pub alerts: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl ConsumerStatus {
    fn saw(&self, event: &pgtrail_event::ActivityEvent) {
        self.events.count(event);
        let at = event.end_time.unwrap_or(event.log_time).timestamp_micros().max(0) as u64;
        self.newest_event_micros.fetch_max(at, Ordering::Relaxed);
        let now = chrono::Utc::now().timestamp_micros().max(0) as u64;
        self.processing_lag_micros.store(now.saturating_sub(at), Ordering::Relaxed);
    }

    fn alerted(&self, alerts: &[Alert]) {
        let mut counts = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
        for alert in alerts {
            let status = match alert.status {
                AlertStatus::Firing => "firing",
                AlertStatus::Resolved => "resolved",
            };
            *counts.entry((alert.rule.clone(), status)).or_default() += 1;
        }
    }

    fn publish_rules(&self, engine: &Engine) {
        let rules = engine.rule_status().into_iter().map(|(name, matches, alarm)| (name.to_string(), matches, alarm));
        *self.rules.lock().unwrap_or_else(|p| p.into_inner()) = rules.collect();
    }

    /// The consumer's metric families.
    pub fn families(&self) -> Vec<Family> {
        let secs = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64 / 1e6;
        let mut families = vec![
            self.events.family("pgtrail_alerts_events", "Events the alerting consumer has read, by class and source."),
            Family::counter("pgtrail_alerts_journal_records", "Journal records the alerting consumer has read.")
                .value(self.records.load(Ordering::Relaxed) as f64),
            Family::gauge("pgtrail_alerts_last_event_timestamp_seconds", "Time of the newest event read.")
                .value(secs(&self.newest_event_micros)),
            Family::gauge("pgtrail_alerts_lag_seconds", "How old the last event was when the rules saw it.")
                .value(secs(&self.processing_lag_micros)),
            Family::gauge(
                "pgtrail_alerts_caught_up",
                "1 once the consumer has replayed to its cursor and follows live.",
            )
            .value(f64::from(u8::from(self.caught_up.load(Ordering::Relaxed)))),
        ];
        let rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let mut matches = Family::counter("pgtrail_rule_matches", "Events that matched a rule's condition.");
        let mut state = Family::gauge("pgtrail_rule_alarm_state", "Each rule's alarm state: 1 for the current state.");
        for (name, count, alarm) in rules.iter() {
            matches = matches.with(vec![("rule", name.clone())], *count as f64);
            for candidate in [Alarm::Ok, Alarm::Alarm, Alarm::InsufficientData] {
                let value = f64::from(u8::from(candidate == *alarm));
                state = state.with(vec![("rule", name.clone()), ("state", candidate.as_str().to_string())], value);
            }
        }
        families.push(matches);
        families.push(state);
        let mut alerts = Family::counter("pgtrail_alerts", "Alerts emitted, by rule and status (firing, resolved).");
        for ((rule, status), count) in self.alerts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            alerts = alerts.with(vec![("rule", rule.clone()), ("status", status.to_string())], *count as f64);
        }
        families.push(alerts);
        families
    }
}

/// The notifiers' metric families.
pub fn notifier_families(notifier: &Notifier) -> Vec<Family> {
    let mut outcomes =
        Family::counter("pgtrail_notifications", "Notifications by destination and outcome (sent, failed, dropped).");
    let mut retries = Family::counter("pgtrail_notification_retries", "Send attempts after the first, by destination.");
    let mut queued =
        Family::gauge("pgtrail_notifications_queued", "Notifications waiting or being sent, by destination.");
    for stats in notifier.stats() {
        let labels = |extra: Option<&str>| {
            let mut labels = vec![("destination", stats.name.clone()), ("kind", stats.kind.to_string())];
            if let Some(outcome) = extra {
                labels.push(("outcome", outcome.to_string()));
            }
            labels
        };
        for (outcome, value) in [("sent", stats.sent), ("failed", stats.failed), ("dropped", stats.dropped)] {
            outcomes = outcomes.with(labels(Some(outcome)), value as f64);
        }
        retries = retries.with(labels(None), stats.retried as f64);
        queued = queued.with(labels(None), stats.queued as f64);
    }
    vec![outcomes, retries, queued]
}

const GAP_RULE: &str = "gap in the stream";

fn gap_alert(status: AlertStatus, reason: String) -> Alert {
    Alert {
        rule: GAP_RULE.into(),
        severity: Severity::High,
        status,
        dedup_key: GAP_RULE.into(),
        count: 0,
        at: chrono::Utc::now(),
        reason,
        event: None,
    }
}

/// Runs until `stop` says so; every alert goes to `out` as a JSON line.
pub fn run(config: AlertsRun, ring: KeyRing, out: &mut dyn Write, stop: &dyn Fn() -> bool) -> Result<(), AlertsError> {
    let mut json_lines = |alerts: &[Alert]| -> std::io::Result<()> {
        emit(out, alerts)?;
        out.flush()
    };
    run_with(config, ring, &mut json_lines, stop)
}

/// One line for a person reading a terminal.
pub fn alert_line(alert: &Alert) -> String {
    let status = match alert.status {
        AlertStatus::Firing => "ALERT",
        AlertStatus::Resolved => "RESOLVED",
    };
    let detail = alert
        .event
        .as_ref()
        .map(|e| {
            let who = e.db_user_name.as_deref().unwrap_or("-");
            let what = e.command_text.as_deref().unwrap_or(&e.command);
            format!(" ({who}: {})", what.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    format!("{status} [{}] {}: {}{detail}", alert.severity.as_str(), alert.rule, alert.reason)
}

/// The cursor state keys: the last tick that emitted (µs), and an open gap alert.
const TICKED: &str = "ticked";
const IN_GAP: &str = "gap";

/// As [`run`], handing each batch of alerts to `on_alerts`.
pub fn run_with(
    config: AlertsRun,
    ring: KeyRing,
    on_alerts: &mut dyn FnMut(&[Alert]) -> std::io::Result<()>,
    stop: &dyn Fn() -> bool,
) -> Result<(), AlertsError> {
    let file = Arc::clone(&config.state);
    let cursor = file.load().map_err(ConsumerError::from)?;
    let saved_tick = cursor
        .state
        .get(TICKED)
        .and_then(|micros| micros.parse().ok())
        .and_then(chrono::DateTime::from_timestamp_micros);
    let mut reader =
        Reader::resume_from(&config.journal, ring, &cursor, Resume::ReplayToCursor).map_err(ConsumerError::from)?;
    let mut alerting = Alerting {
        engine: Engine::new(config.rules),
        status: Arc::clone(&config.status),
        on_alerts,
        saved_tick,
        replayed: cursor.seq == 0,
        last_record: std::time::Instant::now(),
        gap: config.gap,
    };
    consume(&mut reader, cursor, Some(&*file), &mut alerting, Follow::every(Duration::from_millis(50)), stop)?;
    Ok(())
}

/// The rules engine as a consumer of the journal.
struct Alerting<'a> {
    engine: Engine,
    status: Arc<ConsumerStatus>,
    on_alerts: &'a mut dyn FnMut(&[Alert]) -> std::io::Result<()>,
    /// The last tick that emitted before the restart, replayed once caught up.
    saved_tick: Option<chrono::DateTime<chrono::Utc>>,
    replayed: bool,
    last_record: std::time::Instant,
    gap: Duration,
}

impl Alerting<'_> {
    fn deliver(&mut self, alerts: &[Alert]) -> Result<(), ConsumerError> {
        self.status.alerted(alerts);
        (self.on_alerts)(alerts).map_err(ConsumerError::consumer)
    }
}

impl Consumer for Alerting<'_> {
    fn resume(&self) -> Resume {
        Resume::ReplayToCursor
    }

    fn record(
        &mut self,
        _: &Opened,
        events: Vec<ActivityEvent>,
        replay: bool,
        cursor: &mut Cursor,
    ) -> Result<Step, ConsumerError> {
        self.last_record = std::time::Instant::now();
        if !replay && cursor.state.remove(IN_GAP).is_some() {
            self.deliver(&[gap_alert(AlertStatus::Resolved, "records arrive again".into())])?;
        }
        for event in &events {
            self.status.saw(event);
            let alerts = self.engine.process(event);
            if !replay && !alerts.is_empty() {
                self.deliver(&alerts)?;
            }
        }
        self.status.records.fetch_add(1, Ordering::Relaxed);
        Ok(if replay { Step::Continue } else { Step::Save })
    }

    fn caught_up(&mut self, cursor: &mut Cursor) -> Result<Step, ConsumerError> {
        self.status.publish_rules(&self.engine);
        if !self.replayed {
            // Up to the cursor: resolves the previous run already sent stay sent.
            self.replayed = true;
            if let Some(ticked) = self.saved_tick {
                let _ = self.engine.tick(ticked);
            }
        }
        self.status.caught_up.store(true, Ordering::Relaxed);
        let mut step = Step::Continue;
        // Caught up: quiet groups resolve on the wall clock.
        let now = chrono::Utc::now();
        let alerts = self.engine.tick(now);
        if !alerts.is_empty() {
            self.deliver(&alerts)?;
            cursor.state.insert(TICKED.into(), now.timestamp_micros().to_string());
            step = Step::Save;
        }
        // Heartbeats come every few seconds from a live capture: silence means the
        // capture (or its journal) has stopped, which is itself an alert (once).
        if !cursor.state.contains_key(IN_GAP) && self.last_record.elapsed() >= self.gap {
            let reason = format!("no record, not even a heartbeat, for {}s", self.gap.as_secs());
            self.deliver(&[gap_alert(AlertStatus::Firing, reason)])?;
            cursor.state.insert(IN_GAP.into(), String::new());
            step = Step::Save;
        }
        Ok(step)
    }
}

/// Each alert goes out as one whole line in one write: a reader tailing the file (a log
/// shipper, a test) never sees half a JSON object.
fn emit(out: &mut dyn Write, alerts: &[Alert]) -> std::io::Result<()> {
    let mut line = Vec::with_capacity(1024);
    for alert in alerts {
        line.clear();
        serde_json::to_writer(&mut line, alert)?;
        line.push(b'\n');
        out.write_all(&line)?;
    }
    Ok(())
}

/// `pgtrail alerts run`: the consumer on a blocking thread, alerts as JSON lines to `output`
/// (or stdout) and to the destinations, until `stop` is set.
pub async fn serve(
    config: AlertsRun,
    ring: KeyRing,
    output: Option<PathBuf>,
    notify: Option<NotifyConfig>,
    metrics: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
) -> Result<(), AlertsError> {
    let notifier = notify.as_ref().map(Notifier::start).transpose()?.map(Arc::new);
    let sender = notifier.clone();
    let _metrics = match metrics {
        Some(addr) => {
            let (status, ready_status, notifier) =
                (Arc::clone(&config.status), Arc::clone(&config.status), notifier.clone());
            let registry = pgtrail_metrics::registry(move || {
                let mut families = status.families();
                if let Some(notifier) = &notifier {
                    families.extend(notifier_families(notifier));
                }
                families
            });
            let ready: pgtrail_metrics::ReadyFn = Arc::new(move || ready_status.caught_up.load(Ordering::Relaxed));
            Some(pgtrail_metrics::serve(addr, registry, ready).await?.1)
        }
        None => None,
    };
    let consumer = tokio::task::spawn_blocking(move || -> Result<(), AlertsError> {
        let mut out: Box<dyn Write> = match &output {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AlertsError::Output { path: path.clone(), source })?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let mut deliver = |alerts: &[Alert]| -> std::io::Result<()> {
            emit(&mut out, alerts)?;
            out.flush()?;
            if let Some(notifier) = &sender {
                for alert in alerts {
                    notifier.notify(alert);
                }
            }
            Ok(())
        };
        run_with(config, ring, &mut deliver, &|| stop.load(Ordering::Relaxed))
    });
    let result = consumer.await?;
    if let Some(notifier) = notifier.and_then(Arc::into_inner) {
        for stats in notifier.close(Duration::from_secs(10)).await {
            if stats.queued > 0 {
                warn!(destination = %stats.name, unsent = stats.queued, "stopped with notifications unsent");
            }
            info!(
                destination = %stats.name,
                sent = stats.sent,
                failed = stats.failed,
                retried = stats.retried,
                dropped = stats.dropped,
                "notifier stopped"
            );
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every write call the way a reader of an unbuffered file sees them.
    struct Writes(Vec<Vec<u8>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// CI saw `alerts run --output` readers parse half a line: serde_json wrote each alert
    /// to the unbuffered file in many small writes.
    #[test]
    fn alert_lines_are_not_written_in_pieces() {
        let alerts = [
            gap_alert(AlertStatus::Firing, "silence".into()),
            gap_alert(AlertStatus::Resolved, "records arrive again".into()),
        ];
        let mut out = Writes(Vec::new());
        emit(&mut out, &alerts).unwrap();
        assert_eq!(out.0.len(), 2, "one write per alert");
        for write in &out.0 {
            assert_eq!(write.last(), Some(&b'\n'));
            let alert: serde_json::Value = serde_json::from_slice(write).unwrap();
            assert_eq!(alert["rule"], GAP_RULE);
        }
    }
}
