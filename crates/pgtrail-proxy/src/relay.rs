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
    mut client: MaybeTls,
    client_buf: BytesMut,
    mut upstream: MaybeTls,
    upstream_buf: BytesMut,
    tracker: Tracker,
    mut terminate: watch::Receiver<bool>,
) -> (Ending, Tracker) {
    let tracker = Mutex::new(tracker);
    let bufs = (client_buf, upstream_buf);
    let ending = match (&mut client, &mut upstream) {
        // Plain TCP on both sides: borrowed halves, no lock between reader and writer.
        (MaybeTls::Plain(c), MaybeTls::Plain(u)) => {
            let (mut cr, mut cw) = c.split();
            let (mut ur, mut uw) = u.split();
            both_directions(shared, (&mut cr, &mut cw), (&mut ur, &mut uw), bufs, &tracker, &mut terminate).await
        }
        (c, u) => {
            let (mut cr, mut cw) = tokio::io::split(c);
            let (mut ur, mut uw) = tokio::io::split(u);
            both_directions(shared, (&mut cr, &mut cw), (&mut ur, &mut uw), bufs, &tracker, &mut terminate).await
        }
    };
    let farewell = match &ending {
        Ending::Error(e) => e.client_error(),
        Ending::Terminated => Some(pgtrail_wire::ErrorFields::new(
            "FATAL",
            "57P01",
            "terminating connection due to administrator command",
        )),
        // PostgreSQL went away without saying why (crash, kill -9, network): tell the client.
        Ending::UpstreamClosed if !lock(&tracker).server_said_fatal() => Some(pgtrail_wire::ErrorFields::new(
            "FATAL",
            "08006",
            "pgtrail: the upstream PostgreSQL server closed the connection unexpectedly",
        )),
        Ending::ClientClosed | Ending::UpstreamClosed => None,
    };
    if let Some(fields) = farewell {
        send_error(&mut client, &fields).await;
    }
    let _ = client.shutdown().await;
    let _ = upstream.shutdown().await;
    let tracker = tracker.into_inner().unwrap_or_else(|p| p.into_inner());
    (ending, tracker)
}

/// Runs both directions until one ends or the proxy terminates the session.
async fn both_directions(
    shared: &Shared,
    client: (&mut (impl AsyncRead + Unpin), &mut (impl AsyncWrite + Unpin)),
    upstream: (&mut (impl AsyncRead + Unpin), &mut (impl AsyncWrite + Unpin)),
    (client_buf, upstream_buf): (BytesMut, BytesMut),
    tracker: &Mutex<Tracker>,
    terminate: &mut watch::Receiver<bool>,
) -> Ending {
    let to_server = client_to_server(shared, client.0, upstream.1, client_buf, tracker);
    let to_client = server_to_client(shared, upstream.0, client.1, upstream_buf, tracker);
    tokio::pin!(to_server, to_client);
    tokio::select! {
        end = &mut to_server => end.unwrap_or_else(Ending::Error),
        end = &mut to_client => end.unwrap_or_else(Ending::Error),
        _ = terminate.wait_for(|t| *t) => Ending::Terminated,
    }
}

fn lock(tracker: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(|p| p.into_inner())
}

/// A backend message the tracker handles once it has been forwarded.
enum Reply {
    /// A message whose tag is all the tracker needs.
    Tag(u8),
    Complete(String),
    Error(pgtrail_wire::ErrorFields),
    Parameter(String, String),
}

/// What differs between the two directions of the relay.
struct Direction {
    side: Side,
    limits: Limits,
    needs_body: fn(u8) -> bool,
    read_error: fn(std::io::Error) -> SessionError,
    write_error: fn(std::io::Error) -> SessionError,
    /// How the session ends when the reading side closes.
    closed: fn() -> Ending,
}

/// Reads from one peer and writes to the other, unchanged. `visit` sees every message
/// before it is forwarded (it may keep work for later in `later`) and says whether the
/// relay should stop after forwarding it; `forwarded` gets that work after the write, so
/// it adds nothing to the latency the peer sees.
async fn pump<M>(
    direction: Direction,
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
    mut buf: BytesMut,
    mut visit: impl FnMut(u8, Option<Bytes>, &mut Vec<M>) -> Result<bool, SessionError>,
    mut forwarded: impl FnMut(&mut Vec<M>),
) -> Result<Ending, SessionError> {
    let mut scanner = Scanner::default();
    let mut later = Vec::new();
    loop {
        if !buf.is_empty() {
            let mut stop = false;
            let forward =
                scanner.scan(&buf, direction.side, &direction.limits, direction.needs_body, |tag, body| {
                    stop |= visit(tag, body, &mut later)?;
                    Ok(())
                })?;
            if forward > 0 {
                wr.write_all(&buf[..forward]).await.map_err(direction.write_error)?;
                wr.flush().await.map_err(direction.write_error)?;
                buf.advance(forward);
            }
            forwarded(&mut later);
            if stop {
                return Ok((direction.closed)());
            }
        }
        // `read_buf` is cancel-safe: if the select in `relay` drops us here, nothing was read.
        if rd.read_buf(&mut buf).await.map_err(direction.read_error)? == 0 {
            return Ok((direction.closed)());
        }
    }
}

async fn client_to_server(
    shared: &Shared,
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
    buf: BytesMut,
    tracker: &Mutex<Tracker>,
) -> Result<Ending, SessionError> {
    let direction = Direction {
        side: Side::Frontend,
        limits: shared.config.limits,
        needs_body: frontend_needs_body,
        read_error: SessionError::ClientIo,
        write_error: SessionError::UpstreamIo,
        closed: || Ending::ClientClosed,
    };
    // Requests are tracked before they are forwarded: the reply can only come after.
    let visit = |tag, body: Option<Bytes>, _: &mut Vec<()>| {
        let Some(body) = body else { return Ok(false) };
        let msg = FrontendMessage::parse(tag, body).map_err(SessionError::ClientProtocol)?;
        lock(tracker).on_frontend(&msg, Utc::now());
        // After Terminate the client closes; nothing more to relay.
        Ok(matches!(msg, FrontendMessage::Terminate))
    };
    pump(direction, rd, wr, buf, visit, |_| {}).await
}

async fn server_to_client(
    shared: &Shared,
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
    buf: BytesMut,
    tracker: &Mutex<Tracker>,
) -> Result<Ending, SessionError> {
    let direction = Direction {
        side: Side::Backend,
        limits: shared.backend_limits,
        needs_body: backend_needs_body,
        read_error: SessionError::UpstreamIo,
        write_error: SessionError::ClientIo,
        closed: || Ending::UpstreamClosed,
    };
    // Replies are matched to requests after they reached the client; the tracker's FIFO
    // keeps the order even if the client has sent its next request meanwhile.
    let visit = |tag, body: Option<Bytes>, later: &mut Vec<Reply>| {
        let reply = match body {
            None => Reply::Tag(tag),
            Some(body) => match BackendMessage::parse(tag, body).map_err(SessionError::UpstreamProtocol)? {
                BackendMessage::CommandComplete { tag } => Reply::Complete(tag),
                BackendMessage::ErrorResponse(fields) => Reply::Error(fields),
                BackendMessage::ParameterStatus { name, value } => Reply::Parameter(name, value),
                _ => return Ok(false),
            },
        };
        later.push(reply);
        Ok(false)
    };
    let forwarded = |later: &mut Vec<Reply>| {
        if later.is_empty() {
            return;
        }
        let events = {
            let mut t = lock(tracker);
            for reply in later.drain(..) {
                match reply {
                    Reply::Tag(b'Z') => t.on_ready(),
                    Reply::Tag(b'V') => t.on_function_result(),
                    Reply::Tag(other) => t.on_backend_tag(other),
                    Reply::Complete(tag) => t.on_command_complete(&tag),
                    Reply::Error(fields) => t.on_error(&fields),
                    Reply::Parameter(name, value) => t.on_parameter_status(&name, &value),
                }
            }
            t.take_events()
        };
        for event in events {
            shared.sink.emit(event);
        }
    };
    pump(direction, rd, wr, buf, visit, forwarded).await
}
