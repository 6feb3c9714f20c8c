//! The pgtrail proxy: a PostgreSQL wire-protocol proxy that records what happens.
//!
//! It accepts clients on TCP (TLS when a certificate is configured), connects each one to
//! PostgreSQL (TLS per `upstream.tls`), relays the client's own authentication (trust,
//! password, md5, SCRAM-SHA-256 without channel binding), and then forwards bytes in both
//! directions unchanged while a [`tracker::Tracker`] derives one
//! [`pgtrail_event::ActivityEvent`] per connection attempt, statement and disconnect.
//! Events go to an [`EventSink`]; this crate neither formats nor stores them.
//!
//! Owns: sessions (startup, TLS, login, relay, closing: `phase`), the reply FIFO that
//! turns traffic into statements ([`tracker`]), policy enforcement and cancel forwarding.
//! Must not: decide what a tag byte means (pgtrail-wire does), classify SQL
//! (pgtrail-event does) or store events.
//!
//! Modules, in the order a session meets them: `server` (the listener) → `session` (one
//! connection's phases) → `login` (with `auth` for token logins and `credentials` for the
//! proxy's own upstream login) → `relay` (both directions, with `tracker` and `policy`).
//! `shared`, `io` and `error` are used by all of them and use none of them.
mod auth;
mod budget;
mod cancel;
mod config;
mod credentials;
pub mod encoding;
mod error;
mod io;
mod login;
mod params;
mod phase;
mod policy;
mod relay;
mod sections;
mod server;
mod session;
mod shared;
mod stream;
mod tls;
pub mod tracker;

use std::path::{Path, PathBuf};

pub use config::{
    AuthConfig, ClientAuth, ClientTlsConfig, Delivery, DenyRule, PolicyConfig, ProxyConfig, UpstreamConfig,
    UpstreamLogin, UpstreamTlsMode,
};
use pgtrail_event::ActivityEvent;
pub use sections::{DeliveryMode, DeliverySection, ProxyConfigError, ProxySection};
pub use server::Proxy;
pub use shared::ProxyStats;

/// Resolves to true once an event is durable, false if it never will be (the sink stopped).
pub type Durable = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

/// Where the proxy hands its events. Must not block: the capture path calls it inline.
pub trait EventSink: Send + Sync + 'static {
    /// Async delivery: hand over and forget (the sink counts what it must drop).
    fn emit(&self, event: ActivityEvent);
    /// Sync delivery: the event is queued at once (so the events of one batch share an
    /// fsync); the returned future resolves when it is durable.
    fn emit_durable(&self, event: ActivityEvent) -> Durable;
    /// False while the sink cannot make events durable (fail-closed refuses work then).
    fn healthy(&self) -> bool {
        true
    }
}

/// Errors of the proxy as a whole (session errors end only that session).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS material in {path}: {message}")]
    Tls { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl ProxyError {
    pub(crate) fn tls(path: &Path, message: impl Into<String>) -> Self {
        Self::Tls { path: path.to_path_buf(), message: message.into() }
    }
}
