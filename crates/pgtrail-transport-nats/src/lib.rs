//! Owns: the fleet transport on NATS JetStream (the only crate that depends on
//! async-nats): publishing journals to the audit stream (see [`publish`]) and the
//! audit stream itself, created or checked by `pgtrail transport init`: one subject per
//! journal instance (`pgtrail.records.<instance>`), file storage, replicas, a retention age, a de-duplication window for resends, no rollups, and
//! DenyDelete and DenyPurge, so that nobody with access to the stream's API can take
//! records out of it; and beside it the key-value bucket of named consumers' cursors
//! (see [`cursor`]). It plugs in behind small traits of the core crates: a journal writer
//! publishes through `pgtrail_journal::ship::Transport` (the binary registers
//! [`transport`] for `[transport.nats]`), consumers read through the reader's
//! `RemoteSource` and keep cursors through its `CursorStore`; another broker would
//! implement the same three.
//! Must not: know what a record holds, or change a stream it was only asked to check.

use std::time::Duration;

mod config;
pub mod cursor;
mod publish;
mod running;
mod source;

/// The NATS client, for tools and tests that talk to the servers themselves.
pub use async_nats;
pub use config::{NatsConfigError, NatsSection, NatsTransport, default_state, transport};
pub use cursor::KvCursor;

pub use publish::{Position, PublishSettings, publish};
pub use source::{StreamOrigin, StreamSource, instances, origins, stream_instances, verify_instance};

use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};

/// The subjects of the audit stream: one per journal instance under this prefix.
pub const SUBJECT_PREFIX: &str = "pgtrail.records";

/// The subject of one instance's records. An instance id that cannot be part of a NATS
/// subject (whitespace, a `*` or `>` token, an empty token as in `a..b`) is refused; dots
/// are kept (a host name `db1.example.com` is the subject `pgtrail.records.db1.example.com`).
pub fn subject(instance: &str) -> Result<String, TransportError> {
    let usable = !instance.is_empty()
        && instance.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && !token.chars().any(|c| c.is_whitespace() || c.is_control())
        });
    if !usable {
        return Err(TransportError::Instance(instance.to_owned()));
    }
    Ok(format!("{SUBJECT_PREFIX}.{instance}"))
}

/// The audit stream wanted.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    pub replicas: usize,
    /// Records older than this expire (0: never).
    pub max_age: Duration,
    /// A record published twice within this window (same Nats-Msg-Id) is stored once.
    pub duplicate_window: Duration,
}

impl StreamSpec {
    pub const NAME: &str = "PGTRAIL";
    pub const REPLICAS: usize = 3;
    pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

    /// The stream's JetStream configuration.
    pub fn config(&self) -> Config {
        Config {
            name: self.name.clone(),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            num_replicas: self.replicas,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            allow_rollup: false,
            deny_delete: true,
            deny_purge: true,
            description: Some("pgtrail audit records: one subject per journal instance".into()),
            ..Config::default()
        }
    }

    /// What in an existing stream's configuration falls short of this spec, in words.
    pub fn problems(&self, found: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        if found.num_replicas < self.replicas {
            problems.push(format!(
                "{} replica(s), {} wanted: losing a node could lose records",
                found.num_replicas, self.replicas
            ));
        }
        if !found.deny_delete {
            problems.push("deleting messages is allowed (DenyDelete is off)".into());
        }
        if !found.deny_purge {
            problems.push("purging is allowed (DenyPurge is off)".into());
        }
        if found.allow_rollup {
            problems.push("rollups are allowed (a rollup message erases a subject's history)".into());
        }
        let wanted = format!("{SUBJECT_PREFIX}.>");
        if !found.subjects.contains(&wanted) {
            problems.push(format!("its subjects {:?} do not take in {wanted}", found.subjects));
        }
        if found.storage != StorageType::File {
            problems.push("memory storage: records do not survive a restart of the servers".into());
        }
        if found.duplicate_window < Duration::from_secs(60) {
            problems.push(format!(
                "a de-duplication window of {} s: a resend after a longer outage is stored twice",
                found.duplicate_window.as_secs()
            ));
        }
        if self.max_age > Duration::ZERO && found.max_age > Duration::ZERO && found.max_age < self.max_age {
            problems.push(format!(
                "records expire after {} days, {} wanted",
                found.max_age.as_secs() / 86_400,
                self.max_age.as_secs() / 86_400
            ));
        }
        problems
    }
}

/// What can go wrong on the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot reach NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("the stream {name} is not fit for an audit trail: {}", problems.join("; "))]
    Unfit { name: String, problems: Vec<String> },
    #[error("the stream {0} does not exist (run pgtrail transport init without --check to create it)")]
    Missing(String),
    #[error("the stream {0} holds no records yet")]
    Empty(String),
    #[error("message {stream_seq} on {subject} is not a run of pgtrail journal records: {what}")]
    Foreign { subject: String, stream_seq: u64, what: String },
    #[error(
        "the stream holds records of {subject} up to {found}, but it had acknowledged up to {saved}: \
         records were lost from the stream (was it deleted and created again?)"
    )]
    Lost { subject: String, saved: u64, found: u64 },
    #[error(
        "record {record} on {subject} is not the local journal's record {record}: \
         the stream holds another journal of this instance (a journal started again under the same instance name?)"
    )]
    Diverged { subject: String, record: u64 },
    #[error("the publisher's position file {path}: {message}")]
    State { path: std::path::PathBuf, message: String },
    #[error("the local journal: {0}")]
    Journal(String),
    #[error("the consumer name {0:?} cannot name a JetStream consumer: letters, digits, `-` and `_` only")]
    Consumer(String),
    #[error(
        "the instance id {0:?} cannot name a NATS subject (no whitespace, no empty, `*` or `>` parts between dots): \
         set [instance] instance_id"
    )]
    Instance(String),
}

/// What `init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// It was there already, and fit.
    Fit,
}

/// A small runtime for the synchronous readers (consumers run on the blocking pool).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, TransportError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pgtrail-nats")
        .enable_all()
        .build()
        .map_err(|e| TransportError::JetStream(format!("starting the NATS client's runtime: {e}")))
}

/// Connects to the NATS servers at `url` (comma-separated URLs for a cluster).
pub async fn connect(url: &str) -> Result<async_nats::Client, TransportError> {
    let addrs: Vec<&str> = url.split(',').map(str::trim).collect();
    let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5)).name("pgtrail");
    options
        .connect(addrs.as_slice())
        .await
        .map_err(|e| TransportError::Connect { url: url.to_owned(), message: e.to_string() })
}

/// Creates the stream `spec` describes and its cursors' bucket, or checks those there
/// (only checks with `check_only`): a stream that falls short is reported, never changed.
pub async fn init(url: &str, spec: &StreamSpec, check_only: bool) -> Result<Outcome, TransportError> {
    let client = connect(url).await?;
    let jetstream = async_nats::jetstream::new(client);
    let outcome = init_stream(&jetstream, spec, check_only).await?;
    let bucket = cursor::bucket(&spec.name);
    match jetstream.get_stream(format!("KV_{bucket}")).await {
        Ok(mut found) => {
            let info = found.info().await.map_err(|e| TransportError::JetStream(e.to_string()))?;
            if info.config.num_replicas < spec.replicas {
                return Err(TransportError::Unfit {
                    name: bucket,
                    problems: vec![format!(
                        "{} replica(s), {} wanted: losing a node could lose consumers' cursors",
                        info.config.num_replicas, spec.replicas
                    )],
                });
            }
        }
        Err(e) if is_not_found(&e) => {
            if check_only {
                return Err(TransportError::Missing(bucket));
            }
            jetstream
                .create_stream(cursor::bucket_stream(&spec.name, spec.replicas))
                .await
                .map_err(|e| TransportError::JetStream(e.to_string()))?;
        }
        Err(e) => return Err(TransportError::JetStream(e.to_string())),
    }
    Ok(outcome)
}

async fn init_stream(
    jetstream: &async_nats::jetstream::Context,
    spec: &StreamSpec,
    check_only: bool,
) -> Result<Outcome, TransportError> {
    match jetstream.get_stream(&spec.name).await {
        Ok(mut stream) => {
            let info = stream.info().await.map_err(|e| TransportError::JetStream(e.to_string()))?;
            let problems = spec.problems(&info.config);
            if problems.is_empty() {
                Ok(Outcome::Fit)
            } else {
                Err(TransportError::Unfit { name: spec.name.clone(), problems })
            }
        }
        Err(e) if is_not_found(&e) => {
            if check_only {
                return Err(TransportError::Missing(spec.name.clone()));
            }
            jetstream.create_stream(spec.config()).await.map_err(|e| TransportError::JetStream(e.to_string()))?;
            Ok(Outcome::Created)
        }
        Err(e) => Err(TransportError::JetStream(e.to_string())),
    }
}

pub(crate) fn is_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::context::GetStreamErrorKind;
    matches!(e.kind(), GetStreamErrorKind::JetStream(api) if api.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StreamSpec {
        StreamSpec {
            name: "PGTRAIL".into(),
            replicas: 3,
            max_age: Duration::from_secs(400 * 86_400),
            duplicate_window: StreamSpec::DUPLICATE_WINDOW,
        }
    }

    #[test]
    fn an_instance_id_that_cannot_be_a_subject_is_refused() {
        assert_eq!(subject("db1.example.com").unwrap(), "pgtrail.records.db1.example.com");
        for bad in ["", "a..b", "a.>", "*", "a b", "a.", ".a", "a\tb"] {
            assert!(subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_stream_it_creates_is_fit() {
        assert_eq!(spec().problems(&spec().config()), Vec::<String>::new());
    }

    #[test]
    fn every_way_a_stream_can_lose_records_is_named() {
        let mut config = spec().config();
        config.num_replicas = 1;
        config.deny_delete = false;
        config.deny_purge = false;
        config.allow_rollup = true;
        config.storage = StorageType::Memory;
        config.duplicate_window = Duration::from_secs(2);
        config.max_age = Duration::from_secs(86_400);
        config.subjects = vec!["other.>".into()];
        let problems = spec().problems(&config);
        assert_eq!(problems.len(), 8, "{problems:#?}");
        assert!(problems[0].starts_with("1 replica(s), 3 wanted"));
        assert!(problems.iter().any(|p| p.contains("DenyPurge is off")));
    }
}
