//! Publishing a local journal to the audit stream.
//!
//! Records go out exactly as the journal frames them, in runs of consecutive records (one
//! JetStream message per run, up to [`PublishSettings::run_records`]), on the instance's
//! subject. Every message carries:
//! - `Nats-Msg-Id` = `<instance>:<first record>`: a resend after a crash or a lost
//!   acknowledgement within the duplicate window is stored once;
//! - `Nats-Expected-Last-Subject-Sequence` = the stream sequence of the instance's last
//!   stored message: the server refuses a message that would skip or reorder records.
//!
//! The stream itself says where publishing stands: on start and after any doubt (a failed
//! or duplicate publish, a refused expectation) the publisher reads the instance's last
//! message back, checks that its last record is the local journal's record of that sequence
//! (same hash), and goes on after it. The saved position (`--state`) is checked against the
//! stream the same way: a stream that holds fewer records than this publisher was
//! acknowledged for lost them, which is an error, never papered over.
//!
//! One message per instance is in flight at a time, so that the expected subject sequence
//! is always known; a run carries everything the journal holds beyond it (up to the
//! limits), so a backlog goes out in large messages. Several instances publish
//! concurrently, each with its own message in flight.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use pgtrail_journal::ship::{self, Backoff, Durable, ShipStats};
use pgtrail_journal::{Hash, JournalReader, Record};
use serde::{Deserialize, Serialize};

use crate::{TransportError, subject};

/// How to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishSettings {
    /// The NATS servers (comma-separated URLs).
    pub url: String,
    /// The audit stream (made by `pgtrail transport init`).
    pub stream: String,
    /// Most records in one message.
    pub run_records: usize,
    /// Most bytes in one message (below the servers' max_payload, 1 MiB by default).
    pub run_bytes: usize,
    /// How long to wait for the stream's acknowledgement.
    pub ack_timeout: Duration,
    /// Where the last acknowledged position is saved (None: only the stream says).
    pub state: Option<PathBuf>,
    /// How often to look for new records when caught up.
    pub poll: Duration,
}

impl PublishSettings {
    pub const RUN_RECORDS: usize = 256;
    pub const RUN_BYTES: usize = 768 * 1024;
    pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
    pub const POLL: Duration = Duration::from_millis(20);
}

/// Where publishing stands: the last record in the stream and its stream sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The journal sequence of the last record published (0: none).
    pub record: u64,
    /// Its hash (hex), to tell a stream of another journal.
    #[serde(with = "pgtrail_journal::ship::hex_hash")]
    pub hash: Option<Hash>,
    /// The stream sequence of the message holding it (0: none).
    pub stream_seq: u64,
}

/// Publishes the journal in `journal` until `stop` says so. Transient failures (servers
/// unreachable, no stream leader, timeouts) are retried with backoff while records wait in
/// the journal; the error returned is one a retry will not mend (the stream holds records
/// the journal does not, the saved position is ahead of the stream, the stream is missing).
pub async fn publish(
    journal: &Path,
    settings: &PublishSettings,
    durable: Option<Durable>,
    stats: Arc<ShipStats>,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<(), TransportError> {
    let mut backoff = Backoff::new("JetStream");
    let Some(instance) = ship::instance_once_written(journal, settings.poll, stop).await.map_err(journal_error)? else {
        return Ok(());
    };
    let client = loop {
        match crate::connect(&settings.url).await {
            Ok(client) => break client,
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                backoff.failed(&e.to_string());
                if stop() {
                    return Ok(());
                }
                backoff.wait().await;
            }
        }
    };
    let mut publisher = Publisher {
        jetstream: async_nats::jetstream::new(client),
        settings,
        journal,
        subject: subject(&instance)?,
        instance,
        durable,
        stats,
        reader: None,
        position: Position::default(),
        saved: load_state(settings.state.as_deref())?,
    };
    let mut run: Vec<Record> = Vec::new();
    let mut synced = false;
    while !stop() {
        if !synced {
            match publisher.sync().await {
                Ok(()) => {
                    synced = true;
                    run.clear();
                    backoff.recovered(&publisher.instance);
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => {
                    publisher.failed(&mut backoff, &why).await;
                    continue;
                }
            }
        }
        if run.is_empty() {
            run = publisher.next_run()?;
            if run.is_empty() {
                tokio::time::sleep(settings.poll).await;
                continue;
            }
        }
        match publisher.send(&run).await {
            Ok(true) => {
                run.clear();
                backoff.recovered(&publisher.instance);
            }
            // A duplicate or a refused expectation: what the stream holds decides.
            Ok(false) => synced = false,
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(why)) => {
                publisher.failed(&mut backoff, &why).await;
                // The message may have been stored without its acknowledgement reaching us.
                synced = false;
            }
        }
    }
    Ok(())
}

/// A failed step: worth retrying, or not.
enum Attempt {
    Retry(String),
    Fatal(TransportError),
}

struct Publisher<'a> {
    jetstream: async_nats::jetstream::Context,
    settings: &'a PublishSettings,
    journal: &'a Path,
    instance: String,
    subject: String,
    durable: Option<Durable>,
    stats: Arc<ShipStats>,
    reader: Option<JournalReader>,
    position: Position,
    /// The position saved by an earlier run (checked against the stream).
    saved: Option<Position>,
}

impl Publisher<'_> {
    /// A failed attempt: counted, said once in the log, and paced.
    async fn failed(&self, backoff: &mut Backoff, why: &str) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.stats.connected.store(false, Ordering::Relaxed);
        backoff.failed(why);
        backoff.wait().await;
    }

    /// Learns from the stream where this instance's records end, checks that against the
    /// local journal and the saved position, and positions the journal reader after it.
    async fn sync(&mut self) -> Result<(), Attempt> {
        let stream = self.jetstream.get_stream(&self.settings.stream).await.map_err(|e| {
            if crate::is_not_found(&e) {
                Attempt::Fatal(TransportError::Missing(self.settings.stream.clone()))
            } else {
                Attempt::Retry(format!("looking up the stream {}: {e}", self.settings.stream))
            }
        })?;
        let found = match stream.get_last_raw_message_by_subject(&self.subject).await {
            Ok(message) => {
                let records = Record::parse_all(&message.payload).map_err(|what| {
                    Attempt::Fatal(TransportError::Foreign {
                        subject: self.subject.clone(),
                        stream_seq: message.sequence,
                        what,
                    })
                })?;
                let last = records.last().ok_or_else(|| {
                    Attempt::Fatal(TransportError::Foreign {
                        subject: self.subject.clone(),
                        stream_seq: message.sequence,
                        what: "an empty message".into(),
                    })
                })?;
                Position { record: last.seq, hash: Some(last.hash), stream_seq: message.sequence }
            }
            Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Position::default()
            }
            Err(e) => return Err(Attempt::Retry(format!("reading the last message of {}: {e}", self.subject))),
        };
        ship::check_resume(self.journal, self.saved.map(|saved| saved.record), found.record, found.hash).map_err(
            |mismatch| {
                Attempt::Fatal(match mismatch {
                    ship::Mismatch::Lost { saved, found } => {
                        TransportError::Lost { subject: self.subject.clone(), saved, found }
                    }
                    ship::Mismatch::Diverged { record } => {
                        TransportError::Diverged { subject: self.subject.clone(), record }
                    }
                    ship::Mismatch::Journal(e) => journal_error(e),
                })
            },
        )?;
        let reader =
            JournalReader::open(self.journal, found.record + 1).map_err(|e| Attempt::Fatal(journal_error(e)))?;
        self.reader = Some(reader);
        self.position = found;
        self.stats.set_published(found.record);
        self.stats.connected.store(true, Ordering::Relaxed);
        self.save()?;
        Ok(())
    }

    /// The next run of durable records after the position (empty when there are none).
    fn next_run(&mut self) -> Result<Vec<Record>, TransportError> {
        let durable = self.durable.as_ref().map(|durable| durable());
        let reader = self.reader.as_mut().expect("synced before reading");
        let size = ship::RunSize { records: self.settings.run_records, bytes: self.settings.run_bytes };
        ship::next_run(reader, durable, size, self.position.record, &self.stats).map_err(journal_error)
    }

    /// Publishes one run; `Ok(false)` when the stream says it holds it already or expected
    /// something else (the caller syncs again).
    async fn send(&mut self, run: &[Record]) -> Result<bool, Attempt> {
        let first = run.first().expect("a run is not empty");
        let last = run.last().expect("a run is not empty");
        let mut payload = Vec::with_capacity(run.iter().map(|r| r.payload.len() + 96).sum());
        for record in run {
            payload.extend_from_slice(&record.to_bytes());
        }
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(format!("{}:{}", self.instance, first.seq))
            .expected_stream(&self.settings.stream)
            .expected_last_subject_sequence(self.position.stream_seq);
        let ack = self
            .jetstream
            .send_publish(self.subject.clone(), message)
            .await
            .map_err(|e| Attempt::Retry(format!("publishing to {}: {e}", self.subject)))?;
        let ack = match tokio::time::timeout(self.settings.ack_timeout, ack.into_future()).await {
            Err(_) => return Err(Attempt::Retry(format!("no acknowledgement from {} in time", self.subject))),
            Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => {
                tracing::info!(subject = %self.subject, "the stream holds other records than expected: reading its last message back");
                return Ok(false);
            }
            Ok(Err(e)) if e.kind() == PublishErrorKind::StreamNotFound => {
                return Err(Attempt::Retry(format!("no stream takes {} (no servers or no leader)", self.subject)));
            }
            Ok(Err(e)) => return Err(Attempt::Retry(format!("publishing to {}: {e}", self.subject))),
            Ok(Ok(ack)) => ack,
        };
        if ack.duplicate {
            return Ok(false);
        }
        self.position = Position { record: last.seq, hash: Some(last.hash), stream_seq: ack.sequence };
        self.stats.records.fetch_add(run.len() as u64, Ordering::Relaxed);
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        self.stats.set_published(last.seq);
        self.stats.connected.store(true, Ordering::Relaxed);
        self.save()?;
        Ok(true)
    }

    fn save(&mut self) -> Result<(), Attempt> {
        let Some(path) = &self.settings.state else { return Ok(()) };
        ship::save_position(path, &self.position)
            .map_err(|message| Attempt::Fatal(TransportError::State { path: path.clone(), message }))?;
        self.saved = Some(self.position);
        Ok(())
    }
}

fn load_state(path: Option<&Path>) -> Result<Option<Position>, TransportError> {
    let Some(path) = path else { return Ok(None) };
    ship::load_position(path).map_err(|message| TransportError::State { path: path.to_path_buf(), message })
}

fn journal_error(e: pgtrail_journal::JournalError) -> TransportError {
    TransportError::Journal(e.to_string())
}
