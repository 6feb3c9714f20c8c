//! Composes the capture side: the proxy emits events into the recorder, which batches them
//! into DAS inner records, seals each into a DAS record (gzip, ESDK encryption, wrapped
//! data key) and appends it to the hash-chained journal with signed checkpoints; with
//! `[pgaudit]`, the ingester writes pgAudit's records into the same journal, joined to the
//! proxy's sessions.
//!
//! Owns: `pgtrail.toml` for the proxy ([`config`]: the sections of each crate, resolved
//! once), starting and stopping the pieces in order, configuration reloads, and the
//! capture's metric families. Must not: look inside the protocol, the envelope or the
//! journal format; each crate it composes owns those.

pub mod config;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use pgtrail_envelope::Sealer;
use pgtrail_event::{ActivityEvent, control_event, heartbeat_event, loss_event};
use pgtrail_journal::ship::{LagAlarm, ShipStats, Shipping};
use pgtrail_journal::{Journal, JournalError, JournalOptions, Recorder, RecorderStats, WriterParts};
use pgtrail_proxy::{Durable, EventSink, Proxy, ProxyStats};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{CaptureConfig, WriterConfig};

/// Why the capture could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Keys(#[from] pgtrail_keys::KeyError),
    #[error("cannot open the journal in {dir}")]
    OpenJournal {
        dir: std::path::PathBuf,
        #[source]
        source: JournalError,
    },
    #[error("the journal recovery could not be recorded in the journal")]
    RecordRecovery(#[source] JournalError),
    #[error(transparent)]
    Proxy(#[from] pgtrail_proxy::ProxyError),
    #[error("journal write failed")]
    JournalWrite(#[source] JournalError),
    #[error("pgAudit ingest failed")]
    Ingest(#[from] pgtrail_pgaudit::IngestError),
    #[error("a capture task failed")]
    Task(#[from] tokio::task::JoinError),
}
use pgtrail_metrics::{EventCounts, Family};
use pgtrail_pgaudit::correlate::{Correlator, ProxySessions};

/// Hands proxy events to the recorder without ever waiting, counting them by class and,
/// when pgAudit is ingested, noting which backend serves which session (for correlation);
/// with `sync_waits_for_stream`, a durable event also waits for the audit stream.
#[derive(Debug)]
pub struct RecorderSink {
    pub recorder: Recorder<ActivityEvent>,
    pub counts: Arc<EventCounts>,
    pub sessions: Option<Arc<ProxySessions>>,
    /// The publisher whose acknowledgement sync delivery waits for, too.
    pub stream: Option<Arc<ShipStats>>,
}

impl EventSink for RecorderSink {
    fn emit(&self, event: ActivityEvent) {
        self.counts.count(&event);
        if let Some(sessions) = &self.sessions {
            sessions.observe(&event);
        }
        // A full queue is counted by the recorder and reported as a loss record.
        self.recorder.record(event);
    }

    fn emit_durable(&self, event: ActivityEvent) -> Durable {
        self.counts.count(&event);
        if let Some(sessions) = &self.sessions {
            sessions.observe(&event);
        }
        let durable = self.recorder.record_durable(event);
        let stream = self.stream.clone();
        Box::pin(async move {
            let Ok(seq) = durable.await else { return false };
            if let Some(stream) = stream {
                stream.wait_published(seq).await;
            }
            true
        })
    }

    fn healthy(&self) -> bool {
        self.recorder.healthy()
            && self.stream.as_ref().is_none_or(|stream| stream.connected.load(std::sync::atomic::Ordering::Relaxed))
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() { "none".into() } else { items.join(", ") }
}

/// The pgAudit ingester's task.
type IngestTask = JoinHandle<Result<pgtrail_pgaudit::IngestStats, pgtrail_pgaudit::IngestError>>;

/// A running proxy with its recorder.
#[derive(Debug)]
pub struct Capture {
    pub addr: SocketAddr,
    pub stats: Arc<ProxyStats>,
    pub recorder_stats: Arc<RecorderStats>,
    /// Events handed to the recorder, by class and source.
    pub events: Arc<EventCounts>,
    /// False while the journal cannot make records durable.
    pub journal_healthy: Arc<std::sync::atomic::AtomicBool>,
    shutdown: Option<oneshot::Sender<()>>,
    proxy: JoinHandle<()>,
    recorder: JoinHandle<Result<(), JournalError>>,
    /// The capture's own handle, for its control events; dropped last so the recorder
    /// finishes after the proxy's events and the stop event are in.
    control: Option<Recorder<ActivityEvent>>,
    /// A new sealer for the writer to pick up with its next record (configuration reload).
    next_sealer: Arc<Mutex<Option<Sealer>>>,
    /// The pgAudit ingester ([pgaudit]): its stop flag and task.
    ingest: Option<(Arc<std::sync::atomic::AtomicBool>, IngestTask)>,
    /// The publisher to the audit stream ([transport.<kind>]).
    publisher: Option<Box<dyn Shipping>>,
    /// The configuration running now.
    config: CaptureConfig,
    wrapping_id: String,
}

/// What a configuration reload did.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Settings now in effect (from the next record on).
    pub applied: Vec<&'static str>,
    /// Settings that changed but take effect only after a restart.
    pub need_restart: Vec<&'static str>,
}

/// The journal's writing side: the recorder that seals and appends events, its writer
/// task, and the slot a configuration reload puts a new sealer in.
#[derive(Debug)]
pub struct JournalWriter {
    pub recorder: Recorder<ActivityEvent>,
    pub task: JoinHandle<Result<(), JournalError>>,
    pub next_sealer: Arc<Mutex<Option<Sealer>>>,
    pub wrapping_id: String,
}

/// Opens the journal (recovering a torn tail, which is then recorded as a control event)
/// and starts the recorder: events handed to it are batched, sealed to the wrapping key and
/// appended to the hash chain.
pub async fn open_journal(config: &WriterConfig) -> Result<JournalWriter, CaptureError> {
    let wrapping = pgtrail_keys::load_wrapping_public(&config.wrapping_public_key)?;
    let signer = pgtrail_keys::load_signer(&config.signing_key)?;
    let dir = config.journal_dir.clone();
    let options = JournalOptions { signer: Some(signer), ..config.journal.clone() };
    let journal = tokio::task::spawn_blocking(move || Journal::open(&dir, options))
        .await?
        .map_err(|source| CaptureError::OpenJournal { dir: config.journal_dir.clone(), source })?;
    let (cluster, instance) = (config.cluster_id.clone(), config.instance_id.clone());
    let recovery = journal.recovery().cloned();
    let wrapping_id = wrapping.id().to_owned();
    let mut sealer = Sealer::new(Arc::new(wrapping), config.envelope.clone());
    let next_sealer: Arc<Mutex<Option<Sealer>>> = Arc::default();
    let reloaded = Arc::clone(&next_sealer);
    let encode = Box::new(move |events: &[ActivityEvent]| {
        if let Some(next) = reloaded.lock().unwrap_or_else(|p| p.into_inner()).take() {
            sealer = next;
        }
        let inner = if sealer.rotation_due() && sealer.has_data_key() {
            // The first record under a new data key says so itself (the first key of
            // a run is named by CAPTURE STARTED).
            let mut with_note = Vec::with_capacity(events.len() + 1);
            with_note.push(control_event("KEYS ROTATED", format!("new data key, wrapped to {}", sealer.key_id())));
            with_note.extend_from_slice(events);
            pgtrail_event::activity_record_json(&cluster, &instance, &with_note)
        } else {
            pgtrail_event::activity_record_json(&cluster, &instance, events)
        };
        // The key was checked to wrap when it was loaded: sealing cannot fail.
        sealer.seal(&inner).expect("sealing with a checked key").json.into_bytes()
    });
    let loss = Box::new(|count, from, to, cause: &pgtrail_journal::LossCause| loss_event(count, from, to, cause));
    let parts = WriterParts { encode, loss, heartbeat: Some(Box::new(heartbeat_event)) };
    let (recorder, task) = Recorder::spawn_with(journal, config.recorder.clone(), parts);
    if let Some(cut) = recovery {
        let event = match &cut.set_aside {
            None => control_event(
                "JOURNAL RECOVERED",
                format!(
                    "recovery truncated a torn tail: {} bytes cut at offset {} of {} ({})",
                    cut.bytes_cut,
                    cut.offset,
                    cut.segment.display(),
                    cut.reason
                ),
            ),
            Some(aside) => control_event(
                "JOURNAL REPAIRED",
                format!(
                    "{}: the segment was set aside intact as {} ({} bytes from offset {}), and the journal continues \
                     after the last valid record before the damage",
                    cut.reason,
                    aside.display(),
                    cut.bytes_cut,
                    cut.offset
                ),
            ),
        };
        // Durable before anything else can fail (binding the port, say): a recovery that
        // changed the journal is never left unrecorded.
        recorder.record_durable(event).await.map_err(CaptureError::RecordRecovery)?;
    }
    if config.journal.witness_dir.is_none() {
        tracing::warn!(
            "journal.witness_dir is not set: a journal cut short (its last records or segment deleted) \
             cannot be detected by `pgtrail verify`; set it to a directory on another mount or host"
        );
    }
    Ok(JournalWriter { recorder, task, next_sealer, wrapping_id })
}

/// The settings that differ between two configurations and take effect only after a
/// restart. Typed comparisons: Debug text would differ with HashMap order (regression,
/// issue 12.8: an unchanged `[auth.mapping]` read as a change needing a restart).
fn needing_restart(old: &CaptureConfig, new: &CaptureConfig) -> Vec<&'static str> {
    let restart: [(&'static str, bool); 9] = [
        ("proxy", old.proxy != new.proxy || old.workers != new.workers),
        ("journal", old.writer.journal_dir != new.writer.journal_dir || old.writer.journal != new.writer.journal),
        ("recorder", old.writer.recorder != new.writer.recorder),
        (
            "instance",
            old.writer.cluster_id != new.writer.cluster_id || old.writer.instance_id != new.writer.instance_id,
        ),
        ("signing key", old.writer.signing_key != new.writer.signing_key),
        ("delivery", old.proxy.delivery != new.proxy.delivery),
        ("pgaudit", old.pgaudit != new.pgaudit),
        ("metrics", old.metrics_listen != new.metrics_listen),
        ("transport", old.writer.transport != new.writer.transport),
    ];
    restart.iter().filter(|(_, c)| *c).map(|(name, _)| *name).collect()
}

impl Capture {
    /// Opens the journal (recovering a torn tail), starts the recorder and binds the proxy.
    pub async fn start(config: CaptureConfig) -> Result<Self, CaptureError> {
        let JournalWriter { recorder, task: recorder_task, next_sealer, wrapping_id } =
            open_journal(&config.writer).await?;
        let control = recorder.clone();
        let recorder_stats = Arc::clone(recorder.stats());
        let journal_healthy = recorder.health_flag();
        let events = Arc::new(EventCounts::default());
        // The map of sessions is kept only for correlation (regression, issue 12.7).
        let sessions = config.pgaudit.is_some().then(|| Arc::new(ProxySessions::default()));
        let started = chrono::Utc::now();
        let ingest = config.pgaudit.clone().zip(sessions.clone()).map(|(pgaudit, sessions)| {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let correlator = Correlator::new(sessions, started);
            let task = tokio::spawn(pgtrail_pgaudit::ingest::run(
                recorder.clone(),
                pgaudit,
                Arc::clone(&stop),
                Some(correlator),
            ));
            (stop, task)
        });
        let publisher = start_publisher(&config.writer, &recorder);
        let stream = publisher
            .as_ref()
            .filter(|_| config.writer.transport.as_ref().is_some_and(|t| t.transport.sync_waits()))
            .filter(|_| config.proxy.delivery.is_sync())
            .map(|p| p.stats());
        let sink = RecorderSink { recorder, counts: Arc::clone(&events), sessions, stream };
        let proxy = Proxy::bind(config.proxy.clone(), Arc::new(sink)).await?;
        let addr = proxy.local_addr();
        control.record(control_event(
            "CAPTURE STARTED",
            format!(
                "pgtrail {} listening on {}, upstream {}:{}, delivery {:?}, wrapping key {wrapping_id}",
                env!("CARGO_PKG_VERSION"),
                proxy.local_addr(),
                config.proxy.upstream.host,
                config.proxy.upstream.port,
                config.proxy.delivery,
            ),
        ));
        let stats = proxy.stats();
        let (tx, rx) = oneshot::channel();
        let proxy_task = tokio::spawn(proxy.run(async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            stats,
            recorder_stats,
            events,
            journal_healthy,
            shutdown: Some(tx),
            proxy: proxy_task,
            recorder: recorder_task,
            control: Some(control),
            next_sealer,
            ingest,
            publisher,
            config,
            wrapping_id,
        })
    }

    /// Applies a new configuration. The wrapping key and the envelope settings take effect
    /// with the next record (a new data key, wrapped to the new key); other changes need a
    /// restart and are reported as such. A control event in the stream says what happened.
    pub fn reload(&mut self, mut new: CaptureConfig) -> Result<Reloaded, CaptureError> {
        // A start-time action (--set-aside-damaged-journal), not a setting.
        new.writer.journal.set_aside_damage = self.config.writer.journal.set_aside_damage;
        let old = &self.config;
        let mut report = Reloaded::default();
        // The key file may have been replaced in place: compare what it holds now.
        let wrapping = pgtrail_keys::load_wrapping_public(&new.writer.wrapping_public_key)?;
        let key_changed = wrapping.id() != self.wrapping_id;
        let envelope_changed = old.writer.envelope != new.writer.envelope;
        if key_changed || envelope_changed {
            self.wrapping_id = wrapping.id().to_owned();
            *self.next_sealer.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Sealer::new(Arc::new(wrapping), new.writer.envelope.clone()));
            if key_changed {
                report.applied.push("wrapping key");
            }
            if envelope_changed {
                report.applied.push("envelope");
            }
        }
        report.need_restart = needing_restart(old, &new);
        if let Some(control) = &self.control {
            control.record(control_event(
                "CONFIGURATION RELOADED",
                format!(
                    "applied: {}; changed but needing a restart: {}",
                    list_or_none(&report.applied),
                    list_or_none(&report.need_restart)
                ),
            ));
        }
        self.config.writer.wrapping_public_key = new.writer.wrapping_public_key.clone();
        self.config.writer.envelope = new.writer.envelope.clone();
        Ok(report)
    }

    /// Stops accepting, ends the sessions (after the grace period), and waits until every
    /// event is in the journal.
    pub async fn stop(mut self) -> Result<(), CaptureError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits for the proxy to stop (after [`Capture::stop`] or a fatal error) and the
    /// recorder to flush.
    pub async fn wait(&mut self) -> Result<(), CaptureError> {
        (&mut self.proxy).await?;
        if let Some((stop, task)) = self.ingest.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            // It logs its own counts when it stops.
            task.await??;
        }
        if let Some(control) = self.control.take() {
            control.record(control_event("CAPTURE STOPPED", "clean shutdown".into()));
        }
        if let Some(publisher) = &mut self.publisher {
            publisher.stop_alarms().await;
        }
        // The proxy's recorder handles are gone with it: the recorder drains and finishes.
        (&mut self.recorder).await?.map_err(CaptureError::JournalWrite)?;
        if let Some(publisher) = self.publisher.take() {
            finish_publisher(publisher).await;
        }
        Ok(())
    }
}

impl Capture {
    /// The proxy's metric families, read from live counters (see [`pgtrail_metrics`]).
    pub fn metric_families(&self) -> impl Fn() -> Vec<Family> + Send + Sync + 'static {
        let (proxy, journal, events) =
            (Arc::clone(&self.stats), Arc::clone(&self.recorder_stats), Arc::clone(&self.events));
        let healthy = Arc::clone(&self.journal_healthy);
        let publisher = self.publisher.as_ref().map(|p| p.stats());
        move || {
            let mut families =
                capture_families(&proxy, &journal, &events, healthy.load(std::sync::atomic::Ordering::Relaxed));
            if let Some(publisher) = &publisher {
                families.extend(transport_families(publisher));
            }
            families
        }
    }
}

/// Starts publishing the journal to the audit stream, if `[transport.<kind>]` says so: each
/// record once the recorder has made it durable; a lag past the threshold, and its end,
/// are recorded as control events.
pub fn start_publisher(config: &WriterConfig, recorder: &Recorder<ActivityEvent>) -> Option<Box<dyn Shipping>> {
    let transport = config.transport.as_ref()?;
    let stats = Arc::clone(recorder.stats());
    let durable = Arc::new(move || stats.durable_seq.load(std::sync::atomic::Ordering::Acquire));
    let control = recorder.clone();
    let alarm = Box::new(move |alarm: LagAlarm| {
        let event = match alarm {
            LagAlarm::Behind { records, threshold } => control_event(
                "TRANSPORT LAGGING",
                format!(
                    "{records} journal records are not in the audit stream yet (threshold {threshold});                      they wait in the local journal"
                ),
            ),
            LagAlarm::CaughtUp { after } => control_event(
                "TRANSPORT CAUGHT UP",
                format!("the audit stream holds every journal record again, after {} s", after.as_secs()),
            ),
        };
        control.record(event);
    });
    tracing::info!(to = %transport.transport.describe(), "publishing the journal to the audit stream");
    Some(transport.transport.start(config.journal_dir.clone(), durable, alarm))
}

/// How long a stopping writer waits for the stream to take its last records.
const PUBLISH_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Gives the publisher a moment to publish the journal's last records (the stop event,
/// the final checkpoint); what it cannot is published by the next start.
pub async fn finish_publisher(publisher: Box<dyn Shipping>) {
    if let Err(e) = publisher.finish(PUBLISH_DRAIN).await {
        tracing::error!(error = %e, "the audit stream publisher stopped with an error");
    }
}

fn transport_families(stats: &ShipStats) -> Vec<Family> {
    use std::sync::atomic::Ordering::Relaxed;
    let n = |v: &std::sync::atomic::AtomicU64| v.load(Relaxed) as f64;
    vec![
        Family::gauge(
            "pgtrail_transport_lag_records",
            "Journal records durable locally and not yet acknowledged by the audit stream.",
        )
        .value(stats.lag() as f64),
        Family::counter("pgtrail_transport_published_records", "Journal records acknowledged by the audit stream.")
            .value(n(&stats.records)),
        Family::counter("pgtrail_transport_messages", "Messages acknowledged by the audit stream.")
            .value(n(&stats.messages)),
        Family::counter(
            "pgtrail_transport_failures",
            "Failed attempts to publish (unreachable, timed out, refused); each is retried.",
        )
        .value(n(&stats.failures)),
        Family::gauge("pgtrail_transport_connected", "1 while the last attempt reached the audit stream.")
            .value(f64::from(u8::from(stats.connected.load(Relaxed)))),
    ]
}

fn capture_families(proxy: &ProxyStats, journal: &RecorderStats, events: &EventCounts, healthy: bool) -> Vec<Family> {
    use std::sync::atomic::Ordering::Relaxed;
    let n = |v: &std::sync::atomic::AtomicU64| v.load(Relaxed) as f64;
    let pending = (journal.recorded.load(Relaxed) + journal.heartbeats.load(Relaxed))
        .saturating_sub(journal.items_written.load(Relaxed) + journal.dropped.load(Relaxed));
    vec![
        events.family("pgtrail_events", "Activity events captured, by class and source."),
        Family::counter("pgtrail_sessions_accepted", "Client connections accepted.").value(n(&proxy.sessions_accepted)),
        Family::gauge("pgtrail_sessions_active", "Client sessions open now.").value(n(&proxy.sessions_active)),
        Family::counter("pgtrail_protocol_errors", "Sessions ended by a malformed or unexpected message.")
            .value(n(&proxy.protocol_errors)),
        Family::counter(
            "pgtrail_protocol_desyncs",
            "Server replies that matched nothing the proxy expected (the session's events may be mislabelled).",
        )
        .value(n(&proxy.desyncs)),
        Family::counter(
            "pgtrail_statements_refused",
            "Statements and logins refused because the journal could not record (fail-closed).",
        )
        .value(n(&proxy.refused)),
        Family::counter("pgtrail_statements_denied", "Statements denied by policy (deny rules, password restriction).")
            .value(n(&proxy.denied)),
        Family::counter(
            "pgtrail_token_logins_refused",
            "Token logins refused (bad token, or a user the person may not use).",
        )
        .value(n(&proxy.token_logins_refused)),
        Family::counter(
            "pgtrail_events_dropped",
            "Events dropped because the recorder queue was full (each gap has a loss record).",
        )
        .value(n(&journal.dropped)),
        Family::counter("pgtrail_loss_records", "Loss records written to the journal.").value(n(&journal.loss_records)),
        Family::counter("pgtrail_heartbeats", "Heartbeat events written.").value(n(&journal.heartbeats)),
        Family::counter("pgtrail_journal_records", "Journal records written.").value(n(&journal.records_written)),
        Family::counter("pgtrail_journal_written_bytes", "Bytes appended to the journal.")
            .value(n(&journal.bytes_written)),
        Family::counter("pgtrail_journal_fsyncs", "Journal fsyncs.").value(n(&journal.fsyncs)),
        Family::counter("pgtrail_journal_write_failures", "Failed journal writes (retried until they succeed).")
            .value(n(&journal.write_failures)),
        Family::gauge("pgtrail_journal_pending_events", "Events accepted but not yet durable in the journal.")
            .value(pending as f64),
        Family::gauge("pgtrail_journal_last_write_timestamp_seconds", "When the journal last made a batch durable.")
            .value(journal.last_write_micros.load(Relaxed) as f64 / 1e6),
        Family::gauge("pgtrail_journal_healthy", "1 while the journal can make records durable.")
            .value(f64::from(u8::from(healthy))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> CaptureConfig {
        let file: crate::config::FileConfig = toml::from_str(text).expect("valid configuration");
        let overrides = crate::config::Overrides {
            journal: Some("/nonexistent/journal".into()),
            keys: Some("/nonexistent/keys".into()),
            ..crate::config::Overrides::default()
        };
        file.resolve(&overrides).expect("resolves")
    }

    /// Issue 12.8: SIGHUP with an unchanged configuration whose [auth.mapping] has two or
    /// more entries reported "changed but needing a restart: proxy" (Debug text of
    /// HashMaps, whose order differs between two loads).
    #[test]
    fn regression_sighup_reported_an_unchanged_mapping_as_needing_a_restart() {
        let mut text = String::from("[upstream]\nhost = \"127.0.0.1\"\n[auth.mapping.users]\n");
        for i in 0..12 {
            text.push_str(&format!("\"person{i}@example.com\" = [\"app{i}\", \"report{i}\"]\n"));
        }
        text.push_str("[auth.mapping.groups]\n");
        for i in 0..12 {
            text.push_str(&format!("group{i} = [\"app{i}\"]\n"));
        }
        for _ in 0..20 {
            assert_eq!(needing_restart(&resolve(&text), &resolve(&text)), Vec::<&str>::new());
        }
        let changed = text.replace("app3\"", "app33\"");
        assert_eq!(needing_restart(&resolve(&text), &resolve(&changed)), vec!["proxy"]);
        // Issue 14.4: every section is compared, [pgaudit] and [metrics] included.
        let pgaudit = format!("{text}[pgaudit]\nlog_dir = \"/var/log/pg\"\nformat = \"csvlog\"\n");
        assert_eq!(needing_restart(&resolve(&pgaudit), &resolve(&pgaudit)), Vec::<&str>::new());
        let other_format = pgaudit.replace("csvlog", "jsonlog");
        assert_eq!(needing_restart(&resolve(&pgaudit), &resolve(&other_format)), vec!["pgaudit"]);
    }
}
