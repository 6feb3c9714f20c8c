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
    /// How long a client may take from connecting to being logged in.
    pub authentication_timeout: Duration,
    /// Size limits for messages from clients that are not logged in yet.
    pub auth_limits: Limits,
    /// Client connections at once; more are refused with 53300.
    pub max_client_connections: usize,
    /// Bytes all sessions together may hold for large messages read whole.
    pub max_buffered_message_bytes: usize,
    /// On shutdown, how long sessions may go on before they are terminated.
    pub shutdown_grace: Duration,
    /// When clients may see the outcome of what they did, relative to its event.
    pub delivery: Delivery,
    /// How clients log in and how the proxy logs in to PostgreSQL.
    pub auth: AuthConfig,
    /// What the proxy refuses before PostgreSQL sees it.
    pub policy: PolicyConfig,
}

/// `[auth]`: who may log in, and as whom the proxy connects upstream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `passthrough` (default): PostgreSQL checks the client's own credentials, relayed.
    /// `token`: the client sends an OIDC token or a pgtrail local token as its password
    /// (asked for only over TLS); the proxy verifies it and logs in upstream itself.
    #[serde(default)]
    pub client: ClientAuth,
    /// How the proxy logs in to PostgreSQL with `client = "token"`: `cert` (a short-lived
    /// client certificate from the proxy's CA) or `secrets` (a per-user password file).
    #[serde(default)]
    pub upstream: UpstreamLogin,
    /// The OIDC issuer whose tokens are accepted.
    #[serde(default)]
    pub oidc: Option<pgtrail_identity::OidcConfig>,
    /// The public key (`token-signing.pub`) of `pgtrail token issue`; its tokens are accepted.
    #[serde(default)]
    pub local_token_key: Option<PathBuf>,
    /// Which database users each person may use (OIDC tokens).
    #[serde(default)]
    pub mapping: pgtrail_identity::UserMapping,
    /// `upstream = "cert"`: directory of the proxy's CA (`upstream-ca.key`, created 0600 on
    /// first start, and `upstream-ca.crt`, PostgreSQL's `ssl_ca_file`).
    #[serde(default)]
    pub ca_dir: Option<PathBuf>,
    /// Lifetime of a minted client certificate, in seconds.
    #[serde(default = "default_cert_ttl")]
    pub cert_ttl_secs: u64,
    /// `upstream = "secrets"`: a TOML file of `user = "password"` lines, mode 0600.
    #[serde(default)]
    pub secrets_file: Option<PathBuf>,
}

fn default_cert_ttl() -> u64 {
    600
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Passthrough,
    Token,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamLogin {
    /// The client's own authentication exchange is relayed (only with `client = "passthrough"`).
    #[default]
    Passthrough,
    Cert,
    Secrets,
}

/// `[policy]`: statements refused in the proxy, with SQLSTATE 42501, before PostgreSQL
/// sees them; each refusal is recorded with `verdict = "denied"`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Refuse CREATE/ALTER ROLE ... PASSWORD (and psql's \password) unless the database
    /// user or the person (subject or email) is in `password_admins`. Defaults to on with
    /// `auth.client = "token"` (nobody should hold a database password then), off otherwise.
    #[serde(default)]
    pub restrict_password_commands: Option<bool>,
    #[serde(default)]
    pub password_admins: Vec<String>,
    /// Deny rules, checked in order; the first that matches refuses the statement.
    #[serde(default)]
    pub deny: Vec<DenyRule>,
    /// What a text the parser cannot read gets while deny rules exist: `deny` (default; a
    /// rule cannot judge what it cannot read) or `allow` (PostgreSQL, whose grammar is
    /// older than the parser's, will reject it anyway).
    #[serde(default)]
    pub on_unparsable: Unparsable,
}

/// `policy.on_unparsable`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unparsable {
    #[default]
    Deny,
    Allow,
}

/// One deny rule: a CEL condition over `statement` (class, command, objects, hasWhere,
/// copyProgram, setsPassword), `identity` (null without token login), `user`, `database`
/// and `application`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    pub name: String,
    pub when: String,
    /// What the client is told.
    pub message: String,
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
            authentication_timeout: Duration::from_secs(60),
            auth_limits: Limits { small: 16 * 1024, large: 16 * 1024, startup: 10_000 },
            max_client_connections: 1000,
            max_buffered_message_bytes: 256 << 20,
            shutdown_grace: Duration::from_secs(10),
            delivery: Delivery::default(),
            auth: AuthConfig::default(),
            policy: PolicyConfig::default(),
        }
    }
}
