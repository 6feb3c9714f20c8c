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
use pgtrail_wire::{ENCRYPTION_ACCEPTED, ENCRYPTION_REFUSED, ErrorFields, StartupMessage, decode_startup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::SessionError;
use crate::io::{connect_upstream, emit, fail_connect, send_error};
use crate::login::{LoggedIn, login};
use crate::phase::Phase;
use crate::relay::{Ending, relay};
use crate::shared::Shared;
use crate::stream::MaybeTls;
use crate::tracker::{SessionFacts, Tracker};

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
    let mut phase = Phase::Startup;
    let login_deadline = tokio::time::Instant::now() + shared.config.authentication_timeout;
    let startup = tokio::select! {
        startup = tokio::time::timeout(
            shared.config.startup_timeout.min(shared.config.authentication_timeout),
            read_startup(&shared, MaybeTls::Plain(tcp), &mut client_buf, &mut phase),
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
            warn!(%peer, ?phase, error = %e, source = ?std::error::Error::source(&e).map(ToString::to_string), "startup failed");
            return;
        }
    };
    phase = Phase::Authentication;
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
            warn!(%peer, ?phase, user = ?tracker.facts.user, "login not completed in time (proxy.authentication_timeout_ms)");
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
    // The relay has drained what PostgreSQL still owed: only the DISCONNECT is left.
    phase = Phase::Closing;
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
    debug!(session = ?tracker.facts.session_id, ?phase, "session ended");
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

/// Reads the startup packet, negotiating TLS on the way (`phase` says which of the two is
/// under way, for the log line if it fails).
async fn read_startup(
    shared: &Shared,
    mut client: MaybeTls,
    buf: &mut BytesMut,
    phase: &mut Phase,
) -> Result<Startup, SessionError> {
    let limits = Phase::Startup.client_limits(&shared.config);
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
                        tcp.write_all(&[ENCRYPTION_ACCEPTED]).await.map_err(SessionError::ClientIo)?;
                        *phase = Phase::Tls;
                        let tls = acceptor.accept(tcp).await.map_err(SessionError::ClientTls)?;
                        *phase = Phase::Startup;
                        MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)))
                    }
                    // No certificate configured: refuse TLS; the client may go on in plain.
                    (mut other, _) => {
                        other.write_all(&[ENCRYPTION_REFUSED]).await.map_err(SessionError::ClientIo)?;
                        other
                    }
                };
            }
            StartupMessage::GssEncRequest if !negotiated_gss && !client.is_tls() => {
                negotiated_gss = true;
                client.write_all(&[ENCRYPTION_REFUSED]).await.map_err(SessionError::ClientIo)?;
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
