//! `[transport.nats]` in `pgtrail.toml`: the proxy and `pgtrail ingest` publish their
//! journal to the audit stream as it is written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{PublishSettings, StreamSpec};

/// The journal writer's resolver of `[transport.nats]` (see the capture crate's
/// `Transports`): the table checked and resolved for the journal in `journal_dir`.
pub fn transport(
    table: &toml::Value,
    journal_dir: &Path,
) -> Result<std::sync::Arc<dyn pgtrail_journal::ship::Transport>, String> {
    let section: NatsSection = table.clone().try_into().map_err(|e| format!("[transport.nats]: {e}"))?;
    Ok(std::sync::Arc::new(section.resolve(journal_dir).map_err(|e| e.to_string())?))
}

/// `[transport.nats]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// The NATS servers: `nats://HOST:PORT` or `tls://HOST:PORT`, comma-separated for a
    /// cluster (any one of them is enough to find the others).
    pub url: String,
    /// The audit stream (created by `pgtrail transport init`).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Where the publisher saves its acknowledged position (default: `nats-position.json`
    /// beside the journal directory). It tells a stream that lost records from one that
    /// never had them.
    pub state: Option<PathBuf>,
    /// Most records in one message (a backlog goes out in runs this long).
    #[serde(default = "default_run_records")]
    pub run_records: usize,
    /// Past this many records durable in the journal and not yet in the stream, a control
    /// event says the transport lags (and another when it has caught up).
    #[serde(default = "default_lag_alarm")]
    pub lag_alarm_records: u64,
    /// With `[delivery] mode = "sync"` (or `sync_fail_closed`): a statement completes only
    /// once its record is in the local journal (fsync) *and* acknowledged by the stream
    /// (stored on its replicas). With `sync_fail_closed`, statements are refused while the
    /// stream is unreachable.
    #[serde(default)]
    pub sync_waits_for_stream: bool,
    /// Plain `nats://` to a host other than this one is refused unless this is set: audit
    /// records and their metadata would cross the network unencrypted.
    #[serde(default)]
    pub allow_plaintext: bool,
}

fn default_stream() -> String {
    StreamSpec::NAME.into()
}

fn default_run_records() -> usize {
    PublishSettings::RUN_RECORDS
}

fn default_lag_alarm() -> u64 {
    10_000
}

/// A `[transport.nats]` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NatsConfigError {
    #[error("transport.nats.url {0:?}: each server must look like nats://HOST:PORT or tls://HOST:PORT")]
    Url(String),
    #[error(
        "transport.nats.url {0:?} reaches another host without TLS: use tls://HOST:PORT, or set \
         transport.nats.allow_plaintext = true if the network is trusted"
    )]
    Plaintext(String),
    #[error("transport.nats.run_records must be between 1 and 10000, not {0}")]
    RunRecords(usize),
    #[error("transport.nats.stream {0:?} is not a JetStream stream name (letters, digits, - and _)")]
    Stream(String),
}

/// What the publisher inside the proxy or `pgtrail ingest` runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTransport {
    pub settings: PublishSettings,
    pub lag_alarm_records: u64,
    pub sync_waits_for_stream: bool,
}

impl NatsSection {
    /// Checks the section and resolves it for the journal in `journal_dir`.
    pub fn resolve(&self, journal_dir: &Path) -> Result<NatsTransport, NatsConfigError> {
        for server in self.url.split(',').map(str::trim) {
            let rest = server
                .strip_prefix("nats://")
                .map(|r| (r, false))
                .or_else(|| server.strip_prefix("tls://").map(|r| (r, true)));
            let Some((rest, tls)) = rest else { return Err(NatsConfigError::Url(self.url.clone())) };
            let authority = rest.split('/').next().unwrap_or_default();
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
            let host = match host_port.rsplit_once(':') {
                Some((host, _)) if !host.ends_with(']') || host.starts_with('[') => host,
                _ => host_port,
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(NatsConfigError::Url(self.url.clone()));
            }
            let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !tls && !loopback && !self.allow_plaintext {
                return Err(NatsConfigError::Plaintext(self.url.clone()));
            }
        }
        if !(1..=10_000).contains(&self.run_records) {
            return Err(NatsConfigError::RunRecords(self.run_records));
        }
        if self.stream.is_empty() || !self.stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(NatsConfigError::Stream(self.stream.clone()));
        }
        let state = self.state.clone().unwrap_or_else(|| default_state(journal_dir));
        Ok(NatsTransport {
            settings: PublishSettings {
                url: self.url.clone(),
                stream: self.stream.clone(),
                run_records: self.run_records,
                run_bytes: PublishSettings::RUN_BYTES,
                ack_timeout: PublishSettings::ACK_TIMEOUT,
                state: Some(state),
                poll: Duration::from_millis(5),
            },
            lag_alarm_records: self.lag_alarm_records,
            sync_waits_for_stream: self.sync_waits_for_stream,
        })
    }
}

/// `nats-position.json` beside the journal directory (not in it: the journal's directory
/// holds only its segments).
pub fn default_state(journal_dir: &Path) -> PathBuf {
    let name = journal_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "journal".into());
    journal_dir.with_file_name(format!("{name}.nats-position.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(url: &str) -> NatsSection {
        toml::from_str(&format!("url = {url:?}")).expect("parses")
    }

    #[test]
    fn plaintext_to_another_host_is_refused_unless_allowed() {
        let dir = Path::new("/var/lib/pgtrail/journal");
        assert!(section("nats://127.0.0.1:4222,nats://localhost:4223").resolve(dir).is_ok());
        assert!(section("tls://nats1.example.com:4222").resolve(dir).is_ok());
        let err = section("nats://nats1.example.com:4222").resolve(dir).unwrap_err();
        assert!(matches!(err, NatsConfigError::Plaintext(_)), "{err}");
        let mut allowed = section("nats://10.0.0.5:4222");
        allowed.allow_plaintext = true;
        assert!(allowed.resolve(dir).is_ok());
        assert!(matches!(section("http://127.0.0.1:4222").resolve(dir), Err(NatsConfigError::Url(_))));
    }

    #[test]
    fn the_writer_resolves_its_table_and_names_a_wrong_key() {
        let table: toml::Value =
            toml::from_str("url = \"nats://127.0.0.1:4222\"\nsync_waits_for_stream = true").unwrap();
        let resolved = transport(&table, Path::new("/j")).unwrap();
        assert!(resolved.sync_waits());
        assert_eq!(resolved.describe(), "JetStream stream PGTRAIL on nats://127.0.0.1:4222");
        let secret: toml::Value = toml::from_str("url = \"tls://audit:s3cret@nats1:4222\"").unwrap();
        let described = transport(&secret, Path::new("/j")).unwrap().describe();
        assert!(!described.contains("s3cret") && described.contains("nats1:4222"), "{described}");
        let wrong: toml::Value = toml::from_str("url = \"nats://127.0.0.1:4222\"\nstreem = \"X\"").unwrap();
        let err = transport(&wrong, Path::new("/j")).unwrap_err();
        assert!(err.starts_with("[transport.nats]") && err.contains("streem"), "{err}");
    }

    #[test]
    fn the_position_file_is_beside_the_journal() {
        let resolved = section("nats://127.0.0.1:4222").resolve(Path::new("/var/lib/pgtrail/journal")).unwrap();
        assert_eq!(resolved.settings.state.as_deref(), Some(Path::new("/var/lib/pgtrail/journal.nats-position.json")));
        assert_eq!(resolved.settings.stream, "PGTRAIL");
    }
}
