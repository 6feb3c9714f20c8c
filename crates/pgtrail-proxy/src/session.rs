//! One client connection, from the first byte to the DISCONNECT event: startup and TLS
//! negotiation, the upstream connection, relayed authentication, then the relay.
//!
//! Errors end only this session. The client gets a PostgreSQL ErrorResponse with a
//! SQLSTATE (when it can still be reached), the operator one structured log line without
//! SQL or secrets, and the tracker an event.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use chrono::Utc;
use pgtrail_wire::{
    Authentication, BackendMessage, ErrorFields, FrontendMessage, StartupMessage, WireError, decode_backend,
    decode_frontend, decode_startup,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::auth;
use crate::cancel::{ClientKey, UpstreamKey};
use crate::config::{Delivery, UpstreamTlsMode};
use crate::relay::{Ending, relay};
use crate::server::Shared;
use crate::stream::MaybeTls;
use crate::tracker::{SessionFacts, Tracker};

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

/// Runs one session to its end.
pub(crate) async fn run(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, terminate: watch::Receiver<bool>) {
    let _ = tcp.set_nodelay(true);
    let facts = SessionFacts {
        remote_host: Some(Arc::from(peer.ip().to_string())),
        remote_port: Some(Arc::from(peer.port().to_string())),
        server_host: Some(Arc::from(shared.config.upstream.host.as_str())),
        started: Utc::now(),
        ..Default::default()
    };
    let mut client_buf = BytesMut::with_capacity(8192);
    let mut shutting_down = terminate.clone();
    let login_deadline = tokio::time::Instant::now() + shared.config.authentication_timeout;
    let startup = tokio::select! {
        startup = tokio::time::timeout(
            shared.config.startup_timeout.min(shared.config.authentication_timeout),
            read_startup(&shared, MaybeTls::Plain(tcp), &mut client_buf),
        ) => startup.unwrap_or(Err(SessionError::StartupTimeout)),
        // A connection that has not even sent its startup packet is simply closed.
        _ = shutting_down.wait_for(|t| *t) => return,
    };
    let (mut client, startup) = match startup {
        Ok(Startup::Session(client, msg)) => (client, msg),
        Ok(Startup::Cancel { pid, secret }) => {
            forward_cancel(&shared, pid, &secret).await;
            return;
        }
        Ok(Startup::Closed) => return,
        Err(e) => {
            // Not a PostgreSQL client, or a hostile one: no session, no event.
            shared.stats.count_protocol_error();
            warn!(%peer, error = %e, source = ?std::error::Error::source(&e).map(ToString::to_string), "startup failed");
            return;
        }
    };
    let mut tracker = Tracker::new(facts, shared.classifier.clone());
    tracker.facts.user = startup.param("user").map(Arc::from);
    tracker.facts.database = startup.param("database").map(Arc::from).or_else(|| tracker.facts.user.clone());
    tracker.facts.application = startup.param("application_name").map(Arc::from);

    // The whole login, from the first byte on, has one deadline: a client that goes idle
    // half-way through authentication holds nothing for long.
    let login = tokio::time::timeout_at(
        login_deadline,
        login(&shared, &mut client, &mut client_buf, &mut tracker, &startup, peer),
    )
    .await;
    let LoggedIn { upstream, upstream_buf, key, held } = match login {
        Ok(Some(logged_in)) => logged_in,
        Ok(None) => return,
        Err(_) => {
            warn!(%peer, user = ?tracker.facts.user, "login not completed in time (proxy.authentication_timeout_ms)");
            fail_connect(&shared, &mut client, &mut tracker, &SessionError::AuthenticationTimeout).await;
            return;
        }
    };
    tracker.connect_event(None);
    if shared.config.delivery.is_sync() {
        // AuthenticationOk and everything after it reach the client once CONNECT is durable.
        let mut durable = true;
        for event in tracker.take_events() {
            durable &= shared.sink.emit_durable(event).await;
        }
        let sent = if durable { client.write_all(&held).await.and(client.flush().await) } else { Ok(()) };
        if !durable || sent.is_err() {
            warn!(%peer, durable, "login not completed: the CONNECT event is not durable or the client left");
            send_error(&mut client, &SessionError::JournalStopped.client_error().expect("has a client error")).await;
            shared.cancel.remove(&key);
            return;
        }
    } else {
        emit(&shared, &mut tracker);
    }
    info!(%peer, session = ?tracker.facts.session_id, user = ?tracker.facts.user, database = ?tracker.facts.database, "session started");

    let (ending, mut tracker) = relay(&shared, client, client_buf, upstream, upstream_buf, tracker, terminate).await;
    shared.cancel.remove(&key);
    let reason = match &ending {
        // A connection that broke is a peer that vanished: no SQLSTATE ended the session.
        Ending::Error(e) if e.is_connection_loss() => {
            info!(session = ?tracker.facts.session_id, error = %e, "connection lost");
            None
        }
        Ending::Error(e) => {
            warn!(session = ?tracker.facts.session_id, error = %e, "session ended by an error");
            e.client_error()
        }
        Ending::Terminated => {
            Some(ErrorFields::new("FATAL", "57P01", "terminating connection due to administrator command"))
        }
        Ending::ClientClosed | Ending::UpstreamClosed => None,
    };
    tracker.disconnect_event(reason.as_ref());
    emit(&shared, &mut tracker);
    debug!(session = ?tracker.facts.session_id, "session ended");
}

/// A session whose login is done: the upstream connection, what it sent after the login,
/// the client's cancel key, and (sync delivery) the login's last messages, held back.
struct LoggedIn {
    upstream: MaybeTls,
    upstream_buf: BytesMut,
    key: ClientKey,
    held: BytesMut,
}

/// Logs the client in: fail-closed check, token login, the upstream connection and the
/// authentication exchange. `None` when the login failed (the client was told, and the
/// failed CONNECT recorded).
///
/// Cancel safety: dropping this future (the login deadline) drops the upstream connection,
/// which closes it; nothing has been recorded yet then.
async fn login(
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

pub(crate) fn emit(shared: &Shared, tracker: &mut Tracker) {
    for event in tracker.take_events() {
        shared.sink.emit(event);
    }
}

pub(crate) async fn fail_connect(shared: &Shared, client: &mut MaybeTls, tracker: &mut Tracker, e: &SessionError) {
    let fields = e.client_error().unwrap_or_else(|| ErrorFields::new("FATAL", "08006", &format!("pgtrail: {e}")));
    send_error(client, &fields).await;
    tracker.connect_event(Some(&fields));
    emit(shared, tracker);
}

/// Refuses a connection beyond proxy.max_client_connections with SQLSTATE 53300, as
/// PostgreSQL does, without reading what the client sent.
pub(crate) async fn refuse_connection(tcp: TcpStream) {
    let mut client = MaybeTls::Plain(tcp);
    let fields =
        ErrorFields::new("FATAL", "53300", "sorry, too many clients already (pgtrail: proxy.max_client_connections)");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), send_error(&mut client, &fields)).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.shutdown()).await;
}

/// Writes an ErrorResponse and flushes; the connection may already be gone.
pub(crate) async fn send_error(stream: &mut MaybeTls, fields: &ErrorFields) {
    let mut out = BytesMut::new();
    BackendMessage::ErrorResponse(fields.clone()).encode(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
}

enum Startup {
    Session(MaybeTls, StartupMessage),
    Cancel {
        pid: i32,
        secret: bytes::Bytes,
    },
    /// The client went away before sending a startup packet (port probes, health checks).
    Closed,
}

async fn read_startup(shared: &Shared, mut client: MaybeTls, buf: &mut BytesMut) -> Result<Startup, SessionError> {
    let limits = shared.config.limits;
    let mut negotiated_ssl = false;
    let mut negotiated_gss = false;
    loop {
        let msg = loop {
            match decode_startup(buf, &limits) {
                Ok(Some(msg)) => break msg,
                Ok(None) => {}
                // Like PostgreSQL ("invalid length of startup packet"): logged, and the
                // connection closed without a word, since this is no PostgreSQL client
                // (or it already said Terminate); a message would only confuse it.
                Err(e) => return Err(SessionError::ClientProtocol(e)),
            }
            if client.read_buf(buf).await.map_err(SessionError::ClientIo)? == 0 {
                return if buf.is_empty() { Ok(Startup::Closed) } else { Err(SessionError::ClientClosed) };
            }
        };
        match msg {
            StartupMessage::SslRequest if !negotiated_ssl && !negotiated_gss => {
                negotiated_ssl = true;
                if !buf.is_empty() {
                    // Bytes sent before the TLS handshake must not be trusted (CVE-2021-23214).
                    return Err(SessionError::UnexpectedClientMessage("data after SSLRequest"));
                }
                client = match (client, shared.client_tls.as_ref()) {
                    (MaybeTls::Plain(mut tcp), Some(acceptor)) => {
                        tcp.write_all(b"S").await.map_err(SessionError::ClientIo)?;
                        let tls = acceptor.accept(tcp).await.map_err(SessionError::ClientTls)?;
                        MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)))
                    }
                    // No certificate configured: refuse TLS; the client may go on in plain.
                    (mut other, _) => {
                        other.write_all(b"N").await.map_err(SessionError::ClientIo)?;
                        other
                    }
                };
            }
            StartupMessage::GssEncRequest if !negotiated_gss && !client.is_tls() => {
                negotiated_gss = true;
                client.write_all(b"N").await.map_err(SessionError::ClientIo)?;
            }
            StartupMessage::SslRequest | StartupMessage::GssEncRequest => {
                return Err(SessionError::UnexpectedClientMessage("a second encryption request"));
            }
            StartupMessage::CancelRequest { pid, secret } => {
                return Ok(Startup::Cancel { pid, secret });
            }
            startup @ StartupMessage::Startup { .. } => {
                return Ok(Startup::Session(client, startup));
            }
        }
    }
}

pub(crate) async fn read_client_message(
    client: &mut MaybeTls,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<FrontendMessage, SessionError> {
    loop {
        // Only called before the login is done: a stranger gets the small limits.
        if let Some(msg) = decode_frontend(buf, &shared.config.auth_limits).map_err(SessionError::ClientProtocol)? {
            return Ok(msg);
        }
        if client.read_buf(buf).await.map_err(SessionError::ClientIo)? == 0 {
            return Err(SessionError::ClientClosed);
        }
    }
}

async fn read_upstream_message(
    upstream: &mut MaybeTls,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<BackendMessage, SessionError> {
    loop {
        if let Some(msg) = decode_backend(buf, &shared.backend_limits).map_err(SessionError::UpstreamProtocol)? {
            return Ok(msg);
        }
        if upstream.read_buf(buf).await.map_err(SessionError::UpstreamIo)? == 0 {
            return Err(SessionError::UpstreamClosed);
        }
    }
}

pub(crate) async fn write_message(stream: &mut MaybeTls, msg: &BackendMessage) -> Result<(), SessionError> {
    let mut out = BytesMut::new();
    msg.encode(&mut out);
    stream.write_all(&out).await.map_err(SessionError::ClientIo)?;
    stream.flush().await.map_err(SessionError::ClientIo)
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
    mut answer: Option<auth::UpstreamAnswer>,
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

/// Writes a message to the client, or appends it to `held` while a login is held back.
async fn send_or_hold(
    client: &mut MaybeTls,
    held: &mut Option<BytesMut>,
    msg: &BackendMessage,
) -> Result<(), SessionError> {
    match held {
        Some(hold) => {
            msg.encode(hold);
            Ok(())
        }
        None => write_message(client, msg).await,
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

/// Opens the upstream connection and negotiates TLS as configured.
pub(crate) async fn connect_upstream(
    shared: &Shared,
    tls_with_cert: Option<Arc<rustls::ClientConfig>>,
) -> Result<MaybeTls, SessionError> {
    let upstream = &shared.config.upstream;
    let timeout = std::time::Duration::from_millis(upstream.connect_timeout_ms);
    let connect = TcpStream::connect((upstream.host.as_str(), upstream.port));
    let mut tcp = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| SessionError::UpstreamConnect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(SessionError::UpstreamConnect)?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls_with_cert.as_ref().or(shared.upstream_tls.as_ref()) else {
        return Ok(MaybeTls::Plain(tcp));
    };
    let mut out = BytesMut::new();
    StartupMessage::SslRequest.encode(&mut out);
    tcp.write_all(&out).await.map_err(SessionError::UpstreamConnect)?;
    let answer = tcp.read_u8().await.map_err(SessionError::UpstreamConnect)?;
    match answer {
        b'S' => {
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
            let stream = connector
                .connect(shared.upstream_server_name.clone(), tcp)
                .await
                .map_err(SessionError::UpstreamConnect)?;
            Ok(MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Client(stream))))
        }
        b'N' if upstream.tls == UpstreamTlsMode::Prefer => Ok(MaybeTls::Plain(tcp)),
        b'N' => Err(SessionError::UpstreamRefusedTls),
        _ => Err(SessionError::UpstreamProtocol(WireError::Invalid { tag: '?', field: "answer to SSLRequest" })),
    }
}

/// Forwards a client's CancelRequest to the upstream session it names, if it names one.
async fn forward_cancel(shared: &Shared, pid: i32, secret: &[u8]) {
    let Some(key) = shared.cancel.lookup(pid, secret) else {
        // Like PostgreSQL: an unknown key is ignored without telling the sender anything.
        info!("cancel request with an unknown key ignored");
        return;
    };
    let result = async {
        let mut upstream = connect_upstream(shared, None).await?;
        let mut out = BytesMut::new();
        StartupMessage::CancelRequest { pid: key.pid, secret: key.secret.clone() }.encode(&mut out);
        upstream.write_all(&out).await.map_err(SessionError::UpstreamIo)?;
        upstream.flush().await.map_err(SessionError::UpstreamIo)?;
        // PostgreSQL closes the connection once it has processed the request.
        let mut sink = [0u8; 1];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), upstream.read(&mut sink)).await;
        Ok::<(), SessionError>(())
    }
    .await;
    match result {
        Ok(()) => info!(upstream_pid = key.pid, "cancel request forwarded"),
        Err(e) => warn!(error = %e, "cancel request could not be forwarded"),
    }
}
