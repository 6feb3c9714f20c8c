//! The Prometheus endpoints of the proxy and of the alerting consumer, scraped over HTTP
//! and parsed by the official Prometheus client's strict OpenMetrics parser.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgtrail_testkit::*;
use serde_json::Value;

/// GET over a plain socket: (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint accepts");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Scrapes /metrics and parses it with the official parser: one JSON value per sample.
fn scrape(port: u16) -> Vec<Value> {
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF: {body}");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/metrics/parse_openmetrics.py");
    let mut child = Command::new(venv_python("prometheus_client"))
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the official parser rejects our exposition: {out:?}\n{body}");
    // Prometheus naming: snake_case names with a pgtrail_ or process_ prefix.
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let name: String = line.chars().take_while(|c| *c != '{' && *c != ' ').collect();
        assert!(name.starts_with("pgtrail_") || name.starts_with("process_"), "{name}");
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{name}");
    }
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
}

fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn proxy_and_alerting_consumer_serve_metrics_liveness_and_readiness() {
    let pg = start_pg(HostAuth::ScramSha256);
    pg.psql(&format!("CREATE ROLE alice LOGIN PASSWORD '{PASSWORD}'; GRANT CREATE ON SCHEMA public TO alice")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (journal, keys) = (dir.path().join("journal"), dir.path().join("keys"));
    keys_init(&keys);
    let (port, metrics_port) = (free_port(), free_port());
    let config = dir.path().join("pgtrail.toml");
    write_proxy_config(
        &config,
        port,
        &pg,
        &journal,
        &keys,
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let mut proxy = spawn_proxy_with_config(&config, &dir.path().join("proxy.log"), port);
    wait_listening(metrics_port);
    assert_eq!(http_get(metrics_port, "/livez").0, 200);
    assert_eq!(http_get(metrics_port, "/readyz").0, 200);
    assert_eq!(http_get(metrics_port, "/nothing").0, 404);

    let url = format!("postgres://alice:{PASSWORD}@127.0.0.1:{port}/postgres");
    let secret_sql = "CREATE TABLE secret_accounts_xyz (id int)";
    assert_ok(&psql(&pg, &url, &["-c", secret_sql, "-c", "SELECT * FROM secret_accounts_xyz", "-c", "SELECT 1"]));
    wait_for("the events to be durable", || {
        value(&scrape(metrics_port), "pgtrail_journal_pending_events", &[]) == Some(0.0)
            && value(&scrape(metrics_port), "pgtrail_events_total", &[("class", "DDL")]).is_some()
    });
    let samples = scrape(metrics_port);
    assert_eq!(value(&samples, "pgtrail_events_total", &[("class", "DDL"), ("source", "proxy")]), Some(1.0));
    assert_eq!(value(&samples, "pgtrail_events_total", &[("class", "READ"), ("source", "proxy")]), Some(2.0));
    let events = read_events_with(&journal, &keys);
    let connects = events.iter().filter(|e| e.class == pgtrail_event::EventClass::Connect).count() as f64;
    assert_eq!(
        value(&samples, "pgtrail_events_total", &[("class", "CONNECT"), ("source", "proxy")]),
        Some(connects),
        "{}",
        describe(&events)
    );
    // psql's session, and the bare TCP connect spawn_proxy_with_config waits with.
    assert_eq!(value(&samples, "pgtrail_sessions_accepted_total", &[]), Some(connects + 1.0));
    assert!(value(&samples, "pgtrail_journal_written_bytes_total", &[]).unwrap() > 0.0);
    assert!(value(&samples, "pgtrail_journal_records_total", &[]).unwrap() >= 1.0);
    assert_eq!(value(&samples, "pgtrail_events_dropped_total", &[]), Some(0.0));
    assert_eq!(value(&samples, "pgtrail_loss_records_total", &[]), Some(0.0));
    assert_eq!(value(&samples, "pgtrail_journal_healthy", &[]), Some(1.0));
    let last_write = value(&samples, "pgtrail_journal_last_write_timestamp_seconds", &[]).unwrap();
    assert!((chrono::Utc::now().timestamp() as f64 - last_write).abs() < 60.0);
    assert!(value(&samples, "process_cpu_seconds_total", &[]).unwrap() > 0.0);
    assert!(value(&samples, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert_eq!(value(&samples, "pgtrail_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));

    // The alerting consumer, with a webhook destination that accepts.
    let http_log = dir.path().join("http.jsonl");
    let recorder = PortPrinter::spawn(
        Command::new(venv_python("standardwebhooks"))
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/notify/http_recorder.py"))
            .arg(&http_log),
    );
    let destinations = dir.path().join("destinations.toml");
    std::fs::write(
        &destinations,
        format!(
            "[[destination]]\nname = \"team-slack\"\nkind = \"slack\"\nurl = \"http://127.0.0.1:{}/slack/x\"\n",
            recorder.port
        ),
    )
    .unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[[rule]]\nname = \"ddl\"\ncondition = 'class == \"DDL\"'\n[[rule]]\nname = \"never\"\ncondition = 'command == \"VACUUM\"'\n").unwrap();
    let consumer_metrics = free_port();
    let mut consumer = Command::new(pgtrail_binary())
        .args(["alerts", "run", "--journal"])
        .arg(&journal)
        .arg("--key")
        .arg(keys.join("wrapping.key"))
        .arg("--rules")
        .arg(&rules)
        .arg("--state")
        .arg(dir.path().join("cursor"))
        .arg("--output")
        .arg(dir.path().join("alerts.jsonl"))
        .arg("--destinations")
        .arg(&destinations)
        .args(["--metrics", &format!("127.0.0.1:{consumer_metrics}")])
        .stderr(std::fs::File::create(dir.path().join("alerts.log")).unwrap())
        .spawn()
        .unwrap();
    wait_listening(consumer_metrics);
    wait_for("the consumer to catch up and notify", || {
        http_get(consumer_metrics, "/readyz").0 == 200
            && value(&scrape(consumer_metrics), "pgtrail_notifications_total", &[("outcome", "sent")]) == Some(1.0)
    });
    let samples = scrape(consumer_metrics);
    assert_eq!(value(&samples, "pgtrail_rule_matches_total", &[("rule", "ddl")]), Some(1.0));
    assert_eq!(value(&samples, "pgtrail_rule_matches_total", &[("rule", "never")]), Some(0.0));
    assert_eq!(value(&samples, "pgtrail_rule_alarm_state", &[("rule", "ddl"), ("state", "ALARM")]), Some(1.0));
    assert_eq!(value(&samples, "pgtrail_rule_alarm_state", &[("rule", "never"), ("state", "OK")]), Some(1.0));
    assert_eq!(value(&samples, "pgtrail_alerts_total", &[("rule", "ddl"), ("status", "firing")]), Some(1.0));
    let sent = [("destination", "team-slack"), ("kind", "slack"), ("outcome", "sent")];
    assert_eq!(value(&samples, "pgtrail_notifications_total", &sent), Some(1.0));
    assert_eq!(value(&samples, "pgtrail_notification_retries_total", &[("destination", "team-slack")]), Some(0.0));
    assert_eq!(value(&samples, "pgtrail_alerts_events_total", &[("class", "DDL"), ("source", "proxy")]), Some(1.0));
    assert_eq!(value(&samples, "pgtrail_alerts_caught_up", &[]), Some(1.0));
    assert!(value(&samples, "pgtrail_alerts_lag_seconds", &[]).is_some());

    // No user names and no SQL in any label, on either endpoint.
    for port in [metrics_port, consumer_metrics] {
        for sample in scrape(port) {
            let labels = sample["labels"].to_string();
            assert!(!labels.contains("alice") && !labels.contains("secret_accounts"), "{sample}");
        }
    }
    signal(&consumer, "-TERM");
    assert!(consumer.wait().unwrap().success());
    signal(&proxy, "-TERM");
    assert!(proxy.wait().unwrap().success());
    drop(recorder);
}
