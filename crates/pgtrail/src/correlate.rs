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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgtrail_event::{ActivityEvent, EventClass, EventSource, ExitCode};

/// Slack around a proxy session's start and end when matching a log line's time (clocks
/// are the same host's, but log times have millisecond resolution and the proxy stamps
/// its events when it sees them).
const TOLERANCE_SECS: i64 = 5;
/// Ended sessions are kept this long: log lines may be read after the DISCONNECT.
const KEEP_ENDED_SECS: i64 = 600;

#[derive(Debug, Clone)]
struct Known {
    started: DateTime<Utc>,
    ended: Option<DateTime<Utc>>,
    session_id: Option<std::sync::Arc<str>>,
    remote_host: Option<std::sync::Arc<str>>,
    remote_port: Option<std::sync::Arc<str>>,
    application: Option<std::sync::Arc<str>>,
    identity: Option<std::sync::Arc<pgtrail_event::Identity>>,
}

/// Ended sessions are pruned from the whole map at most this often.
const PRUNE_EVERY_SECS: i64 = 10;

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
}

impl ProxySessions {
    /// Notes a proxy event: a successful CONNECT opens, a DISCONNECT closes.
    pub fn observe(&self, event: &ActivityEvent) {
        if !matches!(event.class, EventClass::Connect | EventClass::Disconnect) {
            return;
        }
        let Some(pid) = event.pid else { return };
        if event.source == Some(EventSource::Pgaudit) || event.kind != "record" {
            return;
        }
        let mut by_pid = self.by_pid.lock().unwrap_or_else(|p| p.into_inner());
        by_pid.prune(Utc::now());
        match event.class {
            EventClass::Connect if event.exit_code.is_none() && event.sql_state.is_none() => {
                by_pid.sessions.entry(pid).or_default().push(Known {
                    started: event.start_time,
                    ended: None,
                    session_id: event.session_id.clone(),
                    remote_host: event.remote_host.clone(),
                    remote_port: event.remote_port.clone(),
                    application: event.client_application.clone(),
                    identity: event.identity.clone(),
                });
            }
            EventClass::Disconnect => {
                let sessions = by_pid.sessions.get_mut(&pid);
                if let Some(open) = sessions.and_then(|s| s.iter_mut().rev().find(|k| k.ended.is_none())) {
                    open.ended = Some(event.end_time.unwrap_or(event.log_time));
                }
            }
            _ => {}
        }
    }

    /// The proxy session of backend `pid` that was open at `at` (a pid names one live
    /// process at a time).
    fn find(&self, pid: i32, at: DateTime<Utc>) -> Option<Known> {
        let by_pid = self.by_pid.lock().unwrap_or_else(|p| p.into_inner());
        let slack = chrono::Duration::seconds(TOLERANCE_SECS);
        by_pid
            .sessions
            .get(&pid)?
            .iter()
            .rev()
            .find(|k| k.started - slack <= at && k.ended.is_none_or(|end| at <= end + slack))
            .cloned()
    }
}

/// Correlates the ingester's events with the proxy's sessions.
#[derive(Debug)]
pub struct Correlator {
    sessions: std::sync::Arc<ProxySessions>,
    /// Backends that logged in before this are not judged (pgtrail was not there to see).
    since: DateTime<Utc>,
    grace: Duration,
    undecided: Vec<(ActivityEvent, Instant)>,
}

impl Correlator {
    pub fn new(sessions: std::sync::Arc<ProxySessions>, since: DateTime<Utc>) -> Correlator {
        Correlator { sessions, since, grace: Duration::from_secs(2), undecided: Vec::new() }
    }

    /// Gives a pgAudit event its proxy session, if it has one; a login with none yet is
    /// kept to be judged after the grace period.
    pub fn enrich(&mut self, event: &mut ActivityEvent) {
        let Some(pid) = event.pid else { return };
        if let Some(known) = self.sessions.find(pid, event.log_time) {
            event.session_id = known.session_id;
            event.remote_host = known.remote_host;
            event.remote_port = known.remote_port;
            if known.application.is_some() {
                event.client_application = known.application;
            }
            event.identity = known.identity;
            return;
        }
        let successful_login = event.class == EventClass::Connect && event.exit_code.is_none();
        if successful_login && event.log_time >= self.since {
            self.undecided.push((event.clone(), Instant::now()));
        }
    }

    /// The `DIRECT CONNECTION` events of logins whose grace period ran out with no proxy
    /// session to account for them.
    pub fn judge(&mut self) -> Vec<ActivityEvent> {
        let mut bypasses = Vec::new();
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
            bypasses.push(bypass_event(login));
            false
        });
        bypasses
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
