//! What each destination receives: pure functions from an alert to a payload, so that every
//! field can be checked against the destination's public specification without a network.
//!
//! - Webhook: Standard Webhooks 1.0 (`{type, timestamp, data}`, headers `webhook-id`,
//!   `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256(id.timestamp.body)>`).
//! - Slack: incoming-webhook message with a plain `text` fallback and Block Kit blocks.
//! - PagerDuty: Events API v2 `trigger` / `resolve` with a dedup_key (at most 255 characters).
//! - Opsgenie: Alert API create (message at most 130 characters, alias at most 512) and close
//!   by alias.
//! - Email: a subject line and a plain-text body.
//! - Syslog: RFC 5424 with structured data, octet-counted for TCP/TLS (RFC 5425 / 6587).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use pgtrail_rules::{Alert, AlertStatus, Severity};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The rule name of the notification `pgtrail alerts test` sends.
pub const TEST_RULE: &str = "pgtrail test notification";

/// The alert `pgtrail alerts test` sends (and resolves, where a destination keeps incidents).
pub fn test_alert(status: AlertStatus) -> Alert {
    Alert {
        rule: TEST_RULE.into(),
        severity: Severity::Info,
        status,
        dedup_key: format!("{TEST_RULE}|{}", std::process::id()),
        count: 0,
        at: chrono::Utc::now(),
        reason: "a test from `pgtrail alerts test`: this destination is configured correctly".into(),
        event: None,
    }
}

/// RFC 3339 time, as the webhook and PagerDuty specifications ask.
fn rfc3339(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn is_test(alert: &Alert) -> bool {
    alert.rule == TEST_RULE
}

fn status_word(alert: &Alert) -> &'static str {
    match alert.status {
        AlertStatus::Firing => "ALERT",
        AlertStatus::Resolved => "RESOLVED",
    }
}

/// One line: `ALERT [high] DDL: a schema change`.
pub fn headline(alert: &Alert) -> String {
    let word = if is_test(alert) { "TEST" } else { status_word(alert) };
    format!("{word} [{}] {}: {}", alert.severity.as_str(), alert.rule, alert.reason)
}

/// The facts about an alert, in reading order, as (label, value).
pub fn facts(alert: &Alert, include_statement: bool) -> Vec<(&'static str, String)> {
    let mut facts = vec![
        ("rule", alert.rule.clone()),
        ("severity", alert.severity.as_str().to_string()),
        ("status", status_text(alert).to_string()),
        ("at", pgtrail_event::format_das_time(&alert.at)),
        ("dedup key", alert.dedup_key.clone()),
    ];
    if alert.count > 0 {
        facts.push(("matching events", alert.count.to_string()));
    }
    if let Some(event) = &alert.event {
        let mut put = |label, value: Option<&str>| {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                facts.push((label, value.to_string()));
            }
        };
        put("database user", event.db_user_name.as_deref());
        put("database", event.database_name.as_deref());
        put("client", event.remote_host.as_deref());
        put("application", event.client_application.as_deref());
        put("server", event.server_host.as_deref());
        put("session", event.session_id.as_deref());
        put("command", Some(&event.command));
        put("sqlstate", event.sql_state.as_deref());
        if include_statement {
            put("statement", event.command_text.as_deref());
        }
        facts.push(("event time", pgtrail_event::format_das_time(&event.log_time)));
    }
    facts
}

fn status_text(alert: &Alert) -> &'static str {
    match alert.status {
        AlertStatus::Firing => "firing",
        AlertStatus::Resolved => "resolved",
    }
}

/// The alert as JSON, without the statement text and parameters when they are not wanted.
pub fn alert_json(alert: &Alert, include_statement: bool) -> Value {
    let mut value = serde_json::to_value(alert).unwrap_or(Value::Null);
    if !include_statement && let Some(event) = value.get_mut("event").and_then(Value::as_object_mut) {
        event.remove("commandText");
        event.remove("paramList");
    }
    value
}

// ---------------------------------------------------------------- Standard Webhooks

/// The signing key inside a `whsec_` secret.
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded =
        secret.strip_prefix("whsec_").ok_or("secret must be a Standard Webhooks secret: whsec_ followed by base64")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("secret after whsec_ is not base64: {e}"))?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!("secret is {} bytes; Standard Webhooks asks for 24 to 64", key.len()));
    }
    Ok(key)
}

/// A fresh message id: the same for every retry of one notification.
pub fn webhook_message_id() -> String {
    format!("msg_{}", hex_string(&rand::random::<[u8; 16]>()))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The body: `{"type": "alert.firing"|"alert.resolved"|"alert.test", "timestamp", "data"}`.
pub fn webhook_body(alert: &Alert, include_statement: bool) -> Vec<u8> {
    let kind = if is_test(alert) { "alert.test" } else { &format!("alert.{}", status_text(alert)) };
    let body = json!({
        "type": kind,
        "timestamp": rfc3339(&alert.at),
        "data": alert_json(alert, include_statement),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// `v1,<base64 of HMAC-SHA256 over "{id}.{timestamp}.{body}">`.
pub fn webhook_signature(key: &[u8], message_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(tag))
}

// ---------------------------------------------------------------- Slack

/// Slack's three characters to escape in text (`&`, `<`, `>`), so that a statement cannot
/// become a link or a mention.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn clip(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut clipped: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

/// An incoming-webhook message: `text` (shown in notifications) and blocks.
pub fn slack_body(alert: &Alert, include_statement: bool) -> Value {
    let mut lines = Vec::new();
    for (label, value) in facts(alert, include_statement) {
        if label == "statement" {
            lines.push(format!("*{label}:*\n```{}```", slack_escape(&clip(&value, 2000))));
        } else {
            lines.push(format!("*{label}:* {}", slack_escape(&value)));
        }
    }
    let headline = headline(alert);
    json!({
        "text": slack_escape(&headline),
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": clip(&headline, 150) } },
            { "type": "section", "text": { "type": "mrkdwn", "text": clip(&lines.join("\n"), 3000) } },
            { "type": "context", "elements": [ { "type": "mrkdwn", "text": "pgtrail" } ] },
        ],
    })
}

// ---------------------------------------------------------------- PagerDuty

/// PagerDuty's severities: critical, error, warning, info.
pub fn pagerduty_severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "info",
    }
}

/// The incident key: the alert's dedup key, or its SHA-256 when longer than PagerDuty's 255.
pub fn incident_key(alert: &Alert, max: usize) -> String {
    if alert.dedup_key.len() <= max {
        alert.dedup_key.clone()
    } else {
        format!("pgtrail-{}", hex_string(&Sha256::digest(alert.dedup_key.as_bytes())))
    }
}

/// An Events API v2 event: `trigger` for a firing alert, `resolve` for a resolved one.
pub fn pagerduty_body(alert: &Alert, routing_key: &str, include_statement: bool) -> Value {
    let dedup_key = incident_key(alert, 255);
    if alert.status == AlertStatus::Resolved {
        return json!({ "routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key });
    }
    let event = alert.event.as_ref();
    let source =
        event.and_then(|e| e.server_host.as_deref()).filter(|s| !s.is_empty()).unwrap_or("pgtrail").to_string();
    let details: serde_json::Map<String, Value> = facts(alert, include_statement)
        .into_iter()
        .map(|(label, value)| (label.to_string(), Value::String(value)))
        .collect();
    let mut payload = json!({
        "summary": clip(&headline(alert), 1024),
        "source": source,
        "severity": pagerduty_severity(alert.severity),
        "timestamp": rfc3339(&alert.at),
        "group": alert.rule,
        "custom_details": details,
    });
    if let Some(event) = event {
        payload["class"] = json!(event.class.as_str());
        if let Some(db) = event.database_name.as_deref() {
            payload["component"] = json!(db);
        }
    }
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "client": "pgtrail",
        "payload": payload,
    })
}

// ---------------------------------------------------------------- Opsgenie

/// Opsgenie priorities P1 (highest) to P5.
pub fn opsgenie_priority(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "P1",
        Severity::High => "P2",
        Severity::Medium => "P3",
        Severity::Low => "P4",
        Severity::Info => "P5",
    }
}

/// The create-alert request body.
pub fn opsgenie_create(alert: &Alert, include_statement: bool) -> Value {
    let facts = facts(alert, include_statement);
    let description: String = facts.iter().map(|(label, value)| format!("{label}: {value}\n")).collect();
    let details: serde_json::Map<String, Value> =
        facts.into_iter().map(|(label, value)| (label.to_string(), Value::String(clip(&value, 8000)))).collect();
    let mut body = json!({
        "message": clip(&format!("[{}] {}: {}", alert.severity.as_str(), alert.rule, alert.reason), 130),
        "alias": incident_key(alert, 512),
        "description": clip(&description, 15000),
        "tags": ["pgtrail", alert.severity.as_str()],
        "details": details,
        "source": "pgtrail",
        "priority": opsgenie_priority(alert.severity),
    });
    if let Some(db) = alert.event.as_ref().and_then(|e| e.database_name.as_deref()) {
        body["entity"] = json!(clip(db, 512));
    }
    body
}

/// The close-alert request body (the alias goes in the URL).
pub fn opsgenie_close(alert: &Alert) -> Value {
    json!({ "source": "pgtrail", "note": clip(&alert.reason, 25000) })
}

// ---------------------------------------------------------------- Email

/// Subject and plain-text body.
pub fn email(alert: &Alert, include_statement: bool) -> (String, String) {
    let subject = format!("[pgtrail] {}", clip(&headline(alert), 200));
    let mut body = format!("{}\n\n", headline(alert));
    for (label, value) in facts(alert, include_statement) {
        if value.contains('\n') {
            body.push_str(&format!("{label}:\n    {}\n", value.replace('\n', "\n    ")));
        } else {
            body.push_str(&format!("{label}: {value}\n"));
        }
    }
    body.push_str("\n-- \npgtrail alerting\n");
    (subject, body)
}

// ---------------------------------------------------------------- Syslog

/// RFC 5424 facility codes by name.
pub fn facility_code(name: &str) -> Result<u8, String> {
    const NAMES: [&str; 12] =
        ["kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp"];
    if let Some(code) = NAMES.iter().position(|n| *n == name) {
        return Ok(code as u8);
    }
    if let Some(n) = name.strip_prefix("local").and_then(|n| n.parse::<u8>().ok())
        && n <= 7
    {
        return Ok(16 + n);
    }
    Err(format!("facility {name:?} is not a syslog facility (auth, authpriv, daemon, local0..local7, ...)"))
}

/// RFC 5424 severities: 2 critical, 3 error, 4 warning, 5 notice, 6 informational.
pub fn syslog_severity(alert: &Alert) -> u8 {
    if alert.status == AlertStatus::Resolved || is_test(alert) {
        return 5;
    }
    match alert.severity {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Info => 6,
    }
}

/// An SD-PARAM value with `"`, `\` and `]` escaped (RFC 5424 section 6.3.3).
fn sd_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Our structured-data id. 32473 is the private enterprise number RFC 5612 reserves for
/// documentation; deployments that need their own can post-process.
pub const SD_ID: &str = "pgtrail@32473";

/// A field of the header: printable ASCII, `-` when empty, at most `max` characters.
fn header_field(value: &str, max: usize) -> String {
    let cleaned: String = value.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if cleaned.is_empty() { "-".into() } else { cleaned }
}

/// One RFC 5424 message (without framing).
pub fn syslog_message(alert: &Alert, facility: u8, hostname: &str, app_name: &str, include_statement: bool) -> Vec<u8> {
    let pri = u16::from(facility) * 8 + u16::from(syslog_severity(alert));
    let timestamp = rfc3339(&alert.at);
    let msgid = if is_test(alert) { "TEST" } else { status_word(alert) };
    let mut sd = format!("[{SD_ID}");
    for (name, value) in [
        ("rule", alert.rule.as_str()),
        ("severity", alert.severity.as_str()),
        ("status", status_text(alert)),
        ("dedupKey", alert.dedup_key.as_str()),
    ] {
        sd.push_str(&format!(" {name}=\"{}\"", sd_escape(value)));
    }
    sd.push_str(&format!(" count=\"{}\"", alert.count));
    if let Some(event) = &alert.event {
        for (name, value) in [
            ("dbUserName", event.db_user_name.as_deref()),
            ("databaseName", event.database_name.as_deref()),
            ("remoteHost", event.remote_host.as_deref()),
            ("sessionId", event.session_id.as_deref()),
            ("command", Some(event.command.as_str())),
        ] {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                sd.push_str(&format!(" {name}=\"{}\"", sd_escape(value)));
            }
        }
    }
    sd.push(']');
    let mut text = format!("[{}] {}: {}", alert.severity.as_str(), alert.rule, alert.reason);
    if include_statement && let Some(statement) = alert.event.as_ref().and_then(|e| e.command_text.as_deref()) {
        text.push_str(" -- ");
        text.push_str(&statement.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    let mut message = format!(
        "<{pri}>1 {timestamp} {} {} {} {msgid} {sd} ",
        header_field(hostname, 255),
        header_field(app_name, 48),
        std::process::id(),
    )
    .into_bytes();
    message.extend_from_slice(b"\xEF\xBB\xBF"); // BOM: MSG is UTF-8
    message.extend_from_slice(text.as_bytes());
    message
}

/// Octet-counting framing for TCP and TLS transport: `LEN SP MSG`.
pub fn octet_counted(message: &[u8]) -> Vec<u8> {
    let mut framed = format!("{} ", message.len()).into_bytes();
    framed.extend_from_slice(message);
    framed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_signature_matches_the_specification_example() {
        // The Standard Webhooks libraries' test example; the expected value is what the
        // official Python library (standardwebhooks 1.1.0, `Webhook.sign`) gives for it.
        let key = webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = webhook_signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn webhook_secret_must_be_whsec() {
        assert!(webhook_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(webhook_key("whsec_!!!").is_err());
        assert!(webhook_key("whsec_c2hvcnQ=").unwrap_err().contains("24 to 64"));
    }

    #[test]
    fn pagerduty_resolve_is_minimal_and_keys_are_bounded() {
        let mut alert = test_alert(AlertStatus::Resolved);
        alert.dedup_key = "x".repeat(300);
        let body = pagerduty_body(&alert, "R0UTING", true);
        assert_eq!(body["event_action"], "resolve");
        assert_eq!(body.as_object().unwrap().len(), 3);
        assert!(body["dedup_key"].as_str().unwrap().len() <= 255);
        assert_eq!(incident_key(&alert, 255), body["dedup_key"].as_str().unwrap());
    }

    #[test]
    fn syslog_escapes_structured_data_and_picks_priority() {
        let mut alert = test_alert(AlertStatus::Firing);
        alert.rule = r#"a "quoted" ] \ rule"#.into();
        alert.severity = Severity::Critical;
        let message = String::from_utf8(syslog_message(&alert, 10, "db1", "pgtrail", true)).unwrap();
        assert!(message.starts_with("<82>1 "), "{message}"); // authpriv(10) * 8 + crit(2)
        assert!(message.contains(r#"rule="a \"quoted\" \] \\ rule""#), "{message}");
        assert_eq!(facility_code("local7"), Ok(23));
        assert!(facility_code("local8").is_err());
    }

    #[test]
    fn slack_text_cannot_mention_or_link() {
        assert_eq!(slack_escape("<!channel> & <http://x|y>"), "&lt;!channel&gt; &amp; &lt;http://x|y&gt;");
    }
}
