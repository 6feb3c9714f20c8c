//! Why a session ends early, and what the client is told then: each [`SessionError`] maps
//! to a PostgreSQL ErrorResponse with a SQLSTATE (or to silence, when the client is gone).

use pgtrail_wire::{ErrorFields, WireError};

/// Why a session could not go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("client protocol violation")]
    ClientProtocol(#[source] WireError),
    #[error("client sent {0} at the wrong time")]
    UnexpectedClientMessage(&'static str),
    #[error("upstream protocol violation")]
    UpstreamProtocol(#[source] WireError),
    #[error("client connection")]
    ClientIo(#[source] std::io::Error),
    #[error("client closed the connection")]
    ClientClosed,
    #[error("upstream connection")]
    UpstreamIo(#[source] std::io::Error),
    #[error("upstream closed the connection")]
    UpstreamClosed,
    #[error("could not connect to upstream PostgreSQL")]
    UpstreamConnect(#[source] std::io::Error),
    #[error("upstream PostgreSQL refused TLS, which upstream.tls requires")]
    UpstreamRefusedTls,
    #[error("client TLS handshake failed")]
    ClientTls(#[source] std::io::Error),
    #[error("startup packet not received in time")]
    StartupTimeout,
    #[error("login not completed in time (proxy.authentication_timeout_ms)")]
    AuthenticationTimeout,
    #[error(
        "too many large messages are buffered across all sessions (proxy.max_buffered_message_bytes); try again later"
    )]
    BufferBudgetExceeded,
    #[error("the authentication method requested by the server is not supported by pgtrail")]
    UnsupportedAuth,
    #[error(
        "pgtrail relays SCRAM without channel binding, and this client would use it over TLS while PostgreSQL is reached over TLS too; connect with channel_binding=disable"
    )]
    ChannelBindingAcrossTls,
    #[error("the journal stopped before the event was durable")]
    JournalStopped,
    #[error(
        "the audit journal cannot record events; logins are refused until it recovers (delivery = sync_fail_closed)"
    )]
    JournalUnavailable,
    #[error("no upstream secret for this database user in auth.secrets_file")]
    NoUpstreamSecret,
    #[error("could not mint the upstream client certificate: {0}")]
    CertMint(String),
    #[error(
        "PostgreSQL asked the proxy for a password; with auth.upstream = \"cert\" its pg_hba.conf must use cert for the proxy's connections"
    )]
    UpstreamWantsPassword,
    #[error(
        "PostgreSQL's SCRAM exchange with the proxy failed (wrong secret, or the server could not prove it knows it)"
    )]
    UpstreamAuthFailed,
}

impl SessionError {
    /// The connection to one of the peers broke (reset, closed): nobody sent an error.
    pub(crate) fn is_connection_loss(&self) -> bool {
        matches!(self, Self::ClientIo(_) | Self::ClientClosed | Self::UpstreamIo(_) | Self::UpstreamClosed)
    }

    /// The ErrorResponse a client gets for this error, if one should be sent.
    pub(crate) fn client_error(&self) -> Option<ErrorFields> {
        let (code, message) = match self {
            Self::ClientProtocol(e) => ("08P01", format!("pgtrail: protocol violation: {e}")),
            Self::UnexpectedClientMessage(what) => ("08P01", format!("pgtrail: unexpected {what}")),
            Self::UpstreamProtocol(_) | Self::UpstreamIo(_) | Self::UpstreamClosed => {
                ("08006", "pgtrail: lost the connection to the upstream PostgreSQL server".to_owned())
            }
            Self::UpstreamConnect(_) | Self::UpstreamRefusedTls => ("08006", format!("pgtrail: {self}")),
            Self::StartupTimeout => ("08P01", "pgtrail: startup packet not received in time".to_owned()),
            Self::AuthenticationTimeout => ("08P01", format!("pgtrail: {self}")),
            Self::BufferBudgetExceeded => ("53200", format!("pgtrail: {self}")),
            Self::UnsupportedAuth | Self::ChannelBindingAcrossTls => ("28000", format!("pgtrail: {self}")),
            Self::JournalStopped | Self::JournalUnavailable => ("58030", format!("pgtrail: {self}")),
            Self::NoUpstreamSecret | Self::UpstreamWantsPassword | Self::UpstreamAuthFailed => {
                ("28000", format!("pgtrail: {self}"))
            }
            Self::CertMint(_) => ("58000", format!("pgtrail: {self}")),
            Self::ClientIo(_) | Self::ClientClosed | Self::ClientTls(_) => return None,
        };
        Some(ErrorFields::new("FATAL", code, &message))
    }
}
