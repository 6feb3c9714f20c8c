//! Token login (`auth.client = "token"`): the proxy asks the client for a password over
//! TLS, verifies it as a token, maps the person to the database user, and then logs in to
//! PostgreSQL itself, with a short-lived client certificate or a password from the
//! secrets file. The client never sees PostgreSQL's authentication requests, and nothing
//! of a refused login reaches PostgreSQL.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use pgtrail_event::Identity;
use pgtrail_identity::LoginError;
use pgtrail_wire::{Authentication, BackendMessage, ErrorFields, FrontendMessage};
use rustls::ClientConfig;
use tracing::{info, warn};

use crate::credentials::{ProxyCredentials, TokenLogin, UpstreamAnswer};
use crate::error::SessionError;
use crate::io::{emit, fail_connect, read_client_message, send_error, write_message};
use crate::shared::Shared;
use crate::stream::MaybeTls;
use crate::tracker::Tracker;

/// A refused token login: what the client is told, and who it was if the token was valid.
#[derive(Debug)]
pub(crate) struct LoginRefused {
    pub(crate) fields: ErrorFields,
    pub(crate) identity: Option<Arc<Identity>>,
    pub(crate) reason: String,
}

/// Asks the client for its token (a cleartext password, only over TLS) and verifies it.
pub(crate) async fn client_token_login(
    shared: &Shared,
    login: &TokenLogin,
    client: &mut MaybeTls,
    client_buf: &mut BytesMut,
    user: &str,
) -> Result<Result<Arc<Identity>, LoginRefused>, SessionError> {
    if !client.is_tls() {
        return Ok(Err(LoginRefused {
            fields: ErrorFields::new(
                "FATAL",
                "28000",
                "pgtrail: token login needs TLS, so the token is never sent in clear: connect with sslmode=require",
            ),
            identity: None,
            reason: "no TLS".into(),
        }));
    }
    write_message(client, &BackendMessage::Authentication(Authentication::CleartextPassword)).await?;
    let token = match read_client_message(client, client_buf, shared).await? {
        FrontendMessage::AuthResponse(body) => {
            let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
            String::from_utf8_lossy(&body[..end]).into_owned()
        }
        // psql closes and reconnects to ask for a password.
        FrontendMessage::Terminate => return Err(SessionError::ClientClosed),
        _ => return Err(SessionError::UnexpectedClientMessage("a non-password message during authentication")),
    };
    match login.authenticator.login(&token, user).await {
        Ok(identity) => Ok(Ok(identity)),
        Err(e) => {
            let identity = match &e {
                LoginError::NotPermitted { identity, .. } => Some(Arc::clone(identity)),
                LoginError::Token(_) => None,
            };
            let fields = ErrorFields::new("FATAL", e.sqlstate(), &format!("pgtrail: login refused: {e}"));
            Ok(Err(LoginRefused { fields, identity, reason: e.to_string() }))
        }
    }
}

/// How the proxy logs in upstream after a token login.
pub(crate) struct LoggedIn {
    pub(crate) answer: UpstreamAnswer,
    /// The client certificate's TLS configuration (`auth.upstream = "cert"`).
    pub(crate) upstream_tls: Option<Arc<ClientConfig>>,
}

/// Asks for and checks the client's token; on refusal tells the client, records the failed
/// login and returns None (the session is over).
pub(crate) async fn token_login(
    shared: &Shared,
    login: &TokenLogin,
    client: &mut MaybeTls,
    client_buf: &mut BytesMut,
    tracker: &mut Tracker,
    peer: SocketAddr,
) -> Option<LoggedIn> {
    let user = tracker.facts.user.as_deref().unwrap_or_default().to_owned();
    let attempt = tokio::time::timeout(
        shared.config.startup_timeout,
        client_token_login(shared, login, client, client_buf, &user),
    )
    .await
    .unwrap_or(Err(SessionError::StartupTimeout));
    let credentials = match attempt {
        Ok(Ok(identity)) => {
            tracker.facts.identity = Some(identity);
            login.credentials_for(&user)
        }
        Ok(Err(refused)) => {
            info!(%peer, user = ?tracker.facts.user, subject = ?refused.identity.as_ref().map(|i| &i.subject), reason = %refused.reason, "token login refused");
            tracker.facts.identity = refused.identity;
            shared.stats.token_logins_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            send_error(client, &refused.fields).await;
            tracker.connect_event(Some(&refused.fields));
            emit(shared, tracker);
            return None;
        }
        Err(e) => Err(e),
    };
    match credentials {
        Ok(credentials) => {
            let (upstream_tls, password) = match credentials {
                ProxyCredentials::Cert(config) => (Some(config), None),
                ProxyCredentials::Password(password) => (None, Some(password)),
            };
            Some(LoggedIn { answer: UpstreamAnswer::new(user, password), upstream_tls })
        }
        Err(e) => {
            if matches!(e, SessionError::ClientClosed) {
                info!(%peer, user = ?tracker.facts.user, "client closed the connection during authentication");
            } else {
                warn!(%peer, error = %e, "token login failed");
            }
            fail_connect(shared, client, tracker, &e).await;
            None
        }
    }
}
