//! The statement tracker: turns the messages of one session into ActivityEvents.
//!
//! It sees every frontend message before it is forwarded and every backend message before
//! it reaches the client, and keeps a FIFO of what the server still owes ([`Owed`]). Each
//! reply is matched to the request at the head of the queue, which gives exactly one
//! event per executed statement, also when a client pipelines many requests:
//!
//! - simple Query: one event per statement, closed by its CommandComplete, ErrorResponse
//!   or EmptyQueryResponse; ReadyForQuery closes the Query (statements after an error did
//!   not run and get no event);
//! - extended protocol: one event per Execute, with the parameters of the Bind that made
//!   its portal; an ErrorResponse fails the request at the head and the server skips
//!   everything up to Sync, so those requests are dropped from the queue;
//! - FunctionCall: one event when its FunctionCallResponse or ErrorResponse arrives; like
//!   a simple Query it is answered by ReadyForQuery whatever happened (an error does not
//!   make the server skip to a Sync), so it stays owed until then.
//!
//! The tracker does no I/O and no formatting: the session passes messages in, takes
//! events out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use pgtrail_event::{
    ActivityEvent, Classified, Classifier, EventClass, ExitCode, Statement, class_from_tag, rows_from_completion,
    session_id, tag_from_completion,
};
use pgtrail_wire::{BackendCode, ErrorFields, FrontendMessage, TargetKind, TransactionStatus};

use crate::encoding::ClientEncoding;

/// Facts about the session that every event repeats.
#[derive(Debug, Clone, Default)]
pub struct SessionFacts {
    pub remote_host: Option<Arc<str>>,
    pub remote_port: Option<Arc<str>>,
    pub user: Option<Arc<str>>,
    pub database: Option<Arc<str>>,
    pub application: Option<Arc<str>>,
    pub server_host: Option<Arc<str>>,
    pub server_version: Option<Arc<str>>,
    /// PostgreSQL's is_superuser report for the session's current role.
    pub superuser: Option<bool>,
    pub pid: Option<i32>,
    pub session_id: Option<Arc<str>>,
    /// When the client connected (the CONNECT event's startTime).
    pub started: DateTime<Utc>,
    /// When the upstream connection was made: the backend's start, as PostgreSQL's `%c`
    /// session id counts it.
    pub backend_started: Option<DateTime<Utc>>,
    /// The person, when they logged in with a token.
    pub identity: Option<Arc<pgtrail_event::Identity>>,
}

impl SessionFacts {
    /// An event of this session, with the session's facts filled in.
    pub(crate) fn event(&self, class: EventClass, command: impl Into<String>, start: DateTime<Utc>) -> ActivityEvent {
        let mut e = ActivityEvent::new(class, command, start);
        e.remote_host.clone_from(&self.remote_host);
        e.remote_port.clone_from(&self.remote_port);
        e.db_user_name.clone_from(&self.user);
        e.database_name.clone_from(&self.database);
        e.client_application.clone_from(&self.application);
        e.server_host.clone_from(&self.server_host);
        e.server_version.clone_from(&self.server_version);
        e.superuser = self.superuser;
        e.identity.clone_from(&self.identity);
        e.pid = self.pid;
        e.session_id.clone_from(&self.session_id);
        e
    }

    /// Sets the upstream pid and derives the `%c` session id from it.
    pub fn set_pid(&mut self, pid: i32) {
        self.pid = Some(pid);
        self.session_id = Some(Arc::from(session_id(self.backend_started.unwrap_or(self.started), pid)));
    }
}

/// A statement known to the session. It is classified when its event is written, after
/// the reply went to the client, so the parser never adds latency to a statement.
#[derive(Debug, Clone)]
struct Prepared {
    text: Arc<str>,
    /// How the session read string literals when the statement was sent.
    standard_conforming_strings: bool,
    /// False for placeholders of statements pgtrail never saw (nothing to classify).
    seen: bool,
    /// The classification made when the statement was sent (policy needed it then).
    classified: Option<Arc<Classified>>,
    /// Its parameters' type OIDs: from the Parse, completed by the server's
    /// ParameterDescription (0: not known). Binary parameters are decoded by them.
    param_types: Arc<[u32]>,
}

impl Prepared {
    fn unseen(text: String) -> Self {
        Self {
            text: Arc::from(text),
            standard_conforming_strings: true,
            seen: false,
            classified: None,
            param_types: Arc::from([]),
        }
    }
}

/// A bound portal. Parameters stay raw until the event is written.
#[derive(Debug, Clone)]
struct Portal {
    statement: Prepared,
    params: Arc<[Option<Bytes>]>,
    formats: Arc<[i16]>,
}

/// A request whose reply the server still owes, in the order they were sent.
#[derive(Debug)]
enum Owed {
    Query {
        statement: Prepared,
        next: usize,
        started: DateTime<Utc>,
        rows: u64,
        failed: bool,
    },
    Parse {
        statement: Prepared,
        started: DateTime<Utc>,
    },
    Bind {
        portal: Portal,
        started: DateTime<Utc>,
    },
    Describe {
        /// The prepared statement described (None for a portal).
        statement: Option<String>,
    },
    Execute {
        portal: Portal,
        started: DateTime<Utc>,
        rows: u64,
    },
    Close,
    FunctionCall {
        oid: u32,
        started: DateTime<Utc>,
        /// Its result or error has come (and its event is written); ReadyForQuery follows.
        answered: bool,
    },
    Sync,
    /// Work the proxy refused (fail-closed) and replaced by a statement that raises; its
    /// ErrorResponse and ReadyForQuery belong to no client statement.
    Refused,
}

impl Owed {
    /// What this entry waits for, in words (for desync reports).
    fn name(&self) -> &'static str {
        match self {
            Owed::Query { .. } => "the answers to a Query",
            Owed::Parse { .. } => "ParseComplete",
            Owed::Bind { .. } => "BindComplete",
            Owed::Describe { .. } => "the answer to a Describe",
            Owed::Execute { .. } => "the answers to an Execute",
            Owed::Close => "CloseComplete",
            Owed::FunctionCall { .. } => "FunctionCallResponse",
            Owed::Sync => "ReadyForQuery",
            Owed::Refused => "the answer to a refused statement",
        }
    }
}

/// One session's tracker.
#[derive(Debug)]
pub struct Tracker {
    pub facts: SessionFacts,
    classifier: Classifier,
    statement_id: u64,
    prepared: HashMap<String, Prepared>,
    portals: HashMap<String, Portal>,
    owed: VecDeque<Owed>,
    terminated: bool,
    fatal: Option<String>,
    /// The session's standard_conforming_strings, which decides how the parser reads
    /// backslashes in string literals.
    standard_conforming_strings: bool,
    /// PostgreSQL waits for the client's COPY data (CopyInResponse seen, the COPY not over).
    copy_in: bool,
    /// The session's client_encoding: what the proxy records is decoded from it.
    client_encoding: ClientEncoding,
    /// The transaction status of the last ReadyForQuery.
    transaction: TransactionStatus,
    /// Statements ran since the last ReadyForQuery (an extended batch before its Sync runs
    /// in a transaction that only the Sync commits).
    ran_since_ready: bool,
    events: Vec<ActivityEvent>,
    /// Replies that did not match what the server owed, not yet reported.
    desyncs: Vec<Desync>,
    /// Whether this session has logged a desync (it is logged once, counted always).
    desync_logged: bool,
}

/// A reply that does not match what the server owes (the front of the reply FIFO): the
/// proxy's picture of the session is wrong from here on, and events may be mislabelled.
/// Never ignored: counted in `pgtrail_protocol_desyncs`, and logged once per session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol desync: PostgreSQL sent {got:?} while the proxy expected {expected}")]
pub struct Desync {
    pub got: BackendCode,
    /// What the front of the FIFO was waiting for.
    pub expected: &'static str,
}

/// What PostgreSQL needs from the proxy, once the client has gone, before it can answer
/// everything it still owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nudge {
    /// Nothing: its answers are on their way (a Query, a batch up to its Sync).
    None,
    /// It waits for COPY data: end the COPY with CopyFail, which it answers with an error.
    CopyFail,
    /// An extended batch with no Sync: Flush makes it send what it has (without the Sync
    /// that would commit the batch's transaction, which the client never asked for).
    Flush,
}

/// The text of the event that records the rollback of a transaction the client left open.
pub const LEFT_OPEN_TEXT: &str =
    "<the client left with a transaction open: PostgreSQL rolled it back when the session ended>";

impl Tracker {
    pub fn new(facts: SessionFacts, classifier: Classifier) -> Self {
        Self {
            facts,
            classifier,
            statement_id: 0,
            prepared: HashMap::new(),
            portals: HashMap::new(),
            owed: VecDeque::new(),
            terminated: false,
            fatal: None,
            standard_conforming_strings: true,
            copy_in: false,
            client_encoding: ClientEncoding::Utf8,
            transaction: TransactionStatus::Idle,
            ran_since_ready: false,
            events: Vec::new(),
            desyncs: Vec::new(),
            desync_logged: false,
        }
    }

    /// The session's client_encoding, for decoding what the client sends.
    pub fn client_encoding(&self) -> ClientEncoding {
        self.client_encoding
    }

    /// Whether the client ended the session with Terminate (forwarded to PostgreSQL).
    pub fn client_said_terminate(&self) -> bool {
        self.terminated
    }

    /// Whether PostgreSQL still owes answers to requests the proxy forwarded.
    pub fn owes_replies(&self) -> bool {
        !self.owed.is_empty()
    }

    /// The client has gone: what PostgreSQL needs so it can answer everything it owes.
    pub fn nudge_after_client_left(&self) -> Nudge {
        if self.copy_in {
            return Nudge::CopyFail;
        }
        match self.owed.back() {
            None | Some(Owed::Query { .. } | Owed::Sync | Owed::FunctionCall { .. } | Owed::Refused) => Nudge::None,
            Some(_) => Nudge::Flush,
        }
    }

    /// The session is over while the client had gone: a transaction it left open (a
    /// transaction block, or an extended batch without its Sync that ran statements) was
    /// rolled back by PostgreSQL, which an event says; statements PostgreSQL never answered
    /// get events with `outcome = unknown`.
    pub fn close_after_client_left(&mut self) {
        let now = Utc::now();
        // A transaction block, or statements run since the last ReadyForQuery (an extended
        // batch whose Sync never came).
        if self.transaction.in_transaction() || self.ran_since_ready {
            let mut e = self.facts.event(EventClass::Misc, "ROLLBACK", now);
            e.statement_id = self.next_statement_id();
            e.end_time = Some(now);
            e.command_text = Some(LEFT_OPEN_TEXT.into());
            self.events.push(e);
        }
        self.abandon_owed();
    }

    /// Events for every statement still owed, whose outcome the proxy cannot know (the
    /// connection to PostgreSQL ended first).
    pub fn abandon_owed(&mut self) {
        let now = Utc::now();
        while let Some(owed) = self.owed.pop_front() {
            let before = self.events.len();
            match owed {
                Owed::Query { statement, next, started, failed: false, .. } => {
                    let classified = statement.classified.clone().or_else(|| {
                        statement.seen.then(|| {
                            self.classifier.classify_with(&statement.text, statement.standard_conforming_strings)
                        })
                    });
                    let count = classified.map_or(1, |c| c.statements.len().max(1));
                    for index in next..count {
                        self.emit_statement(&statement, index, started, now, None, None, Vec::new());
                    }
                }
                Owed::Execute { portal, started, .. } => self.emit_execute(&portal, started, None, None, None),
                Owed::FunctionCall { oid, started, answered: false } => self.emit_function_call(oid, started, None),
                _ => {}
            }
            for e in &mut self.events[before..] {
                e.outcome = Some("unknown".into());
                e.error_message =
                    Some("pgtrail: the connection to PostgreSQL ended before it said how this ended".into());
            }
        }
    }

    /// Whether the server ended the session with a FATAL error (it told the client why).
    pub fn server_said_fatal(&self) -> bool {
        self.fatal.is_some()
    }

    /// Events produced since the last call.
    pub fn take_events(&mut self) -> Vec<ActivityEvent> {
        std::mem::take(&mut self.events)
    }

    fn prepare(&self, text: &str, classified: Option<Arc<Classified>>) -> Prepared {
        Prepared {
            text: Arc::from(text),
            standard_conforming_strings: self.standard_conforming_strings,
            seen: true,
            classified,
            param_types: Arc::from([]),
        }
    }

    /// ParameterDescription: the types of the statement being described.
    pub fn on_parameter_description(&mut self, types: &[u32]) {
        if let Some(Owed::Describe { statement: Some(name) }) = self.owed.front()
            && let Some(prepared) = self.prepared.get_mut(name)
        {
            prepared.param_types = types.into();
        }
    }

    /// ParameterStatus, at startup or when the session changes a reported setting.
    pub fn on_parameter_status(&mut self, name: &str, value: &str) {
        match name {
            "server_version" => self.facts.server_version = Some(Arc::from(value)),
            "is_superuser" => self.facts.superuser = Some(value == "on"),
            "standard_conforming_strings" => self.standard_conforming_strings = value != "off",
            "client_encoding" => self.client_encoding = ClientEncoding::from_name(value),
            _ => {}
        }
    }

    /// A message from the client, before it is forwarded.
    pub fn on_frontend(&mut self, msg: &FrontendMessage, now: DateTime<Utc>) {
        self.on_frontend_classified(msg, now, None);
    }

    /// The same, with the Query's or Parse's classification when the caller already has it
    /// (the policy check), so it is not looked up again when the statement completes.
    pub fn on_frontend_classified(
        &mut self,
        msg: &FrontendMessage,
        now: DateTime<Utc>,
        classified: Option<Arc<Classified>>,
    ) {
        match msg {
            FrontendMessage::Query { query } => {
                let statement = self.prepare(query, classified);
                self.owed.push_back(Owed::Query { statement, next: 0, started: now, rows: 0, failed: false });
            }
            FrontendMessage::Parse { name, query, param_types } => {
                let mut statement = self.prepare(query, classified);
                statement.param_types = param_types.as_slice().into();
                self.prepared.insert(name.clone(), statement.clone());
                self.owed.push_back(Owed::Parse { statement, started: now });
            }
            FrontendMessage::Bind { portal, statement, param_formats, params, .. } => {
                // Unknown: prepared with SQL PREPARE, or before pgtrail saw the session.
                let prepared = self
                    .prepared
                    .get(statement)
                    .cloned()
                    .unwrap_or_else(|| Prepared::unseen(format!("<prepared statement {statement:?}>")));
                let portal_state = Portal {
                    statement: prepared,
                    params: kept_params(params),
                    formats: param_formats.as_slice().into(),
                };
                self.portals.insert(portal.clone(), portal_state.clone());
                self.owed.push_back(Owed::Bind { portal: portal_state, started: now });
            }
            FrontendMessage::Execute { portal, .. } => {
                let portal = self.portals.get(portal).cloned().unwrap_or_else(|| Portal {
                    statement: Prepared::unseen(format!("<portal {portal:?}>")),
                    params: Arc::from([]),
                    formats: Arc::from([]),
                });
                self.owed.push_back(Owed::Execute { portal, started: now, rows: 0 });
            }
            FrontendMessage::Describe { kind, name } => {
                let statement = (*kind == TargetKind::Statement).then(|| name.clone());
                self.owed.push_back(Owed::Describe { statement });
            }
            FrontendMessage::Close { kind, name } => {
                match kind {
                    TargetKind::Statement => self.prepared.remove(name),
                    TargetKind::Portal => self.portals.remove(name).map(|p| p.statement),
                };
                self.owed.push_back(Owed::Close);
            }
            FrontendMessage::Sync => self.owed.push_back(Owed::Sync),
            FrontendMessage::FunctionCall { oid, .. } => {
                self.owed.push_back(Owed::FunctionCall { oid: *oid, started: now, answered: false });
            }
            FrontendMessage::Terminate => self.terminated = true,
            FrontendMessage::Flush
            | FrontendMessage::CopyData(_)
            | FrontendMessage::CopyDone
            | FrontendMessage::CopyFail { .. }
            | FrontendMessage::AuthResponse(_) => {}
        }
    }

    /// A backend message that needs no body to be understood (DataRow, ParseComplete, ...).
    pub fn on_backend_code(&mut self, code: BackendCode) {
        match code {
            BackendCode::DataRow => {
                if let Some(Owed::Query { rows, .. } | Owed::Execute { rows, .. }) = self.owed.front_mut() {
                    *rows += 1;
                }
            }
            BackendCode::ParseComplete => self.pop_expected(code, |o| matches!(o, Owed::Parse { .. })),
            BackendCode::BindComplete => self.pop_expected(code, |o| matches!(o, Owed::Bind { .. })),
            BackendCode::CloseComplete => self.pop_expected(code, |o| matches!(o, Owed::Close)),
            // RowDescription or NoData end a Describe (ParameterDescription comes first for
            // a statement); inside a Query or Execute a RowDescription is just result metadata.
            BackendCode::RowDescription
                if matches!(self.owed.front(), Some(Owed::Query { .. } | Owed::Execute { .. })) => {}
            BackendCode::RowDescription | BackendCode::NoData => {
                self.pop_expected(code, |o| matches!(o, Owed::Describe { .. }))
            }
            BackendCode::PortalSuspended => {
                if let Some(Owed::Execute { .. }) = self.owed.front() {
                    let Some(Owed::Execute { portal, started, rows }) = self.owed.pop_front() else { unreachable!() };
                    // A suspended portal has produced `rows` rows so far; Execute may resume it.
                    self.emit_execute(&portal, started, None, Some(rows), None);
                }
            }
            BackendCode::CopyInResponse => self.copy_in = true,
            BackendCode::EmptyQueryResponse => match self.owed.front_mut() {
                Some(Owed::Query { next, .. }) => *next += 1,
                Some(Owed::Execute { .. }) => {
                    self.owed.pop_front();
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Pops the front of the FIFO if it is what `code` answers; otherwise notes a desync.
    fn pop_expected(&mut self, code: BackendCode, answers: impl Fn(&Owed) -> bool) {
        match self.owed.front() {
            Some(front) if answers(front) => {
                self.owed.pop_front();
            }
            front => {
                let expected = front.map_or("nothing", Owed::name);
                if self.desyncs.len() < 16 {
                    self.desyncs.push(Desync { got: code, expected });
                }
            }
        }
    }

    /// Desyncs noted since the last call, and whether this session should log them (the
    /// first time only).
    pub fn take_desyncs(&mut self) -> (Vec<Desync>, bool) {
        let desyncs = std::mem::take(&mut self.desyncs);
        let log = !desyncs.is_empty() && !self.desync_logged;
        self.desync_logged |= log;
        (desyncs, log)
    }

    /// CommandComplete.
    pub fn on_command_complete(&mut self, tag: &str) {
        let now = Utc::now();
        self.ran_since_ready = true;
        self.copy_in = false;
        match self.owed.front_mut() {
            Some(Owed::Query { statement, next, started, rows, .. }) => {
                let index = *next;
                *next += 1;
                let (statement, started) = (statement.clone(), *started);
                *rows = 0;
                self.emit_statement(&statement, index, started, now, Some(tag), None, Vec::new());
                if let Some(Owed::Query { started, .. }) = self.owed.front_mut() {
                    // The next statement of the same Query starts when this one ends.
                    *started = now;
                }
            }
            Some(Owed::Execute { .. }) => {
                let Some(Owed::Execute { portal, started, .. }) = self.owed.pop_front() else { unreachable!() };
                self.emit_execute(&portal, started, Some(tag), None, None);
            }
            _ => {}
        }
    }

    /// ErrorResponse (and FATAL errors that end the session).
    pub fn on_error(&mut self, fields: &ErrorFields) {
        self.copy_in = false;
        if fields.is_fatal() {
            self.fatal = fields.code().map(str::to_owned);
        }
        let now = Utc::now();
        match self.owed.front_mut() {
            Some(Owed::Query { statement, next, started, failed, .. }) => {
                if !*failed {
                    *failed = true;
                    let (statement, index, started) = (statement.clone(), *next, *started);
                    self.emit_statement(&statement, index, started, now, None, Some(fields), Vec::new());
                }
            }
            Some(Owed::FunctionCall { oid, started, answered }) => {
                if !*answered {
                    *answered = true;
                    let (oid, started) = (*oid, *started);
                    self.emit_function_call(oid, started, Some(fields));
                }
            }
            Some(Owed::Sync | Owed::Refused) | None => {}
            Some(_) => {
                let failed = self.owed.pop_front().expect("front checked");
                match failed {
                    Owed::Parse { statement, started } => {
                        self.emit_statement(&statement, 0, started, now, None, Some(fields), Vec::new());
                    }
                    Owed::Bind { portal, started } | Owed::Execute { portal, started, .. } => {
                        self.emit_execute(&portal, started, None, None, Some(fields));
                    }
                    _ => {}
                }
                // The server ignores everything until Sync: those requests get no reply.
                while self.owed.front().is_some_and(|o| !matches!(o, Owed::Sync)) {
                    self.owed.pop_front();
                }
            }
        }
    }

    /// FunctionCallResponse.
    pub fn on_function_result(&mut self) {
        if let Some(Owed::FunctionCall { oid, started, answered: answered @ false }) = self.owed.front_mut() {
            *answered = true;
            let (oid, started) = (*oid, *started);
            self.emit_function_call(oid, started, None);
        }
    }

    /// ReadyForQuery with the session's transaction status (`I`, `T` or `E`; the wire
    /// decoder accepts no other).
    pub fn on_ready_status(&mut self, status: u8) {
        self.transaction = TransactionStatus::from_byte(status).unwrap_or(TransactionStatus::Idle);
        self.ran_since_ready = false;
        self.copy_in = false;
        self.on_ready();
    }

    /// ReadyForQuery: the end of a Query, a Sync or a FunctionCall.
    pub fn on_ready(&mut self) {
        // Pop up to and including the request ReadyForQuery answers. Anything before it
        // that is still owed did not run (after an error) and has no event.
        while let Some(owed) = self.owed.pop_front() {
            if matches!(owed, Owed::Query { .. } | Owed::Sync | Owed::FunctionCall { .. } | Owed::Refused) {
                break;
            }
        }
    }

    /// The proxy refused the client's next statement or batch (fail-closed); returns the
    /// event that says so.
    pub fn on_refused(&mut self) -> ActivityEvent {
        self.owed.push_back(Owed::Refused);
        let now = Utc::now();
        let mut e = self.facts.event(EventClass::Misc, "REFUSED", now);
        e.end_time = Some(now);
        e.error_message = Some("pgtrail refused the statement: the audit journal could not record events".into());
        e.sql_state = Some("58030".into());
        e.exit_code = Some(ExitCode::SqlState("58030".into()));
        e
    }

    /// The session's standard_conforming_strings, for classifying what the client sends.
    pub fn standard_conforming_strings(&self) -> bool {
        self.standard_conforming_strings
    }

    /// Policy refused `statement` (the client's Query, or the Parse of an extended batch):
    /// records it with `verdict = denied`. The statement that replaces it upstream raises
    /// the error, whose reply belongs to no client statement.
    pub fn on_denied(&mut self, statement: &Statement, rule: &str, message: &str) {
        self.owed.push_back(Owed::Refused);
        let now = Utc::now();
        let command = statement.command.clone().unwrap_or_else(|| "UNKNOWN".into());
        let mut e = self.facts.event(statement.class.unwrap_or(EventClass::Misc), command, now);
        e.statement_id = self.next_statement_id();
        e.end_time = Some(now);
        fill_statement(&mut e, statement);
        e.noise = false;
        e.error_message = Some(message.to_owned());
        e.sql_state = Some("42501".into());
        e.exit_code = Some(ExitCode::SqlState("42501".into()));
        e.verdict = Some(pgtrail_event::Verdict::Denied);
        e.denied_by = Some(rule.to_owned());
        self.events.push(e);
    }

    /// The CONNECT event, successful (`error == None`) or failed.
    pub fn connect_event(&mut self, error: Option<&ErrorFields>) {
        let mut e = self.facts.event(EventClass::Connect, "CONNECT", self.facts.started);
        e.statement_id = 0;
        let now = Utc::now();
        e.log_time = now;
        e.end_time = Some(now);
        if let Some(fields) = error {
            apply_error(&mut e, fields);
        }
        self.events.push(e);
    }

    /// The DISCONNECT event: exit code 0 after Terminate, the SQLSTATE of a FATAL error,
    /// or null when the peer vanished. `reason` overrides with the proxy's own SQLSTATE.
    pub fn disconnect_event(&mut self, reason: Option<&ErrorFields>) {
        let mut e = self.facts.event(EventClass::Disconnect, "DISCONNECT", self.facts.started);
        let now = Utc::now();
        e.log_time = now;
        e.end_time = Some(now);
        e.statement_id = self.statement_id;
        if let Some(fields) = reason {
            apply_error(&mut e, fields);
        } else if self.terminated {
            e.exit_code = Some(ExitCode::Clean(0));
        } else if let Some(code) = &self.fatal {
            e.exit_code = Some(ExitCode::SqlState(code.clone()));
            e.sql_state = Some(code.clone());
        }
        self.events.push(e);
    }

    fn next_statement_id(&mut self) -> u64 {
        self.statement_id += 1;
        self.statement_id
    }

    #[allow(clippy::too_many_arguments, reason = "internal helper that fills one event")]
    fn emit_statement(
        &mut self,
        prepared: &Prepared,
        index: usize,
        started: DateTime<Utc>,
        now: DateTime<Utc>,
        completion: Option<&str>,
        error: Option<&ErrorFields>,
        params: Vec<Option<String>>,
    ) {
        let classified = prepared.classified.clone().or_else(|| {
            prepared.seen.then(|| self.classifier.classify_with(&prepared.text, prepared.standard_conforming_strings))
        });
        let statement = classified.as_ref().and_then(|c| c.statements.get(index));
        let command = match (completion, statement) {
            (Some(tag), _) => tag_from_completion(tag).to_owned(),
            (None, Some(s)) => s.command.clone().unwrap_or_else(|| "UNKNOWN".into()),
            (None, None) => "UNKNOWN".into(),
        };
        let class = statement.and_then(|s| s.class).unwrap_or_else(|| class_from_tag(&command));
        let mut e = self.facts.event(class, command, started);
        e.statement_id = self.next_statement_id();
        e.log_time = now;
        e.end_time = Some(now);
        e.param_list = params;
        match statement {
            Some(s) => fill_statement(&mut e, s),
            // Text the parser did not split (or an unknown statement): record it as sent.
            None => e.command_text = Some(pgtrail_event::redact_passwords(&prepared.text).into()),
        }
        e.command_text = e.command_text.take().map(|t| cap_text(t, MAX_RECORDED_TEXT));
        e.row_count = completion.and_then(rows_from_completion);
        if let Some(fields) = error {
            apply_error(&mut e, fields);
        }
        self.events.push(e);
    }

    fn emit_execute(
        &mut self,
        portal: &Portal,
        started: DateTime<Utc>,
        completion: Option<&str>,
        rows: Option<u64>,
        error: Option<&ErrorFields>,
    ) {
        let params = portal
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let type_oid = portal.statement.param_types.get(i).copied().unwrap_or(0);
                p.as_ref().map(|v| render_param(v, format_of(&portal.formats, i), type_oid, self.client_encoding))
            })
            .collect();
        self.emit_statement(&portal.statement, 0, started, Utc::now(), completion, error, params);
        if let (Some(rows), Some(e)) = (rows, self.events.last_mut()) {
            e.row_count = Some(rows);
        }
    }

    fn emit_function_call(&mut self, oid: u32, started: DateTime<Utc>, error: Option<&ErrorFields>) {
        let mut e = self.facts.event(EventClass::Function, "FUNCTION CALL", started);
        e.statement_id = self.next_statement_id();
        let now = Utc::now();
        e.log_time = now;
        e.end_time = Some(now);
        e.command_text = Some(format!("<function call oid={oid}>").into());
        e.object_type = Some("FUNCTION".into());
        e.object_name = Some(oid.to_string());
        if let Some(fields) = error {
            apply_error(&mut e, fields);
        }
        self.events.push(e);
    }
}

/// The parameters of a Bind, copied into one allocation of their own: the message's
/// body is a slice of the relay's read buffer, which a kept portal must not hold on to.
fn kept_params(params: &[Option<Bytes>]) -> Arc<[Option<Bytes>]> {
    let mut all = BytesMut::with_capacity(params.iter().flatten().map(Bytes::len).sum());
    for value in params.iter().flatten() {
        all.extend_from_slice(value);
    }
    let all = all.freeze();
    let mut at = 0;
    params
        .iter()
        .map(|p| {
            p.as_ref().map(|value| {
                at += value.len();
                all.slice(at - value.len()..at)
            })
        })
        .collect()
}

/// The statement's own fields of an event (text, objects, fingerprint, traits...).
pub(crate) fn fill_statement(e: &mut ActivityEvent, s: &Statement) {
    e.command_text = Some(Arc::clone(&s.text));
    e.object_type.clone_from(&s.object_type);
    e.object_name.clone_from(&s.object_name);
    e.objects.clone_from(&s.objects);
    e.query_fingerprint.clone_from(&s.fingerprint);
    e.noise = s.noise;
    e.tags.clone_from(&s.tags);
    e.has_where = s.traits.has_where;
    e.copy_program = s.traits.copy_program;
    e.sets_password = s.traits.sets_password;
}

fn apply_error(e: &mut ActivityEvent, fields: &ErrorFields) {
    e.error_message = fields.message().map(str::to_owned);
    e.sql_state = fields.code().map(str::to_owned);
    e.exit_code = e.sql_state.clone().map(ExitCode::SqlState);
}

/// The format code of parameter `i`: none given means text, one applies to all.
fn format_of(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}

/// A recorded statement text is at most this long; the rest is replaced by a marker that
/// says how long the original was. Keeps every event small enough to journal.
pub const MAX_RECORDED_TEXT: usize = 1 << 20;
/// A recorded parameter value is at most this long (before hex encoding of binary ones).
pub const MAX_RECORDED_PARAM: usize = 64 << 10;

/// Cuts `text` at a character boundary at most `max` bytes in, marking what was cut.
fn cap_text(text: Arc<str>, max: usize) -> Arc<str> {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...<truncated: {} bytes in all>", &text[..cut], text.len()).into()
}

/// Text parameters as text; binary ones as `\x` hex, like bytea output.
fn render_param(value: &Bytes, format: i16, type_oid: u32, encoding: ClientEncoding) -> String {
    // A cut binary value decodes as nothing: its hex shows.
    let shown = &value[..value.len().min(MAX_RECORDED_PARAM)];
    let type_oid = if shown.len() < value.len() { 0 } else { type_oid };
    let mut s = crate::params::render(shown, format, type_oid, encoding);
    if shown.len() < value.len() {
        s.push_str(&format!("...<truncated: {} bytes in all>", value.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_portal_holds_its_parameters_not_the_read_buffer() {
        // The relay hands the tracker a Bind body that is a slice of its read buffer.
        let buffer = Bytes::from(vec![7u8; 8192]);
        let params = vec![Some(buffer.slice(10..14)), None, Some(buffer.slice(20..22)), Some(Bytes::new())];
        let kept = kept_params(&params);
        assert_eq!(&*kept, &params[..]);
        let inside = |b: &Bytes| buffer.as_ptr_range().contains(&b.as_ptr());
        assert!(kept.iter().flatten().filter(|b| !b.is_empty()).all(|b| !inside(b)));
    }

    fn tracker() -> Tracker {
        let mut facts = SessionFacts { started: Utc::now(), ..Default::default() };
        facts.set_pid(4242);
        Tracker::new(facts, Classifier::default())
    }

    fn q(text: &str) -> FrontendMessage {
        FrontendMessage::Query { query: text.into() }
    }

    #[test]
    fn multi_statement_query_gives_one_event_each() {
        let mut t = tracker();
        t.on_frontend(&q("CREATE TABLE p (id int); INSERT INTO p VALUES (1), (2); SELECT * FROM p"), Utc::now());
        t.on_command_complete("CREATE TABLE");
        t.on_command_complete("INSERT 0 2");
        t.on_backend_code(BackendCode::RowDescription);
        t.on_backend_code(BackendCode::DataRow);
        t.on_backend_code(BackendCode::DataRow);
        t.on_command_complete("SELECT 2");
        t.on_ready();
        let events = t.take_events();
        let summary: Vec<_> = events
            .iter()
            .map(|e| (e.statement_id, e.command.as_str(), e.class, e.row_count, e.command_text.as_deref().unwrap()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, "CREATE TABLE", EventClass::Ddl, None, "CREATE TABLE p (id int)"),
                (2, "INSERT", EventClass::Write, Some(2), "INSERT INTO p VALUES (1), (2)"),
                (3, "SELECT", EventClass::Read, Some(2), "SELECT * FROM p"),
            ]
        );
        assert_eq!(events[0].session_id.as_deref(), t.facts.session_id.as_deref());
    }

    #[test]
    fn error_in_simple_query_stops_the_rest() {
        let mut t = tracker();
        t.on_frontend(&q("SELECT 1; SELECT * FROM missing; SELECT 3"), Utc::now());
        t.on_command_complete("SELECT 1");
        t.on_error(&ErrorFields::new("ERROR", "42P01", "relation \"missing\" does not exist"));
        t.on_ready();
        let events = t.take_events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].sql_state.as_deref(), Some("42P01"));
        assert_eq!(events[1].command, "SELECT");
        assert_eq!(events[1].command_text.as_deref(), Some("SELECT * FROM missing"));
        assert_eq!(events[1].exit_code, Some(ExitCode::SqlState("42P01".into())));
    }

    #[test]
    fn pipelined_extended_protocol() {
        let mut t = tracker();
        let now = Utc::now();
        let parse = FrontendMessage::Parse {
            name: "s".into(),
            query: "SELECT * FROM t WHERE id = $1".into(),
            param_types: vec![],
        };
        t.on_frontend(&parse, now);
        for (i, value) in [&b"1"[..], &b"2"[..]].into_iter().enumerate() {
            t.on_frontend(
                &FrontendMessage::Bind {
                    portal: format!("p{i}"),
                    statement: "s".into(),
                    param_formats: vec![],
                    params: vec![Some(Bytes::copy_from_slice(value))],
                    result_formats: vec![],
                },
                now,
            );
            t.on_frontend(&FrontendMessage::Execute { portal: format!("p{i}"), max_rows: 0 }, now);
        }
        // Binary and NULL parameters.
        t.on_frontend(
            &FrontendMessage::Bind {
                portal: "".into(),
                statement: "s".into(),
                param_formats: vec![1],
                params: vec![Some(Bytes::from_static(&[0, 0, 0, 7])), None],
                result_formats: vec![],
            },
            now,
        );
        t.on_frontend(&FrontendMessage::Execute { portal: "".into(), max_rows: 0 }, now);
        t.on_frontend(&FrontendMessage::Sync, now);
        for code in [BackendCode::ParseComplete, BackendCode::BindComplete] {
            t.on_backend_code(code);
        }
        t.on_command_complete("SELECT 1");
        t.on_backend_code(BackendCode::BindComplete);
        t.on_command_complete("SELECT 0");
        t.on_backend_code(BackendCode::BindComplete);
        t.on_command_complete("SELECT 3");
        t.on_ready();
        let events = t.take_events();
        let params: Vec<_> = events.iter().map(|e| e.param_list.clone()).collect();
        assert_eq!(
            params,
            vec![vec![Some("1".to_string())], vec![Some("2".to_string())], vec![Some("\\x00000007".to_string()), None]]
        );
        assert_eq!(events.iter().map(|e| e.statement_id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(t.owed.is_empty());
    }

    #[test]
    fn extended_error_skips_to_sync() {
        let mut t = tracker();
        let now = Utc::now();
        t.on_frontend(&FrontendMessage::Parse { name: "".into(), query: "SELEC 1".into(), param_types: vec![] }, now);
        t.on_frontend(
            &FrontendMessage::Bind {
                portal: "".into(),
                statement: "".into(),
                param_formats: vec![],
                params: vec![],
                result_formats: vec![],
            },
            now,
        );
        t.on_frontend(&FrontendMessage::Execute { portal: "".into(), max_rows: 0 }, now);
        t.on_frontend(&FrontendMessage::Sync, now);
        t.on_error(&ErrorFields::new("ERROR", "42601", "syntax error at or near \"SELEC\""));
        t.on_ready();
        let events = t.take_events();
        assert_eq!(events.len(), 1, "only the failed Parse is an event: {events:?}");
        assert_eq!(events[0].command_text.as_deref(), Some("SELEC 1"));
        assert_eq!(events[0].sql_state.as_deref(), Some("42601"));
        assert!(t.owed.is_empty());
    }

    #[test]
    fn disconnect_exit_codes() {
        let mut t = tracker();
        t.on_frontend(&FrontendMessage::Terminate, Utc::now());
        t.disconnect_event(None);
        assert_eq!(t.take_events()[0].exit_code, Some(ExitCode::Clean(0)));
        let mut t = tracker();
        t.on_error(&ErrorFields::new("FATAL", "57P01", "terminating connection due to administrator command"));
        t.disconnect_event(None);
        assert_eq!(t.take_events()[0].exit_code, Some(ExitCode::SqlState("57P01".into())));
        let mut t = tracker();
        t.disconnect_event(None);
        assert_eq!(t.take_events()[0].exit_code, None);
    }

    #[test]
    fn huge_texts_and_parameters_are_capped_with_a_marker() {
        let mut t = tracker();
        let huge = format!("SELECT '{}'", "é".repeat(MAX_RECORDED_TEXT));
        t.on_frontend(&q(&huge), Utc::now());
        t.on_command_complete("SELECT 1");
        let text = t.take_events().remove(0).command_text.unwrap();
        assert!(text.len() < MAX_RECORDED_TEXT + 100);
        assert!(
            text.ends_with(&format!("...<truncated: {} bytes in all>", huge.len())),
            "{}",
            &text[text.len() - 60..]
        );
        let blob = Bytes::from(vec![0xab; MAX_RECORDED_PARAM + 10]);
        let rendered = render_param(&blob, 1, 17, ClientEncoding::Utf8);
        assert!(rendered.starts_with("\\xabab"));
        assert_eq!(
            rendered.len(),
            2 + 2 * MAX_RECORDED_PARAM + format!("...<truncated: {} bytes in all>", blob.len()).len()
        );
        assert_eq!(render_param(&Bytes::from_static(b"short"), 0, 0, ClientEncoding::Utf8), "short");
    }

    #[test]
    fn unparsable_text_takes_its_class_from_the_server_tag() {
        let mut t = tracker();
        // Not valid for our grammar, yet the server ran it (say, a newer server's syntax).
        t.on_frontend(&q("SELECT 1 FROM t WHERE x IS JSON OBJECT WITH SOMETHING NEW"), Utc::now());
        t.on_command_complete("SELECT 4");
        t.on_ready();
        let e = t.take_events().remove(0);
        assert_eq!((e.command.as_str(), e.class, e.row_count), ("SELECT", EventClass::Read, Some(4)));
        assert_eq!(e.command_text.as_deref(), Some("SELECT 1 FROM t WHERE x IS JSON OBJECT WITH SOMETHING NEW"));
        assert_eq!(e.query_fingerprint, None);
    }

    #[test]
    fn string_escaping_follows_the_session() {
        let mut t = tracker();
        t.on_parameter_status("standard_conforming_strings", "off");
        // With backslash escapes, this is one SELECT of one literal, not a DROP.
        t.on_frontend(&q("SELECT 'a\\' ; DROP TABLE x; --'"), Utc::now());
        t.on_command_complete("SELECT 1");
        t.on_ready();
        let events = t.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].class, EventClass::Read);
    }

    #[test]
    fn portal_suspended_reports_rows_so_far() {
        let mut t = tracker();
        let now = Utc::now();
        t.on_frontend(
            &FrontendMessage::Parse { name: "".into(), query: "SELECT * FROM t".into(), param_types: vec![] },
            now,
        );
        t.on_frontend(
            &FrontendMessage::Bind {
                portal: "c".into(),
                statement: "".into(),
                param_formats: vec![],
                params: vec![],
                result_formats: vec![],
            },
            now,
        );
        t.on_frontend(&FrontendMessage::Execute { portal: "c".into(), max_rows: 2 }, now);
        t.on_frontend(&FrontendMessage::Sync, now);
        t.on_backend_code(BackendCode::ParseComplete);
        t.on_backend_code(BackendCode::BindComplete);
        t.on_backend_code(BackendCode::DataRow);
        t.on_backend_code(BackendCode::DataRow);
        t.on_backend_code(BackendCode::PortalSuspended);
        t.on_ready();
        let events = t.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].row_count, Some(2));
    }

    /// Issue 14.3: a reply that matches nothing the server owes was ignored silently.
    #[test]
    fn a_reply_the_server_does_not_owe_is_a_desync_reported_once() {
        let mut t = tracker();
        t.on_backend_code(BackendCode::ParseComplete);
        t.on_backend_code(BackendCode::BindComplete);
        let (desyncs, log) = t.take_desyncs();
        assert_eq!(
            desyncs,
            vec![
                Desync { got: BackendCode::ParseComplete, expected: "nothing" },
                Desync { got: BackendCode::BindComplete, expected: "nothing" },
            ]
        );
        assert!(log, "the first desync of a session is logged");
        t.on_backend_code(BackendCode::CloseComplete);
        let (desyncs, log) = t.take_desyncs();
        assert_eq!(desyncs.len(), 1, "every desync is counted");
        assert!(!log, "but only the first is logged");
        assert_eq!(t.take_desyncs(), (Vec::new(), false));
    }
}
