//! Notifiers against real local counterparts: an HTTP server that records requests (with
//! Standard Webhooks signatures verified by the official `standardwebhooks` library), a real
//! SMTP server (aiosmtpd) that requires STARTTLS and AUTH, and a syslog receiver over TLS
//! whose frames are parsed by an RFC 5424 parser (`syslog_loose`). Payloads are checked
//! field by field against each service's public specification.
//!
//! The seed scenarios run end to end: statements through the proxy, `pgtrail alerts run`
//! with the built-in pack, and the webhook requests that come out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgtrail_testkit::*;
use serde_json::Value;

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ROUTING_KEY: &str = "R0123456789abcdef0123456789abcd";
const GENIE_KEY: &str = "eb243592-faa2-4ba2-a551q-1afdf565c889";

fn http_recorder(out: &Path, extra: &[&str]) -> PortPrinter {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/notify/http_recorder.py");
    let mut command = Command::new(venv_python("standardwebhooks"));
    command.arg(script).arg(out).args(["--webhook-secret", WEBHOOK_SECRET]).args(extra);
    PortPrinter::spawn(&mut command)
}

fn requests(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("recorder writes JSON lines"))
        .collect()
}

fn body(request: &Value) -> Value {
    serde_json::from_str(request["body"].as_str().unwrap()).expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_test_reaches_every_kind_of_destination_in_its_own_format() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate();
    let http_log = dir.path().join("http.jsonl");
    let http = http_recorder(&http_log, &[]);
    let mail_log = dir.path().join("mail.jsonl");
    let smtp = PortPrinter::spawn(
        Command::new(venv_python("aiosmtpd"))
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/notify/smtp_server.py"))
            .arg(&mail_log)
            .arg(tls.cert_path())
            .arg(tls.key_path())
            .args(["pgtrail", "mail-pw"]),
    );
    let (syslog_port, frames) = syslog_tls_receiver(&tls).await;
    let base = format!("http://127.0.0.1:{}", http.port);
    let ca = tls.ca_path().display().to_string();
    let destinations = dir.path().join("destinations.toml");
    std::fs::write(
        &destinations,
        format!(
            r#"
[[destination]]
name = "soc webhook"
kind = "webhook"
url = "{base}/webhook"
secret = "{WEBHOOK_SECRET}"

[[destination]]
name = "slack"
kind = "slack"
url = "{base}/slack/services/T000/B000/XXXX"

[[destination]]
name = "pagerduty"
kind = "pagerduty"
url = "{base}/pagerduty/v2/enqueue"
routing_key = "env:PGTRAIL_TEST_ROUTING_KEY"

[[destination]]
name = "opsgenie"
kind = "opsgenie"
url = "{base}/opsgenie"
api_key = "{GENIE_KEY}"

[[destination]]
name = "mail"
kind = "email"
host = "localhost"
port = {smtp}
username = "pgtrail"
password = "mail-pw"
from = "pgtrail <pgtrail@example.com>"
to = ["soc@example.com", "dba@example.com"]
ca_file = "{ca}"

[[destination]]
name = "siem"
kind = "syslog"
address = "localhost:{syslog_port}"
ca_file = "{ca}"
hostname = "db-host-1"
"#,
            smtp = smtp.port
        ),
    )
    .unwrap();
    let out = Command::new(pgtrail_binary())
        .args(["alerts", "test", "--destinations"])
        .arg(&destinations)
        .env("PGTRAIL_TEST_ROUTING_KEY", ROUTING_KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for name in ["soc webhook (webhook)", "slack (slack)", "pagerduty (pagerduty)", "mail (email)", "siem (syslog)"] {
        assert!(stdout.contains(&format!("ok      {name} trigger")), "{name} missing in:\n{stdout}");
    }
    assert!(stdout.contains("ok      pagerduty (pagerduty) resolve"), "{stdout}");
    assert!(stdout.contains("ok      opsgenie (opsgenie) resolve"), "{stdout}");

    let requests = requests(&http_log);
    let at = |path: &str| requests.iter().filter(|r| r["path"].as_str().unwrap().starts_with(path)).collect::<Vec<_>>();

    // Standard Webhooks: verified by the official library; the body is {type, timestamp, data}.
    let webhook = at("/webhook");
    assert_eq!(webhook.len(), 1);
    assert_eq!(webhook[0]["webhook_verified"], Value::Bool(true), "{:?}", webhook[0]);
    let headers = &webhook[0]["headers"];
    assert!(headers["webhook-id"].as_str().unwrap().starts_with("msg_"));
    let sent_at: i64 = headers["webhook-timestamp"].as_str().unwrap().parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - sent_at).abs() < 60);
    assert_eq!(headers["content-type"], "application/json");
    let payload = body(webhook[0]);
    assert_eq!(payload["type"], "alert.test");
    assert!(chrono::DateTime::parse_from_rfc3339(payload["timestamp"].as_str().unwrap()).is_ok());
    assert_eq!(payload["data"]["rule"], "pgtrail test notification");
    assert_eq!(payload["data"]["status"], "firing");

    // Slack incoming webhook: `text` plus Block Kit blocks within Slack's limits.
    let slack = at("/slack/services/T000/B000/XXXX");
    assert_eq!(slack.len(), 1);
    let message = body(slack[0]);
    assert!(message["text"].as_str().unwrap().starts_with("TEST [info] pgtrail test notification"));
    let blocks = message["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150);
    assert_eq!(blocks[1]["type"], "section");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");

    // PagerDuty Events API v2: a trigger, then a resolve with the same dedup_key.
    let pagerduty = at("/pagerduty/v2/enqueue");
    assert_eq!(pagerduty.len(), 2);
    let (trigger, resolve) = (body(pagerduty[0]), body(pagerduty[1]));
    assert_eq!(trigger["routing_key"], ROUTING_KEY);
    assert_eq!(trigger["event_action"], "trigger");
    let dedup = trigger["dedup_key"].as_str().unwrap();
    assert!(!dedup.is_empty() && dedup.len() <= 255);
    let summary = trigger["payload"]["summary"].as_str().unwrap();
    assert!(!summary.is_empty() && summary.len() <= 1024);
    assert!(!trigger["payload"]["source"].as_str().unwrap().is_empty());
    assert_eq!(trigger["payload"]["severity"], "info");
    assert!(chrono::DateTime::parse_from_rfc3339(trigger["payload"]["timestamp"].as_str().unwrap()).is_ok());
    assert!(trigger["payload"]["custom_details"].is_object());
    assert_eq!(resolve, serde_json::json!({"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": dedup}));

    // Opsgenie Alert API: create with GenieKey auth, then close by alias.
    let opsgenie = at("/opsgenie");
    assert_eq!(opsgenie.len(), 2);
    assert_eq!(opsgenie[0]["path"], "/opsgenie/v2/alerts");
    assert_eq!(opsgenie[0]["headers"]["authorization"], format!("GenieKey {GENIE_KEY}"));
    let create = body(opsgenie[0]);
    assert!(create["message"].as_str().unwrap().chars().count() <= 130);
    let alias = create["alias"].as_str().unwrap();
    assert!(!alias.is_empty() && alias.len() <= 512);
    assert_eq!(create["priority"], "P5");
    assert_eq!(create["source"], "pgtrail");
    assert!(create["details"].is_object() && create["tags"].is_array());
    assert_eq!(opsgenie[1]["path_decoded"], format!("/opsgenie/v2/alerts/{alias}/close").as_str());
    assert_eq!(opsgenie[1]["query"], "identifierType=alias");
    assert_eq!(opsgenie[1]["headers"]["authorization"], format!("GenieKey {GENIE_KEY}"));

    // Email: over STARTTLS, authenticated, to both recipients.
    let mail: Vec<Value> =
        std::fs::read_to_string(&mail_log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0]["tls"], true);
    assert_eq!(mail[0]["authenticated"], true);
    assert_eq!(mail[0]["mail_from"], "pgtrail@example.com");
    assert_eq!(mail[0]["rcpt_tos"], serde_json::json!(["soc@example.com", "dba@example.com"]));
    let data = mail[0]["data"].as_str().unwrap();
    assert!(data.contains("Subject: [pgtrail] TEST [info] pgtrail test notification"), "{data}");

    // Syslog: one RFC 5424 message over TLS, parsed by an independent parser.
    wait_until("the syslog frame", Duration::from_secs(5), || !frames.lock().unwrap().is_empty());
    let frames = frames.lock().unwrap().clone();
    assert_eq!(frames.len(), 1);
    let parsed = syslog_loose::parse_message_with_year_exact(&frames[0], |_| 2026, syslog_loose::Variant::RFC5424)
        .unwrap_or_else(|e| panic!("{e}: {:?}", frames[0]));
    assert_eq!(parsed.protocol, syslog_loose::Protocol::RFC5424(1));
    assert_eq!(parsed.facility, Some(syslog_loose::SyslogFacility::LOG_AUTHPRIV));
    assert_eq!(parsed.severity, Some(syslog_loose::SyslogSeverity::SEV_NOTICE));
    assert_eq!(parsed.hostname, Some("db-host-1"));
    assert_eq!(parsed.appname, Some("pgtrail"));
    assert_eq!(parsed.msgid, Some("TEST"));
    let sd = &parsed.structured_data[0];
    assert_eq!(sd.id, "pgtrail@32473");
    assert!(sd.params.iter().any(|(k, v)| *k == "rule" && *v == "pgtrail test notification"), "{sd:?}");
    assert!(parsed.msg.contains("pgtrail test notification"), "{:?}", parsed.msg);
}

#[test]
fn alerts_test_reports_a_failing_destination_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let http_log = dir.path().join("http.jsonl");
    let http = http_recorder(&http_log, &["--fail", "/flaky=1000"]);
    let destinations = dir.path().join("destinations.toml");
    std::fs::write(
        &destinations,
        format!(
            "[retry]\nmax_attempts = 3\nfirst_backoff_ms = 10\n\
             [[destination]]\nname = \"down\"\nkind = \"slack\"\nurl = \"http://127.0.0.1:{}/flaky\"\n\
             [[destination]]\nname = \"up\"\nkind = \"slack\"\nurl = \"http://127.0.0.1:{}/slack/ok\"\n",
            http.port, http.port
        ),
    )
    .unwrap();
    let out = run_pgtrail(&["alerts", "test", "--destinations", destinations.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAILED  down (slack) trigger: HTTP 503"), "{stdout}");
    assert!(stdout.contains(", 3 attempts"), "{stdout}");
    assert!(stdout.contains("ok      up (slack) trigger"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 destinations failed"), "{out:?}");
    assert_eq!(requests(&http_log).iter().filter(|r| r["path"] == "/flaky").count(), 3);
}

#[test]
fn a_bad_destinations_file_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let destinations = dir.path().join("destinations.toml");
    std::fs::write(&destinations, "[[destination]]\nname = \"x\"\nkind = \"webhook\"\nurl = \"http://example.com/\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n").unwrap();
    let out = run_pgtrail(&["alerts", "test", "--destinations", destinations.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("destination \"x\": url must be https"), "{stderr}");
}

/// The seeds' scenarios, end to end: statements through the proxy, the alerting consumer
/// with the built-in pack, webhook requests out. Also: a destination that fails twice is
/// retried with the same webhook-id, and one that never answers delays no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenarios_alert_through_the_proxy_once_per_dedup_window() {
    let pg = start_pg(HostAuth::ScramSha256);
    for role in ["alice", "carol", "app_svc"] {
        pg.psql(&format!("CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")).unwrap();
    }
    pg.psql(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int); \
         INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON accounts TO alice, app_svc; \
         CREATE TABLE app_owned (id int); ALTER TABLE app_owned OWNER TO app_svc",
    )
    .unwrap();
    let mut capture = TestCapture::start(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let http_log = dir.path().join("http.jsonl");
    let http = http_recorder(&http_log, &["--fail", "/flaky=2", "--hang", "/stuck"]);
    let base = format!("http://127.0.0.1:{}", http.port);
    let destinations = dir.path().join("destinations.toml");
    std::fs::write(
        &destinations,
        format!(
            r#"
[retry]
first_backoff_ms = 100
timeout_secs = 60

[[destination]]
name = "soc"
kind = "webhook"
url = "{base}/webhook"
secret = "{WEBHOOK_SECRET}"

[[destination]]
name = "flaky"
kind = "webhook"
url = "{base}/flaky"
secret = "{WEBHOOK_SECRET}"
rules = ["privilege change"]

[[destination]]
name = "stuck"
kind = "slack"
url = "{base}/stuck"
"#
        ),
    )
    .unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "builtin = true\n[settings]\nservice_accounts = [\"app_svc\"]\n").unwrap();
    let alerts_out = dir.path().join("alerts.jsonl");
    let consumer_log = dir.path().join("alerts.log");
    let mut consumer = Command::new(pgtrail_binary())
        .args(["alerts", "run", "--journal"])
        .arg(capture.journal_dir())
        .arg("--key")
        .arg(capture.keys_dir().join("wrapping.key"))
        .arg("--rules")
        .arg(&rules)
        .arg("--state")
        .arg(dir.path().join("cursor"))
        .arg("--output")
        .arg(&alerts_out)
        .arg("--destinations")
        .arg(&destinations)
        .stderr(std::fs::File::create(&consumer_log).unwrap())
        .spawn()
        .unwrap();

    let dml = [
        "-c",
        "SELECT * FROM accounts WHERE id = 1",
        "-c",
        "INSERT INTO accounts VALUES (11, 5)",
        "-c",
        "UPDATE accounts SET balance = 0 WHERE id = 2",
        "-c",
        "DELETE FROM accounts WHERE id = 11",
    ];
    // A person, twice (two sessions), then the service account doing the same.
    assert_ok(&psql(&pg, &capture.url("alice", PASSWORD, "postgres"), &dml));
    assert_ok(&psql(&pg, &capture.url("alice", PASSWORD, "postgres"), &dml));
    assert_ok(&psql(&pg, &capture.url("app_svc", PASSWORD, "postgres"), &dml));
    // Another person who only looks around with psql's \d commands.
    assert_ok(&psql(
        &pg,
        &capture.url("carol", PASSWORD, "postgres"),
        &["-c", "\\d", "-c", "\\dt", "-c", "\\d accounts", "-c", "\\l"],
    ));
    // The application's account changes privileges.
    let before_grant = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let app = capture.url("app_svc", PASSWORD, "postgres");
    assert_ok(&psql(
        &pg,
        &app,
        &["-c", "GRANT SELECT ON app_owned TO carol", "-c", "REVOKE SELECT ON app_owned FROM carol"],
    ));

    let webhook_alerts = || -> Vec<(Value, f64)> {
        requests(&http_log)
            .into_iter()
            .filter(|r| r["path"] == "/webhook")
            .map(|r| (body(&r)["data"].clone(), r["received"].as_f64().unwrap()))
            .collect()
    };
    let privilege = |alerts: &[(Value, f64)]| {
        alerts.iter().filter(|(a, _)| a["rule"] == "privilege change").cloned().collect::<Vec<_>>()
    };
    wait_until("two privilege alerts at the webhook", Duration::from_secs(20), || {
        privilege(&webhook_alerts()).len() >= 2
    });
    // Anything that would still come has had time to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&consumer, "-TERM");
    let status = consumer.wait().unwrap();
    let log = std::fs::read_to_string(&consumer_log).unwrap();
    assert!(status.success(), "{log}");
    capture.shutdown().await;

    let alerts = webhook_alerts();
    let human: Vec<_> = alerts.iter().filter(|(a, _)| a["rule"] == "human DML on application tables").collect();
    assert_eq!(human.len(), 1, "one alert per dedup window: {human:#?}");
    assert_eq!(human[0].0["event"]["dbUserName"], "alice");
    assert_eq!(human[0].0["severity"], "high");
    for (alert, _) in &alerts {
        let user = &alert["event"]["dbUserName"];
        if alert["rule"] != "activity outside business hours" {
            assert_ne!(user, "carol", "psql \\d raised {alert:#}");
        }
        if alert["rule"] == "human DML on application tables" {
            assert_ne!(user, "app_svc", "the service account raised {alert:#}");
        }
    }
    let privilege = privilege(&alerts);
    let commands: Vec<_> = privilege.iter().map(|(a, _)| a["event"]["command"].as_str().unwrap()).collect();
    assert_eq!(commands, ["GRANT", "REVOKE"]);
    for (alert, received) in &privilege {
        assert_eq!(alert["event"]["dbUserName"], "app_svc");
        // The stuck destination (a request that never gets an answer) delays no other.
        assert!(received - before_grant < 10.0, "privilege alert took {:.1}s", received - before_grant);
    }
    // Every webhook request verified with the official library.
    let all = requests(&http_log);
    assert!(all.iter().filter(|r| r["path"] != "/stuck").all(|r| r["webhook_verified"] == true), "{all:#?}");
    // The flaky destination answered 503 twice: the first alert was retried with the same
    // webhook-id, then both alerts went through.
    let flaky: Vec<_> = all.iter().filter(|r| r["path"] == "/flaky").collect();
    assert_eq!(flaky.len(), 4, "{flaky:#?}");
    let ids: Vec<_> = flaky.iter().map(|r| r["headers"]["webhook-id"].as_str().unwrap()).collect();
    assert!(ids[0] == ids[1] && ids[1] == ids[2] && ids[2] != ids[3], "{ids:?}");
    assert_eq!(flaky[0]["answered"], 503);
    assert_eq!(flaky[2]["answered"], Value::Null);
    // The stuck destination got its first request and is still waiting on it.
    assert_eq!(all.iter().filter(|r| r["path"] == "/stuck").count(), 1);
    // The alert log has what the webhook got, and the counters were logged at the end.
    let logged = std::fs::read_to_string(&alerts_out).unwrap();
    assert_eq!(logged.lines().count(), alerts.len(), "{logged}");
    assert!(log.contains("destination=flaky sent=2 failed=0 retried=2"), "{log}");
    assert!(log.contains("stopped with notifications unsent"), "{log}");
}
