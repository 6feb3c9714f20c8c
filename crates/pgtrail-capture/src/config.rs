//! `pgtrail.toml`: parsed strictly (unknown keys are errors), then resolved once into the
//! configuration the layers take. See `pgtrail.example.toml` for every key.
//!
//! Each crate owns its section (its type, defaults, documentation and `validate`); this
//! module only composes them, per subcommand: the proxy needs all of them, `pgtrail
//! ingest` only what a journal writer needs ([`FileConfig::resolve_writer`]), so it needs
//! no upstream. Sections compare by value, so a reload sees exactly what changed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pgtrail_envelope::{EnvelopeConfigError, EnvelopeSection, SealerConfig};
use pgtrail_journal::{
    InstanceSection, JournalConfigError, JournalOptions, JournalSection, RecorderConfig, RecorderSection,
};
use pgtrail_keys::{KeyError, KeysSection};
use pgtrail_metrics::MetricsSection;
use pgtrail_pgaudit::{IngestConfig, PgauditConfigError, PgauditSection};
use pgtrail_proxy::{
    AuthConfig, DeliverySection, PolicyConfig, ProxyConfig, ProxyConfigError, ProxySection, UpstreamConfig,
    UpstreamTlsMode,
};
use serde::Deserialize;

/// A configuration that cannot be used, naming the key or the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration in {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error(
        "no upstream PostgreSQL: set [upstream] host in the configuration file or pass --upstream postgres://HOST:PORT"
    )]
    NoUpstream,
    #[error("no journal directory: set [journal] dir in the configuration file or pass --journal DIR")]
    NoJournal,
    #[error("{0}")]
    UpstreamUrl(String),
    #[error(transparent)]
    Proxy(#[from] ProxyConfigError),
    #[error(transparent)]
    Journal(#[from] JournalConfigError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeConfigError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Pgaudit(#[from] PgauditConfigError),
    #[error("{0}")]
    Transport(String),
}

/// The whole file: one section per crate.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub proxy: ProxySection,
    pub upstream: Option<UpstreamConfig>,
    #[serde(default)]
    pub journal: JournalSection,
    #[serde(default)]
    pub recorder: RecorderSection,
    #[serde(default)]
    pub instance: InstanceSection,
    #[serde(default)]
    pub keys: KeysSection,
    #[serde(default)]
    pub envelope: EnvelopeSection,
    #[serde(default)]
    pub delivery: DeliverySection,
    #[serde(default)]
    pub metrics: MetricsSection,
    pub pgaudit: Option<PgauditSection>,
    /// `[auth]`: token login (OIDC, local tokens) and upstream login without passwords.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[policy]`: password restriction and deny rules, applied in the proxy.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[transport.<kind>]` (`[transport.nats]`): publish the journal to the fleet's audit
    /// stream. Each kind's table belongs to its transport crate (see [`Transports`]).
    #[serde(default)]
    pub transport: std::collections::BTreeMap<String, toml::Value>,
}

/// Turns a `[transport.<kind>]` table into a transport for the journal in the given
/// directory; the error names what is wrong.
pub type TransportResolver = std::sync::Arc<
    dyn Fn(&toml::Value, &Path) -> Result<std::sync::Arc<dyn pgtrail_journal::ship::Transport>, String> + Send + Sync,
>;

/// The transports a journal writer can ship with, by kind: the binary registers each
/// transport crate's resolver, so this crate knows none of them.
#[derive(Clone, Default)]
pub struct Transports(std::collections::BTreeMap<String, TransportResolver>);

impl Transports {
    /// With `kind` (`[transport.<kind>]`) resolved by `resolve`.
    pub fn with(mut self, kind: &str, resolve: TransportResolver) -> Self {
        self.0.insert(kind.to_owned(), resolve);
        self
    }
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// A resolved `[transport.<kind>]`: compares by its table, so a reload sees a change.
#[derive(Clone, Debug)]
pub struct TransportSetting {
    pub kind: String,
    pub table: toml::Value,
    pub transport: std::sync::Arc<dyn pgtrail_journal::ship::Transport>,
}

impl PartialEq for TransportSetting {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.table == other.table
    }
}

/// What a journal writer runs with: the proxy's, or `pgtrail ingest`'s.
#[derive(Debug, Clone, PartialEq)]
pub struct WriterConfig {
    pub journal_dir: PathBuf,
    pub journal: JournalOptions,
    pub recorder: RecorderConfig,
    pub cluster_id: String,
    pub instance_id: String,
    pub envelope: SealerConfig,
    /// The wrapping public key file (data keys are wrapped to it).
    pub wrapping_public_key: PathBuf,
    /// The checkpoint signing key file.
    pub signing_key: PathBuf,
    /// Publishing to the fleet's audit stream (`[transport.<kind>]`).
    pub transport: Option<TransportSetting>,
}

/// Everything `pgtrail proxy` runs with, resolved and validated.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub writer: WriterConfig,
    pub proxy: ProxyConfig,
    /// Async worker threads for the proxy.
    pub workers: usize,
    /// Where to serve /metrics, /livez and /readyz (none: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// pgAudit ingestion in the proxy process.
    pub pgaudit: Option<IngestConfig>,
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    pub journal: Option<PathBuf>,
    pub keys: Option<PathBuf>,
    /// The transports this build has (`[transport.<kind>]`).
    pub transports: Transports,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
    }

    /// The one `[transport.<kind>]` table, resolved by its kind's resolver.
    fn resolve_transport(
        &self,
        transports: &Transports,
        journal_dir: &Path,
    ) -> Result<Option<TransportSetting>, ConfigError> {
        let mut tables = self.transport.iter();
        let Some((kind, table)) = tables.next() else { return Ok(None) };
        if let Some((other, _)) = tables.next() {
            return Err(ConfigError::Transport(format!(
                "[transport.{kind}] and [transport.{other}]: a journal is published to one transport"
            )));
        }
        let resolve = transports.0.get(kind).ok_or_else(|| {
            let known: Vec<&str> = transports.0.keys().map(String::as_str).collect();
            ConfigError::Transport(format!(
                "[transport.{kind}] is not a transport this build has (it has: {})",
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            ))
        })?;
        let transport = resolve(table, journal_dir).map_err(ConfigError::Transport)?;
        Ok(Some(TransportSetting { kind: kind.clone(), table: table.clone(), transport }))
    }

    /// What a journal writer needs: `[journal]`, `[recorder]`, `[instance]`, `[envelope]`,
    /// `[keys]` and the heartbeat of `[delivery]`.
    pub fn resolve_writer(&self, overrides: &Overrides) -> Result<WriterConfig, ConfigError> {
        let journal_dir = overrides.journal.clone().or(self.journal.dir.clone()).ok_or(ConfigError::NoJournal)?;
        self.journal.validate()?;
        self.recorder.validate()?;
        self.envelope.validate()?;
        let instance_id = self.instance.instance_id()?;
        let keys = self.keys.resolve(overrides.keys.as_deref())?;
        let transport = self.resolve_transport(&overrides.transports, &journal_dir)?;
        Ok(WriterConfig {
            transport,
            journal: self.journal.options(instance_id.clone()),
            recorder: self.recorder.recorder_config(self.delivery.heartbeat()),
            cluster_id: self.instance.cluster_id.clone(),
            instance_id,
            envelope: self.envelope.sealer_config(),
            wrapping_public_key: keys.wrapping_public,
            signing_key: keys.signing,
            journal_dir,
        })
    }

    /// Applies the overrides and checks that everything the proxy needs is there.
    pub fn resolve(&self, overrides: &Overrides) -> Result<CaptureConfig, ConfigError> {
        let mut upstream = self.upstream.clone();
        if let Some(url) = &overrides.upstream {
            let (host, port) = parse_upstream_url(url)?;
            let base = upstream.take().unwrap_or(UpstreamConfig {
                host: String::new(),
                port,
                tls: UpstreamTlsMode::default(),
                ca_file: None,
                connect_timeout_ms: 10_000,
            });
            upstream = Some(UpstreamConfig { host, port, ..base });
        }
        let upstream = upstream.ok_or(ConfigError::NoUpstream)?;
        let proxy = self.proxy.proxy_config(
            overrides.listen,
            upstream,
            &self.delivery,
            self.auth.clone(),
            self.policy.clone(),
        )?;
        let writer = self.resolve_writer(overrides)?;
        let pgaudit = self.pgaudit.as_ref().map(|p| p.ingest_config(&writer.journal_dir)).transpose()?;
        Ok(CaptureConfig { pgaudit, metrics_listen: self.metrics.listen, proxy, workers: self.proxy.workers(), writer })
    }
}

/// `postgres://HOST:PORT` (user, password and database are not used: clients bring their own).
pub fn parse_upstream_url(url: &str) -> Result<(String, u16), ConfigError> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| ConfigError::UpstreamUrl(format!("upstream {url:?} must look like postgres://HOST:PORT")))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            (host, port.parse::<u16>().map_err(|_| ConfigError::UpstreamUrl(format!("invalid port in {url:?}")))?)
        }
        _ => (host_port, 5432),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(ConfigError::UpstreamUrl(format!("upstream {url:?} has no host")));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        assert_eq!(parse_upstream_url("postgres://db.example:5433").unwrap(), ("db.example".into(), 5433));
        assert_eq!(parse_upstream_url("postgresql://u:p@10.0.0.1/app").unwrap(), ("10.0.0.1".into(), 5432));
        assert_eq!(parse_upstream_url("postgres://[::1]:6000").unwrap(), ("::1".into(), 6000));
        assert!(parse_upstream_url("mysql://x").is_err());
        assert!(parse_upstream_url("postgres://:5432").is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<FileConfig>("[proxy]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pgtrail.example.toml");
        let config = FileConfig::load(Path::new(path)).unwrap().resolve(&Overrides::default()).unwrap();
        assert_eq!(config.writer.envelope, SealerConfig::default());
        assert_eq!(config.proxy.upstream.port, 5432);
    }

    /// The commented [auth] and [policy] examples, uncommented, are valid.
    #[test]
    fn the_example_auth_and_policy_sections_parse() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pgtrail.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text.find("# [auth]").unwrap();
        let block: String = text[start..]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let config: FileConfig = toml::from_str(&block).unwrap_or_else(|e| panic!("{e}\n{block}"));
        assert_eq!(config.auth.client, pgtrail_proxy::ClientAuth::Token);
        assert_eq!(config.auth.oidc.unwrap().max_token_age_secs, 900);
        assert_eq!(config.auth.mapping.groups["dba"], vec!["postgres".to_owned()]);
        assert_eq!(config.policy.deny.len(), 2);
    }

    /// Issue 14.4: `pgtrail ingest` invented an upstream to satisfy the proxy's resolver.
    #[test]
    fn a_journal_writer_needs_no_upstream() {
        let overrides = Overrides { journal: Some("/tmp/j".into()), keys: Some("/k".into()), ..Overrides::default() };
        let writer = FileConfig::default().resolve_writer(&overrides).unwrap();
        assert_eq!(writer.signing_key, Path::new("/k/signing.key"));
        assert!(matches!(FileConfig::default().resolve(&overrides), Err(ConfigError::NoUpstream)));
    }

    /// The transports are the binary's to register: a kind this build lacks, or two at
    /// once, is named.
    #[test]
    fn a_transport_this_build_lacks_is_named() {
        let overrides = Overrides { journal: Some("/tmp/j".into()), keys: Some("/k".into()), ..Overrides::default() };
        let file: FileConfig = toml::from_str("[transport.kafka]\nbrokers = \"k1:9092\"\n").unwrap();
        let err = file.resolve_writer(&overrides).unwrap_err().to_string();
        assert!(err.contains("[transport.kafka] is not a transport this build has (it has: none)"), "{err}");
        let two: FileConfig = toml::from_str("[transport.kafka]\n[transport.nats]\n").unwrap();
        let err = two.resolve_writer(&overrides).unwrap_err().to_string();
        assert!(err.contains("a journal is published to one transport"), "{err}");
    }

    /// Issue 14.4: configurations compare by value, section by section.
    #[test]
    fn an_unchanged_file_loads_equal_and_a_changed_one_does_not() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pgtrail.example.toml");
        let (a, b) = (FileConfig::load(Path::new(path)).unwrap(), FileConfig::load(Path::new(path)).unwrap());
        assert_eq!(a, b);
        let mut c = b.clone();
        c.envelope.suite = pgtrail_envelope::Suite::Aes256GcmHkdfSha512Commit;
        assert_ne!(a, c);
        let bad = toml::from_str::<FileConfig>("[delivery]\nmode = \"later\"\n").unwrap_err().to_string();
        assert!(bad.contains("async") && bad.contains("sync"), "{bad}");
    }

    #[test]
    fn flags_replace_the_file() {
        let overrides = Overrides {
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            upstream: Some("postgres://127.0.0.1:5555".into()),
            journal: Some("/tmp/j".into()),
            keys: Some("/etc/pgtrail/keys".into()),
            ..Overrides::default()
        };
        let config = FileConfig::default().resolve(&overrides).unwrap();
        assert_eq!(config.proxy.listen.port(), 7000);
        assert_eq!(config.proxy.upstream.port, 5555);
        assert_eq!(config.writer.signing_key, Path::new("/etc/pgtrail/keys/signing.key"));
        assert!(FileConfig::default().resolve(&Overrides::default()).is_err());
        let no_keys = Overrides { keys: None, ..overrides };
        let err = FileConfig::default().resolve(&no_keys).unwrap_err().to_string();
        assert!(err.contains("pgtrail keys init"), "{err}");
    }
}
