//! Owns: the fleet transport on Kafka (the only crate that depends on rdkafka, and so on
//! librdkafka): publishing journals to one topic per journal instance
//! (`pgtrail.records.<instance>`, one partition) through an idempotent producer with
//! `acks=all`, several messages in flight, ordered and gapless (see [`publish`]), and
//! reading a topic back as a record source with the chain checked from its genesis (see
//! [`source`]). It plugs in behind the same traits as the NATS transport:
//! `pgtrail_journal::ship::Transport` for journal writers (the binary registers
//! [`transport`] for `[transport.kafka]`) and the reader's `RemoteSource` for consumers.
//! Must not: know what a record holds; delete or rewrite anything in a topic.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;

mod config;
pub mod publish;
mod running;
pub mod source;

/// The Kafka client library, for tools and tests that talk to the brokers themselves.
pub use rdkafka;

pub use config::{KafkaSection, KafkaTransport, default_state, transport};
pub use publish::{Position, PublishSettings, publish};
pub use source::{KafkaOrigin, KafkaSource, instances, origins, topic_instances, verify_instance};

/// The topics of the audit trail: one per journal instance under this prefix.
pub const TOPIC_PREFIX: &str = "pgtrail.records";

/// The topic of one instance's records. Kafka topic names are letters, digits, `.`, `_`
/// and `-`, at most 249 characters; an instance id that cannot be one is refused.
pub fn topic(instance: &str) -> Result<String, KafkaError> {
    let name = format!("{TOPIC_PREFIX}.{instance}");
    let usable = !instance.is_empty()
        && name.len() <= 249
        && instance.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !usable {
        return Err(KafkaError::Instance(instance.to_owned()));
    }
    Ok(name)
}

/// The brokers to reach and how: `HOST:PORT`, comma-separated; TLS unless every broker is
/// on this host or plaintext is allowed on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brokers {
    pub list: String,
    pub tls: bool,
    /// The CA certificates (PEM) that sign the brokers' certificates (default: the system's).
    pub ca_file: Option<PathBuf>,
}

impl Brokers {
    /// Checks `list`: each broker `HOST:PORT`; plaintext to another host is refused unless
    /// `allow_plaintext` (audit records and their metadata would cross the network in clear).
    pub fn new(list: &str, tls: bool, ca_file: Option<PathBuf>, allow_plaintext: bool) -> Result<Brokers, KafkaError> {
        let mut brokers = Vec::new();
        for broker in list.split(',').map(str::trim) {
            let Some((host, port)) = broker.rsplit_once(':') else {
                return Err(KafkaError::Brokers(list.to_owned()));
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
                return Err(KafkaError::Brokers(list.to_owned()));
            }
            let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !tls && !loopback && !allow_plaintext {
                return Err(KafkaError::Plaintext(list.to_owned()));
            }
            brokers.push(broker);
        }
        Ok(Brokers { list: brokers.join(","), tls, ca_file })
    }

    /// A client configuration reaching these brokers.
    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.list)
            .set("security.protocol", if self.tls { "ssl" } else { "plaintext" })
            .set("client.id", "pgtrail")
            // librdkafka's own log goes to ours, at its level.
            .set("log_level", "4");
        if let Some(ca) = &self.ca_file {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        config
    }

    /// A consumer's configuration: it reads partitions it is given (no group membership,
    /// nothing committed) and sees every stored message (`read_uncommitted`: pgtrail writes
    /// no transactions).
    pub(crate) fn reader(&self) -> ClientConfig {
        let mut config = self.client();
        config
            .set("group.id", "pgtrail-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("isolation.level", "read_uncommitted");
        config
    }
}

impl std::fmt::Display for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", if self.tls { "TLS " } else { "" }, self.list)
    }
}

/// What can go wrong with the Kafka transport.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("Kafka brokers {0:?}: each must look like HOST:PORT (comma-separated)")]
    Brokers(String),
    #[error(
        "Kafka brokers {0:?} include another host without TLS: set tls = true (--kafka-tls), or \
         allow_plaintext = true if the network is trusted"
    )]
    Plaintext(String),
    #[error("instance id {0:?} cannot name a Kafka topic (letters, digits, '.', '_' and '-' only)")]
    Instance(String),
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error("the journal: {0}")]
    Journal(String),
    #[error("the publish position {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error(
        "the topic {topic} holds records up to {found}, but this publisher was acknowledged up to {saved}: \
         the brokers lost records"
    )]
    Lost { topic: String, saved: u64, found: u64 },
    #[error(
        "the topic {topic} holds a record {record} that is not this journal's: another journal publishes as this instance"
    )]
    Diverged { topic: String, record: u64 },
    #[error("the topic {topic} at offset {offset}: {what}")]
    Foreign { topic: String, offset: i64, what: String },
    #[error("no topic {TOPIC_PREFIX}.* on the brokers {0} yet")]
    Empty(String),
}

impl From<rdkafka::error::KafkaError> for KafkaError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        KafkaError::Kafka(e.to_string())
    }
}

/// The context of every client pgtrail makes: librdkafka's own log and error reports go to
/// the debug level. With a broker down, librdkafka reports each failed connection, several
/// times a second and from several threads; the publisher says it once instead (and again
/// when it recovers), as the NATS transport does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::debug!(target: "librdkafka", ?level, facility, "{message}");
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, "{reason}");
    }
}

impl ConsumerContext for Quiet {}

/// How long a metadata or offset request may take.
const REQUEST: Duration = Duration::from_secs(10);
