//! Joining pgAudit's view of a backend to the proxy session it serves.
//!
//! The proxy's CONNECT event names the upstream backend's pid; pgAudit's log lines name the
//! pid and the backend's start. A log event whose pid belongs to a proxy session that was
//! open around that backend's start is that session's: it takes the proxy's session id, the
//! real client's address, the application name (pgAudit sees the proxy as its client) and
//! the person who logged in with a token.
//!
//! A backend that logs in after the capture started and that no proxy session accounts for,
//! within a grace period (the proxy writes its CONNECT after PostgreSQL logs the
//! authorization), connected around pgtrail: a `DIRECT CONNECTION` event says so, and the
//! built-in rule "direct connection bypassing pgtrail" alerts on it.
//!
//! One event per statement: the proxy records every statement of its sessions, and
//! pgAudit records the same statements again. pgAudit's record of a statement the proxy
//! recorded confirms the proxy's event instead of counting as a second one: it keeps its
//! place in the journal (complete, append-only) with `confirms` naming the proxy event's
//! `statementId`, and rules and `tail` pass over it. It is matched to the oldest proxy
//! statement of the same session not yet confirmed whose text pgAudit's text contains
//! (pgAudit repeats a multi-statement text whole) and whose time it falls in. pgAudit
//! writes some statements twice under one statement id (`COPY (SELECT ...)`: SELECT then
//! COPY; `EXECUTE`: the prepared statement then EXECUTE): a record with the same text as
//! the one that matched confirms the same event. Statements that run inside functions and
//! DO blocks (their own text) stay events of their own, linked to their statement by
//! taking the proxy's `statementId`. The server's own lines about a proxied session
//! confirm the proxy's too: its ERROR line confirms the failed statement with the same
//! SQLSTATE and text, and its connection lines (received, authorized, disconnection)
//! confirm the session (`confirms` 0, the CONNECT's statement id). pgAudit's line may be read before the proxy has
//! written its event (it logs a statement when it starts): such a record waits up to
//! [`HOLD`] for it, and is written as an event of its own if none comes; the ingest
//! position is never saved past a record that waits, so a restart loses none.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::follow::Position;
use chrono::{DateTime, Utc};
use pgtrail_event::{ActivityEvent, EventClass, EventSource, ExitCode, Verdict};

/// Slack around a proxy session's start and end when matching a log line's time (clocks
/// are the same host's, but log times have millisecond resolution and the proxy stamps
/// its events when it sees them).
const TOLERANCE_SECS: i64 = 5;
/// Ended sessions are kept this long: log lines may be read after the DISCONNECT.
const KEEP_ENDED_SECS: i64 = 600;
/// Ended sessions are pruned from the whole map at most this often.
const PRUNE_EVERY_SECS: i64 = 10;
/// How long a pgAudit record waits for the proxy's event of its statement.
pub const HOLD: Duration = Duration::from_secs(2);
/// Proxy statements kept per session for pgAudit's records of them (the oldest go first:
/// pgAudit does not log every class unless told to).
const KEEP_STATEMENTS: usize = 64;
/// pgAudit statements matched, kept per session (their later records find them).
const KEEP_LINKS: usize = 16;
/// How much of a proxy statement's text is kept for matching.
const TEXT_PREFIX: usize = 1024;
/// Slack around a proxy statement's start and end when matching pgAudit's record of it.
const STATEMENT_TOLERANCE_MS: i64 = 1000;
/// What pgAudit sees of a statement the proxy denied or refused: the proxy's substitute.
const SUBSTITUTE_PREFIX: &str = "DO $pgtrail$";

/// A proxy statement, for pgAudit's and the server's records of it.
#[derive(Debug, Clone)]
struct ProxyStatement {
    id: u64,
    /// The start of its text (what pgAudit's text must contain).
    text: String,
    started: DateTime<Utc>,
    ended: DateTime<Utc>,
    /// Its SQLSTATE, when it failed: the server's ERROR line names it too.
    sql_state: Option<String>,
    /// A pgAudit record confirmed it.
    confirmed: bool,
    /// The server's ERROR line confirmed it.
    error_confirmed: bool,
}

impl ProxyStatement {
    fn around(&self, at: DateTime<Utc>) -> bool {
        let tolerance = chrono::Duration::milliseconds(STATEMENT_TOLERANCE_MS);
        self.started - tolerance <= at && at <= self.ended + tolerance
    }
}

/// What a proxy session gives pgAudit's events of its backend.
#[derive(Debug, Clone)]
struct Joined {
    session_id: Option<std::sync::Arc<str>>,
    remote_host: Option<std::sync::Arc<str>>,
    remote_port: Option<std::sync::Arc<str>>,
    application: Option<std::sync::Arc<str>>,
    identity: Option<std::sync::Arc<pgtrail_event::Identity>>,
}

/// A pgAudit statement matched to a proxy statement.
#[derive(Debug, Clone)]
struct Link {
    pgaudit_id: u64,
    proxy_id: u64,
    /// The text of the record that matched: later records with the same text are the same
    /// statement seen again.
    text: Option<String>,
}

#[derive(Debug)]
struct Known {
    started: DateTime<Utc>,
    ended: Option<DateTime<Utc>>,
    joined: Joined,
    /// The session's latest proxy statements, oldest first.
    statements: VecDeque<ProxyStatement>,
    links: VecDeque<Link>,
}

impl Known {
    fn open_at(&self, at: DateTime<Utc>) -> bool {
        let slack = chrono::Duration::seconds(TOLERANCE_SECS);
        self.started - slack <= at && self.ended.is_none_or(|end| at <= end + slack)
    }

    /// What pgAudit's record `event` (of this session) is to the proxy's events.
    fn place(&mut self, event: &ActivityEvent) -> Place {
        let text = event.command_text.as_deref();
        if event.statement_id == 0 && event.command == "ERROR" {
            let failed = self.statements.iter_mut().find(|s| {
                !s.error_confirmed
                    && s.sql_state.is_some()
                    && s.sql_state == event.sql_state
                    && s.around(event.log_time)
                    && text.is_some_and(|t| t.contains(&s.text))
            });
            return match failed {
                Some(statement) => {
                    statement.error_confirmed = true;
                    Place::Confirms(statement.id)
                }
                None => Place::Unmatched,
            };
        }
        if let Some(link) = self.links.iter().find(|l| l.pgaudit_id == event.statement_id) {
            return if link.text.as_deref() == text {
                Place::Confirms(link.proxy_id)
            } else {
                Place::Inside(link.proxy_id)
            };
        }
        if event.substatement_id > 1 {
            return Place::Unmatched;
        }
        let found = self
            .statements
            .iter_mut()
            .find(|s| !s.confirmed && s.around(event.log_time) && text.is_some_and(|t| t.contains(&s.text)));
        let Some(statement) = found else { return Place::Unmatched };
        statement.confirmed = true;
        let proxy_id = statement.id;
        if self.links.len() >= KEEP_LINKS {
            self.links.pop_front();
        }
        self.links.push_back(Link { pgaudit_id: event.statement_id, proxy_id, text: text.map(str::to_owned) });
        Place::Confirms(proxy_id)
    }
}

/// What a pgAudit record is to the proxy's events of its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The same statement as this proxy event.
    Confirms(u64),
    /// A statement that ran inside this proxy event's statement (a function, a DO block).
    Inside(u64),
    /// No proxy event of the session matches (yet).
    Unmatched,
}

/// The proxy's sessions by upstream backend pid, fed from the proxy's own events. Kept only
/// while pgAudit is ingested; ended sessions leave it after [`KEEP_ENDED_SECS`].
#[derive(Debug, Default)]
pub struct ProxySessions {
    by_pid: Mutex<ByPid>,
}

#[derive(Debug, Default)]
struct ByPid {
    sessions: HashMap<i32, Vec<Known>>,
    last_pruned: Option<DateTime<Utc>>,
}

impl ByPid {
    /// Drops sessions that ended longer ago than the correlation window, and pids with
    /// none left (regression, issue 12.7: they were dropped only when a pid was reused).
    fn prune(&mut self, now: DateTime<Utc>) {
        if self.last_pruned.is_some_and(|t| (now - t).num_seconds() < PRUNE_EVERY_SECS) {
            return;
        }
        self.last_pruned = Some(now);
        self.sessions.retain(|_, known| {
            known.retain(|k| k.ended.is_none_or(|t| (now - t).num_seconds() < KEEP_ENDED_SECS));
            !known.is_empty()
        });
    }

    fn open_mut(&mut self, pid: i32, at: DateTime<Utc>) -> Option<&mut Known> {
        self.sessions.get_mut(&pid)?.iter_mut().rev().find(|k| k.open_at(at))
    }

    /// The session of backend `pid` that has not ended yet, if any.
    fn live_mut(&mut self, pid: i32) -> Option<&mut Known> {
        self.sessions.get_mut(&pid)?.iter_mut().rev().find(|k| k.ended.is_none())
    }
}

impl ProxySessions {
    /// Notes a proxy event: a successful CONNECT opens, a DISCONNECT closes, a statement
    /// waits for pgAudit's record of it.
    pub fn observe(&self, event: &ActivityEvent) {
        let Some(pid) = event.pid else { return };
        if event.source == Some(EventSource::Pgaudit) || event.kind != pgtrail_event::EventKind::Record {
            return;
        }
        let mut by_pid = self.by_pid.lock().unwrap_or_else(|p| p.into_inner());
        by_pid.prune(Utc::now());
        match event.class {
            EventClass::Connect if event.exit_code.is_none() && event.sql_state.is_none() => {
                by_pid.sessions.entry(pid).or_default().push(Known {
                    started: event.start_time,
                    ended: None,
                    joined: Joined {
                        session_id: event.session_id.clone(),
                        remote_host: event.remote_host.clone(),
                        remote_port: event.remote_port.clone(),
                        application: event.client_application.clone(),
                        identity: event.identity.clone(),
                    },
                    statements: VecDeque::new(),
                    links: VecDeque::new(),
                });
            }
            EventClass::Connect => {}
            EventClass::Disconnect => {
                if let Some(open) = by_pid.live_mut(pid) {
                    open.ended = Some(event.end_time.unwrap_or(event.log_time));
                }
            }
            _ if event.statement_id > 0 => {
                let Some(open) = by_pid.live_mut(pid) else { return };
                let substituted = event.verdict == Some(Verdict::Denied) || event.command == "REFUSED";
                let text = match (&event.command_text, substituted) {
                    (_, true) => SUBSTITUTE_PREFIX.to_owned(),
                    (Some(text), false) => prefix(text, TEXT_PREFIX).to_owned(),
                    (None, false) => return,
                };
                if open.statements.len() >= KEEP_STATEMENTS {
                    open.statements.pop_front();
                }
                open.statements.push_back(ProxyStatement {
                    id: event.statement_id,
                    text,
                    started: event.start_time,
                    ended: event.end_time.unwrap_or(event.log_time),
                    sql_state: event.sql_state.clone(),
                    confirmed: false,
                    error_confirmed: false,
                });
            }
            _ => {}
        }
    }

    /// What the proxy session of backend `pid` that was open at `at` gives pgAudit's
    /// events (a pid names one live process at a time).
    fn find(&self, pid: i32, at: DateTime<Utc>) -> Option<Joined> {
        let mut by_pid = self.by_pid.lock().unwrap_or_else(|p| p.into_inner());
        by_pid.open_mut(pid, at).map(|k| k.joined.clone())
    }

    /// Where pgAudit's record `event` of backend `pid` stands among its session's proxy
    /// events; `None` when no proxy session had that backend then.
    fn place(&self, pid: i32, event: &ActivityEvent) -> Option<Place> {
        let mut by_pid = self.by_pid.lock().unwrap_or_else(|p| p.into_inner());
        Some(by_pid.open_mut(pid, event.log_time)?.place(event))
    }
}

/// The longest prefix of `text` of at most `max` bytes, on a character boundary.
fn prefix(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A pgAudit record waiting for the proxy's event of its statement.
#[derive(Debug)]
struct Held {
    event: ActivityEvent,
    since: Instant,
    /// Where reading again yields it: the ingest position is not saved past it.
    from: Position,
}

/// Correlates the ingester's events with the proxy's sessions.
#[derive(Debug)]
pub struct Correlator {
    sessions: std::sync::Arc<ProxySessions>,
    /// Backends that logged in before this are not judged (pgtrail was not there to see).
    since: DateTime<Utc>,
    grace: Duration,
    undecided: Vec<(ActivityEvent, Instant)>,
    held: Vec<Held>,
}

impl Correlator {
    pub fn new(sessions: std::sync::Arc<ProxySessions>, since: DateTime<Utc>) -> Correlator {
        Correlator { sessions, since, grace: Duration::from_secs(2), undecided: Vec::new(), held: Vec::new() }
    }

    /// Gives a pgAudit event its proxy session, if it has one, and its place among the
    /// session's proxy events. Returns the event to write now, or `None` when it waits
    /// (see the module doc); a login with no session yet is kept to be judged after the
    /// grace period. `from` is where reading again yields this event.
    pub fn enrich(&mut self, mut event: ActivityEvent, from: Position) -> Option<ActivityEvent> {
        let Some(pid) = event.pid else { return Some(event) };
        let Some(known) = self.sessions.find(pid, event.log_time) else {
            let successful_login = event.class == EventClass::Connect && event.exit_code.is_none();
            if successful_login && event.log_time >= self.since {
                self.undecided.push((event.clone(), Instant::now()));
            }
            return Some(event);
        };
        event.session_id = known.session_id;
        event.remote_host = known.remote_host;
        event.remote_port = known.remote_port;
        if known.application.is_some() {
            event.client_application = known.application;
        }
        event.identity = known.identity;
        // The server's lines about the session the proxy opened and closed.
        if matches!(event.class, EventClass::Connect | EventClass::Disconnect) || event.command == "CONNECTION RECEIVED"
        {
            event.confirms = Some(0);
            return Some(event);
        }
        if event.statement_id == 0 && event.command != "ERROR" {
            return Some(event);
        }
        // Records of a statement that waits wait behind it, in order.
        let waiting = self.held.iter().any(|h| h.event.pid == event.pid && h.event.statement_id == event.statement_id);
        if !waiting && self.settle(&mut event) {
            return Some(event);
        }
        self.held.push(Held { event, since: Instant::now(), from });
        None
    }

    /// Marks `event` with its place; false when it should wait for its proxy event.
    fn settle(&self, event: &mut ActivityEvent) -> bool {
        let Some(pid) = event.pid else { return true };
        match self.sessions.place(pid, event) {
            Some(Place::Confirms(id)) => {
                event.confirms = Some(id);
                event.statement_id = id;
                true
            }
            Some(Place::Inside(id)) => {
                event.statement_id = id;
                true
            }
            // A top-level record waits; a statement inside one that matched nothing is
            // written as it is.
            Some(Place::Unmatched) => event.substatement_id > 1,
            None => true,
        }
    }

    /// The `DIRECT CONNECTION` events of logins whose grace period ran out with no proxy
    /// session to account for them, and the waiting records that found their proxy event
    /// or waited [`HOLD`] in vain.
    pub fn judge(&mut self) -> Vec<ActivityEvent> {
        let mut ready = Vec::new();
        let sessions = &self.sessions;
        let grace = self.grace;
        self.undecided.retain(|(login, seen)| {
            let pid = login.pid.expect("only logins with a pid wait");
            if sessions.find(pid, login.log_time).is_some() {
                return false;
            }
            if seen.elapsed() < grace {
                return true;
            }
            ready.push(bypass_event(login));
            false
        });
        ready.extend(self.release(false));
        ready
    }

    /// The waiting records that can go now (all of them with `all`), in order.
    fn release(&mut self, all: bool) -> Vec<ActivityEvent> {
        let mut out = Vec::new();
        let mut still: Vec<Held> = Vec::new();
        for mut held in std::mem::take(&mut self.held) {
            let behind =
                still.iter().any(|h| h.event.pid == held.event.pid && h.event.statement_id == held.event.statement_id);
            if !behind && (self.settle(&mut held.event) || all || held.since.elapsed() >= HOLD) {
                out.push(held.event);
            } else {
                still.push(held);
            }
        }
        self.held = still;
        out
    }

    /// Every record still waiting, at shutdown: written as they are.
    pub fn release_all(&mut self) -> Vec<ActivityEvent> {
        self.release(true)
    }

    /// Where reading again yields the oldest waiting record: the ingest position must not
    /// be saved past it. `None` when nothing waits.
    pub fn held_from(&self) -> Option<&Position> {
        self.held.first().map(|h| &h.from)
    }
}

fn bypass_event(login: &ActivityEvent) -> ActivityEvent {
    let mut e = ActivityEvent::new(EventClass::Misc, "DIRECT CONNECTION", login.start_time);
    e.log_time = login.log_time;
    e.end_time = Some(login.log_time);
    e.source = Some(EventSource::Pgaudit);
    e.exit_code = Some(ExitCode::Clean(0));
    e.db_user_name.clone_from(&login.db_user_name);
    e.database_name.clone_from(&login.database_name);
    e.remote_host.clone_from(&login.remote_host);
    e.remote_port.clone_from(&login.remote_port);
    e.client_application.clone_from(&login.client_application);
    e.pid = login.pid;
    e.session_id.clone_from(&login.session_id);
    e.command_text = Some("a backend session that no pgtrail proxy session accounts for".into());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_event(class: EventClass, pid: i32, at: DateTime<Utc>) -> ActivityEvent {
        let command = if class == EventClass::Connect { "CONNECT" } else { "DISCONNECT" };
        let mut e = ActivityEvent::new(class, command, at);
        e.pid = Some(pid);
        e.source = Some(EventSource::Proxy);
        e.end_time = Some(at);
        e
    }

    fn statement(source: EventSource, pid: i32, id: (u64, u64), command: &str, text: &str) -> ActivityEvent {
        let now = Utc::now();
        let mut e = ActivityEvent::new(EventClass::Read, command, now);
        e.pid = Some(pid);
        e.source = Some(source);
        e.statement_id = id.0;
        e.substatement_id = id.1;
        e.command_text = Some(text.into());
        e.end_time = Some(now);
        e
    }

    fn at(line: u64) -> Position {
        Position { file: "postgresql.csv".into(), inode: 1, offset: line * 100, line }
    }

    /// Issue 12.11: pgAudit's record read before the proxy's event of the same statement
    /// waits for it, then confirms it; the ingest position stays before it meanwhile.
    #[test]
    fn a_record_read_before_its_proxy_event_waits_and_confirms_it() {
        let sessions = std::sync::Arc::new(ProxySessions::default());
        sessions.observe(&session_event(EventClass::Connect, 42, Utc::now()));
        let mut correlator = Correlator::new(std::sync::Arc::clone(&sessions), Utc::now());
        let do_text = "DO $$ BEGIN PERFORM count(*) FROM t; END $$";
        let top = statement(EventSource::Pgaudit, 42, (7, 1), "DO", do_text);
        let inner = statement(EventSource::Pgaudit, 42, (7, 2), "SELECT", "SELECT count(*) FROM t");
        assert!(correlator.enrich(top, at(10)).is_none(), "waits for the proxy's DO");
        assert!(correlator.enrich(inner, at(11)).is_none(), "waits behind its statement");
        assert_eq!(correlator.held_from(), Some(&at(10)));
        assert!(correlator.judge().is_empty());
        sessions.observe(&statement(EventSource::Proxy, 42, (3, 0), "DO", do_text));
        let released = correlator.judge();
        let marks: Vec<(u64, Option<u64>)> = released.iter().map(|e| (e.statement_id, e.confirms)).collect();
        assert_eq!(marks, vec![(3, Some(3)), (3, None)], "the DO confirms, its inner SELECT links");
        assert_eq!(correlator.held_from(), None);
        // The same text again under the same pgAudit statement: the same statement.
        let again = statement(EventSource::Pgaudit, 42, (7, 3), "DO", do_text);
        assert_eq!(correlator.enrich(again, at(12)).map(|e| e.confirms), Some(Some(3)));
    }

    #[test]
    fn a_record_whose_proxy_event_never_comes_is_written_as_it_is() {
        let sessions = std::sync::Arc::new(ProxySessions::default());
        sessions.observe(&session_event(EventClass::Connect, 42, Utc::now()));
        let mut correlator = Correlator::new(std::sync::Arc::clone(&sessions), Utc::now());
        let lone = statement(EventSource::Pgaudit, 42, (1, 1), "SELECT", "SELECT 1");
        assert!(correlator.enrich(lone, at(1)).is_none());
        let released = correlator.release_all();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].confirms, None, "not confirmed: it stays a statement of its own");
        // A backend no proxy session had: written at once, untouched.
        let direct = statement(EventSource::Pgaudit, 99, (1, 1), "SELECT", "SELECT 1");
        assert_eq!(correlator.enrich(direct, at(2)).map(|e| e.confirms), Some(None));
    }

    /// Issue 12.7: every proxy session stayed in the map until its pid was reused.
    #[test]
    fn regression_ended_sessions_stayed_in_the_correlation_map() {
        let sessions = ProxySessions::default();
        let long_ago = Utc::now() - chrono::Duration::seconds(KEEP_ENDED_SECS + 60);
        for pid in 1..=1000 {
            sessions.observe(&session_event(EventClass::Connect, pid, long_ago));
            sessions.observe(&session_event(EventClass::Disconnect, pid, long_ago));
        }
        sessions.by_pid.lock().unwrap().last_pruned = None;
        let recent = Utc::now();
        sessions.observe(&session_event(EventClass::Connect, 5000, recent));
        let by_pid = sessions.by_pid.lock().unwrap();
        assert_eq!(by_pid.sessions.len(), 1, "only the open session is left");
        drop(by_pid);
        assert!(sessions.find(5000, recent).is_some());
    }
}
