//! The listener: accepts clients, runs a session task for each, and shuts down cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use pgtrail_event::Classifier;
use pgtrail_wire::Limits;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::cancel::CancelRegistry;
use crate::config::ProxyConfig;
use crate::shared::{ProxyStats, Shared};
use crate::{EventSink, ProxyError, io, session, tls};

/// Binds with SO_REUSEADDR stated explicitly (not left to the defaults of the layers
/// below), so that a restarted proxy can listen while its old connections are in TIME_WAIT.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A bound proxy, ready to run.
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("listen", &self.listener.local_addr().ok()).finish_non_exhaustive()
    }
}

impl Proxy {
    /// Validates the configuration, loads TLS material and binds the listener.
    pub async fn bind(config: ProxyConfig, sink: Arc<dyn EventSink>) -> Result<Self, ProxyError> {
        let client_tls = config.client_tls.as_ref().map(tls::server_config).transpose()?.map(TlsAcceptor::from);
        let upstream_tls = tls::upstream_config(&config.upstream)?;
        let upstream_server_name = tls::server_name(&config.upstream.host)?;
        let token_login = crate::credentials::TokenLogin::from_config(&config)?;
        let policy = crate::policy::Policy::compile(&config.policy, token_login.is_some())?;
        if let Some(oidc) = token_login.as_ref().and_then(|l| l.authenticator.oidc()) {
            // Early, so a wrong issuer shows at start; logins retry if the IdP is down now.
            match oidc.prefetch().await {
                Ok(keys) => info!(issuer = %oidc.config().issuer, keys, "OIDC signing keys loaded"),
                Err(e) => {
                    warn!(issuer = %oidc.config().issuer, error = %e, "OIDC keys not loaded yet; logins will retry")
                }
            }
        }
        let listener = listen(config.listen).map_err(|source| ProxyError::Listen { addr: config.listen, source })?;
        let backend_limits = Limits { small: config.limits.large, ..config.limits };
        let config_budget = config.max_buffered_message_bytes;
        let stats = Arc::new(ProxyStats::default());
        let buffer_budget =
            Arc::new(crate::budget::BufferBudget::new(config_budget, Arc::clone(&stats.buffered_message_bytes)));
        let shared = Arc::new(Shared {
            config,
            backend_limits,
            sink,
            classifier: Classifier::default(),
            cancel: CancelRegistry::default(),
            client_tls,
            upstream_tls,
            upstream_server_name,
            stats,
            buffer_budget,
            token_login,
            policy,
        });
        Ok(Self { listener, shared })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn stats(&self) -> Arc<ProxyStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Accepts clients until `shutdown` resolves; then stops accepting, lets sessions finish
    /// for the grace period, terminates the rest with SQLSTATE 57P01, and returns once every
    /// session has written its DISCONNECT event.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (terminate_tx, terminate_rx) = watch::channel(false);
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        info!(listen = %self.local_addr(), upstream = %format!("{}:{}", self.shared.config.upstream.host, self.shared.config.upstream.port), "proxy listening");
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) if self.shared.stats.sessions_active.load(Ordering::Relaxed) as usize >= self.shared.config.max_client_connections => {
                        // Like PostgreSQL's "sorry, too many clients already": told, not kept.
                        self.shared.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
                        warn!(%peer, limit = self.shared.config.max_client_connections, "connection refused: proxy.max_client_connections reached");
                        tokio::spawn(io::refuse_connection(tcp));
                    }
                    Ok((tcp, peer)) => {
                        let shared = Arc::clone(&self.shared);
                        let terminate = terminate_rx.clone();
                        shared.stats.sessions_accepted.fetch_add(1, Ordering::Relaxed);
                        shared.stats.sessions_active.fetch_add(1, Ordering::Relaxed);
                        sessions.spawn(async move {
                            session::run(Arc::clone(&shared), tcp, peer, terminate).await;
                            shared.stats.sessions_active.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        error!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                Some(result) = sessions.join_next(), if !sessions.is_empty() => {
                    if let Err(e) = result {
                        error!(error = %e, "session task panicked");
                    }
                }
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        let active = sessions.len();
        info!(
            active_sessions = active,
            grace_ms = self.shared.config.shutdown_grace.as_millis() as u64,
            "shutting down: no new connections"
        );
        let drained = tokio::time::timeout(self.shared.config.shutdown_grace, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(remaining = sessions.len(), "grace period over; terminating remaining sessions");
            let _ = terminate_tx.send(true);
            let finished = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while sessions.join_next().await.is_some() {}
            })
            .await;
            if finished.is_err() {
                error!(remaining = sessions.len(), "sessions did not end after termination; aborting them");
                sessions.abort_all();
            }
        }
        info!("proxy stopped");
    }
}
