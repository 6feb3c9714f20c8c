//! The session's I/O helpers: reading one message from a peer within the phase's limits,
//! writing messages and errors, connecting upstream (with TLS as configured), and handing
//! the tracker's events to the sink. Every session phase uses them; none of them decides
//! anything about the session.

use std::sync::Arc;

use bytes::BytesMut;
use pgtrail_wire::{
    BackendMessage, ENCRYPTION_ACCEPTED, ENCRYPTION_REFUSED, ErrorFields, FrontendMessage, StartupMessage, WireError,
    decode_backend, decode_frontend,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::UpstreamTlsMode;
use crate::error::SessionError;
use crate::shared::Shared;
use crate::stream::MaybeTls;
use crate::tracker::Tracker;

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

pub(crate) async fn read_client_message(
    client: &mut MaybeTls,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<FrontendMessage, SessionError> {
    loop {
        // Only called before the login is done: a stranger gets the small limits.
        let limits = crate::phase::Phase::Authentication.client_limits(&shared.config);
        if let Some(msg) = decode_frontend(buf, &limits).map_err(SessionError::ClientProtocol)? {
            return Ok(msg);
        }
        if client.read_buf(buf).await.map_err(SessionError::ClientIo)? == 0 {
            return Err(SessionError::ClientClosed);
        }
    }
}

pub(crate) async fn read_upstream_message(
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

/// Writes a message to the client, or appends it to `held` while a login is held back.
pub(crate) async fn send_or_hold(
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
        ENCRYPTION_ACCEPTED => {
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
            let stream = connector
                .connect(shared.upstream_server_name.clone(), tcp)
                .await
                .map_err(SessionError::UpstreamConnect)?;
            Ok(MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Client(stream))))
        }
        ENCRYPTION_REFUSED if upstream.tls == UpstreamTlsMode::Prefer => Ok(MaybeTls::Plain(tcp)),
        ENCRYPTION_REFUSED => Err(SessionError::UpstreamRefusedTls),
        _ => Err(SessionError::UpstreamProtocol(WireError::Invalid { tag: '?', field: "answer to SSLRequest" })),
    }
}
