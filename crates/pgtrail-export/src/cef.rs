//! ArcSight Common Event Format (CEF) version 0, one line per event:
//!
//! `CEF:0|pgtrail|pgtrail|VERSION|CLASS ID|NAME|SEVERITY|EXTENSIONS`
//!
//! - Class ID: the event's class for database activity (`READ`, `WRITE`, `DDL`, `CONNECT`,
//!   `DISCONNECT`, ...), `DENIED` for a statement the policy refused, or the kind for the
//!   stream's own events (`CONTROL`, `LOSS`, `HEARTBEAT`). Name: the command (`UPDATE`,
//!   `CONNECT`, `EVENTS LOST`...).
//! - Severity: 9 lost events, 7 a denied statement, 5 a failure (an error or a refused
//!   login), 3 the capture's own control events and privileged activity, 1 the rest.
//! - Extensions (CEF's names where it has one): `rt` (log time, ms since the epoch), `end`,
//!   `suser` (the person from the identity provider: email, else subject), `duser` (the
//!   database role), `src` or `shost` and `spt` (the client), `dhost` (the server), `app`,
//!   `act` (the command), `outcome` (`success` | `failure`), `cat` (the class), `msg` (the
//!   SQL text), `externalId` (instance:record:index, the journal position),
//!   `deviceExternalId` (the instance), and labelled custom strings: `cs1` database, `cs2`
//!   session id, `cs3` SQLSTATE, `cs4` verdict, `cs5` objects (comma separated), `cs6` identity
//!   issuer, `cn1` row count.
//!
//! Escaping, as the CEF specification says: in the header `\` and `|` are escaped with a
//! backslash; in extension values `\` and `=` are, and line breaks become `\n` and `\r`, so
//! one event is always one line. Header fields carry no line breaks (replaced by spaces).

use std::fmt::Write as _;

use pgtrail_event::{ActivityEvent, EventClass, EventKind, ExitCode, Verdict};

use crate::Position;

fn failed(event: &ActivityEvent) -> bool {
    event.sql_state.is_some() || event.error_message.is_some() || matches!(event.exit_code, Some(ExitCode::SqlState(_)))
}

/// The CEF class id and severity (0 to 10) of `event`.
pub fn class_and_severity(event: &ActivityEvent) -> (&str, u8) {
    let denied = event.verdict == Some(Verdict::Denied);
    match event.kind {
        EventKind::Loss => ("LOSS", 9),
        EventKind::Control => ("CONTROL", 3),
        EventKind::Heartbeat => ("HEARTBEAT", 1),
        EventKind::Record if denied => ("DENIED", 7),
        EventKind::Record if failed(event) => (event.class.as_str(), 5),
        EventKind::Record if matches!(event.class, EventClass::Role | EventClass::Ddl) => (event.class.as_str(), 3),
        EventKind::Record => (event.class.as_str(), 1),
    }
}

/// The CEF line of `event` (without the line break).
pub fn line(event: &ActivityEvent, at: Position<'_>) -> String {
    let failed = failed(event);
    let denied = event.verdict == Some(Verdict::Denied);
    let (class_id, severity) = class_and_severity(event);
    let mut out = String::with_capacity(256 + event.command_text.as_deref().map_or(0, str::len));
    out.push_str("CEF:0|pgtrail|pgtrail|");
    header(&mut out, env!("CARGO_PKG_VERSION"));
    out.push('|');
    header(&mut out, class_id);
    out.push('|');
    header(&mut out, &event.command);
    let _ = write!(out, "|{severity}|");

    let mut ext = Extensions { out: &mut out, first: true };
    ext.put("rt", &event.log_time.timestamp_millis().to_string());
    if let Some(end) = event.end_time {
        ext.put("end", &end.timestamp_millis().to_string());
    }
    if let Some(identity) = event.identity.as_deref() {
        ext.put("suser", identity.email.as_deref().unwrap_or(&identity.subject));
        ext.labelled("cs6", "identityIssuer", &identity.issuer);
    }
    ext.opt("duser", event.db_user_name.as_deref());
    if let Some(host) = event.remote_host.as_deref() {
        let key = if host.parse::<std::net::IpAddr>().is_ok() { "src" } else { "shost" };
        ext.put(key, host);
    }
    ext.opt("spt", event.remote_port.as_deref().filter(|p| p.parse::<u16>().is_ok()));
    ext.opt("dhost", event.server_host.as_deref());
    ext.opt("app", event.client_application.as_deref());
    ext.put("act", &event.command);
    if event.kind == EventKind::Record {
        ext.put("outcome", if failed || denied { "failure" } else { "success" });
    }
    ext.put("cat", event.class.as_str());
    ext.opt("msg", event.command_text.as_deref().or(event.error_message.as_deref()));
    ext.put("externalId", &format!("{}:{}:{}", at.instance, at.record_seq, at.event_index));
    ext.put("deviceExternalId", at.instance);
    if let Some(db) = event.database_name.as_deref() {
        ext.labelled("cs1", "database", db);
    }
    if let Some(session) = event.session_id.as_deref() {
        ext.labelled("cs2", "sessionId", session);
    }
    if let Some(state) = event.sql_state.as_deref() {
        ext.labelled("cs3", "sqlState", state);
    }
    if denied {
        ext.labelled("cs4", "verdict", "denied");
    }
    if !event.objects.is_empty() {
        let names: Vec<&str> = event.objects.iter().map(|o| o.name.as_str()).collect();
        ext.labelled("cs5", "objects", &names.join(","));
    }
    if let Some(rows) = event.row_count {
        ext.labelled("cn1", "rowCount", &rows.to_string());
    }
    out
}

/// A header field: `\` and `|` escaped, line breaks as spaces.
fn header(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
}

struct Extensions<'a> {
    out: &'a mut String,
    first: bool,
}

impl Extensions<'_> {
    /// `key=value` with the value escaped: `\`, `=`, and line breaks as `\n`, `\r`.
    fn put(&mut self, key: &str, value: &str) {
        if !self.first {
            self.out.push(' ');
        }
        self.first = false;
        self.out.push_str(key);
        self.out.push('=');
        for c in value.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '=' => self.out.push_str("\\="),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                c => self.out.push(c),
            }
        }
    }

    fn opt(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.put(key, value);
        }
    }

    /// A custom field and its label (`cs1Label=database cs1=bank`).
    fn labelled(&mut self, key: &str, label: &str, value: &str) {
        self.put(&format!("{key}Label"), label);
        self.put(key, value);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;

    /// A CEF reader written from the specification, not from the writer above: splits the
    /// seven unescaped `|` of the header, then the extension at each ` key=` whose `=` is
    /// not escaped, and unescapes.
    fn parse(line: &str) -> (Vec<String>, BTreeMap<String, String>) {
        assert!(!line.contains('\n') && !line.contains('\r'), "one event, one line: {line:?}");
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut chars = line.chars();
        while fields.len() < 7 {
            match chars.next().expect("seven header fields") {
                '\\' => field.push(chars.next().expect("an escaped character")),
                '|' => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        let rest: Vec<char> = chars.collect();
        // Positions of unescaped '=' in the extension.
        let mut equals = Vec::new();
        let mut i = 0;
        while i < rest.len() {
            match rest[i] {
                '\\' => i += 2,
                '=' => {
                    equals.push(i);
                    i += 1;
                }
                _ => i += 1,
            }
        }
        let mut map = BTreeMap::new();
        let key_start = |eq: usize| rest[..eq].iter().rposition(|c| *c == ' ').map_or(0, |p| p + 1);
        for (n, &eq) in equals.iter().enumerate() {
            let key: String = rest[key_start(eq)..eq].iter().collect();
            let end = equals.get(n + 1).map_or(rest.len(), |&next| key_start(next) - 1);
            let raw: String = rest[eq + 1..end].iter().collect();
            let mut value = String::new();
            let mut it = raw.chars();
            while let Some(c) = it.next() {
                if c == '\\' {
                    match it.next().expect("escaped") {
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        other => value.push(other),
                    }
                } else {
                    value.push(c);
                }
            }
            map.insert(key, value);
        }
        (fields, map)
    }

    fn at() -> Position<'static> {
        Position { instance: "db-1", record_seq: 42, event_index: 3 }
    }

    #[test]
    fn hostile_sql_text_survives_escaping_and_stays_on_one_line() {
        let hostile = "SELECT 'a|b', 'c=d', 'e\\f' -- x=1 |\nFROM t WHERE y = '\\n'\r\n|CEF:0|fake|";
        let mut e = ActivityEvent::new(EventClass::Read, "SELECT|\nDROP", chrono::Utc::now());
        e.command_text = Some(hostile.into());
        e.db_user_name = Some(Arc::from("app=user\\x"));
        e.remote_host = Some(Arc::from("10.0.0.7"));
        e.database_name = Some(Arc::from("bank"));
        let line = line(&e, at());
        let (header, ext) = parse(&line);
        assert_eq!(&header[..3], ["CEF:0", "pgtrail", "pgtrail"]);
        assert_eq!((header[4].as_str(), header[5].as_str(), header[6].as_str()), ("READ", "SELECT| DROP", "1"));
        assert_eq!(ext["msg"], hostile);
        assert_eq!(ext["duser"], "app=user\\x");
        assert_eq!(ext["src"], "10.0.0.7");
        assert_eq!((ext["cs1Label"].as_str(), ext["cs1"].as_str()), ("database", "bank"));
        assert_eq!(ext["externalId"], "db-1:42:3");
        assert_eq!(ext["outcome"], "success");
    }

    #[test]
    fn severity_and_class_follow_what_happened() {
        let now = chrono::Utc::now();
        let mut denied = ActivityEvent::new(EventClass::Write, "DELETE", now);
        denied.verdict = Some(Verdict::Denied);
        let mut failed = ActivityEvent::new(EventClass::Connect, "CONNECT", now);
        failed.sql_state = Some("28P01".into());
        let loss = pgtrail_event::loss_event(5, 0, 1_000_000, &"queue full");
        let ddl = ActivityEvent::new(EventClass::Ddl, "CREATE TABLE", now);
        for (event, class, severity, outcome) in [
            (denied, "DENIED", "7", Some("failure")),
            (failed, "CONNECT", "5", Some("failure")),
            (loss, "LOSS", "9", None),
            (ddl, "DDL", "3", Some("success")),
        ] {
            let (header, ext) = parse(&line(&event, at()));
            assert_eq!((header[4].as_str(), header[6].as_str()), (class, severity), "{header:?}");
            assert_eq!(ext.get("outcome").map(String::as_str), outcome);
        }
    }
}
