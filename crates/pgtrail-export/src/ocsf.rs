//! OCSF 1.8.0 (Open Cybersecurity Schema Framework), one JSON object per event:
//!
//! - connections: Authentication (class 3002), `Logon` (1) for CONNECT and `Logoff` (2) for
//!   DISCONNECT, `status_id` 1 (success) or 2 (failure: a refused or failed login);
//! - statements: Datastore Activity (6005), `activity_id` from the command: Read (1) for
//!   SELECT, Update (2) for UPDATE, MERGE and ALTER, Write (5) for INSERT and COPY, Create
//!   (6) for CREATE, Delete (7) for DELETE, TRUNCATE and DROP, Query (4) for the rest;
//!   a denied or failed statement has `status_id` 2;
//! - the stream's own events (control, heartbeat, loss): Event Log Activity (1008), Start
//!   (6) or Stop (7) for the capture starting and stopping, Other (99) for the rest; a loss
//!   record has `status_id` 2 and severity High.
//!
//! Both identities are kept: `user` / `actor.user` is the person from the identity provider
//! (`uid` the subject, `name`, `email_addr`, `groups`), or the database role when there is
//! no identity; the database role is always `user.account.name` (`type` "PostgreSQL role").
//! Also: `src_endpoint` (the client), `dst_endpoint` (the server), `database` (relational),
//! `table` (the first object), `query_info` (`query_string` the SQL text, `uid` the
//! fingerprint or session:statement, `name` the command), `actor.session.uid`,
//! `actor.app_name`, and in `unmapped` what OCSF has no place for (SQLSTATE, verdict, row
//! count, every object). `metadata.uid` is the journal position (instance:record:index).

use pgtrail_event::{ActivityEvent, EventClass, EventKind, ExitCode, Verdict};
use serde_json::{Map, Value, json};

use crate::Position;

/// The OCSF schema version the events follow.
pub const VERSION: &str = "1.8.0";

/// The OCSF object of `event`.
pub fn event(event: &ActivityEvent, at: Position<'_>) -> Value {
    let failed = event.sql_state.is_some()
        || event.error_message.is_some()
        || matches!(event.exit_code, Some(ExitCode::SqlState(_)));
    let denied = event.verdict == Some(Verdict::Denied);
    let mut out = Map::new();
    let (category, category_name, class, class_name, activity, activity_name) = match (event.kind, event.class) {
        (EventKind::Record, EventClass::Connect) => {
            (3, "Identity & Access Management", 3002, "Authentication", 1, "Logon")
        }
        (EventKind::Record, EventClass::Disconnect) => {
            (3, "Identity & Access Management", 3002, "Authentication", 2, "Logoff")
        }
        (EventKind::Record, _) => {
            let (id, name) = datastore_activity(&event.command);
            (6, "Application Activity", 6005, "Datastore Activity", id, name)
        }
        (_, _) => {
            let (id, name) = match event.command.as_str() {
                "CAPTURE STARTED" => (6, "Start"),
                "CAPTURE STOPPED" => (7, "Stop"),
                _ => (99, "Other"),
            };
            (1, "System Activity", 1008, "Event Log Activity", id, name)
        }
    };
    let severity = match event.kind {
        EventKind::Loss => (4, "High"),
        _ if denied => (3, "Medium"),
        _ if failed => (2, "Low"),
        _ => (1, "Informational"),
    };
    let status = if event.kind == EventKind::Loss || failed || denied { (2, "Failure") } else { (1, "Success") };
    out.insert("category_uid".into(), json!(category));
    out.insert("category_name".into(), json!(category_name));
    out.insert("class_uid".into(), json!(class));
    out.insert("class_name".into(), json!(class_name));
    out.insert("activity_id".into(), json!(activity));
    out.insert("activity_name".into(), json!(activity_name));
    out.insert("type_uid".into(), json!(class * 100 + activity));
    out.insert("type_name".into(), json!(format!("{class_name}: {activity_name}")));
    out.insert("severity_id".into(), json!(severity.0));
    out.insert("severity".into(), json!(severity.1));
    out.insert("status_id".into(), json!(status.0));
    out.insert("status".into(), json!(status.1));
    out.insert("time".into(), json!(event.log_time.timestamp_millis()));
    out.insert("start_time".into(), json!(event.start_time.timestamp_millis()));
    if let Some(end) = event.end_time {
        out.insert("end_time".into(), json!(end.timestamp_millis()));
    }
    out.insert(
        "metadata".into(),
        json!({
            "version": VERSION,
            "uid": format!("{}:{}:{}", at.instance, at.record_seq, at.event_index),
            "product": {"name": "pgtrail", "vendor_name": "pgtrail", "version": env!("CARGO_PKG_VERSION")},
            "log_name": at.instance,
        }),
    );
    let detail = if denied {
        Some(format!(
            "denied by pgtrail policy{}",
            event.denied_by.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
        ))
    } else {
        event.error_message.clone()
    };
    if let Some(detail) = &detail {
        out.insert("status_detail".into(), json!(detail));
    }
    if let Some(code) = &event.sql_state {
        out.insert("status_code".into(), json!(code));
    }
    if class == 1008 {
        // The log is the instance's journal.
        out.insert("log_name".into(), json!(at.instance));
        out.insert("log_provider".into(), json!("pgtrail"));
        let text = event.command_text.as_deref().map(str::to_owned).or(detail);
        out.insert("message".into(), json!(text.unwrap_or_else(|| event.command.clone())));
        if let Some(count) = event.row_count.filter(|_| event.kind == EventKind::Loss) {
            out.insert("count".into(), json!(count));
        }
        return Value::Object(out);
    }

    let user = user(event);
    let mut actor = Map::new();
    actor.insert("user".into(), user.clone());
    if let Some(session) = event.session_id.as_deref() {
        actor.insert("session".into(), json!({"uid": session}));
    }
    if let Some(app) = event.client_application.as_deref().filter(|a| !a.is_empty()) {
        actor.insert("app_name".into(), json!(app));
    }
    out.insert("actor".into(), Value::Object(actor));
    out.insert("src_endpoint".into(), endpoint(event.remote_host.as_deref(), event.remote_port.as_deref()));
    if let Some(server) = event.server_host.as_deref() {
        out.insert("dst_endpoint".into(), json!({"hostname": server, "svc_name": "postgresql"}));
    }
    let mut unmapped = Map::new();
    if let Some(code) = &event.sql_state {
        unmapped.insert("sql_state".into(), json!(code));
    }
    if denied {
        unmapped.insert("verdict".into(), json!("denied"));
    }
    if let Some(rows) = event.row_count {
        unmapped.insert("row_count".into(), json!(rows));
    }
    if !event.objects.is_empty() {
        unmapped.insert("objects".into(), json!(event.objects.iter().map(|o| o.name.as_str()).collect::<Vec<_>>()));
    }
    if class == 3002 {
        out.insert("user".into(), user);
        out.insert("is_remote".into(), json!(event.remote_host.is_some()));
        // OCSF wants the service logged on to (or the server): the database, else PostgreSQL.
        out.insert("service".into(), json!({"name": event.database_name.as_deref().unwrap_or("postgresql")}));
    } else {
        // OCSF wants a database (or table): "unknown" when the event does not name it.
        let db = event.database_name.as_deref().unwrap_or("unknown");
        out.insert("database".into(), json!({"name": db, "type_id": 1, "type": "Relational"}));
        if let Some(table) = event.objects.first() {
            out.insert("table".into(), json!({"name": table.name}));
        }
        out.insert("type_id".into(), json!(1));
        out.insert("type".into(), json!("Database"));
        if let Some(text) = event.command_text.as_deref() {
            let uid = event.query_fingerprint.clone().unwrap_or_else(|| {
                format!("{}:{}", event.session_id.as_deref().unwrap_or_default(), event.statement_id)
            });
            out.insert("query_info".into(), json!({"query_string": text, "uid": uid, "name": event.command}));
        }
    }
    if !unmapped.is_empty() {
        out.insert("unmapped".into(), Value::Object(unmapped));
    }
    Value::Object(out)
}

/// The OCSF activity of a statement, from its command tag.
fn datastore_activity(command: &str) -> (u32, &'static str) {
    let first = command.split_whitespace().next().unwrap_or_default();
    match first {
        "SELECT" => (1, "Read"),
        "UPDATE" | "MERGE" | "ALTER" => (2, "Update"),
        "INSERT" | "COPY" => (5, "Write"),
        "CREATE" => (6, "Create"),
        "DELETE" | "TRUNCATE" | "DROP" => (7, "Delete"),
        _ => (4, "Query"),
    }
}

/// The person (or, without an identity, the database role), with the role as the account.
fn user(event: &ActivityEvent) -> Value {
    let role = event.db_user_name.as_deref();
    let mut user = Map::new();
    match event.identity.as_deref() {
        Some(identity) => {
            user.insert("uid".into(), json!(identity.subject));
            let name = identity.name.as_deref().or(identity.email.as_deref()).unwrap_or(&identity.subject);
            user.insert("name".into(), json!(name));
            if let Some(email) = &identity.email {
                user.insert("email_addr".into(), json!(email));
            }
            if !identity.groups.is_empty() {
                let groups: Vec<Value> = identity.groups.iter().map(|g| json!({"name": g})).collect();
                user.insert("groups".into(), Value::Array(groups));
            }
        }
        None => {
            user.insert("name".into(), json!(role.unwrap_or("unknown")));
        }
    }
    if let Some(role) = role {
        user.insert("account".into(), json!({"name": role, "type": "PostgreSQL role", "type_id": 99}));
    }
    Value::Object(user)
}

/// The client: an IP address (with the port) or a host name; `unknown` when not known (a
/// pgAudit event of a local connection, say).
fn endpoint(host: Option<&str>, port: Option<&str>) -> Value {
    let mut out = Map::new();
    match host {
        Some(host) if host.parse::<std::net::IpAddr>().is_ok() => {
            out.insert("ip".into(), json!(host));
        }
        Some(host) => {
            out.insert("hostname".into(), json!(host));
        }
        None => {
            out.insert("name".into(), json!("unknown"));
        }
    }
    if let Some(port) = port.and_then(|p| p.parse::<u16>().ok()) {
        out.insert("port".into(), json!(port));
    }
    Value::Object(out)
}
