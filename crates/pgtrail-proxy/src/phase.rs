//! The phases of a session, and what the client may send in each.

use pgtrail_wire::Limits;

use crate::config::ProxyConfig;

/// Where a session is. Each phase reads the client under its own limits: a stranger who
/// has not logged in may send only small messages (the startup packet, SSL and cancel
/// requests, passwords and tokens); the post-login limits apply from the relay on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the startup packet (or an SSLRequest, GSSENCRequest, CancelRequest).
    Startup,
    /// The client asked for TLS: the handshake.
    Tls,
    /// Relayed (or token) authentication, until PostgreSQL's ReadyForQuery.
    Authentication,
    /// Logged in: statements are relayed and recorded.
    Relay,
    /// The client or the server has gone: remaining answers are drained and recorded.
    Closing,
}

impl Phase {
    /// The limits on what the client may send in this phase.
    pub(crate) fn client_limits(self, config: &ProxyConfig) -> Limits {
        match self {
            // Only the untagged startup packet (and its SSL, GSS and cancel requests); the
            // TLS handshake itself is bounded by rustls.
            Phase::Startup | Phase::Tls => Limits { small: 0, large: 0, startup: config.limits.startup },
            Phase::Authentication => config.auth_limits,
            Phase::Relay => config.limits,
            // The client has gone: nothing more is read from it.
            Phase::Closing => Limits { small: 0, large: 0, startup: 0 },
        }
    }
}
