//! The relay: bytes flow unchanged in both directions while the tracker watches.
//!
//! Each direction reads into its own buffer, walks the complete frame headers in it, hands
//! the messages the tracker needs to it, and forwards the whole scanned region with one
//! write. Messages whose body the tracker does not need (DataRow, CopyData, ...) are
//! streamed: their bytes are forwarded as they arrive, so a 1 GiB row or COPY never has to
//! fit in memory. Messages whose body it needs (Query, Bind, CommandComplete,
//! ErrorResponse, ...) are bounded by the configured limits before anything is buffered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use pgtrail_wire::{BackendCode, BackendMessage, FrontendCode, FrontendMessage, Limits, Side, peek_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::warn;

use crate::Durable;
use crate::budget::{BufferBudget, COUNTED_ABOVE, Reservation};
use crate::config::Delivery;
use crate::error::SessionError;
use crate::io::send_error;
use crate::phase::Phase;
use crate::policy::{Denial, Judgement, Policy};
use crate::shared::Shared;
use crate::stream::MaybeTls;
use crate::tracker::{Nudge, Tracker};

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
    /// Counts large messages read whole against the proxy-wide budget (client side).
    budget: Option<Arc<BufferBudget>>,
    /// What the message being read whole holds of the budget, until it is complete.
    reservation: Option<Reservation>,
}

/// A message the scanner found: whole when the tracker needs its body, else its header.
#[derive(Debug, Clone, Copy)]
struct Frame {
    tag: u8,
    /// Where the message starts in the scanned buffer.
    at: usize,
    /// Where what the scan took of it ends (a streamed body may go on past the buffer).
    end: usize,
    /// The body is whole in `at + 5..end`, for the tracker to read.
    body: bool,
}

impl Frame {
    fn body(&self) -> std::ops::Range<usize> {
        self.at + 5..self.end
    }
}

impl Scanner {
    /// Walks `buf`, pushing every message onto `frames`, and returns how many leading
    /// bytes may be forwarded now. `needs_body` decides which tags must be complete before
    /// forwarding. On an error, `frames` holds the messages before the bad one.
    fn scan(
        &mut self,
        buf: &[u8],
        side: Side,
        limits: &Limits,
        needs_body: fn(u8) -> bool,
        frames: &mut Vec<Frame>,
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
                    if header.total_len > COUNTED_ABOVE
                        && self.reservation.is_none()
                        && let Some(budget) = &self.budget
                    {
                        let reserved = budget.reserve(header.total_len).ok_or(SessionError::BufferBudgetExceeded)?;
                        self.reservation = Some(reserved);
                    }
                    return Ok(pos);
                }
                frames.push(Frame { tag: header.tag, at: pos, end: pos + header.total_len, body: true });
                self.reservation = None;
                pos += header.total_len;
            } else {
                let available = header.total_len.min(buf.len() - pos);
                frames.push(Frame { tag: header.tag, at: pos, end: pos + available, body: false });
                pos += available;
                self.passthrough = header.total_len - available;
            }
        }
    }
}

/// A buffer grown past this for one large message is replaced once the message is gone.
const SHRINK_ABOVE: usize = 1 << 20;

fn frontend_needs_body(tag: u8) -> bool {
    FrontendCode::from_tag(tag).is_some_and(FrontendCode::needs_body)
}

fn backend_needs_body(tag: u8) -> bool {
    BackendCode::from_tag(tag).is_some_and(BackendCode::needs_body)
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
    let side = ClientSide::default();
    let ending = match (&mut client, &mut upstream) {
        // Plain TCP on both sides: borrowed halves, no lock between reader and writer.
        (MaybeTls::Plain(c), MaybeTls::Plain(u)) => {
            let (mut cr, mut cw) = c.split();
            let (mut ur, mut uw) = u.split();
            let (client, upstream) = ((&mut cr, &mut cw), (&mut ur, &mut uw));
            both_directions(shared, client, upstream, bufs, &tracker, &mut terminate, &side).await
        }
        (c, u) => {
            let (mut cr, mut cw) = tokio::io::split(c);
            let (mut ur, mut uw) = tokio::io::split(u);
            let (client, upstream) = ((&mut cr, &mut cw), (&mut ur, &mut uw));
            both_directions(shared, client, upstream, bufs, &tracker, &mut terminate, &side).await
        }
    };
    let client_left = side.gone.load(Ordering::Acquire);
    let client_said_terminate = {
        let mut t = lock(&tracker);
        if client_left {
            t.close_after_client_left();
        } else {
            t.abandon_owed();
        }
        t.client_said_terminate()
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
    // Only at a message boundary: an ErrorResponse after part of a DataRow is garbage to
    // the client (regression, issue 12.6). In the middle of a message the client only
    // sees the connection close.
    if let Some(fields) = farewell
        && !side.mid_message.load(Ordering::Acquire)
    {
        send_error(&mut client, &fields).await;
    }
    if !client_said_terminate && !matches!(ending, Ending::UpstreamClosed) {
        // End the backend cleanly (it rolls back what the client left open).
        let mut out = BytesMut::new();
        FrontendMessage::Terminate.encode(&mut out);
        let _ = write_flushed(&mut upstream, &out, SessionError::UpstreamIo).await;
    }
    let _ = client.shutdown().await;
    let _ = upstream.shutdown().await;
    let tracker = tracker.into_inner().unwrap_or_else(|p| p.into_inner());
    (ending, tracker)
}

/// What the relay knows of the client's side of the connection.
#[derive(Debug, Default)]
struct ClientSide {
    /// The bytes written to the client end inside a message (or a write is under way):
    /// nothing of the proxy's own may be written then.
    mid_message: Arc<AtomicBool>,
    /// The client is gone (it closed, said Terminate, broke the connection or the
    /// protocol): PostgreSQL's answers are still read and recorded, and not written.
    gone: Arc<AtomicBool>,
}

/// Runs both directions until one ends or the proxy terminates the session. When the
/// client's side ends first, PostgreSQL may still owe answers to what it was sent (a
/// Query followed by Terminate in one write, a client that closed right after sending):
/// they are read and recorded before the session ends, so no statement that ran goes
/// without its event (see [`drain_after_client_left`]).
async fn both_directions(
    shared: &Shared,
    client: (&mut (impl AsyncRead + Unpin), &mut (impl AsyncWrite + Unpin)),
    upstream: (&mut (impl AsyncRead + Unpin), &mut (impl AsyncWrite + Unpin)),
    (client_buf, upstream_buf): (BytesMut, BytesMut),
    tracker: &Mutex<Tracker>,
    terminate: &mut watch::Receiver<bool>,
    side: &ClientSide,
) -> Ending {
    let (upstream_read, upstream_write) = upstream;
    let mut to_server = Box::pin(client_to_server(shared, client.0, &mut *upstream_write, client_buf, tracker));
    let to_client = server_to_client(shared, upstream_read, client.1, upstream_buf, tracker, side);
    tokio::pin!(to_client);
    let ending = tokio::select! {
        end = &mut to_server => end.unwrap_or_else(Ending::Error),
        end = &mut to_client => return end.unwrap_or_else(Ending::Error),
        _ = terminate.wait_for(|t| *t) => return Ending::Terminated,
    };
    drop(to_server);
    side.gone.store(true, Ordering::Release);
    drain_after_client_left(upstream_write, to_client, tracker, terminate).await;
    ending
}

/// The client has gone: lets PostgreSQL answer everything the proxy forwarded, nudging it
/// where it would otherwise wait for the client (an open COPY FROM STDIN gets CopyFail; an
/// extended batch with no Sync gets Flush, never the Sync that would commit it), and waits
/// until the tracker owes nothing or PostgreSQL closes. Ends early only when the proxy
/// terminates the session; what is still owed then is recorded as of unknown outcome.
async fn drain_after_client_left(
    upstream: &mut (impl AsyncWrite + Unpin),
    to_client: std::pin::Pin<&mut impl std::future::Future<Output = Result<Ending, SessionError>>>,
    tracker: &Mutex<Tracker>,
    terminate: &mut watch::Receiver<bool>,
) {
    let nudge = {
        let t = lock(tracker);
        if !t.owes_replies() {
            return;
        }
        t.nudge_after_client_left()
    };
    let mut out = BytesMut::new();
    match nudge {
        Nudge::None => {}
        Nudge::CopyFail => {
            FrontendMessage::CopyFail { message: "pgtrail: the client closed its connection during COPY".into() }
                .encode(&mut out);
        }
        Nudge::Flush => FrontendMessage::Flush.encode(&mut out),
    }
    if write_flushed(upstream, &out, SessionError::UpstreamIo).await.is_err() {
        return;
    }
    tokio::select! {
        _ = to_client => {}
        _ = terminate.wait_for(|t| *t) => {}
    }
}

fn lock(tracker: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(|p| p.into_inner())
}

/// A backend message the tracker handles once it has been forwarded.
enum Reply {
    /// A message whose code is all the tracker needs.
    Code(BackendCode),
    Complete(String),
    Error(pgtrail_wire::ErrorFields),
    Parameter(String, String),
    Ready(u8),
    ParamTypes(Vec<u32>),
}

/// What differs between the two directions of the relay.
struct Direction {
    side: Side,
    /// Set while the bytes written to the peer end inside a message (or a write is under
    /// way): nothing of the proxy's own may be written then.
    mid_message: Option<Arc<AtomicBool>>,
    /// Set once the peer is gone: writes to it are dropped (and a failed write sets it),
    /// while reading goes on.
    peer_gone: Option<Arc<AtomicBool>>,
    /// The proxy-wide budget large messages of this direction are counted against.
    budget: Option<Arc<BufferBudget>>,
    limits: Limits,
    needs_body: fn(u8) -> bool,
    read_error: fn(std::io::Error) -> SessionError,
    write_error: fn(std::io::Error) -> SessionError,
    /// How the session ends when the reading side closes.
    closed: fn() -> Ending,
}

/// What a visit says about the message it saw.
#[derive(Debug, Default)]
struct Flow {
    /// Stop relaying after forwarding this message.
    stop: bool,
    /// Send these bytes instead of the message (fail-closed refusals).
    replace: Option<Bytes>,
}

/// Writes to the direction's peer; once the peer has gone, drops the bytes instead (a
/// failed write marks it gone), so that the other side's answers are still read.
///
/// Keeps the direction's mid-message flag: set while a write is under way (it may be cut
/// off half-way when the session ends), then whether the bytes written end inside a
/// message (`ends_mid_message`). A write not made leaves it where writing stopped.
async fn write_out(
    direction: &Direction,
    wr: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    ends_mid_message: bool,
) -> Result<(), SessionError> {
    let gone = direction.peer_gone.as_ref();
    if bytes.is_empty() || gone.is_some_and(|g| g.load(Ordering::Acquire)) {
        return Ok(());
    }
    let mark = |mid: bool| {
        if let Some(flag) = &direction.mid_message {
            flag.store(mid, Ordering::Release);
        }
    };
    mark(true);
    match (write_flushed(wr, bytes, direction.write_error).await, gone) {
        (Ok(()), _) => mark(ends_mid_message),
        (Err(_), Some(gone)) => gone.store(true, Ordering::Release),
        (Err(e), None) => return Err(e),
    }
    Ok(())
}

async fn write_flushed(
    wr: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    write_error: fn(std::io::Error) -> SessionError,
) -> Result<(), SessionError> {
    if bytes.is_empty() {
        return Ok(());
    }
    wr.write_all(bytes).await.map_err(write_error)?;
    wr.flush().await.map_err(write_error)
}

/// Reads from one peer and writes to the other, unchanged (but for refusals). `visit`
/// sees every message before it is forwarded (it may keep work for later in `later`).
/// `process` does that work: in async delivery after the write, so it adds nothing to the
/// latency the peer sees; in sync delivery before it, and when it returns a durability
/// future (the region completed statements), the region is held until it resolves.
#[allow(clippy::too_many_arguments, reason = "the direction's two ends, its buffer and its four policies")]
async fn pump<M>(
    direction: Direction,
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
    mut buf: BytesMut,
    mut visit: impl FnMut(u8, Option<Bytes>, &mut Vec<M>) -> Result<Flow, SessionError>,
    mut process: impl FnMut(&mut Vec<M>) -> Option<Durable>,
    hold_completions: bool,
    done: impl Fn() -> bool,
) -> Result<Ending, SessionError> {
    let mut scanner = Scanner { budget: direction.budget.clone(), ..Scanner::default() };
    let mut later = Vec::new();
    let mut edits: Vec<(usize, usize, Bytes)> = Vec::new();
    let mut frames = Vec::new();
    loop {
        if !buf.is_empty() {
            let mut stop = false;
            frames.clear();
            let scanned = scanner.scan(&buf, direction.side, &direction.limits, direction.needs_body, &mut frames);
            let forward = match scanned {
                Ok(forward) => forward,
                Err(e) => {
                    // The messages before the bad one are seen, as the peer sent them, and
                    // nothing is forwarded.
                    let seen = buf.split_to(frames.last().map_or(0, |f| f.end)).freeze();
                    for f in &frames {
                        visit(f.tag, f.body.then(|| seen.slice(f.body())), &mut later)?;
                    }
                    return Err(e);
                }
            };
            // The scanned region leaves the read buffer without a copy: the bodies the
            // tracker reads are slices of it, and it is written out as it came.
            let chunk = buf.split_to(forward).freeze();
            for f in &frames {
                let body = f.body.then(|| chunk.slice(f.body()));
                let len = if f.body { f.end - f.at } else { 5 };
                let flow = visit(f.tag, body, &mut later)?;
                stop |= flow.stop;
                if let Some(bytes) = flow.replace {
                    edits.push((f.at, f.at + len, bytes));
                }
            }
            // Whether the bytes forwarded now end inside a message (a streamed body).
            let cut = scanner.passthrough > 0;
            if !edits.is_empty() {
                // Rare (only while refusing): rebuild the region with the replacements.
                let mut out = BytesMut::with_capacity(forward);
                let mut from = 0;
                for (start, end, bytes) in edits.drain(..) {
                    out.extend_from_slice(&chunk[from..start]);
                    out.extend_from_slice(&bytes);
                    from = end;
                }
                out.extend_from_slice(&chunk[from..]);
                write_out(&direction, wr, &out, cut).await?;
                process(&mut later);
            } else if hold_completions {
                // The whole region waits (one write, one wake-up of the client): what comes
                // before the completion is at most a read's worth, and the client can do
                // nothing with it before the completion anyway.
                if let Some(durable) = process(&mut later)
                    && !durable.await
                {
                    return Err(SessionError::JournalStopped);
                }
                write_out(&direction, wr, &chunk, cut).await?;
            } else {
                write_out(&direction, wr, &chunk, cut).await?;
                process(&mut later);
            }
            if stop {
                return Ok((direction.closed)());
            }
        }
        if done() {
            return Ok(Ending::ClientClosed);
        }
        if buf.capacity() > SHRINK_ABOVE && buf.len() <= COUNTED_ABOVE {
            // A large message has gone through: give its memory back.
            let mut fresh = BytesMut::with_capacity(8192.max(buf.len()));
            fresh.extend_from_slice(&buf);
            buf = fresh;
        }
        // `read_buf` is cancel-safe: if the select in `relay` drops us here, nothing was read.
        if rd.read_buf(&mut buf).await.map_err(direction.read_error)? == 0 {
            return Ok((direction.closed)());
        }
    }
}

/// Refusals. Fail-closed: while the journal cannot make events durable, work the client
/// starts is not forwarded. Policy: a denied statement is not forwarded. A simple Query
/// (or FunctionCall) is replaced by a statement that raises the error, and an
/// extended-protocol batch is dropped up to its Sync, which is replaced the same way:
/// PostgreSQL itself then answers with ErrorResponse and ReadyForQuery, in order with
/// everything in flight and with the right transaction state (an open transaction is
/// aborted, as by any error). Earlier statements of a denied batch fail with it.
#[derive(Debug, Default)]
struct Refusal {
    /// Inside an extended-protocol batch being dropped.
    dropping_batch: bool,
    /// What replaces the Sync that ends it when policy denied the batch (fail-closed
    /// makes its refusal event at the Sync).
    denied_at_sync: Option<Bytes>,
}

const REFUSE_SQL: &str = "DO $pgtrail$BEGIN RAISE EXCEPTION USING ERRCODE = '58030', MESSAGE = \
    'pgtrail: the audit journal cannot record events; statements are refused until it recovers (delivery = sync_fail_closed)'; END$pgtrail$";

fn query_message(sql: &str) -> Bytes {
    let mut out = BytesMut::new();
    FrontendMessage::Query { query: sql.into() }.encode(&mut out);
    out.freeze()
}

/// A statement that makes PostgreSQL raise SQLSTATE 42501 with the denial's message.
fn denial_query(denial: &Denial) -> Bytes {
    let text = format!("pgtrail: {} (denied by rule \"{}\")", denial.message, denial.rule);
    // Inside a dollar-quoted body, in a standard string literal: double the quotes, and
    // keep the body's delimiter out of it.
    let literal = text.replace('\'', "''").replace("$pgtrail$", "$ pgtrail $");
    query_message(&format!(
        "DO $pgtrail$BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = '{literal}'; END$pgtrail$"
    ))
}

/// The text a Query or Parse asks PostgreSQL to run.
fn statement_text(msg: &FrontendMessage) -> Option<&str> {
    match msg {
        FrontendMessage::Query { query } | FrontendMessage::Parse { query, .. } => Some(query),
        _ => None,
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
        mid_message: None,
        peer_gone: None,
        budget: Some(Arc::clone(&shared.buffer_budget)),
        limits: Phase::Relay.client_limits(&shared.config),
        needs_body: frontend_needs_body,
        read_error: SessionError::ClientIo,
        write_error: SessionError::UpstreamIo,
        closed: || Ending::ClientClosed,
    };
    let fail_closed = shared.config.delivery == Delivery::SyncFailClosed;
    let session_key = shared.policy.as_ref().map(|_| Policy::session_key(&lock(tracker).facts));
    let mut refusal = Refusal::default();
    // Requests are tracked before they are forwarded: the reply can only come after.
    let visit = |tag, body: Option<Bytes>, _: &mut Vec<()>| {
        // A byte no client message uses is forwarded unread: PostgreSQL answers it.
        let Some(code) = FrontendCode::from_tag(tag) else { return Ok(Flow::default()) };
        let refusing = refusal.dropping_batch || (fail_closed && !shared.sink.healthy());
        if refusing && let Some(flow) = refuse(shared, &mut refusal, code, tracker) {
            return Ok(flow);
        }
        let Some(body) = body else { return Ok(Flow::default()) };
        // The text a Query or Parse carries, decoded from the session's client encoding.
        let strings = match code {
            FrontendCode::Query => 1,
            FrontendCode::Parse => 2,
            _ => 0,
        };
        let utf8 = (strings > 0).then(|| lock(tracker).client_encoding().body_to_utf8(&body, strings)).flatten();
        let body = utf8.unwrap_or(body);
        let msg = FrontendMessage::parse(tag, body).map_err(SessionError::ClientProtocol)?;
        let mut classified = None;
        if let (Some(policy), Some(key), Some(text)) = (&shared.policy, &session_key, statement_text(&msg)) {
            match check_policy(shared, policy, key, text, &msg, &mut refusal, tracker) {
                Checked::Denied(flow) => return Ok(flow),
                Checked::Allowed(analysis) => classified = Some(analysis),
            }
        }
        lock(tracker).on_frontend_classified(&msg, Utc::now(), classified);
        // After Terminate the client closes; nothing more to relay.
        Ok(Flow { stop: matches!(msg, FrontendMessage::Terminate), ..Flow::default() })
    };
    pump(direction, rd, wr, buf, visit, |_| None, false, || false).await
}

/// What policy made of a Query or Parse.
enum Checked {
    /// Refused: send this instead.
    Denied(Flow),
    /// Relayed; the classification is kept for the statement's event.
    Allowed(std::sync::Arc<pgtrail_event::Classified>),
}

/// Checks a Query or Parse against the policy.
fn check_policy(
    shared: &Shared,
    policy: &Policy,
    session_key: &std::sync::Arc<str>,
    text: &str,
    msg: &FrontendMessage,
    refusal: &mut Refusal,
    tracker: &Mutex<Tracker>,
) -> Checked {
    let mut t = lock(tracker);
    let scs = t.standard_conforming_strings();
    let (statement, denial) = match policy.judge(&shared.classifier, text, scs, &t.facts, session_key) {
        Judgement::Allowed(classified) => return Checked::Allowed(classified),
        Judgement::Denied(statement, denial) => (statement, denial),
    };
    t.on_denied(&statement, &denial.rule, &denial.message);
    shared.stats.count_denied();
    let replacement = denial_query(&denial);
    if matches!(msg, FrontendMessage::Parse { .. }) {
        refusal.dropping_batch = true;
        refusal.denied_at_sync = Some(replacement);
        Checked::Denied(Flow { replace: Some(Bytes::new()), ..Flow::default() })
    } else {
        Checked::Denied(Flow { replace: Some(replacement), ..Flow::default() })
    }
}

/// The flow for a message while refusing, or None to relay it as usual.
fn refuse(shared: &Shared, refusal: &mut Refusal, code: FrontendCode, tracker: &Mutex<Tracker>) -> Option<Flow> {
    let replace_with_error = |tracker: &Mutex<Tracker>| {
        let event = lock(tracker).on_refused();
        // Best effort: the journal is failing; a dropped event is counted as a loss.
        shared.sink.emit(event);
        shared.stats.count_refused();
        Flow { replace: Some(query_message(REFUSE_SQL)), ..Flow::default() }
    };
    match code {
        FrontendCode::Query | FrontendCode::FunctionCall if !refusal.dropping_batch => {
            Some(replace_with_error(tracker))
        }
        code if code.is_extended() => {
            refusal.dropping_batch = true;
            Some(Flow { replace: Some(Bytes::new()), ..Flow::default() })
        }
        FrontendCode::Sync if refusal.dropping_batch => {
            refusal.dropping_batch = false;
            match refusal.denied_at_sync.take() {
                Some(replacement) => Some(Flow { replace: Some(replacement), ..Flow::default() }),
                None => Some(replace_with_error(tracker)),
            }
        }
        _ => None,
    }
}

async fn server_to_client(
    shared: &Shared,
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
    buf: BytesMut,
    tracker: &Mutex<Tracker>,
    client: &ClientSide,
) -> Result<Ending, SessionError> {
    let direction = Direction {
        side: Side::Backend,
        mid_message: Some(Arc::clone(&client.mid_message)),
        peer_gone: Some(Arc::clone(&client.gone)),
        budget: None,
        limits: shared.backend_limits,
        needs_body: backend_needs_body,
        read_error: SessionError::UpstreamIo,
        write_error: SessionError::ClientIo,
        closed: || Ending::UpstreamClosed,
    };
    let sync = shared.config.delivery.is_sync();
    // Replies are matched to requests after they reached the client (async delivery) or
    // just before (sync); the tracker's FIFO keeps the order either way.
    let visit = |tag, body: Option<Bytes>, later: &mut Vec<Reply>| {
        // A byte no server message uses: forwarded; the session's protocol check is
        // PostgreSQL's own.
        let Some(code) = BackendCode::from_tag(tag) else { return Ok(Flow::default()) };
        let reply = match body {
            None => Reply::Code(code),
            Some(body) => {
                // Error fields are in the session's client encoding.
                let body = match code {
                    BackendCode::ErrorResponse => {
                        lock(tracker).client_encoding().body_to_utf8(&body, usize::MAX).unwrap_or(body)
                    }
                    _ => body,
                };
                match BackendMessage::parse(tag, body).map_err(SessionError::UpstreamProtocol)? {
                    BackendMessage::CommandComplete { tag } => Reply::Complete(tag),
                    BackendMessage::ErrorResponse(fields) => Reply::Error(fields),
                    BackendMessage::ParameterStatus { name, value } => Reply::Parameter(name, value),
                    BackendMessage::ReadyForQuery { status } => Reply::Ready(status),
                    BackendMessage::ParameterDescription(types) => Reply::ParamTypes(types),
                    _ => return Ok(Flow::default()),
                }
            }
        };
        later.push(reply);
        Ok(Flow::default())
    };
    let process = |later: &mut Vec<Reply>| -> Option<Durable> {
        if later.is_empty() {
            return None;
        }
        let events = {
            let mut t = lock(tracker);
            for reply in later.drain(..) {
                match reply {
                    Reply::Ready(status) => t.on_ready_status(status),
                    Reply::ParamTypes(types) => t.on_parameter_description(&types),
                    Reply::Code(BackendCode::FunctionCallResponse) => t.on_function_result(),
                    Reply::Code(other) => t.on_backend_code(other),
                    Reply::Complete(tag) => t.on_command_complete(&tag),
                    Reply::Error(fields) => t.on_error(&fields),
                    Reply::Parameter(name, value) => t.on_parameter_status(&name, &value),
                }
            }
            let (desyncs, log) = t.take_desyncs();
            if !desyncs.is_empty() {
                shared.stats.desyncs.fetch_add(desyncs.len() as u64, Ordering::Relaxed);
                if log {
                    warn!(session = ?t.facts.session_id, error = %desyncs[0], "replies no longer match the requests; this session's events may be mislabelled (logged once per session)");
                }
            }
            t.take_events()
        };
        if events.is_empty() {
            return None;
        }
        if !sync {
            for event in events {
                shared.sink.emit(event);
            }
            return None;
        }
        // Each event is queued as it is handed over (not when its wait is first polled), so
        // the events of this batch share one record and one fsync.
        let waits: Vec<Durable> = events.into_iter().map(|e| shared.sink.emit_durable(e)).collect();
        Some(Box::pin(async move {
            let mut all = true;
            for wait in waits {
                all &= wait.await;
            }
            all
        }))
    };
    // Once the client is gone, the session ends when PostgreSQL owes nothing more.
    let gone = Arc::clone(&client.gone);
    let done = move || gone.load(Ordering::Acquire) && !lock(tracker).owes_replies();
    pump(direction, rd, wr, buf, visit, process, sync, done).await
}
