//! The login phase: the fail-closed check, token login (when configured), the upstream
//! connection, and the authentication exchange relayed (or answered by the proxy) until
//! PostgreSQL's ReadyForQuery. The client's cancel key is replaced by the proxy's here.

use std::net::SocketAddr;

use bytes::BytesMut;
use chrono::Utc;
use pgtrail_wire::{Authentication, BackendMessage, ErrorFields, FrontendMessage, StartupMessage, WireError};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::auth;
use crate::cancel::{ClientKey, UpstreamKey};
use crate::config::Delivery;
use crate::credentials::UpstreamAnswer;
use crate::error::SessionError;
use crate::io::{
    connect_upstream, emit, fail_connect, read_client_message, read_upstream_message, send_or_hold, write_message,
};
use crate::shared::Shared;
use crate::stream::MaybeTls;
use crate::tracker::Tracker;

/// A session whose login is done: the upstream connection, what it sent after the login,
/// the client's cancel key, and (sync delivery) the login's last messages, held back.
pub(crate) struct LoggedIn {
    pub(crate) upstream: MaybeTls,
    pub(crate) upstream_buf: BytesMut,
    pub(crate) key: ClientKey,
    pub(crate) held: BytesMut,
}

/// Logs the client in: fail-closed check, token login, the upstream connection and the
/// authentication exchange. `None` when the login failed (the client was told, and the
/// failed CONNECT recorded).
///
/// Cancel safety: dropping this future (the login deadline) drops the upstream connection,
/// which closes it; nothing has been recorded yet then.
pub(crate) async fn login(
    shared: &Shared,
    client: &mut MaybeTls,
    client_buf: &mut BytesMut,
    tracker: &mut Tracker,
    startup: &StartupMessage,
    peer: SocketAddr,
) -> Option<LoggedIn> {
    if shared.config.delivery == Delivery::SyncFailClosed && !shared.sink.healthy() {
        warn!(%peer, "login refused: the journal cannot record events (fail-closed)");
        fail_connect(shared, client, tracker, &SessionError::JournalUnavailable).await;
        return None;
    }
    // Token login: the person is checked before anything reaches PostgreSQL.
    let (answer, upstream_tls) = match &shared.token_login {
        None => (None, None),
        Some(login) => {
            let auth::LoggedIn { answer, upstream_tls } =
                auth::token_login(shared, login, client, client_buf, tracker, peer).await?;
            (Some(answer), upstream_tls)
        }
    };
    let mut upstream = match connect_upstream(shared, upstream_tls).await {
        Ok(upstream) => {
            tracker.facts.backend_started = Some(Utc::now());
            upstream
        }
        Err(e) => {
            warn!(%peer, error = %e, cause = ?std::error::Error::source(&e).map(ToString::to_string), "upstream connection failed");
            fail_connect(shared, client, tracker, &e).await;
            return None;
        }
    };
    let mut upstream_buf = BytesMut::with_capacity(8192);
    match authenticate(shared, client, client_buf, &mut upstream, &mut upstream_buf, tracker, startup, answer).await {
        Ok((key, held)) => Some(LoggedIn { upstream, upstream_buf, key, held }),
        Err(AuthEnd::Rejected(fields)) => {
            info!(%peer, user = ?tracker.facts.user, sqlstate = ?fields.code(), "login rejected by PostgreSQL");
            tracker.connect_event(Some(&fields));
            emit(shared, tracker);
            None
        }
        Err(AuthEnd::Failed(e)) => {
            if matches!(e, SessionError::ClientClosed) {
                // psql does this to prompt for a password, then connects again.
                info!(%peer, user = ?tracker.facts.user, "client closed the connection during authentication");
            } else {
                warn!(%peer, error = %e, "authentication relay failed");
            }
            fail_connect(shared, client, tracker, &e).await;
            None
        }
    }
}

enum AuthEnd {
    /// PostgreSQL refused the login; its ErrorResponse was forwarded to the client.
    Rejected(ErrorFields),
    Failed(SessionError),
}

impl From<SessionError> for AuthEnd {
    fn from(e: SessionError) -> Self {
        Self::Failed(e)
    }
}

/// Relays the startup packet and the authentication exchange until ReadyForQuery; with
/// `answer` (token login) the proxy answers PostgreSQL's authentication requests itself.
#[allow(clippy::too_many_arguments, reason = "the two connections with their buffers, and the session's parts")]
async fn authenticate(
    shared: &Shared,
    client: &mut MaybeTls,
    client_buf: &mut BytesMut,
    upstream: &mut MaybeTls,
    upstream_buf: &mut BytesMut,
    tracker: &mut Tracker,
    startup: &StartupMessage,
    mut answer: Option<UpstreamAnswer>,
) -> Result<(ClientKey, BytesMut), AuthEnd> {
    // Sync delivery: from AuthenticationOk on, messages are held here, not sent.
    let mut held: Option<BytesMut> = None;
    let mut out = BytesMut::new();
    startup.encode(&mut out);
    upstream.write_all(&out).await.map_err(SessionError::UpstreamIo)?;
    upstream.flush().await.map_err(SessionError::UpstreamIo)?;
    let mut key = None;
    loop {
        let msg = read_upstream_message(upstream, upstream_buf, shared).await?;
        let needs_reply = match &msg {
            // Token login: the proxy answers PostgreSQL itself; the client sees only Ok.
            BackendMessage::Authentication(request)
                if !matches!(request, Authentication::Ok)
                    && let Some(answer) = answer.as_mut() =>
            {
                if let Some(reply) = answer.reply(request)? {
                    forward_auth_response(upstream, &reply).await?;
                }
                continue;
            }
            BackendMessage::Authentication(auth) => match auth {
                Authentication::CleartextPassword
                | Authentication::Md5Password { .. }
                | Authentication::SaslContinue(_) => true,
                Authentication::Sasl { mechanisms } => {
                    // TLS ends at the proxy, so channel binding (-PLUS) cannot succeed
                    // end to end: offer only the plain mechanisms.
                    let plain: Vec<String> = mechanisms.iter().filter(|m| !m.ends_with("-PLUS")).cloned().collect();
                    let rewritten = BackendMessage::Authentication(Authentication::Sasl { mechanisms: plain });
                    write_message(client, &rewritten).await?;
                    let initial = read_auth_response(shared, client, client_buf, upstream, upstream_buf).await?;
                    check_scram_initial(&initial, upstream.is_tls())?;
                    forward_auth_response(upstream, &initial).await?;
                    continue;
                }
                Authentication::Ok if shared.config.delivery.is_sync() => {
                    let mut hold = BytesMut::new();
                    msg.encode(&mut hold);
                    held = Some(hold);
                    continue;
                }
                Authentication::Ok | Authentication::SaslFinal(_) => false,
                Authentication::KerberosV5
                | Authentication::Gss
                | Authentication::GssContinue(_)
                | Authentication::Sspi => {
                    return Err(SessionError::UnsupportedAuth.into());
                }
            },
            BackendMessage::ParameterStatus { name, value } => {
                tracker.on_parameter_status(name, value);
                false
            }
            BackendMessage::BackendKeyData { pid, secret } => {
                tracker.facts.set_pid(*pid);
                let client_key = shared.cancel.register(UpstreamKey { pid: *pid, secret: secret.clone() });
                key = Some(client_key);
                let ours = BackendMessage::BackendKeyData {
                    pid: client_key.pid,
                    secret: bytes::Bytes::copy_from_slice(&client_key.secret),
                };
                send_or_hold(client, &mut held, &ours).await?;
                continue;
            }
            BackendMessage::ErrorResponse(fields) => {
                // A login failing after AuthenticationOk: release what was held, then the error.
                if let Some(hold) = held.take() {
                    client.write_all(&hold).await.map_err(SessionError::ClientIo)?;
                }
                write_message(client, &msg).await?;
                return Err(AuthEnd::Rejected(fields.clone()));
            }
            BackendMessage::ReadyForQuery { .. } => {
                send_or_hold(client, &mut held, &msg).await?;
                let key = key.ok_or(AuthEnd::Failed(SessionError::UpstreamProtocol(WireError::Invalid {
                    tag: 'Z',
                    field: "ReadyForQuery before BackendKeyData",
                })))?;
                return Ok((key, held.unwrap_or_default()));
            }
            _ => false,
        };
        send_or_hold(client, &mut held, &msg).await?;
        if needs_reply {
            let reply = read_auth_response(shared, client, client_buf, upstream, upstream_buf).await?;
            forward_auth_response(upstream, &reply).await?;
        }
    }
}

/// Reads the client's answer to an authentication request (a `p` message), while watching
/// PostgreSQL: when it gives up on the login meanwhile (its authentication_timeout), the
/// client is told what it said, or that it closed, and the login ends.
async fn read_auth_response(
    shared: &Shared,
    client: &mut MaybeTls,
    client_buf: &mut BytesMut,
    upstream: &mut MaybeTls,
    upstream_buf: &mut BytesMut,
) -> Result<FrontendMessage, AuthEnd> {
    // Both reads are cancel-safe (`read_buf` into a buffer that keeps what arrived).
    let reply = tokio::select! {
        reply = read_client_message(client, client_buf, shared) => reply?,
        upstream_said = read_upstream_message(upstream, upstream_buf, shared) => {
            return Err(match upstream_said? {
                BackendMessage::ErrorResponse(fields) => {
                    write_message(client, &BackendMessage::ErrorResponse(fields.clone())).await?;
                    AuthEnd::Rejected(fields)
                }
                _ => AuthEnd::Failed(SessionError::UpstreamProtocol(WireError::Invalid {
                    tag: '?',
                    field: "a message while waiting for the client's password",
                })),
            });
        }
    };
    match reply {
        reply @ FrontendMessage::AuthResponse(_) => Ok(reply),
        // psql closes and reconnects to ask for a password; anything else is a violation.
        FrontendMessage::Terminate => Err(SessionError::ClientClosed.into()),
        _ => Err(SessionError::UnexpectedClientMessage("a non-password message during authentication").into()),
    }
}

async fn forward_auth_response(upstream: &mut MaybeTls, reply: &FrontendMessage) -> Result<(), SessionError> {
    let mut out = BytesMut::new();
    reply.encode(&mut out);
    upstream.write_all(&out).await.map_err(SessionError::UpstreamIo)?;
    upstream.flush().await.map_err(SessionError::UpstreamIo)
}

/// A SCRAM client that supports channel binding but was offered none sends the GS2 flag
/// `y`. PostgreSQL over TLS treats that as a downgrade attack and refuses with a cryptic
/// message; the flag is signed, so the proxy cannot change it. Say what to do instead.
fn check_scram_initial(reply: &FrontendMessage, upstream_tls: bool) -> Result<(), SessionError> {
    let FrontendMessage::AuthResponse(body) = reply else {
        return Ok(());
    };
    let Ok(initial) = pgtrail_wire::SaslInitialResponse::parse(body.clone()) else {
        return Err(SessionError::UnexpectedClientMessage("a malformed SASLInitialResponse"));
    };
    let wants_binding = initial.data.as_ref().is_some_and(|d| d.starts_with(b"y,"));
    if upstream_tls && wants_binding {
        return Err(SessionError::ChannelBindingAcrossTls);
    }
    Ok(())
}
