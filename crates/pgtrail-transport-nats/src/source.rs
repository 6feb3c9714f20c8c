//! The audit stream as a record source: one instance's subject, read in order through an
//! ordered pull consumer, each message split back into the journal records it carries and
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

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
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
    let runtime = runtime()?;
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

/// One instance's records in the audit stream.
pub struct StreamSource {
    runtime: tokio::runtime::Runtime,
    stream: async_nats::jetstream::stream::Stream,
    messages: Ordered,
    subject: String,
    instance: String,
    chain: Chain,
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
        let runtime = runtime()?;
        let subject = subject(instance)?;
        let (stream, messages) = runtime.block_on(async {
            let client = crate::connect(url).await?;
            let jetstream = async_nats::jetstream::new(client);
            let stream = jetstream.get_stream(stream).await.map_err(|e| {
                if crate::is_not_found(&e) { TransportError::Missing(stream.to_owned()) } else { js(e) }
            })?;
            let messages = ordered(&stream, &subject, 0).await?;
            Ok::<_, TransportError>((stream, messages))
        })?;
        Ok(StreamSource {
            runtime,
            stream,
            messages,
            chain: Chain::new(instance),
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
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The next record, checked; `Ok(None)` when the stream holds nothing more now.
    pub fn next_checked(&mut self) -> Result<Option<Record>, TransportError> {
        loop {
            while let Some(record) = self.buffered.pop_front() {
                self.chain.push(&record, self.keys.as_ref()).map_err(|what| self.corrupt(what))?;
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
                &mut self.messages,
                &self.stream,
                &self.subject,
                self.read_seq,
                self.last_seq,
            ))?;
            let seq = message.info().map_err(|e| TransportError::JetStream(e.to_string()))?.stream_sequence;
            self.read_seq = seq;
            let records = Record::parse_all(&message.payload).map_err(|what| TransportError::Foreign {
                subject: self.subject.clone(),
                stream_seq: seq,
                what,
            })?;
            if records.is_empty() {
                return Err(self.corrupt("an empty message".into()));
            }
            self.buffered.extend(records);
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

/// Consumers' origins: the instances [`stream_instances`] gives, each read from the stream.
pub fn origins(url: &str, stream: &str, named: &[String]) -> Result<Vec<pgtrail_reader::Origin>, TransportError> {
    Ok(stream_instances(url, stream, named)?
        .into_iter()
        .map(|instance| {
            let origin = StreamOrigin { url: url.to_owned(), stream: stream.to_owned(), instance };
            pgtrail_reader::Origin::Remote(std::sync::Arc::new(origin))
        })
        .collect())
}

/// One instance of the audit stream as a consumer's origin (`--nats`): each open reads the
/// subject from its first message, checking the chain from the genesis.
#[derive(Debug, Clone)]
pub struct StreamOrigin {
    pub url: String,
    pub stream: String,
    pub instance: String,
}

impl pgtrail_reader::RemoteSource for StreamOrigin {
    fn open(&self, from: u64) -> Result<Box<dyn RecordSource>, JournalError> {
        let source =
            StreamSource::open(&self.url, &self.stream, &self.instance, from, None).map_err(|e| JournalError::Io {
                path: PathBuf::from(format!("nats:{SUBJECT_PREFIX}.{}", self.instance)),
                source: std::io::Error::other(e.to_string()),
            })?;
        Ok(Box::new(source))
    }

    fn instance(&self) -> &str {
        &self.instance
    }
}

/// The next message on the subject (the stream says there is one), starting the
/// consumer again after the last message read when it stalls or fails; the chain check
/// would catch anything a restart skipped or repeated.
async fn next_message(
    messages: &mut Ordered,
    stream: &async_nats::jetstream::stream::Stream,
    subject: &str,
    read_seq: u64,
    last_seq: u64,
) -> Result<async_nats::jetstream::Message, TransportError> {
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    loop {
        match tokio::time::timeout(STALL, messages.next()).await {
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
        match ordered(stream, subject, read_seq).await {
            Ok(started) => *messages = started,
            Err(e) => {
                tracing::debug!(subject = %subject, error = %e, "the stream's consumer cannot start yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// An ordered consumer of `subject` from the message after stream sequence `after`.
async fn ordered(
    stream: &async_nats::jetstream::stream::Stream,
    subject: &str,
    after: u64,
) -> Result<Ordered, TransportError> {
    let deliver_policy =
        if after == 0 { DeliverPolicy::All } else { DeliverPolicy::ByStartSequence { start_sequence: after + 1 } };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy,
            ..OrderedConfig::default()
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

fn runtime() -> Result<tokio::runtime::Runtime, TransportError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pgtrail-nats")
        .enable_all()
        .build()
        .map_err(|e| TransportError::JetStream(format!("starting the NATS client's runtime: {e}")))
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
