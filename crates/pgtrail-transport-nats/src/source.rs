//! The audit stream as a record source: one instance's subject, read in order through an
//! ordered pull consumer (nothing on the servers remembers the reader) or, for a named
//! consumer, a durable pull consumer acknowledged as the consumer saves its cursor in the
//! stream's key-value bucket (see [`crate::cursor`]); each message split back into the journal records it carries and
//! every record checked as it arrives (CRC and own hash when parsed, then sequence, link
//! and checkpoints by [`Chain`]), exactly as a local journal is read. A gap, a reorder, a
//! duplicate or a modified record in the stream is an error naming the subject and the
//! stream sequence, never skipped.
//!
//! The source is synchronous (consumers run on the blocking pool): it drives its NATS
//! client on a small runtime of its own.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use futures::StreamExt;
use pgtrail_journal::{Chain, JournalError, Record, VerifierSet};
use pgtrail_reader::RecordSource;

use crate::{SUBJECT_PREFIX, TransportError, subject};

/// How long a message the stream says is there may take to arrive (through restarts of
/// the consumer) before the read fails.
const ARRIVAL: Duration = Duration::from_secs(60);
/// How long to wait for it before starting the consumer again after the last message read
/// (a server died under it, an election moved the stream).
const STALL: Duration = Duration::from_secs(3);

/// The instances whose records the stream holds (from its subjects).
pub fn instances(url: &str, stream: &str) -> Result<Vec<String>, TransportError> {
    let runtime = crate::runtime()?;
    runtime.block_on(async {
        let client = crate::connect(url).await?;
        let jetstream = async_nats::jetstream::new(client);
        let stream = jetstream
            .get_stream(stream)
            .await
            .map_err(|e| if crate::is_not_found(&e) { TransportError::Missing(stream.to_owned()) } else { js(e) })?;
        let mut subjects = stream.info_with_subjects(format!("{SUBJECT_PREFIX}.>")).await.map_err(js)?;
        let mut instances = Vec::new();
        while let Some(entry) = subjects.next().await {
            let (subject, _count) = entry.map_err(js)?;
            if let Some(instance) = subject.strip_prefix(&format!("{SUBJECT_PREFIX}.")) {
                instances.push(instance.to_owned());
            }
        }
        instances.sort();
        Ok(instances)
    })
}

/// How a source reads its subject.
enum Feed {
    /// An ordered consumer from the subject's first message.
    Ordered(Ordered),
    /// The durable pull consumer `name`: messages are acknowledged (all up to one) once
    /// every record they carry is consumed and the consumer's cursor saved.
    Durable { name: String, messages: async_nats::jetstream::consumer::pull::Stream, pending: VecDeque<Delivered> },
}

impl Feed {
    /// The consumer's next message (`None`: its stream ended).
    async fn next(&mut self) -> Option<Result<async_nats::jetstream::Message, String>> {
        match self {
            Feed::Ordered(messages) => messages.next().await.map(|m| m.map_err(|e| e.to_string())),
            Feed::Durable { messages, .. } => messages.next().await.map(|m| m.map_err(|e| e.to_string())),
        }
    }

    /// Starts the consumer again after stream sequence `read_seq` (a durable one at its
    /// oldest message not acknowledged).
    async fn restart(
        &mut self,
        stream: &async_nats::jetstream::stream::Stream,
        subject: &str,
        read_seq: u64,
    ) -> Result<(), TransportError> {
        match self {
            Feed::Ordered(messages) => *messages = ordered(stream, subject, read_seq + 1).await?,
            Feed::Durable { name, messages, pending } => {
                let start = pending.front().map_or(read_seq + 1, |held| held.stream_seq);
                *messages = position(stream, name, subject, start).await?;
            }
        }
        Ok(())
    }
}

/// A message of a durable consumer not acknowledged yet.
struct Delivered {
    stream_seq: u64,
    /// The last record it carries.
    last_record: u64,
    /// Where its acknowledgement goes.
    reply: async_nats::Subject,
}

/// One instance's records in the audit stream.
pub struct StreamSource {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    stream: async_nats::jetstream::stream::Stream,
    feed: Feed,
    subject: String,
    instance: String,
    /// `None` until the first record: then started from the genesis, or (a durable
    /// consumer resuming) from the first record's link, which the cursor check proves.
    chain: Option<Chain>,
    keys: Option<VerifierSet>,
    /// Records of the last message not handed over yet.
    buffered: VecDeque<Record>,
    /// The stream sequence of the last message read.
    read_seq: u64,
    /// The stream sequence of the instance's last message, when last asked.
    last_seq: u64,
    /// Records before this one are checked but not handed over.
    from: u64,
    /// The stream did not answer when last asked (said once in the log).
    unreachable: bool,
}

impl std::fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSource").field("subject", &self.subject).field("read_seq", &self.read_seq).finish()
    }
}

impl StreamSource {
    /// The records of `instance` in `stream`, from the first (the chain is checked from the
    /// genesis); records before `from` are read and checked but not handed over. With
    /// `keys`, every checkpoint's signature is verified too.
    pub fn open(
        url: &str,
        stream: &str,
        instance: &str,
        from: u64,
        keys: Option<VerifierSet>,
    ) -> Result<StreamSource, TransportError> {
        Self::open_as(url, stream, instance, from, keys, None)
    }

    /// As [`StreamSource::open`], or with `durable`, through the durable pull consumer of
    /// that name. A durable consumer resuming (`from` > 1) starts at the last message it
    /// acknowledged, which holds record `from` (the caller's cursor, whose hash the caller
    /// checks; [`pgtrail_reader::consume`] does); records are then checked from that
    /// message's first link. The consumer is positioned there again at every open (a
    /// message delivered to a process that died would otherwise wait for its
    /// acknowledgement time): one process per consumer name and instance.
    pub fn open_as(
        url: &str,
        stream: &str,
        instance: &str,
        from: u64,
        keys: Option<VerifierSet>,
        durable: Option<&str>,
    ) -> Result<StreamSource, TransportError> {
        let runtime = crate::runtime()?;
        let subject = subject(instance)?;
        let (client, stream, feed) = runtime.block_on(async {
            let client = crate::connect(url).await?;
            let jetstream = async_nats::jetstream::new(client.clone());
            let stream = jetstream.get_stream(stream).await.map_err(|e| {
                if crate::is_not_found(&e) { TransportError::Missing(stream.to_owned()) } else { js(e) }
            })?;
            let feed = match durable {
                None => Feed::Ordered(ordered(&stream, &subject, 1).await?),
                Some(name) => {
                    let start = if from > 1 { acknowledged(&stream, name).await? } else { 0 };
                    let messages = position(&stream, name, &subject, start).await?;
                    Feed::Durable { name: name.to_owned(), messages, pending: VecDeque::new() }
                }
            };
            Ok::<_, TransportError>((client, stream, feed))
        })?;
        Ok(StreamSource {
            runtime,
            client,
            stream,
            feed,
            chain: None,
            instance: instance.to_owned(),
            subject,
            keys,
            buffered: VecDeque::new(),
            read_seq: 0,
            last_seq: 0,
            from: from.max(1),
            unreachable: false,
        })
    }

    /// What the records read so far were (envelopes, checkpoints, the last one).
    pub fn chain(&self) -> Chain {
        self.chain.clone().unwrap_or_else(|| Chain::new(&self.instance))
    }

    /// The next record, checked; `Ok(None)` when the stream holds nothing more now.
    pub fn next_checked(&mut self) -> Result<Option<Record>, TransportError> {
        loop {
            while let Some(record) = self.buffered.pop_front() {
                if self.chain.is_none() {
                    self.chain = Some(self.start_chain(&record)?);
                }
                let chain = self.chain.as_mut().expect("started above");
                chain.push(&record, self.keys.as_ref()).map_err(|what| self.corrupt(what))?;
                if record.seq >= self.from {
                    return Ok(Some(record));
                }
            }
            if self.read_seq >= self.last_seq {
                match self.runtime.block_on(last_sequence(&self.stream, &self.subject)) {
                    Ok(last) => {
                        if self.unreachable {
                            tracing::info!(subject = %self.subject, "the audit stream answers again");
                            self.unreachable = false;
                        }
                        self.last_seq = last;
                    }
                    // No leader for a moment (a server died, an election), or no servers:
                    // nothing more now; a follower asks again.
                    Err(e) => {
                        if !self.unreachable {
                            tracing::warn!(subject = %self.subject, error = %e, "the audit stream does not answer; waiting");
                            self.unreachable = true;
                        }
                        return Ok(None);
                    }
                }
                if self.read_seq >= self.last_seq {
                    return Ok(None);
                }
            }
            let message = self.runtime.block_on(next_message(
                &mut self.feed,
                &self.stream,
                &self.subject,
                self.read_seq,
                self.last_seq,
            ))?;
            let seq = message.info().map_err(|e| TransportError::JetStream(e.to_string()))?.stream_sequence;
            if seq <= self.read_seq {
                // A durable consumer's redelivery of a message read already (its
                // acknowledgement time passed, or the consumer was positioned again):
                // acknowledgements go to the newest delivery.
                if let (Feed::Durable { pending, .. }, Some(reply)) = (&mut self.feed, &message.reply)
                    && let Some(held) = pending.iter_mut().find(|held| held.stream_seq == seq)
                {
                    held.reply = reply.clone();
                }
                continue;
            }
            self.read_seq = seq;
            let records = Record::parse_all(&message.payload).map_err(|what| TransportError::Foreign {
                subject: self.subject.clone(),
                stream_seq: seq,
                what,
            })?;
            let Some(last) = records.last() else {
                return Err(self.corrupt("an empty message".into()));
            };
            if let (Feed::Durable { pending, .. }, Some(reply)) = (&mut self.feed, &message.reply) {
                pending.push_back(Delivered { stream_seq: seq, last_record: last.seq, reply: reply.clone() });
            }
            self.buffered.extend(records);
        }
    }

    /// The chain the first record read is checked against: from the genesis when it is
    /// record 1; a durable consumer resuming starts at its last acknowledged message, at or
    /// before the cursor, and is checked from that message's first link (the record at the
    /// cursor then has the cursor's hash, or the consumer's cursor check fails).
    fn start_chain(&self, first: &Record) -> Result<Chain, TransportError> {
        if first.seq == 1 {
            return Ok(Chain::new(&self.instance));
        }
        match &self.feed {
            Feed::Durable { .. } if first.seq <= self.from => {
                Ok(Chain::resume(&self.instance, first.seq - 1, first.prev_hash))
            }
            Feed::Durable { name, .. } => Err(self.corrupt(format!(
                "the durable consumer {name} starts at record {}, after record {} where its cursor stands: \
                 the records between would be skipped (was the consumer changed by hand?)",
                first.seq, self.from
            ))),
            Feed::Ordered(_) => Err(self.corrupt(format!(
                "the subject's first message starts at record {}, not 1 (records expired or were removed)",
                first.seq
            ))),
        }
    }

    /// Acknowledges to the durable consumer every message whose records are all at or
    /// before `seq` (the consumer's cursor is saved up to there). An acknowledgement that
    /// does not reach the servers only means that the next open reads those messages again.
    fn acknowledge(&mut self, seq: u64) {
        let Feed::Durable { pending, name, .. } = &mut self.feed else { return };
        let mut newest = None;
        while pending.front().is_some_and(|held| held.last_record <= seq) {
            newest = pending.pop_front();
        }
        let Some(newest) = newest else { return };
        // AckPolicy::All: acknowledging the newest acknowledges those before it. Waiting for
        // the server's answer keeps acknowledgements in step with saved cursors.
        let client = self.client.clone();
        let acked = self.runtime.block_on(async move {
            tokio::time::timeout(Duration::from_secs(5), client.request(newest.reply, "+ACK".into())).await
        });
        if !matches!(acked, Ok(Ok(_))) {
            tracing::debug!(consumer = %name, stream_seq = newest.stream_seq, "an acknowledgement was not answered");
        }
    }

    fn corrupt(&self, what: String) -> TransportError {
        TransportError::Foreign { subject: self.subject.clone(), stream_seq: self.read_seq, what }
    }
}

impl RecordSource for StreamSource {
    fn next_record(&mut self) -> Result<Option<Record>, JournalError> {
        self.next_checked().map_err(|e| JournalError::Corrupt {
            path: PathBuf::from(format!("nats:{}", self.subject)),
            offset: self.read_seq,
            what: e.to_string(),
        })
    }

    fn instance(&self) -> Option<&str> {
        Some(&self.instance)
    }

    fn consumed(&mut self, seq: u64) -> Result<(), JournalError> {
        self.acknowledge(seq);
        Ok(())
    }
}

/// The instances to read: those `named`, or every one the stream holds (an error when it
/// holds none yet).
pub fn stream_instances(url: &str, stream: &str, named: &[String]) -> Result<Vec<String>, TransportError> {
    if !named.is_empty() {
        return Ok(named.to_vec());
    }
    let found = instances(url, stream)?;
    if found.is_empty() {
        return Err(TransportError::Empty(stream.to_owned()));
    }
    Ok(found)
}

/// Consumers' origins: the instances [`stream_instances`] gives, each read from the stream;
/// with `consumer`, through that named consumer (a durable consumer per instance, the
/// cursor in the stream's key-value bucket).
pub fn origins(
    url: &str,
    stream: &str,
    named: &[String],
    consumer: Option<&str>,
) -> Result<Vec<pgtrail_reader::Origin>, TransportError> {
    let mut origins = Vec::new();
    for instance in stream_instances(url, stream, named)? {
        let cursor = match consumer {
            Some(name) => Some(std::sync::Arc::new(crate::cursor::KvCursor::open(url, stream, name, &instance)?)),
            None => None,
        };
        let origin = StreamOrigin { url: url.to_owned(), stream: stream.to_owned(), instance, cursor };
        origins.push(pgtrail_reader::Origin::Remote(std::sync::Arc::new(origin)));
    }
    Ok(origins)
}

/// One instance of the audit stream as a consumer's origin (`--nats`). Without a named
/// consumer, each open reads the subject from its first message, checking the chain from
/// the genesis; with one, the cursor is kept in the stream's key-value bucket and reading
/// resumes through the durable consumer where it was acknowledged.
#[derive(Debug, Clone)]
pub struct StreamOrigin {
    pub url: String,
    pub stream: String,
    pub instance: String,
    pub cursor: Option<std::sync::Arc<crate::cursor::KvCursor>>,
}

impl pgtrail_reader::RemoteSource for StreamOrigin {
    fn open(&self, from: u64) -> Result<Box<dyn RecordSource>, JournalError> {
        let durable = self.cursor.as_ref().map(|cursor| cursor.durable_name());
        let source =
            StreamSource::open_as(&self.url, &self.stream, &self.instance, from, None, durable).map_err(|e| {
                JournalError::Io {
                    path: PathBuf::from(format!("nats:{SUBJECT_PREFIX}.{}", self.instance)),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
        Ok(Box::new(source))
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn cursor_store(&self) -> Option<std::sync::Arc<dyn pgtrail_reader::CursorStore>> {
        self.cursor.clone().map(|cursor| cursor as _)
    }
}

/// The next message on the subject (the stream says there is one), starting the
/// consumer again after the last message read when it stalls or fails (a durable one at
/// its oldest message not acknowledged; what was read already is skipped); the chain
/// check would catch anything a restart skipped or repeated.
async fn next_message(
    feed: &mut Feed,
    stream: &async_nats::jetstream::stream::Stream,
    subject: &str,
    read_seq: u64,
    last_seq: u64,
) -> Result<async_nats::jetstream::Message, TransportError> {
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    loop {
        match tokio::time::timeout(STALL, feed.next()).await {
            Ok(Some(Ok(message))) => return Ok(message),
            Ok(Some(Err(e))) => {
                tracing::debug!(subject = %subject, error = %e, "the stream's consumer failed")
            }
            Ok(None) => tracing::debug!(subject = %subject, "the stream's consumer ended"),
            Err(_) => tracing::debug!(subject = %subject, "the stream's consumer stalled"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TransportError::JetStream(format!(
                "message {} of {} did not arrive in {} s",
                last_seq,
                subject,
                ARRIVAL.as_secs()
            )));
        }
        if let Err(e) = feed.restart(stream, subject, read_seq).await {
            tracing::debug!(subject = %subject, error = %e, "the stream's consumer cannot start yet");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Delivery from stream sequence `start` (0 or 1: from the first message).
fn starting_at(start: u64) -> DeliverPolicy {
    if start <= 1 { DeliverPolicy::All } else { DeliverPolicy::ByStartSequence { start_sequence: start } }
}

/// An ordered consumer of `subject` from stream sequence `start` (see [`starting_at`]).
async fn ordered(
    stream: &async_nats::jetstream::stream::Stream,
    subject: &str,
    start: u64,
) -> Result<Ordered, TransportError> {
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: starting_at(start),
            ..OrderedConfig::default()
        })
        .await
        .map_err(js)?;
    consumer.messages().await.map_err(js)
}

/// The stream sequence of the last message the durable consumer `name` acknowledged (0:
/// none, or no such consumer yet).
async fn acknowledged(stream: &async_nats::jetstream::stream::Stream, name: &str) -> Result<u64, TransportError> {
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    match stream.consumer_info(name).await {
        Ok(info) => Ok(info.ack_floor.stream_sequence),
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(0),
        Err(e) => Err(js(e)),
    }
}

/// (Re)creates the durable pull consumer `name` of `subject` delivering from stream
/// sequence `start` (0: the first message), and its message stream. JetStream 2.9 cannot
/// move a consumer, so it is deleted and made again; its position is what this source
/// acknowledged, which never passes the saved cursor.
async fn position(
    stream: &async_nats::jetstream::stream::Stream,
    name: &str,
    subject: &str,
    start: u64,
) -> Result<async_nats::jetstream::consumer::pull::Stream, TransportError> {
    use async_nats::jetstream::consumer::pull::Config;
    if let Err(e) = stream.delete_consumer(name).await {
        let missing = matches!(e.kind(), async_nats::jetstream::stream::ConsumerErrorKind::JetStream(api)
            if api.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND);
        if !missing {
            return Err(js(e));
        }
    }
    let consumer = stream
        .create_consumer(Config {
            durable_name: Some(name.to_owned()),
            description: Some(format!("pgtrail consumer of {subject}; its cursor is in the key-value bucket")),
            filter_subject: subject.to_owned(),
            deliver_policy: starting_at(start),
            ack_policy: AckPolicy::All,
            // Messages are held until the consumer's output is durable (an archive file
            // rolled, a SIEM batch confirmed); a redelivery meanwhile is skipped.
            ack_wait: Duration::from_secs(10 * 60),
            max_ack_pending: -1,
            ..Config::default()
        })
        .await
        .map_err(js)?;
    consumer.messages().await.map_err(js)
}

/// The stream sequence of the subject's last message (0: none).
async fn last_sequence(stream: &async_nats::jetstream::stream::Stream, subject: &str) -> Result<u64, TransportError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(message.sequence),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(js(e)),
    }
}

fn js(e: impl std::fmt::Display) -> TransportError {
    TransportError::JetStream(e.to_string())
}

/// Reads every record of `instance` in the stream and checks the chain from its genesis,
/// each checkpoint's signature with `keys` included. `Err(TransportError::Foreign)` names
/// the first record that fails (a gap, a reorder, a duplicate, a changed byte).
pub fn verify_instance(
    url: &str,
    stream: &str,
    instance: &str,
    keys: &VerifierSet,
) -> Result<pgtrail_journal::VerifyReport, TransportError> {
    let mut source = StreamSource::open(url, stream, instance, 1, Some(keys.clone()))?;
    while source.next_checked()?.is_some() {}
    Ok(source.chain().report())
}
