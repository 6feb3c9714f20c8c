//! Publishing a local journal to its Kafka topic.
//!
//! Records go out exactly as the journal frames them, in runs of consecutive records (one
//! Kafka message per run, up to [`PublishSettings::run_records`]), to the instance's topic
//! (`pgtrail.records.<instance>`, partition 0), keyed by the instance.
//!
//! The producer is idempotent with `acks=all`: the brokers number every message of a
//! producer and refuse one out of sequence, so a retry inside librdkafka is stored once
//! and never before a message sent earlier; with `enable.gapless.guarantee`, a message
//! that cannot be stored stops the producer rather than let a later one through. So several
//! messages are in flight at once ([`PublishSettings::in_flight`]) and the topic still
//! holds the records in order, without a gap.
//!
//! The topic itself says where publishing stands: on start and after any failure the
//! publisher drops its producer, reads the topic's last message back, checks that its last
//! record is the local journal's record of that sequence (same hash), and goes on after it
//! with a new producer. A message stored without its acknowledgement reaching us is thus
//! not sent again. The saved position (`state`) is checked against the topic the same way:
//! a topic that holds fewer records than this publisher was acknowledged for lost them,
//! which is an error, never papered over.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pgtrail_journal::ship::{self, Backoff, Durable, ShipStats};
use pgtrail_journal::{Hash, JournalReader, Record};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::{Brokers, KafkaError, Quiet, REQUEST, topic};

/// How to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishSettings {
    pub brokers: Brokers,
    /// Most records in one message.
    pub run_records: usize,
    /// Most bytes in one message (below the brokers' message.max.bytes, 1 MB by default).
    pub run_bytes: usize,
    /// Most messages awaiting acknowledgement at once.
    pub in_flight: usize,
    /// How long the brokers may take to acknowledge a message (librdkafka retries within it).
    pub ack_timeout: Duration,
    /// The replication factor of a topic this publisher creates.
    pub replication: i32,
    /// Where the last acknowledged position is saved (None: only the topic says).
    pub state: Option<PathBuf>,
    /// How often to look for new records when caught up.
    pub poll: Duration,
}

impl PublishSettings {
    pub const RUN_RECORDS: usize = 256;
    pub const RUN_BYTES: usize = 768 * 1024;
    pub const IN_FLIGHT: usize = 16;
    pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
    pub const REPLICATION: i32 = 3;
    pub const POLL: Duration = Duration::from_millis(20);

    /// The defaults, for these brokers.
    pub fn new(brokers: Brokers) -> PublishSettings {
        PublishSettings {
            brokers,
            run_records: Self::RUN_RECORDS,
            run_bytes: Self::RUN_BYTES,
            in_flight: Self::IN_FLIGHT,
            ack_timeout: Self::ACK_TIMEOUT,
            replication: Self::REPLICATION,
            state: None,
            poll: Self::POLL,
        }
    }
}

/// Where publishing stands: the last record in the topic and the offset of its message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The journal sequence of the last record published (0: none).
    pub record: u64,
    /// Its hash (hex), to tell a topic of another journal.
    #[serde(with = "pgtrail_journal::ship::hex_hash")]
    pub hash: Option<Hash>,
    /// The offset of the message holding it (-1: none).
    pub offset: i64,
}

/// Publishes the journal in `journal` until `stop` says so. Transient failures (brokers
/// unreachable, timeouts) are retried with backoff while records wait in the journal; the
/// error returned is one a retry will not mend (the topic holds records the journal does
/// not, the saved position is ahead of the topic).
pub async fn publish(
    journal: &Path,
    settings: &PublishSettings,
    durable: Option<Durable>,
    stats: Arc<ShipStats>,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<(), KafkaError> {
    let mut backoff = Backoff::new("Kafka");
    let Some(instance) = ship::instance_once_written(journal, settings.poll, stop).await.map_err(journal_error)? else {
        return Ok(());
    };
    let mut publisher = Publisher {
        settings,
        journal,
        topic: topic(&instance)?,
        instance,
        durable,
        stats,
        reader: None,
        producer: None,
        position: Position::default(),
        saved: load_state(settings.state.as_deref())?,
    };
    let mut in_flight: VecDeque<Sent> = VecDeque::new();
    while !stop() {
        if publisher.producer.is_none() {
            in_flight.clear();
            match publisher.sync().await {
                Ok(()) => backoff.recovered(&publisher.instance),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => {
                    publisher.failed(&mut backoff, &why).await;
                    continue;
                }
            }
        }
        while in_flight.len() < settings.in_flight {
            let run = publisher.next_run()?;
            if run.is_empty() {
                break;
            }
            match publisher.send(&run) {
                Ok(sent) => in_flight.push_back(sent),
                Err(why) => {
                    publisher.failed(&mut backoff, &why).await;
                    break;
                }
            }
        }
        // Caught up means every record read is acknowledged, not only handed to the producer.
        if !in_flight.is_empty() {
            publisher.stats.caught_up.store(false, Ordering::Relaxed);
        }
        if publisher.producer.is_none() {
            continue;
        }
        let Some(oldest) = in_flight.pop_front() else {
            tokio::time::sleep(settings.poll).await;
            continue;
        };
        match publisher.acknowledged(oldest).await {
            Ok(()) => backoff.recovered(&publisher.instance),
            Err(Attempt::Fatal(e)) => return Err(e),
            // The messages after it are not known to be stored either: the topic says.
            Err(Attempt::Retry(why)) => publisher.failed(&mut backoff, &why).await,
        }
    }
    Ok(())
}

/// A failed step: worth retrying, or not.
enum Attempt {
    Retry(String),
    Fatal(KafkaError),
}

/// A message sent and not acknowledged yet.
struct Sent {
    records: usize,
    last: (u64, Hash),
    delivery: DeliveryFuture,
}

struct Publisher<'a> {
    settings: &'a PublishSettings,
    journal: &'a Path,
    instance: String,
    topic: String,
    durable: Option<Durable>,
    stats: Arc<ShipStats>,
    reader: Option<JournalReader>,
    /// The producer since the last sync (None: sync first).
    producer: Option<FutureProducer<Quiet>>,
    position: Position,
    /// The position saved by an earlier run (checked against the topic).
    saved: Option<Position>,
}

impl Publisher<'_> {
    /// A failed attempt: counted, said once in the log, and paced; the producer is dropped
    /// (what it held unacknowledged is the topic's to say).
    async fn failed(&mut self, backoff: &mut Backoff, why: &str) {
        self.producer = None;
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.stats.connected.store(false, Ordering::Relaxed);
        backoff.failed(why);
        backoff.wait().await;
    }

    /// Makes the topic if it is missing, learns from it where this instance's records end,
    /// checks that against the local journal and the saved position, positions the journal
    /// reader after it, and starts a new producer.
    async fn sync(&mut self) -> Result<(), Attempt> {
        self.create_topic().await?;
        let (brokers, topic) = (self.settings.brokers.clone(), self.topic.clone());
        let last = tokio::task::spawn_blocking(move || last_message(&brokers, &topic))
            .await
            .map_err(|e| Attempt::Retry(e.to_string()))?
            .map_err(|e| Attempt::Retry(format!("reading the last message of {}: {e}", self.topic)))?;
        let found = match last {
            None => Position { record: 0, hash: None, offset: -1 },
            Some((offset, payload)) => {
                let records = Record::parse_all(&payload)
                    .map_err(|what| Attempt::Fatal(KafkaError::Foreign { topic: self.topic.clone(), offset, what }))?;
                let last = records.last().ok_or_else(|| {
                    Attempt::Fatal(KafkaError::Foreign {
                        topic: self.topic.clone(),
                        offset,
                        what: "an empty message".into(),
                    })
                })?;
                Position { record: last.seq, hash: Some(last.hash), offset }
            }
        };
        ship::check_resume(self.journal, self.saved.map(|saved| saved.record), found.record, found.hash).map_err(
            |mismatch| {
                Attempt::Fatal(match mismatch {
                    ship::Mismatch::Lost { saved, found } => {
                        KafkaError::Lost { topic: self.topic.clone(), saved, found }
                    }
                    ship::Mismatch::Diverged { record } => KafkaError::Diverged { topic: self.topic.clone(), record },
                    ship::Mismatch::Journal(e) => journal_error(e),
                })
            },
        )?;
        let reader =
            JournalReader::open(self.journal, found.record + 1).map_err(|e| Attempt::Fatal(journal_error(e)))?;
        let producer = self
            .settings
            .brokers
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("enable.gapless.guarantee", "true")
            .set("message.timeout.ms", self.settings.ack_timeout.as_millis().to_string())
            .set("linger.ms", "2")
            .create_with_context(Quiet)
            .map_err(|e| Attempt::Retry(format!("starting a producer: {e}")))?;
        self.reader = Some(reader);
        self.producer = Some(producer);
        self.position = found;
        self.stats.set_published(found.record);
        self.stats.connected.store(true, Ordering::Relaxed);
        self.save()?;
        Ok(())
    }

    /// Creates the instance's topic (one partition) unless it exists.
    async fn create_topic(&self) -> Result<(), Attempt> {
        let admin: AdminClient<Quiet> = self
            .settings
            .brokers
            .client()
            .create_with_context(Quiet)
            .map_err(|e| Attempt::Retry(format!("starting an admin client: {e}")))?;
        let wanted = NewTopic::new(&self.topic, 1, TopicReplication::Fixed(self.settings.replication));
        let options = AdminOptions::new().operation_timeout(Some(REQUEST)).request_timeout(Some(REQUEST));
        // librdkafka bounds the request itself; this bounds the wait for a broker to send it to.
        let results = tokio::time::timeout(REQUEST + Duration::from_secs(5), admin.create_topics([&wanted], &options))
            .await
            .map_err(|_| Attempt::Retry(format!("creating the topic {}: no answer in time", self.topic)))?
            .map_err(|e| Attempt::Retry(format!("creating the topic {}: {e}", self.topic)))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(Attempt::Retry(format!("creating the topic {}: {code}", self.topic))),
            }
        }
        Ok(())
    }

    /// The next run of durable records (empty when there are none).
    fn next_run(&mut self) -> Result<Vec<Record>, KafkaError> {
        let durable = self.durable.as_ref().map(|durable| durable());
        let reader = self.reader.as_mut().expect("synced before reading");
        let size = ship::RunSize { records: self.settings.run_records, bytes: self.settings.run_bytes };
        ship::next_run(reader, durable, size, self.position.record, &self.stats).map_err(journal_error)
    }

    /// Hands one run to the producer.
    fn send(&mut self, run: &[Record]) -> Result<Sent, String> {
        let last = run.last().expect("a run is not empty");
        let mut payload = Vec::with_capacity(run.iter().map(|r| r.payload.len() + 96).sum());
        for record in run {
            payload.extend_from_slice(&record.to_bytes());
        }
        let producer = self.producer.as_ref().expect("synced before sending");
        let message = FutureRecord::to(&self.topic).partition(0).key(self.instance.as_bytes()).payload(&payload);
        let delivery =
            producer.send_result(message).map_err(|(e, _)| format!("handing a message to the producer: {e}"))?;
        Ok(Sent { records: run.len(), last: (last.seq, last.hash), delivery })
    }

    /// Waits for the brokers' acknowledgement of the oldest message in flight.
    async fn acknowledged(&mut self, sent: Sent) -> Result<(), Attempt> {
        let wait = self.settings.ack_timeout + Duration::from_secs(5);
        let delivery = match tokio::time::timeout(wait, sent.delivery).await {
            Err(_) => return Err(Attempt::Retry(format!("no acknowledgement for {} in time", self.topic))),
            Ok(Err(_)) => return Err(Attempt::Retry("the producer went away".into())),
            Ok(Ok(Err((e, _)))) => return Err(Attempt::Retry(format!("publishing to {}: {e}", self.topic))),
            Ok(Ok(Ok(delivery))) => delivery,
        };
        let (record, hash) = sent.last;
        self.position = Position { record, hash: Some(hash), offset: delivery.offset };
        self.stats.records.fetch_add(sent.records as u64, Ordering::Relaxed);
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        self.stats.set_published(record);
        self.stats.connected.store(true, Ordering::Relaxed);
        self.save()
    }

    fn save(&mut self) -> Result<(), Attempt> {
        let Some(path) = &self.settings.state else { return Ok(()) };
        ship::save_position(path, &self.position)
            .map_err(|message| Attempt::Fatal(KafkaError::State { path: path.clone(), message }))?;
        self.saved = Some(self.position);
        Ok(())
    }
}

/// The offset and payload of the topic's last message (`None`: the topic is empty).
pub(crate) fn last_message(brokers: &Brokers, topic: &str) -> Result<Option<(i64, Vec<u8>)>, KafkaError> {
    let consumer: BaseConsumer<Quiet> = brokers.reader().create_with_context(Quiet)?;
    let (_low, high) = consumer.fetch_watermarks(topic, 0, REQUEST)?;
    if high <= 0 {
        return Ok(None);
    }
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition_offset(topic, 0, Offset::Offset(high - 1))?;
    consumer.assign(&partitions)?;
    let deadline = std::time::Instant::now() + REQUEST;
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) if message.offset() == high - 1 => {
                return Ok(Some((message.offset(), message.payload().unwrap_or_default().to_vec())));
            }
            Some(Ok(_)) | None => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
    Err(KafkaError::Kafka(format!("the message at offset {} of {topic} did not arrive", high - 1)))
}

fn load_state(path: Option<&Path>) -> Result<Option<Position>, KafkaError> {
    let Some(path) = path else { return Ok(None) };
    ship::load_position(path).map_err(|message| KafkaError::State { path: path.to_path_buf(), message })
}

fn journal_error(e: pgtrail_journal::JournalError) -> KafkaError {
    KafkaError::Journal(e.to_string())
}
