//! `pgtrail alerts run`: the long-running alerting consumer.
//!
//! It reads the journal as a reader of its own (never slowing capture), decrypts each
//! record, runs the rules, and writes every alert as one JSON line. Its cursor (the
//! sequence number of the last record it has handled) is saved after every record, by
//! writing a temporary file and renaming it over the old one.
//!
//! Restarts give no duplicate alerts: the engine's state depends only on the events and
//! the ticks of the wall clock, so on start the consumer replays the journal up to its saved
//! cursor without emitting (rebuilding windows, alarms and suppressions exactly), replays
//! the last tick that emitted (so resolves already sent stay sent), and emits from there
//! on. The cursor also remembers an open gap alert. Replay reads the journal from its start:
//! a snapshot of the engine's state would make restarts of a long journal cheaper.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use pgtrail_envelope::KeyRing;
use pgtrail_notify::{Notifier, NotifyConfig};
use pgtrail_rules::{Alarm, Alert, AlertStatus, Engine, RuleSet, Severity};
use tracing::{info, warn};

use crate::metrics::{EventCounts, Family};
use crate::tail::{EnvelopeReader, decode_inner};

/// Where `alerts run` reads and writes.
#[derive(Debug)]
pub struct AlertsRun {
    pub journal: PathBuf,
    pub rules: RuleSet,
    /// The cursor file.
    pub state: PathBuf,
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

/// Where the consumer stands, saved after every record and every emitted wall-clock alert.
///
/// The file is text: the sequence number of the last record handled on the first line
/// (all a cursor file of older versions holds), then optional lines `ticked <µs>` (the
/// wall-clock time of the last tick that emitted alerts) and `gap` (a gap alert is open).
/// The engine's state is rebuilt by replaying records up to `seq`; replaying the tick too
/// makes resolves that were already sent stay sent, and `gap` keeps an open gap from being
/// raised twice.
#[derive(Debug, Default, Clone, PartialEq)]
struct Cursor {
    seq: u64,
    ticked: Option<chrono::DateTime<chrono::Utc>>,
    in_gap: bool,
}

fn read_cursor(path: &Path) -> anyhow::Result<Cursor> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Cursor::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let bad = || format!("{} is not a pgtrail alerts cursor", path.display());
    let mut lines = text.lines();
    let seq = lines.next().unwrap_or_default().trim().parse().with_context(bad)?;
    let mut cursor = Cursor { seq, ..Cursor::default() };
    for line in lines {
        match line.split_once(' ') {
            Some(("ticked", micros)) => {
                let micros: i64 = micros.trim().parse().with_context(bad)?;
                cursor.ticked = chrono::DateTime::from_timestamp_micros(micros);
            }
            None if line.trim() == "gap" => cursor.in_gap = true,
            _ if line.trim().is_empty() => {}
            _ => anyhow::bail!("{}: unknown line {line:?}", bad()),
        }
    }
    Ok(cursor)
}

fn save_cursor(path: &Path, cursor: &Cursor) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    writeln!(file, "{}", cursor.seq)?;
    if let Some(ticked) = cursor.ticked {
        writeln!(file, "ticked {}", ticked.timestamp_micros())?;
    }
    if cursor.in_gap {
        writeln!(file, "gap")?;
    }
    file.sync_data()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Runs until `stop` says so; every alert goes to `out` as a JSON line.
pub fn run(config: AlertsRun, ring: KeyRing, out: &mut dyn Write, stop: &dyn Fn() -> bool) -> anyhow::Result<()> {
    let mut json_lines = |alerts: &[Alert]| -> anyhow::Result<()> {
        emit(out, alerts)?;
        out.flush()?;
        Ok(())
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

/// As [`run`], handing each batch of alerts to `on_alerts`.
pub fn run_with(
    config: AlertsRun,
    ring: KeyRing,
    on_alerts: &mut dyn FnMut(&[Alert]) -> anyhow::Result<()>,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    let saved = read_cursor(&config.state)?;
    let mut cursor = saved.clone();
    let status = Arc::clone(&config.status);
    let mut engine = Engine::new(config.rules);
    let mut reader = EnvelopeReader::open(&config.journal, ring)?;
    let mut last_seq = 0u64;
    let mut last_record = std::time::Instant::now();
    let mut replayed = saved.seq == 0;
    loop {
        while let Some(opened) = reader.next_envelope()? {
            last_record = std::time::Instant::now();
            let live = opened.seq > saved.seq;
            if live && cursor.in_gap {
                cursor.in_gap = false;
                let resolved = [gap_alert(AlertStatus::Resolved, "records arrive again".into())];
                status.alerted(&resolved);
                on_alerts(&resolved)?;
            }
            for event in decode_inner(&opened.inner).with_context(|| format!("record {}", opened.seq))? {
                status.saw(&event);
                let alerts = engine.process(&event);
                if live && !alerts.is_empty() {
                    status.alerted(&alerts);
                    on_alerts(&alerts)?;
                }
            }
            status.records.fetch_add(1, Ordering::Relaxed);
            last_seq = opened.seq;
            if live {
                cursor.seq = last_seq;
                save_cursor(&config.state, &cursor)?;
            }
        }
        status.publish_rules(&engine);
        if stop() {
            return Ok(());
        }
        if last_seq < saved.seq {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        if !replayed {
            // Up to the cursor: resolves the previous run already sent stay sent.
            replayed = true;
            if let Some(ticked) = saved.ticked {
                let _ = engine.tick(ticked);
            }
        }
        status.caught_up.store(true, Ordering::Relaxed);
        // Caught up: quiet groups resolve on the wall clock.
        let now = chrono::Utc::now();
        let alerts = engine.tick(now);
        if !alerts.is_empty() {
            status.alerted(&alerts);
            on_alerts(&alerts)?;
            cursor.ticked = Some(now);
            save_cursor(&config.state, &cursor)?;
        }
        // Heartbeats come every few seconds from a live capture: silence means the
        // capture (or its journal) has stopped, which is itself an alert (once).
        if !cursor.in_gap && last_record.elapsed() >= config.gap {
            let reason = format!("no record, not even a heartbeat, for {}s", config.gap.as_secs());
            let gap = [gap_alert(AlertStatus::Firing, reason)];
            status.alerted(&gap);
            on_alerts(&gap)?;
            cursor.in_gap = true;
            save_cursor(&config.state, &cursor)?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn emit(out: &mut dyn Write, alerts: &[Alert]) -> anyhow::Result<()> {
    for alert in alerts {
        serde_json::to_writer(&mut *out, alert)?;
        out.write_all(b"\n")?;
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
) -> anyhow::Result<()> {
    let notifier = notify.as_ref().map(Notifier::start).transpose()?.map(Arc::new);
    let sender = notifier.clone();
    let _metrics = match metrics {
        Some(addr) => {
            let (status, ready_status, notifier) =
                (Arc::clone(&config.status), Arc::clone(&config.status), notifier.clone());
            let registry = crate::metrics::registry(move || {
                let mut families = status.families();
                if let Some(notifier) = &notifier {
                    families.extend(notifier_families(notifier));
                }
                families
            });
            let ready: crate::metrics::ReadyFn = Arc::new(move || ready_status.caught_up.load(Ordering::Relaxed));
            Some(crate::metrics::serve(addr, registry, ready).await?.1)
        }
        None => None,
    };
    let consumer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut out: Box<dyn Write> = match &output {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let mut deliver = |alerts: &[Alert]| -> anyhow::Result<()> {
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
    let result = consumer.await.context("alerting consumer failed")?;
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

/// `pgtrail alerts test`: one test notification per destination, one line per result.
pub async fn test_destinations(config: &NotifyConfig) -> anyhow::Result<()> {
    if config.destinations.is_empty() {
        anyhow::bail!("the destinations file names no [[destination]]");
    }
    println!("Sending a test notification to {} destinations...", config.destinations.len());
    let results = pgtrail_notify::test_all(config).await?;
    let mut failed = 0;
    for result in &results {
        for (step, outcome) in &result.outcomes {
            let tries = if outcome.attempts == 1 { String::new() } else { format!(", {} attempts", outcome.attempts) };
            match &outcome.result {
                Ok(()) => println!(
                    "  ok      {} ({}) {step}: delivered in {} ms{tries}",
                    result.name,
                    result.kind,
                    outcome.elapsed.as_millis()
                ),
                Err(error) => println!("  FAILED  {} ({}) {step}: {error}{tries}", result.name, result.kind),
            }
        }
        if !result.ok() {
            failed += 1;
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} destinations failed", results.len());
    }
    println!("All {} destinations accepted the test notification.", results.len());
    Ok(())
}
