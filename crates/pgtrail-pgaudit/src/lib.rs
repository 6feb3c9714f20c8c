//! pgAudit records from PostgreSQL's log files, as activity events.
//!
//! Owns: reading PostgreSQL's log formats, pgAudit records as events, following a log
//! directory across rotation, the ingest loop, and correlation with proxy sessions. Must
//! not: format or seal records (the journal's recorder does) or speak the protocol.
//!
//! The log is read in the format PostgreSQL writes it ([`Format`]: stderr with its
//! log_line_prefix, csvlog or jsonlog), assembled into entries ([`Assembler`]), and each
//! entry that says something about a session becomes an [`ActivityEvent`] with
//! `source = pgaudit` ([`to_event`]):
//!
//! - `AUDIT:` records (SESSION and OBJECT): class, command, object, statement, parameters,
//!   rows, statement and substatement ids;
//! - `connection received` (MISC, CONNECTION RECEIVED), `connection authorized` (CONNECT),
//!   `disconnection` (DISCONNECT), failed authentication (CONNECT with SQLSTATE 28P01 or
//!   28000);
//! - `ERROR` entries with their STATEMENT (MISC, ERROR, with the SQLSTATE).
//!
//! Time, user, database, pid, session id, client host and port and application come from the
//! line's prefix or columns. An entry that cannot be read is an error with its line number,
//! never skipped silently; entries about anything else (checkpoints, startup) are `None`.
//!
//! [`ingest`] is the loop that follows a log directory and hands the events to a journal's
//! recorder, durable before the position is saved. [`correlate`] joins these events to the proxy's sessions (session id, client, person),
//! marks pgAudit's records of statements the proxy recorded too, and finds logins that
//! bypassed the proxy.

pub mod audit;
pub mod config;
pub mod correlate;
pub mod csv;
pub mod entry;
pub mod follow;
pub mod ingest;
pub mod prefix;

use pgtrail_event::{ActivityEvent, EventClass, EventSource, ExitCode, ObjectKind, ObjectRef};

pub use audit::{AuditRecord, Logged};
pub use config::{LogFormat, PgauditConfigError, PgauditSection};
pub use entry::{Assembler, Format, LogEntry, ParseError};
pub use follow::{Follower, Item, Position};
pub use ingest::{IngestConfig, IngestError, IngestStats};
pub use prefix::Prefix;

/// The event an entry describes, if any.
pub fn to_event(entry: &LogEntry) -> Result<Option<ActivityEvent>, ParseError> {
    let bad = |kind: &'static str, detail: String| ParseError { line: entry.line, kind, detail };
    let Some(time) = entry.time else {
        return Err(bad("entry without a time", "the log_line_prefix needs %m, %t or %n".into()));
    };
    let message = entry.message.as_str();
    let mut event = if message.starts_with(audit::MARKER) {
        let record = AuditRecord::parse(message).map_err(|e| bad("malformed AUDIT record", e.to_string()))?;
        audit_event(&record, time)
    } else if let Some(rest) = message.strip_prefix("connection received: ") {
        let mut e = ActivityEvent::new(EventClass::Misc, "CONNECTION RECEIVED", time);
        e.command_text = Some(rest.into());
        e
    } else if message.starts_with("connection authorized: ") {
        ActivityEvent::new(EventClass::Connect, "CONNECT", time)
    } else if message.starts_with("disconnection: ") {
        let mut e = ActivityEvent::new(EventClass::Disconnect, "DISCONNECT", time);
        e.exit_code = Some(ExitCode::Clean(0));
        e
    } else if entry.severity == "FATAL"
        && (message.contains("authentication failed for user") || message.starts_with("no pg_hba.conf entry"))
    {
        let mut e = ActivityEvent::new(EventClass::Connect, "CONNECT", time);
        let state = entry
            .sql_state
            .clone()
            .unwrap_or_else(|| if message.starts_with("no pg_hba.conf entry") { "28000" } else { "28P01" }.to_string());
        e.exit_code = Some(ExitCode::SqlState(state.clone()));
        e.sql_state = Some(state);
        e.error_message = Some(message.to_string());
        e
    } else if entry.severity == "ERROR" {
        let mut e = ActivityEvent::new(EventClass::Misc, "ERROR", time);
        e.command_text = entry.statement.as_deref().map(|s| redact(s).into());
        e.sql_state.clone_from(&entry.sql_state);
        e.exit_code = entry.sql_state.clone().map(ExitCode::SqlState);
        e.error_message = Some(message.to_string());
        e
    } else {
        return Ok(None);
    };
    event.end_time = Some(time);
    event.source = Some(EventSource::Pgaudit);
    event.db_user_name = entry.user.as_deref().map(Into::into);
    event.database_name = entry.database.as_deref().map(Into::into);
    event.pid = entry.pid;
    event.session_id = entry.session_id.as_deref().map(Into::into);
    event.remote_host = entry.remote_host.as_deref().map(Into::into);
    event.remote_port = entry.remote_port.as_deref().map(Into::into);
    event.client_application = entry.application.as_deref().map(Into::into);
    if let Some(started) = entry.session_start {
        event.start_time = started.min(time);
    }
    Ok(Some(event))
}

/// pgAudit redacts the password only in the record of the role statement itself; a
/// multi-statement text repeats it in every other record (and PostgreSQL's STATEMENT line
/// has it too). Passwords never reach the journal.
fn redact(text: &str) -> String {
    if text.to_ascii_lowercase().contains("password") {
        pgtrail_event::redact_passwords(text)
    } else {
        text.to_string()
    }
}

fn audit_event(record: &AuditRecord, time: chrono::DateTime<chrono::Utc>) -> ActivityEvent {
    let class = record.class.parse().unwrap_or(EventClass::Misc);
    let mut e = ActivityEvent::new(class, record.command.clone(), time);
    e.statement_id = record.statement_id;
    e.substatement_id = record.substatement_id;
    if let Logged::Value(statement) = &record.statement {
        e.command_text = Some(redact(statement).into());
    }
    if let Logged::Value(parameters) = &record.parameters {
        e.param_list.clone_from(parameters);
    }
    e.row_count = record.rows;
    e.object_type.clone_from(&record.object_type);
    e.object_name.clone_from(&record.object_name);
    if let (Some(kind), Some(name)) = (&record.object_type, &record.object_name) {
        let kind = match kind.as_str() {
            "FUNCTION" => Some(ObjectKind::Function),
            "TABLE" | "VIEW" | "MATERIALIZED VIEW" | "FOREIGN TABLE" | "SEQUENCE" | "INDEX" => {
                Some(ObjectKind::Relation)
            }
            _ => None,
        };
        if let Some(kind) = kind {
            e.objects.push(ObjectRef { kind, name: name.clone() });
        }
    }
    e
}
