//! A Kafka topic as a record source: one instance's topic read from its first message
//! (nothing on the brokers remembers the reader), each message split back into the journal
//! records it carries and every record checked as it arrives (CRC and own hash when parsed,
//! then sequence, link and checkpoints by [`Chain`]), exactly as a local journal is read.
//! A gap, a reorder, a duplicate or a modified record in the topic is an error naming the
//! topic and the offset, never skipped.
//!
//! The source is synchronous (consumers run on the blocking pool), as librdkafka's
//! consumer is.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgtrail_journal::{Chain, JournalError, Record, VerifierSet};
use pgtrail_reader::RecordSource;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::{Brokers, KafkaError, Quiet, REQUEST, TOPIC_PREFIX, topic};

/// How long a message the brokers say is there may take to arrive before the read fails.
const ARRIVAL: Duration = Duration::from_secs(60);

/// The instances whose topics the brokers hold.
pub fn instances(brokers: &Brokers) -> Result<Vec<String>, KafkaError> {
    let consumer: BaseConsumer<Quiet> = brokers.reader().create_with_context(Quiet)?;
    let metadata = consumer.fetch_metadata(None, REQUEST)?;
    let prefix = format!("{TOPIC_PREFIX}.");
    let mut found: Vec<String> =
        metadata.topics().iter().filter_map(|t| t.name().strip_prefix(&prefix).map(str::to_owned)).collect();
    found.sort();
    Ok(found)
}

/// The instances to read: those `named`, or every one the brokers hold (an error when
/// they hold none yet).
pub fn topic_instances(brokers: &Brokers, named: &[String]) -> Result<Vec<String>, KafkaError> {
    if !named.is_empty() {
        return Ok(named.to_vec());
    }
    let found = instances(brokers)?;
    if found.is_empty() {
        return Err(KafkaError::Empty(brokers.to_string()));
    }
    Ok(found)
}

/// Consumers' origins: the instances [`topic_instances`] gives, each read from its topic
/// (the consumer's cursor is a local file).
pub fn origins(brokers: &Brokers, named: &[String]) -> Result<Vec<pgtrail_reader::Origin>, KafkaError> {
    Ok(topic_instances(brokers, named)?
        .into_iter()
        .map(|instance| {
            let origin = KafkaOrigin { brokers: brokers.clone(), instance };
            pgtrail_reader::Origin::Remote(std::sync::Arc::new(origin))
        })
        .collect())
}

/// One instance's topic as a consumer's origin (`--kafka`): each open reads the topic from
/// its first message, checking the chain from the genesis.
#[derive(Debug, Clone)]
pub struct KafkaOrigin {
    pub brokers: Brokers,
    pub instance: String,
}

impl pgtrail_reader::RemoteSource for KafkaOrigin {
    fn open(&self, from: u64) -> Result<Box<dyn RecordSource>, JournalError> {
        let source = KafkaSource::open(&self.brokers, &self.instance, from, None).map_err(|e| JournalError::Io {
            path: PathBuf::from(format!("kafka:{TOPIC_PREFIX}.{}", self.instance)),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Box::new(source))
    }

    fn instance(&self) -> &str {
        &self.instance
    }
}

/// One instance's records in its topic.
pub struct KafkaSource {
    brokers: Brokers,
    consumer: BaseConsumer<Quiet>,
    topic: String,
    instance: String,
    chain: Chain,
    keys: Option<VerifierSet>,
    /// Records of the last message not handed over yet.
    buffered: VecDeque<Record>,
    /// The offset of the next message to read.
    next_offset: i64,
    /// The topic's end (the offset after its last message), when last asked.
    high: i64,
    /// Records before this one are checked but not handed over.
    from: u64,
    /// The brokers did not answer when last asked (said once in the log).
    unreachable: bool,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").field("topic", &self.topic).field("next_offset", &self.next_offset).finish()
    }
}

impl KafkaSource {
    /// The records of `instance`, from the first (the chain is checked from the genesis);
    /// records before `from` are read and checked but not handed over. With `keys`, every
    /// checkpoint's signature is verified too.
    pub fn open(
        brokers: &Brokers,
        instance: &str,
        from: u64,
        keys: Option<VerifierSet>,
    ) -> Result<KafkaSource, KafkaError> {
        let topic = topic(instance)?;
        let consumer: BaseConsumer<Quiet> = brokers.reader().create_with_context(Quiet)?;
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition_offset(&topic, 0, Offset::Beginning)?;
        consumer.assign(&partitions)?;
        // The brokers must answer once: a reader of brokers that are down (or of a topic
        // that does not exist) is told so, rather than finding the topic empty.
        let (_, high) = consumer
            .fetch_watermarks(&topic, 0, REQUEST)
            .map_err(|e| KafkaError::Kafka(format!("reading {topic} on {brokers}: {e}")))?;
        Ok(KafkaSource {
            brokers: brokers.clone(),
            consumer,
            topic,
            chain: Chain::new(instance),
            instance: instance.to_owned(),
            keys,
            buffered: VecDeque::new(),
            next_offset: 0,
            high,
            from: from.max(1),
            unreachable: false,
        })
    }

    /// What the records read so far were (envelopes, checkpoints, the last one).
    pub fn chain(&self) -> Chain {
        self.chain.clone()
    }

    /// The next record, checked; `Ok(None)` when the topic holds nothing more now.
    pub fn next_checked(&mut self) -> Result<Option<Record>, KafkaError> {
        loop {
            while let Some(record) = self.buffered.pop_front() {
                if self.chain.next_seq() == 1 && record.seq != 1 {
                    return Err(self.corrupt(format!(
                        "the topic's first message starts at record {}, not 1 (records expired or were removed)",
                        record.seq
                    )));
                }
                self.chain.push(&record, self.keys.as_ref()).map_err(|what| self.corrupt(what))?;
                if record.seq >= self.from {
                    return Ok(Some(record));
                }
            }
            if self.next_offset >= self.high {
                match self.consumer.fetch_watermarks(&self.topic, 0, REQUEST) {
                    Ok((_, high)) => {
                        if self.unreachable {
                            tracing::info!(topic = %self.topic, "the brokers answer again");
                            self.unreachable = false;
                        }
                        self.high = high;
                    }
                    // No broker for a moment: nothing more now; a follower asks again.
                    Err(e) => {
                        if !self.unreachable {
                            tracing::warn!(topic = %self.topic, error = %e, "the Kafka brokers do not answer; waiting");
                            self.unreachable = true;
                        }
                        return Ok(None);
                    }
                }
                if self.next_offset >= self.high {
                    return Ok(None);
                }
            }
            let (offset, payload) = self.next_message()?;
            self.next_offset = offset + 1;
            let records = Record::parse_all(&payload).map_err(|what| self.corrupt(what))?;
            if records.is_empty() {
                return Err(self.corrupt("an empty message".into()));
            }
            self.buffered.extend(records);
        }
    }

    /// The next message (the brokers say there is one).
    fn next_message(&mut self) -> Result<(i64, Vec<u8>), KafkaError> {
        let deadline = Instant::now() + ARRIVAL;
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(500)) {
                // A message read already (the consumer fetched it again): skipped.
                Some(Ok(message)) if message.offset() < self.next_offset => {}
                Some(Ok(message)) => {
                    return Ok((message.offset(), message.payload().unwrap_or_default().to_vec()));
                }
                Some(Err(e)) => tracing::debug!(topic = %self.topic, error = %e, "the consumer failed; retrying"),
                None => {}
            }
        }
        Err(KafkaError::Kafka(format!(
            "the message at offset {} of {} (on {}) did not arrive in {} s",
            self.next_offset,
            self.topic,
            self.brokers,
            ARRIVAL.as_secs()
        )))
    }

    fn corrupt(&self, what: String) -> KafkaError {
        KafkaError::Foreign { topic: self.topic.clone(), offset: self.next_offset - 1, what }
    }
}

impl RecordSource for KafkaSource {
    fn next_record(&mut self) -> Result<Option<Record>, JournalError> {
        self.next_checked().map_err(|e| JournalError::Corrupt {
            path: PathBuf::from(format!("kafka:{}", self.topic)),
            offset: self.next_offset.max(0) as u64,
            what: e.to_string(),
        })
    }

    fn instance(&self) -> Option<&str> {
        Some(&self.instance)
    }
}

/// Reads every record of `instance` in its topic and checks the chain from its genesis,
/// each checkpoint's signature with `keys` included. `Err(KafkaError::Foreign)` names the
/// first record that fails (a gap, a reorder, a duplicate, a changed byte).
pub fn verify_instance(
    brokers: &Brokers,
    instance: &str,
    keys: &VerifierSet,
) -> Result<pgtrail_journal::VerifyReport, KafkaError> {
    let mut source = KafkaSource::open(brokers, instance, 1, Some(keys.clone()))?;
    while source.next_checked()?.is_some() {}
    Ok(source.chain().report())
}
