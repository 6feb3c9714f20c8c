//! The proxy's sections of `pgtrail.toml`: `[proxy]` (where it listens, its limits and
//! timeouts) and `[delivery]` (when a client may see the outcome of what it did, relative
//! to its event). `[upstream]`, `[auth]` and `[policy]` are the types in `config` as they
//! are. Each section is strict, checked by `validate`, and compared by value on reload.

use std::net::SocketAddr;
use std::time::Duration;

use pgtrail_wire::Limits;
use serde::Deserialize;

use crate::config::{AuthConfig, ClientTlsConfig, Delivery, PolicyConfig, ProxyConfig, UpstreamConfig};

/// A proxy section that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyConfigError {
    #[error("proxy.max_message_bytes must be at least 1024 and at most proxy.max_data_message_bytes")]
    MessageLimits,
    #[error("delivery.fail_closed needs delivery.mode = \"sync\"")]
    FailClosedNeedsSync,
    #[error("upstream.tls = \"verify-full\" needs upstream.ca_file")]
    VerifyFullNeedsCa,
}

/// `[proxy]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// Address to accept clients on.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Client TLS: `cert_file` and `key_file` (PEM).
    pub tls: Option<ClientTlsConfig>,
    /// Largest message a logged-in client may send, other than statement text, parameters
    /// and COPY data.
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: u32,
    /// Largest Query, Parse, Bind, FunctionCall or CopyData message.
    #[serde(default = "defaults::max_data_message_bytes")]
    pub max_data_message_bytes: u32,
    /// How long a client may take to send its startup packet.
    #[serde(default = "defaults::startup_timeout_ms")]
    pub startup_timeout_ms: u64,
    /// How long a client may take from connecting to being logged in.
    #[serde(default = "defaults::authentication_timeout_ms")]
    pub authentication_timeout_ms: u64,
    /// Largest message a client may send before it is logged in (passwords, tokens).
    #[serde(default = "defaults::max_auth_message_bytes")]
    pub max_auth_message_bytes: u32,
    /// Client connections at once; more are refused with SQLSTATE 53300.
    #[serde(default = "defaults::max_client_connections")]
    pub max_client_connections: usize,
    /// Bytes all sessions together may hold for large messages read whole (53200 beyond).
    #[serde(default = "defaults::max_buffered_message_bytes")]
    pub max_buffered_message_bytes: usize,
    /// On shutdown, how long sessions may go on before they are terminated.
    #[serde(default = "defaults::shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Threads relaying client traffic; 0 means half the CPUs (at least one).
    #[serde(default)]
    pub workers: usize,
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            listen: defaults::listen(),
            tls: None,
            max_message_bytes: defaults::max_message_bytes(),
            max_data_message_bytes: defaults::max_data_message_bytes(),
            startup_timeout_ms: defaults::startup_timeout_ms(),
            authentication_timeout_ms: defaults::authentication_timeout_ms(),
            max_auth_message_bytes: defaults::max_auth_message_bytes(),
            max_client_connections: defaults::max_client_connections(),
            max_buffered_message_bytes: defaults::max_buffered_message_bytes(),
            shutdown_grace_ms: defaults::shutdown_grace_ms(),
            workers: 0,
        }
    }
}

/// `delivery.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// The client never waits for the journal.
    #[default]
    Async,
    /// Completions wait until their event is fsync'd.
    Sync,
}

/// `[delivery]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    #[serde(default)]
    pub mode: DeliveryMode,
    /// With sync: refuse statements and logins while the journal cannot record.
    #[serde(default)]
    pub fail_closed: bool,
    /// A heartbeat event after this many seconds without a record (0: none).
    #[serde(default = "defaults::heartbeat_secs")]
    pub heartbeat_secs: u64,
}

impl Default for DeliverySection {
    fn default() -> Self {
        Self { mode: DeliveryMode::Async, fail_closed: false, heartbeat_secs: defaults::heartbeat_secs() }
    }
}

impl DeliverySection {
    pub fn validate(&self) -> Result<(), ProxyConfigError> {
        self.delivery().map(drop)
    }

    pub fn delivery(&self) -> Result<Delivery, ProxyConfigError> {
        match (self.mode, self.fail_closed) {
            (DeliveryMode::Async, false) => Ok(Delivery::Async),
            (DeliveryMode::Async, true) => Err(ProxyConfigError::FailClosedNeedsSync),
            (DeliveryMode::Sync, false) => Ok(Delivery::Sync),
            (DeliveryMode::Sync, true) => Ok(Delivery::SyncFailClosed),
        }
    }

    /// The recorder's heartbeat interval (None: no heartbeats).
    pub fn heartbeat(&self) -> Option<Duration> {
        (self.heartbeat_secs > 0).then(|| Duration::from_secs(self.heartbeat_secs))
    }
}

impl ProxySection {
    pub fn validate(&self) -> Result<(), ProxyConfigError> {
        if self.max_message_bytes < 1024 || self.max_data_message_bytes < self.max_message_bytes {
            return Err(ProxyConfigError::MessageLimits);
        }
        Ok(())
    }

    /// Worker threads: the configured number, or half the CPUs (at least one). A proxy is
    /// mostly system calls; on small machines PostgreSQL needs the other cores, and one
    /// thread avoids cross-thread wake-ups (measured in bench/proxy.sh).
    pub fn workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map(|n| n.get() / 2).unwrap_or(1).max(1),
            n => n,
        }
    }

    /// The proxy's configuration from this section and the others it needs.
    pub fn proxy_config(
        &self,
        listen: Option<SocketAddr>,
        upstream: UpstreamConfig,
        delivery: &DeliverySection,
        auth: AuthConfig,
        policy: PolicyConfig,
    ) -> Result<ProxyConfig, ProxyConfigError> {
        self.validate()?;
        if upstream.tls == crate::config::UpstreamTlsMode::VerifyFull && upstream.ca_file.is_none() {
            return Err(ProxyConfigError::VerifyFullNeedsCa);
        }
        Ok(ProxyConfig {
            listen: listen.unwrap_or(self.listen),
            upstream,
            client_tls: self.tls.clone(),
            limits: Limits { small: self.max_message_bytes, large: self.max_data_message_bytes, startup: 10_000 },
            startup_timeout: Duration::from_millis(self.startup_timeout_ms),
            authentication_timeout: Duration::from_millis(self.authentication_timeout_ms),
            auth_limits: Limits {
                small: self.max_auth_message_bytes,
                large: self.max_auth_message_bytes,
                startup: 10_000,
            },
            max_client_connections: self.max_client_connections,
            max_buffered_message_bytes: self.max_buffered_message_bytes,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            delivery: delivery.delivery()?,
            auth,
            policy,
        })
    }
}

mod defaults {
    use std::net::SocketAddr;

    use pgtrail_wire::Limits;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 6432))
    }
    pub fn max_message_bytes() -> u32 {
        Limits::default().small
    }
    pub fn max_data_message_bytes() -> u32 {
        Limits::default().large
    }
    pub fn startup_timeout_ms() -> u64 {
        60_000
    }
    pub fn authentication_timeout_ms() -> u64 {
        60_000
    }
    pub fn max_auth_message_bytes() -> u32 {
        16 * 1024
    }
    pub fn max_client_connections() -> usize {
        1000
    }
    pub fn max_buffered_message_bytes() -> usize {
        256 << 20
    }
    pub fn shutdown_grace_ms() -> u64 {
        10_000
    }
    pub fn heartbeat_secs() -> u64 {
        5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_modes_are_a_closed_choice() {
        let sync: DeliverySection = toml::from_str("mode = \"sync\"\nfail_closed = true").unwrap();
        assert_eq!(sync.delivery(), Ok(Delivery::SyncFailClosed));
        let err = toml::from_str::<DeliverySection>("mode = \"synchronous\"").unwrap_err().to_string();
        assert!(err.contains("async") && err.contains("sync"), "the error names the choices: {err}");
        let bad: DeliverySection = toml::from_str("fail_closed = true").unwrap();
        assert_eq!(bad.validate(), Err(ProxyConfigError::FailClosedNeedsSync));
        let small: ProxySection = toml::from_str("max_message_bytes = 10").unwrap();
        assert_eq!(small.validate(), Err(ProxyConfigError::MessageLimits));
    }
}
