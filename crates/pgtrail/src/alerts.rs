//! `pgtrail alerts run`: the long-running alerting consumer.
//!
//! It reads the journal as a reader of its own (never slowing capture), decrypts each
//! record, runs the rules, and writes every alert as one JSON line. Its cursor (the
//! sequence number of the last record it has handled) is saved after every record, by
//! writing a temporary file and renaming it over the old one.
//!
//! Restarts give no duplicate alerts: the engine's state depends only on the events, so
//! on start the consumer replays the journal up to its saved cursor without emitting
//! (rebuilding windows, alarms and suppressions exactly), then emits from there on.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use pgtrail_envelope::KeyRing;
use pgtrail_notify::{Notifier, NotifyConfig};
use pgtrail_rules::{Alert, AlertStatus, Engine, RuleSet, Severity};
use tracing::{info, warn};

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

fn read_cursor(path: &Path) -> anyhow::Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().with_context(|| format!("{} does not hold a sequence number", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn save_cursor(path: &Path, seq: u64) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    writeln!(file, "{seq}")?;
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
    let cursor = read_cursor(&config.state)?;
    let mut engine = Engine::new(config.rules);
    let mut reader = EnvelopeReader::open(&config.journal, ring)?;
    let mut last_seq = 0u64;
    let mut last_record = std::time::Instant::now();
    let mut in_gap = false;
    loop {
        while let Some(opened) = reader.next_envelope()? {
            last_record = std::time::Instant::now();
            if in_gap {
                in_gap = false;
                on_alerts(&[gap_alert(AlertStatus::Resolved, "records arrive again".into())])?;
            }
            let live = opened.seq > cursor;
            for event in decode_inner(&opened.inner).with_context(|| format!("record {}", opened.seq))? {
                let alerts = engine.process(&event);
                if live && !alerts.is_empty() {
                    on_alerts(&alerts)?;
                }
            }
            last_seq = opened.seq;
            if live {
                save_cursor(&config.state, last_seq)?;
            }
        }
        if stop() {
            return Ok(());
        }
        if last_seq >= cursor {
            // Caught up: quiet groups resolve on the wall clock.
            let alerts = engine.tick(chrono::Utc::now());
            if !alerts.is_empty() {
                on_alerts(&alerts)?;
            }
            // Heartbeats come every few seconds from a live capture: silence means the
            // capture (or its journal) has stopped, which is itself an alert.
            if !in_gap && last_record.elapsed() >= config.gap {
                in_gap = true;
                let reason = format!("no record, not even a heartbeat, for {}s", config.gap.as_secs());
                on_alerts(&[gap_alert(AlertStatus::Firing, reason)])?;
            }
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
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let notifier = notify.as_ref().map(Notifier::start).transpose()?.map(Arc::new);
    let sender = notifier.clone();
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
