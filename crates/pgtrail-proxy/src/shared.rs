//! What every session shares: the resolved configuration, the event sink, the classifier
//! and policy, the cancel registry, TLS settings, the buffer budget and the counters.
//! Built once when the proxy starts; sessions only read it (counters are atomics).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pgtrail_event::Classifier;
use pgtrail_wire::Limits;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsAcceptor;

use crate::EventSink;
use crate::budget::BufferBudget;
use crate::cancel::CancelRegistry;
use crate::config::ProxyConfig;
use crate::credentials::TokenLogin;
use crate::policy::Policy;

/// Counters of the proxy, for logs and (later) metrics.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub sessions_accepted: AtomicU64,
    pub sessions_active: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Statements and batches refused because the journal could not record (fail-closed).
    pub refused: AtomicU64,
    /// Statements denied by policy (deny rules, password restriction).
    pub denied: AtomicU64,
    /// Token logins refused: a bad token, or a user the person may not use.
    pub token_logins_refused: AtomicU64,
    /// Replies that did not match what the server owed (see `tracker::Desync`).
    pub desyncs: AtomicU64,
    /// Connections refused because proxy.max_client_connections were open (53300).
    pub connections_refused: AtomicU64,
    /// Bytes held now for large messages read whole, across sessions (the budget's use).
    pub buffered_message_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl ProxyStats {
    pub(crate) fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_denied(&self) {
        self.denied.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// State shared by all sessions, resolved once at start.
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    /// Limits for what PostgreSQL sends: only bodies the tracker reads are buffered, and
    /// the server is trusted up to its own 1 GiB message ceiling.
    pub(crate) backend_limits: Limits,
    pub(crate) sink: Arc<dyn EventSink>,
    pub(crate) classifier: Classifier,
    pub(crate) cancel: CancelRegistry,
    pub(crate) client_tls: Option<TlsAcceptor>,
    pub(crate) upstream_tls: Option<Arc<ClientConfig>>,
    pub(crate) upstream_server_name: ServerName<'static>,
    pub(crate) stats: Arc<ProxyStats>,
    /// Token login, when `auth.client = "token"`.
    pub(crate) token_login: Option<TokenLogin>,
    /// Deny rules and password restriction; None when there are none.
    pub(crate) policy: Option<Policy>,
    /// What all sessions together may buffer for large messages read whole.
    pub(crate) buffer_budget: Arc<BufferBudget>,
}
