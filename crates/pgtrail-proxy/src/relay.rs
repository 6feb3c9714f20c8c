//! The relay: bytes flow unchanged in both directions while the tracker watches.
//!
//! Each direction reads into its own buffer, walks the complete frame headers in it, hands
//! the messages the tracker needs to it, and forwards the whole scanned region with one
//! write. Messages whose body the tracker does not need (DataRow, CopyData, ...) are
//! streamed: their bytes are forwarded as they arrive, so a 1 GiB row or COPY never has to
//! fit in memory. Messages whose body it needs (Query, Bind, CommandComplete,
//! ErrorResponse, ...) are bounded by the configured limits before anything is buffered.

use std::sync::Mutex;

use bytes::{Buf, Bytes, BytesMut};
use chrono::Utc;
use pgtrail_wire::{BackendMessage, FrontendMessage, Limits, Side, peek_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::server::Shared;
use crate::session::{SessionError, send_error};
use crate::stream::MaybeTls;
use crate::tracker::Tracker;

/// How a relayed session ended.
#[derive(Debug)]
pub(crate) enum Ending {
    ClientClosed,
    UpstreamClosed,
    /// The proxy is shutting down and the grace period is over.
    Terminated,
    Error(SessionError),
}

/// Where a direction is within the byte stream.
#[derive(Debug, Default)]
struct Scanner {
    /// Bytes of a streamed message body still to forward before the next header.
    passthrough: usize,
}

impl Scanner {
    /// Walks `buf`, feeding `visit` every message, and returns how many leading bytes may be
    /// forwarded now. `needs_body` decides which tags must be complete before forwarding.
    fn scan(
        &mut self,
        buf: &[u8],
        side: Side,
        limits: &Limits,
        needs_body: fn(u8) -> bool,
        mut visit: impl FnMut(u8, Option<Bytes>) -> Result<(), SessionError>,
    ) -> Result<usize, SessionError> {
        let mut pos = 0;
        loop {
            if self.passthrough > 0 {
                let take = self.passthrough.min(buf.len() - pos);
                pos += take;
                self.passthrough -= take;
                if self.passthrough > 0 {
                    return Ok(pos);
                }
            }
            let header = peek_frame(&buf[pos..], side, limits).map_err(|e| match side {
                Side::Frontend => SessionError::ClientProtocol(e),
                Side::Backend => SessionError::UpstreamProtocol(e),
            })?;
            let Some(header) = header else { return Ok(pos) };
            if needs_body(header.tag) {
                if buf.len() - pos < header.total_len {
                    return Ok(pos);
                }
                let body = Bytes::copy_from_slice(&buf[pos + 5..pos + header.total_len]);
                visit(header.tag, Some(body))?;
                pos += header.total_len;
            } else {
                visit(header.tag, None)?;
                let available = header.total_len.min(buf.len() - pos);
                pos += available;
                self.passthrough = header.total_len - available;
            }
        }
    }
}

fn frontend_needs_body(tag: u8) -> bool {
    matches!(tag, b'Q' | b'P' | b'B' | b'E' | b'D' | b'C' | b'S' | b'F' | b'X')
}

fn backend_needs_body(tag: u8) -> bool {
    matches!(tag, b'C' | b'E' | b'S')
}

/// Runs the relay until either side closes, an error, or termination.
pub(crate) async fn relay(
    shared: &Shared,
    client: MaybeTls,
    client_buf: BytesMut,
    upstream: MaybeTls,
    upstream_buf: BytesMut,
    tracker: Tracker,
    mut terminate: watch::Receiver<bool>,
) -> (Ending, Tracker) {
    let tracker = Mutex::new(tracker);
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut upstream_rd, mut upstream_wr) = tokio::io::split(upstream);
    let ending = {
        let to_server = client_to_server(shared, &mut client_rd, &mut upstream_wr, client_buf, &tracker);
        let to_client = server_to_client(shared, &mut upstream_rd, &mut client_wr, upstream_buf, &tracker);
        tokio::pin!(to_server, to_client);
        tokio::select! {
            end = &mut to_server => end.unwrap_or_else(Ending::Error),
            end = &mut to_client => end.unwrap_or_else(Ending::Error),
            _ = terminate.wait_for(|t| *t) => Ending::Terminated,
        }
    };
    let mut client = client_rd.unsplit(client_wr);
    if let Ending::Terminated | Ending::Error(_) = &ending {
        let fields = match &ending {
            Ending::Error(e) => e.client_error(),
            _ => Some(pgtrail_wire::ErrorFields::new(
                "FATAL",
                "57P01",
                "terminating connection due to administrator command",
            )),
        };
        if let Some(fields) = fields {
            send_error(&mut client, &fields).await;
        }
    }
    let _ = client.shutdown().await;
    let mut upstream = upstream_rd.unsplit(upstream_wr);
    let _ = upstream.shutdown().await;
    let tracker = tracker.into_inner().unwrap_or_else(|p| p.into_inner());
    (ending, tracker)
}

fn lock(tracker: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(|p| p.into_inner())
}

fn emit_pending(shared: &Shared, tracker: &Mutex<Tracker>) {
    let events = lock(tracker).take_events();
    for event in events {
        shared.sink.emit(event);
    }
}

async fn client_to_server(
    shared: &Shared,
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
    mut buf: BytesMut,
    tracker: &Mutex<Tracker>,
) -> Result<Ending, SessionError> {
    let mut scanner = Scanner::default();
    let limits = shared.config.limits;
    let mut terminated = false;
    loop {
        if !buf.is_empty() {
            let now = Utc::now();
            let forward = scanner.scan(&buf, Side::Frontend, &limits, frontend_needs_body, |tag, body| {
                if let Some(body) = body {
                    let msg = FrontendMessage::parse(tag, body).map_err(SessionError::ClientProtocol)?;
                    terminated |= matches!(msg, FrontendMessage::Terminate);
                    lock(tracker).on_frontend(&msg, now);
                }
                Ok(())
            })?;
            if forward > 0 {
                wr.write_all(&buf[..forward]).await.map_err(SessionError::UpstreamIo)?;
                wr.flush().await.map_err(SessionError::UpstreamIo)?;
                buf.advance(forward);
            }
            if terminated {
                return Ok(Ending::ClientClosed);
            }
        }
        // `read_buf` is cancel-safe: if the select in `relay` drops us here, nothing was read.
        if rd.read_buf(&mut buf).await.map_err(SessionError::ClientIo)? == 0 {
            return Ok(Ending::ClientClosed);
        }
    }
}

async fn server_to_client(
    shared: &Shared,
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
    mut buf: BytesMut,
    tracker: &Mutex<Tracker>,
) -> Result<Ending, SessionError> {
    let mut scanner = Scanner::default();
    let limits = shared.backend_limits;
    loop {
        if !buf.is_empty() {
            let forward = scanner.scan(&buf, Side::Backend, &limits, backend_needs_body, |tag, body| {
                let mut t = lock(tracker);
                match body {
                    None => match tag {
                        b'Z' => t.on_ready(),
                        b'V' => t.on_function_result(),
                        other => t.on_backend_tag(other),
                    },
                    Some(body) => match BackendMessage::parse(tag, body).map_err(SessionError::UpstreamProtocol)? {
                        BackendMessage::CommandComplete { tag } => t.on_command_complete(&tag),
                        BackendMessage::ErrorResponse(fields) => t.on_error(&fields),
                        BackendMessage::ParameterStatus { name, value } => t.on_parameter_status(&name, &value),
                        _ => {}
                    },
                }
                Ok(())
            })?;
            if forward > 0 {
                wr.write_all(&buf[..forward]).await.map_err(SessionError::ClientIo)?;
                wr.flush().await.map_err(SessionError::ClientIo)?;
                buf.advance(forward);
            }
            emit_pending(shared, tracker);
        }
        if rd.read_buf(&mut buf).await.map_err(SessionError::UpstreamIo)? == 0 {
            return Ok(Ending::UpstreamClosed);
        }
    }
}
