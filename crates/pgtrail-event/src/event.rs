//! The ActivityEvent: one connection attempt, statement or disconnect, with the Aurora
//! Database Activity Streams field names (version 1.1) plus pgtrail's extensions.
//!
//! Field names and value formats match what Aurora writes (see
//! shared/testdata/das/*.plaintext.json): camelCase names, times as
//! `YYYY-MM-DD HH:MM:SS.ffffff+00`, `remotePort` as a string, `paramList` an array.
//! Extensions (`endTime`, `sqlState`, `objects`, `queryFingerprint`, `source`) are extra
//! fields that DAS consumers ignore.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// pgAudit's statement classes, plus CONNECT and DISCONNECT for session events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventClass {
    Read,
    Write,
    Function,
    Role,
    Ddl,
    Misc,
    MiscSet,
    Connect,
    Disconnect,
}

impl EventClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "READ",
            Self::Write => "WRITE",
            Self::Function => "FUNCTION",
            Self::Role => "ROLE",
            Self::Ddl => "DDL",
            Self::Misc => "MISC",
            Self::MiscSet => "MISC_SET",
            Self::Connect => "CONNECT",
            Self::Disconnect => "DISCONNECT",
        }
    }
}

impl std::str::FromStr for EventClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_uppercase()))
            .map_err(|_| format!("unknown class {s:?}; expected one of READ, WRITE, FUNCTION, ROLE, DDL, MISC, MISC_SET, CONNECT, DISCONNECT"))
    }
}

/// Where an event was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    Proxy,
    Pgaudit,
}

/// How a session or statement ended: `0` for a clean Terminate, otherwise the SQLSTATE
/// (a string, as Aurora writes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExitCode {
    Clean(u8),
    SqlState(String),
}

/// A relation or function the statement references, schema-qualified where the text is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Relation,
    Function,
}

/// What an event is, as the DAS `type` field says it. Aurora writes `record` and
/// `heartbeat`; pgtrail adds `control` (something about the capture itself) and `loss`
/// (events it had to drop). DAS consumers skip the types they do not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Database activity: a connection, a statement, a disconnection.
    Record,
    /// Written when nothing else was for a while: silence is not loss.
    Heartbeat,
    /// About the capture itself: started, stopped, reloaded, a journal repaired...
    Control,
    /// Stands in for events the recorder had to drop (their count and time span).
    Loss,
}

impl EventKind {
    /// The DAS `type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Record => "record",
            EventKind::Heartbeat => "heartbeat",
            EventKind::Control => "control",
            EventKind::Loss => "loss",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audited action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityEvent {
    /// What the event is: activity (`record`), or one of pgtrail's events about the
    /// stream itself.
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub class: EventClass,
    pub client_application: Option<Arc<str>>,
    pub command: String,
    /// Shared with the classification it came from (one text, many events): not copied
    /// per event.
    pub command_text: Option<Arc<str>>,
    pub database_name: Option<Arc<str>>,
    pub db_protocol: Cow<'static, str>,
    pub db_user_name: Option<Arc<str>>,
    pub error_message: Option<String>,
    pub exit_code: Option<ExitCode>,
    #[serde(with = "das_time")]
    pub log_time: DateTime<Utc>,
    pub net_protocol: Cow<'static, str>,
    pub object_name: Option<String>,
    pub object_type: Option<String>,
    /// Bind parameters: text as text, binary as `\x` hex, NULL as null.
    pub param_list: Vec<Option<String>>,
    pub pid: Option<i32>,
    pub remote_host: Option<Arc<str>>,
    pub remote_port: Option<Arc<str>>,
    pub row_count: Option<u64>,
    pub server_host: Option<Arc<str>>,
    pub server_type: Cow<'static, str>,
    pub server_version: Option<Arc<str>>,
    pub service_name: Cow<'static, str>,
    pub session_id: Option<Arc<str>>,
    #[serde(with = "das_time")]
    pub start_time: DateTime<Utc>,
    pub statement_id: u64,
    pub substatement_id: u64,
    // Extensions.
    #[serde(with = "das_time_opt", default)]
    pub end_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub sql_state: Option<String>,
    #[serde(default)]
    pub objects: Vec<ObjectRef>,
    #[serde(default)]
    pub query_fingerprint: Option<String>,
    /// Who observed the event; absent in records that pgtrail did not write (Aurora's).
    #[serde(default)]
    pub source: Option<EventSource>,
    /// The statement says nothing about the data: session settings, liveness checks,
    /// catalog introspection by client tools. Still recorded; rules skip it by default.
    #[serde(default)]
    pub noise: bool,
    /// Whether the session's role is a superuser, as PostgreSQL reports it (ParameterStatus
    /// is_superuser, also after SET ROLE); null when not known.
    #[serde(default)]
    pub superuser: Option<bool>,
    /// The person behind the session, as the proxy verified them from a token (OIDC or a
    /// pgtrail local token); null for sessions that logged in with a database password.
    #[serde(default)]
    pub identity: Option<Arc<Identity>>,
    /// `denied` when pgtrail refused the statement or login by policy before PostgreSQL
    /// saw it; null otherwise.
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// The policy rule that denied it (with `verdict = denied`).
    #[serde(default)]
    pub denied_by: Option<String>,
    /// On a pgAudit record of a statement the proxy recorded too: the `statementId` of the
    /// proxy's event in the same session, which this record confirms. Such a record is
    /// kept (the journal is complete) but is not a second statement: rules skip it, and
    /// `tail` shows it only when asked. Null on every other event.
    #[serde(default)]
    pub confirms: Option<u64>,
    /// `unknown` when the proxy could not learn how the statement ended: it was sent to
    /// PostgreSQL, and the connection to PostgreSQL ended before the answer came. Null when
    /// the event's own fields (exitCode, sqlState, rowCount) say how it ended.
    #[serde(default)]
    pub outcome: Option<String>,
    /// sqlcommenter tags from the statement's comments (`/*route='...',traceparent='...'*/`):
    /// the application request behind it, for rules and searches. Empty when there are none.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// The statement has a WHERE clause (a top-level UPDATE, DELETE or SELECT). Written
    /// only when true; absent means false. The same name in deny rules and alert rules.
    #[serde(default, skip_serializing_if = "is_false")]
    pub has_where: bool,
    /// COPY ... TO/FROM PROGRAM: runs a shell command on the database server.
    #[serde(default, skip_serializing_if = "is_false")]
    pub copy_program: bool,
    /// CREATE/ALTER ROLE or USER with a PASSWORD.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sets_password: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// A person verified from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The token's `iss`: the identity provider (or `pgtrail-local`).
    pub issuer: String,
    /// The token's `sub`: the person's stable id at that issuer.
    pub subject: String,
    pub name: Option<String>,
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The token's `jti`, when it has one.
    pub token_id: Option<String>,
    /// How the token was checked: `oidc` or `local-token`.
    pub auth_method: String,
}

/// What policy decided about a statement or login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Denied,
}

impl ActivityEvent {
    /// An event with the constant fields filled and everything else empty.
    pub fn new(class: EventClass, command: impl Into<String>, start_time: DateTime<Utc>) -> Self {
        Self {
            kind: EventKind::Record,
            class,
            client_application: None,
            command: command.into(),
            command_text: None,
            database_name: None,
            db_protocol: Cow::Borrowed("Postgres 3.0"),
            db_user_name: None,
            error_message: None,
            exit_code: None,
            log_time: start_time,
            net_protocol: Cow::Borrowed("TCP"),
            object_name: None,
            object_type: None,
            param_list: Vec::new(),
            pid: None,
            remote_host: None,
            remote_port: None,
            row_count: None,
            server_host: None,
            server_type: Cow::Borrowed("PostgreSQL"),
            server_version: None,
            service_name: Cow::Borrowed("pgtrail"),
            session_id: None,
            start_time,
            statement_id: 0,
            substatement_id: 1,
            end_time: None,
            sql_state: None,
            objects: Vec::new(),
            query_fingerprint: None,
            source: Some(EventSource::Proxy),
            noise: false,
            superuser: None,
            identity: None,
            verdict: None,
            denied_by: None,
            confirms: None,
            outcome: None,
            tags: std::collections::BTreeMap::new(),
            has_where: false,
            copy_program: false,
            sets_password: false,
        }
    }
}

/// PostgreSQL's `%c` session id: hex seconds of the session start, a dot, hex pid.
pub fn session_id(start: DateTime<Utc>, pid: i32) -> String {
    format!("{:x}.{:x}", start.timestamp(), pid)
}

const DAS_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f+00";

/// Formats a time the way DAS does: `2019-10-30 00:39:49.940668+00`. Hand-written
/// because it runs for every timestamp of every event (chrono's formatter is much slower).
pub fn format_das_time(t: &DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return t.format(DAS_TIME_FORMAT).to_string();
    }
    let mut out = [0u8; 29];
    let mut put = |at: usize, value: u32, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year.unsigned_abs(), 4);
    put(5, t.month(), 2);
    put(8, t.day(), 2);
    put(11, t.hour(), 2);
    put(14, t.minute(), 2);
    // A leap second shows as 60, as chrono's formatter does.
    let nanos = t.nanosecond();
    put(17, t.second() + nanos / 1_000_000_000, 2);
    put(20, (nanos % 1_000_000_000) / 1000, 6);
    for (at, sep) in
        [(4, b'-'), (7, b'-'), (10, b' '), (13, b':'), (16, b':'), (19, b'.'), (26, b'+'), (27, b'0'), (28, b'0')]
    {
        out[at] = sep;
    }
    String::from_utf8(out.to_vec()).expect("ASCII digits and separators")
}

/// Parses a DAS time string.
pub fn parse_das_time(s: &str) -> Option<DateTime<Utc>> {
    parse_das_time_fast(s).or_else(|| NaiveDateTime::parse_from_str(s, DAS_TIME_FORMAT).ok().map(|t| t.and_utc()))
}

/// The exact form `format_das_time` writes (every event's times, read back by every
/// consumer), without chrono's format-string interpreter; `None` sends anything else
/// (and a leap second) to chrono.
fn parse_das_time_fast(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() != 29 || &b[26..] != b"+00" {
        return None;
    }
    for (at, sep) in [(4, b'-'), (7, b'-'), (10, b' '), (13, b':'), (16, b':'), (19, b'.')] {
        if b[at] != sep {
            return None;
        }
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |n, &c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    };
    let second = number(17..19)?;
    if second >= 60 {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)?;
    let time = chrono::NaiveTime::from_hms_micro_opt(number(11..13)?, number(14..16)?, second, number(20..26)?)?;
    Some(NaiveDateTime::new(date, time).and_utc())
}

mod das_time {
    use super::*;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_das_time(t))
    }

    /// Parses the string where it lies (no copy: this runs for every time of every event).
    pub(super) struct TimeVisitor;

    impl serde::de::Visitor<'_> for TimeVisitor {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a DAS time (2019-10-30 00:39:49.940668+00)")
        }

        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            parse_das_time(s).ok_or_else(|| E::custom(format!("bad DAS time {s:?}")))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        d.deserialize_str(TimeVisitor)
    }
}

mod das_time_opt {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format_das_time(t)),
            None => s.serialize_none(),
        }
    }

    struct OptionVisitor;

    impl<'de> serde::de::Visitor<'de> for OptionVisitor {
        type Value = Option<DateTime<Utc>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a DAS time or null")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(super::das_time::TimeVisitor).map(Some)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        d.deserialize_option(OptionVisitor)
    }
}

/// The DAS inner record: a batch of events from one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityRecord {
    #[serde(rename = "type")]
    pub kind: String,
    pub cluster_id: String,
    pub instance_id: String,
    pub database_activity_event_list: Vec<ActivityEvent>,
}

impl ActivityRecord {
    pub fn new(cluster_id: impl Into<String>, instance_id: impl Into<String>, events: Vec<ActivityEvent>) -> Self {
        Self {
            kind: "DatabaseActivityMonitoringRecord".into(),
            cluster_id: cluster_id.into(),
            instance_id: instance_id.into(),
            database_activity_event_list: events,
        }
    }
}

/// Serializes a DAS inner record from borrowed events (the recorder's hot path: no copy).
pub fn activity_record_json(cluster_id: &str, instance_id: &str, events: &[ActivityEvent]) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Borrowed<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        cluster_id: &'a str,
        instance_id: &'a str,
        database_activity_event_list: &'a [ActivityEvent],
    }
    let record = Borrowed {
        kind: "DatabaseActivityMonitoringRecord",
        cluster_id,
        instance_id,
        database_activity_event_list: events,
    };
    serde_json::to_vec(&record).expect("events always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_and_owned_records_serialize_alike() {
        let events = vec![ActivityEvent::new(EventClass::Read, "SELECT", Utc::now())];
        let owned = serde_json::to_vec(&ActivityRecord::new("c", "i", events.clone())).unwrap();
        assert_eq!(activity_record_json("c", "i", &events), owned);
    }

    #[test]
    fn reads_aurora_events() {
        // The det_* plaintexts are Aurora-shaped records made outside pgtrail.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/das/det_0178_mixed3.plaintext.json");
        let text = std::fs::read_to_string(path).expect("the repository's testdata/das");
        let record: ActivityRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(record.database_activity_event_list.len(), 3);
        let select = &record.database_activity_event_list[1];
        assert_eq!(select.class, EventClass::Read);
        assert_eq!(select.param_list, vec![Some("42".to_string())]);
        assert_eq!(select.remote_port.as_deref(), Some("49804"));
        let failed = &record.database_activity_event_list[2];
        assert_eq!(failed.exit_code, Some(ExitCode::SqlState("42601".into())));
        // And writes them back with the same field names and time format.
        let again = serde_json::to_value(select).unwrap();
        let original: serde_json::Value =
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["databaseActivityEventList"][1].clone();
        for (key, value) in original.as_object().unwrap() {
            assert_eq!(&again[key], value, "field {key}");
        }
    }

    #[test]
    fn das_time_format_matches_chrono() {
        for micros in [0i64, 1, 999_999, 1_572_395_989_940_668, 253_402_300_799_999_999, 1_700_000_000_000_001] {
            let t = DateTime::from_timestamp_micros(micros).unwrap();
            assert_eq!(format_das_time(&t), t.format(DAS_TIME_FORMAT).to_string(), "{micros}");
            assert_eq!(parse_das_time(&format_das_time(&t)), Some(t));
        }
    }

    /// The hand-written parser agrees with chrono's on every string: the times it writes,
    /// and each of those with any one byte changed (a leap second, a bad date, a letter...).
    #[test]
    fn das_time_parse_fast_path_agrees_with_chrono() {
        let chrono_parse = |s: &str| NaiveDateTime::parse_from_str(s, DAS_TIME_FORMAT).ok().map(|t| t.and_utc());
        let mut checked = 0;
        for micros in [0i64, 1_572_395_989_940_668, 951_782_400_000_000, 253_402_300_799_999_999] {
            let good = format_das_time(&DateTime::from_timestamp_micros(micros).unwrap());
            for at in 0..good.len() {
                for replacement in [b'0', b'2', b'3', b'6', b'9', b'x', b' ', b'-', b':', b'.', b'+'] {
                    let mut bytes = good.clone().into_bytes();
                    bytes[at] = replacement;
                    let text = String::from_utf8(bytes).unwrap();
                    assert_eq!(parse_das_time(&text), chrono_parse(&text), "{text:?}");
                    checked += 1;
                }
            }
            assert_eq!(parse_das_time(&good[..28]), chrono_parse(&good[..28]));
        }
        assert!(checked > 1000);
        // An optional time: null reads as none, a time as itself.
        let t = parse_das_time("2026-12-01 10:00:01.250000+00").unwrap();
        let mut json = serde_json::to_value(ActivityEvent::new(EventClass::Misc, "X", t)).unwrap();
        json["endTime"] = serde_json::Value::Null;
        assert_eq!(serde_json::from_value::<ActivityEvent>(json.clone()).unwrap().end_time, None);
        json["endTime"] = "2026-12-01 10:00:01.250000+00".into();
        assert_eq!(serde_json::from_value::<ActivityEvent>(json).unwrap().end_time, Some(t));
    }

    #[test]
    fn session_id_is_postgres_percent_c() {
        let start = DateTime::from_timestamp(0x5ce5_f7f0, 0).unwrap();
        assert_eq!(session_id(start, 0x474b), "5ce5f7f0.474b");
    }
}
