//! The proxy's configuration section: resolved and validated before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pgtrail_wire::Limits;
use serde::Deserialize;

/// How the proxy protects its connection to PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Plain TCP (suitable only when PostgreSQL is on the same host).
    Disable,
    /// TLS, try it and fall back to plain TCP if the server refuses (libpq's `prefer`).
    #[default]
    Prefer,
    /// TLS required; the server certificate is not verified.
    Require,
    /// TLS required; the certificate must chain to `ca_file` and name the upstream host.
    VerifyFull,
}

/// Where PostgreSQL is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Host name or address of PostgreSQL.
    pub host: String,
    /// Port of PostgreSQL.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// TLS toward PostgreSQL: disable, prefer, require or verify-full.
    #[serde(default)]
    pub tls: UpstreamTlsMode,
    /// PEM file with the CA certificates that may sign the server's certificate (verify-full).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long to wait for PostgreSQL to accept a connection.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn default_pg_port() -> u16 {
    5432
}

fn default_connect_timeout_ms() -> u64 {
    10_000
}

/// TLS toward clients. With it, SSLRequest is answered `S`; without it, `N`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM certificate chain presented to clients.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate.
    pub key_file: PathBuf,
}

/// Everything the proxy needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub upstream: UpstreamConfig,
    pub client_tls: Option<ClientTlsConfig>,
    /// Size limits for messages from clients.
    pub limits: Limits,
    /// How long a client may take to send its startup packet.
    pub startup_timeout: Duration,
    /// On shutdown, how long sessions may go on before they are terminated.
    pub shutdown_grace: Duration,
    /// When clients may see the outcome of what they did, relative to its event.
    pub delivery: Delivery,
}

/// Delivery mode: how the proxy's timing relates to the journal's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The client never waits for the journal; a full queue drops events (counted, and a
    /// loss record says how many and when).
    #[default]
    Async,
    /// A statement's completion (CommandComplete or ErrorResponse and all after it) and a
    /// login's (AuthenticationOk onward) reach the client only once the event is durable.
    Sync,
    /// Sync, and while the journal cannot make events durable, new statements and logins
    /// are refused (SQLSTATE 58030) instead of running unaudited.
    SyncFailClosed,
}

impl Delivery {
    pub fn is_sync(self) -> bool {
        matches!(self, Delivery::Sync | Delivery::SyncFailClosed)
    }
}

impl ProxyConfig {
    /// A configuration with defaults for everything but the addresses.
    pub fn new(listen: SocketAddr, upstream_host: impl Into<String>, upstream_port: u16) -> Self {
        Self {
            listen,
            upstream: UpstreamConfig {
                host: upstream_host.into(),
                port: upstream_port,
                tls: UpstreamTlsMode::default(),
                ca_file: None,
                connect_timeout_ms: default_connect_timeout_ms(),
            },
            client_tls: None,
            limits: Limits::default(),
            startup_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            delivery: Delivery::default(),
        }
    }
}
