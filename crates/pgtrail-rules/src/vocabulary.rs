//! The one rule vocabulary: what a condition sees of an event, in deny rules (the proxy's
//! policy, before a statement runs) and in alert rules (over the journal) alike.
//!
//! Every field of the event under its DAS name (`class`, `command`, `commandText`,
//! `dbUserName`, `databaseName`, `clientApplication`, `objects`, `objectName`, `identity`,
//! `type`...), the statement's traits (`hasWhere`, `copyProgram`, `setsPassword`, false when
//! absent), and two derived values: `logHourUtc` (0-23) and `logWeekdayUtc` (0 Monday .. 6
//! Sunday). Times are strings in DAS format.

use cel::Context;
use cel::objects::Value;
use pgtrail_event::{ActivityEvent, EventClass, ExitCode, ObjectKind, ObjectRef};

/// The event's fields as CEL variables.
pub fn event_fields(event: &ActivityEvent) -> serde_json::Map<String, serde_json::Value> {
    use chrono::{Datelike, Timelike};
    match serde_json::to_value(event) {
        Ok(serde_json::Value::Object(mut map)) => {
            // Written only when true: a condition sees false, not a missing name.
            for name in ["hasWhere", "copyProgram", "setsPassword"] {
                map.entry(name).or_insert(serde_json::Value::Bool(false));
            }
            map.insert("logHourUtc".into(), event.log_time.hour().into());
            map.insert("logWeekdayUtc".into(), event.log_time.weekday().num_days_from_monday().into());
            map
        }
        _ => serde_json::Map::new(),
    }
}

/// A CEL context with `fields` as its variables.
pub fn context_for(fields: &serde_json::Map<String, serde_json::Value>) -> Context<'static> {
    let mut context = Context::default();
    for (name, value) in fields {
        context.add_variable_from_value(name.as_str(), cel_value(value));
    }
    context
}

/// JSON to CEL, with whole numbers as signed integers, so that `rowCount + 1` and
/// `rowCount > 100` work as a rule writer expects.
pub fn cel_value(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::from(s.clone()),
        serde_json::Value::Array(items) => Value::from(items.iter().map(cel_value).collect::<Vec<Value>>()),
        serde_json::Value::Object(map) => Value::from(
            map.iter().map(|(k, v)| (k.clone(), cel_value(v))).collect::<std::collections::HashMap<String, Value>>(),
        ),
    }
}

/// An event with every field filled: what a condition must be a boolean for.
pub fn complete_event() -> ActivityEvent {
    let now = chrono::Utc::now();
    let mut e = ActivityEvent::new(EventClass::Write, "UPDATE", now);
    e.client_application = Some("psql".into());
    e.superuser = Some(false);
    e.command_text = Some("UPDATE t SET a = 1 WHERE id = 2".into());
    e.database_name = Some("app".into());
    e.db_user_name = Some("alice".into());
    e.error_message = Some("message".into());
    e.exit_code = Some(ExitCode::SqlState("00000".into()));
    e.object_name = Some("t".into());
    e.object_type = Some("TABLE".into());
    e.param_list = vec![Some("1".into())];
    e.pid = Some(1);
    e.remote_host = Some("10.0.0.1".into());
    e.remote_port = Some("5432".into());
    e.row_count = Some(1);
    e.server_host = Some("db".into());
    e.server_version = Some("15".into());
    e.session_id = Some("1.1".into());
    e.end_time = Some(now);
    e.sql_state = Some("00000".into());
    e.objects = vec![ObjectRef { kind: ObjectKind::Relation, name: "t".into() }];
    e.query_fingerprint = Some("f".into());
    e
}
