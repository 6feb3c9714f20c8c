//! `pgtrail.toml`: parsed strictly (unknown keys are errors), then resolved once into the
//! configuration the layers take. See `pgtrail.example.toml` for every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use pgtrail_envelope::{SealerConfig, Suite};
use pgtrail_journal::{JournalOptions, RecorderConfig};
use pgtrail_proxy::{ClientTlsConfig, Delivery, ProxyConfig, UpstreamConfig, UpstreamTlsMode};
use pgtrail_wire::Limits;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
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
    pub auth: pgtrail_proxy::AuthConfig,
    /// `[policy]`: password restriction and deny rules, applied in the proxy.
    #[serde(default)]
    pub policy: pgtrail_proxy::PolicyConfig,
}

/// `[pgaudit]`: ingest pgAudit's log records in the proxy process, into the same journal,
/// joined to the proxy's sessions (and noticing sessions that bypass the proxy).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgauditSection {
    /// PostgreSQL's log directory.
    pub log_dir: PathBuf,
    /// "stderr", "csvlog" or "jsonlog" (csvlog and jsonlog carry the most session facts).
    pub format: String,
    /// log_line_prefix, for the stderr format.
    #[serde(default = "default_log_line_prefix")]
    pub log_line_prefix: String,
    /// Position file (default: `<journal dir>.ingest-position`).
    pub state: Option<PathBuf>,
}

fn default_log_line_prefix() -> String {
    "%m [%p] %q%u@%d ".into()
}

/// `[metrics]`: the Prometheus endpoint (/metrics, /livez, /readyz).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address to serve on, e.g. "127.0.0.1:9187"; absent: no endpoint.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    /// "async" (the client never waits for the journal) or "sync" (completions wait until
    /// their event is fsync'd).
    #[serde(default = "default_mode")]
    pub mode: String,
    /// With sync: refuse statements and logins while the journal cannot record.
    #[serde(default)]
    pub fail_closed: bool,
    /// A heartbeat event after this many seconds without a record (0: none).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
}

impl Default for DeliverySection {
    fn default() -> Self {
        Self { mode: default_mode(), fail_closed: false, heartbeat_secs: default_heartbeat() }
    }
}

fn default_mode() -> String {
    "async".into()
}
fn default_heartbeat() -> u64 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    pub tls: Option<ClientTlsConfig>,
    #[serde(default = "default_max_message")]
    pub max_message_bytes: u32,
    #[serde(default = "default_max_data_message")]
    pub max_data_message_bytes: u32,
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout_ms: u64,
    #[serde(default = "default_authentication_timeout")]
    pub authentication_timeout_ms: u64,
    #[serde(default = "default_max_auth_message")]
    pub max_auth_message_bytes: u32,
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    #[serde(default = "default_max_buffered_message")]
    pub max_buffered_message_bytes: usize,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_ms: u64,
    /// Threads relaying client traffic; 0 means half the CPUs (at least one).
    #[serde(default)]
    pub workers: usize,
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tls: None,
            max_message_bytes: default_max_message(),
            max_data_message_bytes: default_max_data_message(),
            startup_timeout_ms: default_startup_timeout(),
            authentication_timeout_ms: default_authentication_timeout(),
            max_auth_message_bytes: default_max_auth_message(),
            max_client_connections: default_max_client_connections(),
            max_buffered_message_bytes: default_max_buffered_message(),
            shutdown_grace_ms: default_shutdown_grace(),
            workers: 0,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6432))
}
fn default_max_message() -> u32 {
    Limits::default().small
}
fn default_max_data_message() -> u32 {
    Limits::default().large
}
fn default_startup_timeout() -> u64 {
    60_000
}
fn default_authentication_timeout() -> u64 {
    60_000
}
fn default_max_auth_message() -> u32 {
    16 * 1024
}
fn default_max_client_connections() -> usize {
    1000
}
fn default_max_buffered_message() -> usize {
    256 << 20
}
fn default_shutdown_grace() -> u64 {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSection {
    pub dir: Option<PathBuf>,
    #[serde(default = "default_segment_bytes")]
    pub segment_max_bytes: u64,
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_every_records: u64,
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_every_secs: u64,
    pub witness_dir: Option<PathBuf>,
}

impl Default for JournalSection {
    fn default() -> Self {
        Self {
            dir: None,
            segment_max_bytes: default_segment_bytes(),
            checkpoint_every_records: default_checkpoint_records(),
            checkpoint_every_secs: default_checkpoint_secs(),
            witness_dir: None,
        }
    }
}

fn default_checkpoint_records() -> u64 {
    JournalOptions::default().checkpoint_every_records
}
fn default_checkpoint_secs() -> u64 {
    JournalOptions::default().checkpoint_every.as_secs()
}

/// Where the capture side's two keys are: by default `wrapping.pub` and `signing.key` in
/// `dir` (as `pgtrail keys init` writes them); each path can be set on its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    pub dir: Option<PathBuf>,
    pub wrapping_public: Option<PathBuf>,
    pub signing: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSection {
    /// "0x0178" (Aurora's, the default) or "0x0478" (key-committing).
    #[serde(default = "default_suite")]
    pub suite: String,
    #[serde(default = "default_rotate_records")]
    pub rotate_after_records: u64,
    #[serde(default = "default_rotate_secs")]
    pub rotate_after_secs: u64,
    #[serde(default = "default_gzip_level")]
    pub gzip_level: u32,
}

impl Default for EnvelopeSection {
    fn default() -> Self {
        Self {
            suite: default_suite(),
            rotate_after_records: default_rotate_records(),
            rotate_after_secs: default_rotate_secs(),
            gzip_level: default_gzip_level(),
        }
    }
}

fn default_suite() -> String {
    "0x0178".into()
}
fn default_rotate_records() -> u64 {
    SealerConfig::default().rotate_after_records
}
fn default_rotate_secs() -> u64 {
    SealerConfig::default().rotate_after.as_secs()
}
fn default_gzip_level() -> u32 {
    SealerConfig::default().gzip_level
}

fn default_segment_bytes() -> u64 {
    JournalOptions::default().segment_max_bytes
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecorderSection {
    #[serde(default = "default_batch_events")]
    pub max_batch_events: usize,
    #[serde(default = "default_batch_delay")]
    pub max_batch_delay_ms: u64,
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
}

impl Default for RecorderSection {
    fn default() -> Self {
        Self {
            max_batch_events: default_batch_events(),
            max_batch_delay_ms: default_batch_delay(),
            queue_capacity: default_queue(),
        }
    }
}

fn default_batch_events() -> usize {
    RecorderConfig::default().max_batch_items
}
fn default_batch_delay() -> u64 {
    RecorderConfig::default().max_batch_delay.as_millis() as u64
}
fn default_queue() -> usize {
    RecorderConfig::default().queue_capacity
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSection {
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    pub instance_id: Option<String>,
}

impl Default for InstanceSection {
    fn default() -> Self {
        Self { cluster_id: default_cluster_id(), instance_id: None }
    }
}

fn default_cluster_id() -> String {
    "pgtrail".into()
}

/// Everything `pgtrail proxy` runs with, resolved and validated.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub proxy: ProxyConfig,
    /// Async worker threads for the proxy.
    pub workers: usize,
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
    /// Where to serve /metrics, /livez and /readyz (none: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// pgAudit ingestion in the proxy process.
    pub pgaudit: Option<pgtrail_pgaudit::IngestConfig>,
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    pub journal: Option<PathBuf>,
    pub keys: Option<PathBuf>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid configuration in {}", path.display()))
    }

    /// Applies the overrides and checks that everything needed is there.
    pub fn resolve(self, overrides: &Overrides) -> anyhow::Result<CaptureConfig> {
        let mut upstream = self.upstream;
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
        let Some(upstream) = upstream else {
            bail!(
                "no upstream PostgreSQL: set [upstream] host in the configuration file or pass --upstream postgres://HOST:PORT"
            );
        };
        if upstream.tls == UpstreamTlsMode::VerifyFull && upstream.ca_file.is_none() {
            bail!("upstream.tls = \"verify-full\" needs upstream.ca_file");
        }
        let Some(journal_dir) = overrides.journal.clone().or(self.journal.dir.clone()) else {
            bail!("no journal directory: set [journal] dir in the configuration file or pass --journal DIR");
        };
        let p = self.proxy;
        let workers = match p.workers {
            // A proxy is mostly system calls; on small machines PostgreSQL needs the other
            // cores, and one thread avoids cross-thread wake-ups (measured in bench/proxy.sh).
            0 => std::thread::available_parallelism().map(|n| n.get() / 2).unwrap_or(1).max(1),
            n => n,
        };
        if p.max_message_bytes < 1024 || p.max_data_message_bytes < p.max_message_bytes {
            bail!("proxy.max_message_bytes must be at least 1024 and at most proxy.max_data_message_bytes");
        }
        let delivery = match (self.delivery.mode.as_str(), self.delivery.fail_closed) {
            ("async", false) => Delivery::Async,
            ("async", true) => bail!("delivery.fail_closed needs delivery.mode = \"sync\""),
            ("sync", false) => Delivery::Sync,
            ("sync", true) => Delivery::SyncFailClosed,
            (other, _) => bail!("delivery.mode {other:?}: use \"async\" or \"sync\""),
        };
        let proxy = ProxyConfig {
            listen: overrides.listen.unwrap_or(p.listen),
            upstream,
            client_tls: p.tls,
            limits: Limits { small: p.max_message_bytes, large: p.max_data_message_bytes, startup: 10_000 },
            startup_timeout: Duration::from_millis(p.startup_timeout_ms),
            authentication_timeout: Duration::from_millis(p.authentication_timeout_ms),
            auth_limits: Limits { small: p.max_auth_message_bytes, large: p.max_auth_message_bytes, startup: 10_000 },
            max_client_connections: p.max_client_connections,
            max_buffered_message_bytes: p.max_buffered_message_bytes,
            shutdown_grace: Duration::from_millis(p.shutdown_grace_ms),
            delivery,
            auth: self.auth,
            policy: self.policy,
        };
        if self.journal.segment_max_bytes < 4096 {
            bail!("journal.segment_max_bytes must be at least 4096");
        }
        if self.recorder.max_batch_events == 0 || self.recorder.queue_capacity == 0 {
            bail!("recorder.max_batch_events and recorder.queue_capacity must be positive");
        }
        let instance_id = self.instance.instance_id.unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "pgtrail".into())
        });
        if instance_id.is_empty() || instance_id.len() > 64 {
            bail!("instance.instance_id must be 1 to 64 bytes");
        }
        let j = &self.journal;
        if j.checkpoint_every_records == 0 || j.checkpoint_every_secs == 0 {
            bail!("journal.checkpoint_every_records and journal.checkpoint_every_secs must be positive");
        }
        let keys_dir = overrides.keys.clone().or(self.keys.dir);
        let key_file = |explicit: Option<PathBuf>, name: &str, key: &str| -> anyhow::Result<PathBuf> {
            explicit.or_else(|| keys_dir.as_ref().map(|d| d.join(name))).with_context(|| {
                format!(
                    "no {key} key: pass --keys DIR (made by `pgtrail keys init --dir DIR`) or set [keys] dir or keys.{key} in the configuration file"
                )
            })
        };
        let wrapping_public_key =
            key_file(self.keys.wrapping_public, pgtrail_keys::WRAPPING_PUBLIC, "wrapping_public")?;
        let signing_key = key_file(self.keys.signing, pgtrail_keys::SIGNING_PRIVATE, "signing")?;
        let e = &self.envelope;
        let suite = match e.suite.as_str() {
            "0x0178" => Suite::Aes256GcmHkdfSha256,
            "0x0478" => Suite::Aes256GcmHkdfSha512Commit,
            other => bail!("envelope.suite {other:?}: use \"0x0178\" (Aurora's) or \"0x0478\" (key-committing)"),
        };
        if e.gzip_level > 9 || e.rotate_after_records == 0 || e.rotate_after_secs == 0 {
            bail!("envelope.gzip_level must be 0 to 9 and the rotation limits positive");
        }
        let pgaudit = match self.pgaudit {
            Some(p) => {
                let format = match p.format.as_str() {
                    "stderr" => pgtrail_pgaudit::Format::Stderr(
                        pgtrail_pgaudit::Prefix::compile(&p.log_line_prefix).context("pgaudit.log_line_prefix")?,
                    ),
                    "csvlog" => pgtrail_pgaudit::Format::Csvlog,
                    "jsonlog" => pgtrail_pgaudit::Format::Jsonlog,
                    other => bail!("pgaudit.format {other:?}: use \"stderr\", \"csvlog\" or \"jsonlog\""),
                };
                let state = p.state.unwrap_or_else(|| journal_dir.with_extension("ingest-position"));
                Some(pgtrail_pgaudit::IngestConfig { log_dir: p.log_dir, format, state })
            }
            None => None,
        };
        Ok(CaptureConfig {
            pgaudit,
            metrics_listen: self.metrics.listen,
            proxy,
            workers,
            journal_dir,
            journal: JournalOptions {
                segment_max_bytes: self.journal.segment_max_bytes,
                instance: instance_id.clone(),
                // Loaded from `signing_key` when the capture starts.
                signer: None,
                checkpoint_every_records: self.journal.checkpoint_every_records,
                checkpoint_every: Duration::from_secs(self.journal.checkpoint_every_secs),
                witness_dir: self.journal.witness_dir.clone(),
                set_aside_damage: false,
            },
            recorder: RecorderConfig {
                max_batch_items: self.recorder.max_batch_events,
                max_batch_delay: Duration::from_millis(self.recorder.max_batch_delay_ms),
                queue_capacity: self.recorder.queue_capacity,
                heartbeat: (self.delivery.heartbeat_secs > 0)
                    .then(|| Duration::from_secs(self.delivery.heartbeat_secs)),
            },
            cluster_id: self.instance.cluster_id,
            instance_id,
            envelope: SealerConfig {
                suite,
                rotate_after_records: e.rotate_after_records,
                rotate_after: Duration::from_secs(e.rotate_after_secs),
                gzip_level: e.gzip_level,
            },
            wrapping_public_key,
            signing_key,
        })
    }
}

/// `postgres://HOST:PORT` (user, password and database are not used: clients bring their own).
pub fn parse_upstream_url(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .with_context(|| format!("upstream {url:?} must look like postgres://HOST:PORT"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            (host, port.parse::<u16>().with_context(|| format!("invalid port in {url:?}"))?)
        }
        _ => (host_port, 5432),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("upstream {url:?} has no host");
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

    #[test]
    fn flags_replace_the_file() {
        let overrides = Overrides {
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            upstream: Some("postgres://127.0.0.1:5555".into()),
            journal: Some("/tmp/j".into()),
            keys: Some("/etc/pgtrail/keys".into()),
        };
        let config = FileConfig::default().resolve(&overrides).unwrap();
        assert_eq!(config.proxy.listen.port(), 7000);
        assert_eq!(config.proxy.upstream.port, 5555);
        assert_eq!(config.signing_key, Path::new("/etc/pgtrail/keys/signing.key"));
        assert!(FileConfig::default().resolve(&Overrides::default()).is_err());
        let no_keys = Overrides { keys: None, ..overrides };
        let err = FileConfig::default().resolve(&no_keys).unwrap_err().to_string();
        assert!(err.contains("pgtrail keys init"), "{err}");
    }
}
