//! `pgtrail forward` on real traffic through the proxy, against local counterparts: a
//! Splunk HTTP Event Collector with indexer acknowledgements (tests/forward/hec_receiver.py,
//! which answers as Splunk documents), a syslog receiver over TLS, and an HTTP receiver
//! for OCSF. Every event arrives in the destination's format; the cursor moves only once
//! the destination confirmed a batch, so a batch that was never acknowledged is sent
//! again and nothing is lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgtrail_testkit::*;
use serde_json::Value;

const TOKEN: &str = "3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
const HOSTILE: &str = "SELECT 'a|b=c\\d\nnext \"quoted\" <tag>' AS hostile";

struct Trail {
    journal: PathBuf,
    keys: PathBuf,
    dir: tempfile::TempDir,
    _capture: TestCapture,
}

async fn trail() -> Trail {
    let pg = start_pg(HostAuth::Trust);
    let mut capture = TestCapture::start(&pg).await;
    let url = capture.url("postgres", "", "postgres");
    let statements = [
        "CREATE TABLE accounts (id int primary key, balance int)",
        "INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g",
        "UPDATE accounts SET balance = 0 WHERE id = 2",
        HOSTILE,
    ];
    assert_ok(&psql(&pg, &url, &statements.iter().flat_map(|s| ["-c", s]).collect::<Vec<_>>()));
    for i in 0..10 {
        assert_ok(&psql(&pg, &url, &["-c", &format!("SELECT balance FROM accounts WHERE id = {}", i + 1)]));
    }
    capture.shutdown().await;
    let (journal, keys) = (capture.journal_dir().to_path_buf(), capture.keys_dir());
    Trail { journal, keys, dir: tempfile::tempdir().unwrap(), _capture: capture }
}

impl Trail {
    fn forward_command(&self, to: &str, url: &str, state: &Path, extra: &[&str]) -> Command {
        let mut command = Command::new(pgtrail_binary());
        command
            .args(["forward", "--journal"])
            .arg(&self.journal)
            .arg("--key")
            .arg(self.keys.join("wrapping.key"))
            .args(["--to", to, "--url", url, "--state"])
            .arg(state)
            .args(extra)
            .env("PGTRAIL_FORWARD_TOKEN", TOKEN);
        command
    }

    fn forward(&self, to: &str, url: &str, state: &Path, extra: &[&str]) -> std::process::Output {
        self.forward_command(to, url, state, extra).output().unwrap()
    }

    /// `pgtrail export --format FORMAT`, one line per event.
    fn export(&self, format: &str) -> Vec<String> {
        let key = self.keys.join("wrapping.key");
        let out = run_pgtrail(&[
            "export",
            "--journal",
            self.journal.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--format",
            format,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
    }

    /// Every event of the journal as `pgtrail export --format jsonl` gives it, with its
    /// position, in journal order (positions are not in string order: `vm:4:10` follows `vm:4:9`).
    fn events(&self) -> Vec<(String, Value)> {
        let cef = self.export("cef");
        let jsonl = self.export("jsonl");
        assert_eq!(cef.len(), jsonl.len());
        // The CEF line names the position (externalId=instance:record:index).
        cef.iter()
            .zip(jsonl)
            .map(|(line, json)| {
                let position = line.split("externalId=").nth(1).unwrap().split(' ').next().unwrap().to_owned();
                (position, serde_json::from_str(&json).unwrap())
            })
            .collect()
    }
}

fn hec(out: &Path, extra: &[&str]) -> PortPrinter {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/forward/hec_receiver.py");
    PortPrinter::spawn(Command::new("python3").arg(script).arg(out).args(["--token", TOKEN]).args(extra))
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The events of acknowledged batches, by position (a position twice is a duplicate).
fn acknowledged(out: &Path) -> Vec<(String, Value)> {
    let lines = lines(out);
    let acked: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "acked").map(|l| &l["ack_id"]).collect();
    lines
        .iter()
        .filter(|l| l["kind"] == "batch" && acked.contains(&&l["ack_id"]))
        .flat_map(|l| l["events"].as_array().unwrap().iter())
        .map(|e| (e["fields"]["pgtrail_position"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

fn said(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_gets_every_event_acknowledged_once_and_the_cursor_follows_the_acks() {
    let trail = trail().await;
    let expected = trail.events();
    assert!(expected.len() > 30, "{} events", expected.len());
    let received = trail.dir.path().join("hec.jsonl");
    // The first request is refused as busy; acknowledgements come on the second poll.
    let receiver = hec(&received, &["--ack", "--fail-first", "1", "--ack-after-polls", "2"]);
    let url = format!("http://127.0.0.1:{}", receiver.port);
    let state = trail.dir.path().join("hec.cursor");
    let out = trail.forward("splunk-hec", &url, &state, &["--ack", "--batch-events", "7"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains(&format!("forwarded {} events", expected.len())), "{}", said(&out));
    assert!(said(&out).contains("(1 attempts retried)"), "{}", said(&out));

    let delivered = acknowledged(&received);
    assert_eq!(delivered.len(), expected.len(), "each event once");
    let in_order = |events: &[(String, Value)]| events.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(in_order(&delivered), in_order(&expected), "in journal order");
    let expected: BTreeMap<String, Value> = expected.into_iter().collect();
    let by_position: BTreeMap<String, Value> = delivered.into_iter().collect();
    for (position, event) in &by_position {
        assert_eq!(&event["event"], &expected[position], "the event as export writes it");
        assert_eq!(event["sourcetype"], "pgtrail:activity");
        let journal_event: pgtrail_event::ActivityEvent = serde_json::from_value(expected[position].clone()).unwrap();
        let time = event["time"].as_f64().unwrap();
        let log_time = journal_event.log_time.timestamp_micros() as f64 / 1e6;
        assert!((time - log_time).abs() < 1e-3, "HEC time {time} is the event's log time {log_time}");
    }
    assert!(
        by_position.values().any(|e| e["event"]["commandText"].as_str() == Some(HOSTILE.trim_end())),
        "hostile text intact"
    );
    let batches: Vec<Value> = lines(&received).into_iter().filter(|l| l["kind"] == "batch").collect();
    assert!(batches.len() > 1 && batches.iter().all(|b| b["channel"] == batches[0]["channel"]), "one channel per run");

    // The cursor was saved at the last acknowledged batch: nothing is sent again.
    let again = trail.forward("splunk-hec", &url, &state, &["--ack"]);
    assert!(said(&again).contains("forwarded 0 events"), "{}", said(&again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_is_never_acknowledged_is_sent_again_and_the_cursor_does_not_move() {
    let trail = trail().await;
    let expected = trail.events();
    let state = trail.dir.path().join("hec.cursor");
    let withheld = trail.dir.path().join("withheld.jsonl");
    let receiver = hec(&withheld, &["--ack", "--withhold-acks"]);
    let url = format!("http://127.0.0.1:{}", receiver.port);
    let mut forwarder = KillOnDrop(
        trail
            .forward_command("splunk-hec", &url, &state, &["--ack", "--ack-timeout", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The same batch arrives a second time once its acknowledgement did not come.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines(&withheld).iter().filter(|l| l["kind"] == "batch").count() < 2 {
        assert!(Instant::now() < deadline, "the batch was not sent again");
        std::thread::sleep(Duration::from_millis(100));
    }
    let batches: Vec<Value> = lines(&withheld).into_iter().filter(|l| l["kind"] == "batch").collect();
    assert_eq!(batches[0]["events"], batches[1]["events"], "the same batch again");
    signal(&forwarder.0, "-TERM");
    let out = std::mem::replace(&mut forwarder.0, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("stopped before the destination confirmed"), "{}", said(&out));
    let cursor = std::fs::read_to_string(&state).unwrap_or_default();
    assert!(cursor.is_empty() || cursor.contains("\"seq\":0"), "no cursor saved without an ack: {cursor}");

    // A receiver that acknowledges: everything arrives, from the start.
    let acked = trail.dir.path().join("acked.jsonl");
    let receiver = hec(&acked, &["--ack"]);
    let out = trail.forward("splunk-hec", &format!("http://127.0.0.1:{}", receiver.port), &state, &["--ack"]);
    assert!(out.status.success(), "{}", said(&out));
    let positions: Vec<String> = acknowledged(&acked).into_iter().map(|(p, _)| p).collect();
    assert_eq!(positions, expected.into_iter().map(|(p, _)| p).collect::<Vec<_>>(), "in journal order");

    // A wrong token is refused for good: a clear error, not a retry loop, and no cursor.
    let fresh = trail.dir.path().join("fresh.cursor");
    let out = trail
        .forward_command("splunk-hec", &format!("http://127.0.0.1:{}", receiver.port), &fresh, &[])
        .env("PGTRAIL_FORWARD_TOKEN", "not-the-token")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(said(&out).contains("HTTP 403") && said(&out).contains("Invalid token"), "{}", said(&out));
    assert!(!said(&out).contains("not-the-token"), "the token is not logged");
    assert!(!fresh.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cef_over_syslog_with_tls_and_ocsf_over_http_get_every_event() {
    let trail = trail().await;
    let cef = trail.export("cef");
    let ocsf = trail.export("ocsf");

    // CEF in RFC 5424 messages over TLS, checked by an RFC 5424 parser.
    let tls = TlsFiles::generate();
    let (port, frames) = syslog_tls_receiver(&tls).await;
    let state = trail.dir.path().join("syslog.cursor");
    let ca = tls.ca_path();
    let out = trail.forward(
        "syslog-cef",
        &format!("tls://localhost:{port}"),
        &state,
        &["--ca-file", ca.to_str().unwrap(), "--batch-events", "5"],
    );
    assert!(out.status.success(), "{}", said(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    while frames.lock().unwrap().len() < cef.len() {
        assert!(Instant::now() < deadline, "{} of {} frames", frames.lock().unwrap().len(), cef.len());
        std::thread::sleep(Duration::from_millis(50));
    }
    let frames = frames.lock().unwrap().clone();
    let mut messages = Vec::new();
    for frame in &frames {
        let parsed = syslog_loose::parse_message_with_year_exact(frame, |_| 2026, syslog_loose::Variant::RFC5424)
            .expect("an RFC 5424 message");
        assert_eq!(parsed.protocol, syslog_loose::Protocol::RFC5424(1));
        assert_eq!(parsed.appname, Some("pgtrail"));
        assert_eq!(parsed.facility, Some(syslog_loose::SyslogFacility::LOG_AUDIT));
        messages.push(parsed.msg.to_owned());
    }
    assert_eq!(messages, cef, "each event's CEF line, in order, once");
    assert!(messages.iter().any(|m| m.contains("a|b\\=c\\\\d\\nnext")), "hostile text escaped");

    // Plain TCP to another host is refused before anything is sent.
    let out = trail.forward("syslog-cef", "tcp://siem.example:514", &trail.dir.path().join("x.cursor"), &[]);
    assert!(!out.status.success() && said(&out).contains("unencrypted"), "{}", said(&out));

    // OCSF over HTTP: JSON arrays, every event once, as export writes them.
    let recorded = trail.dir.path().join("ocsf.jsonl");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/notify/http_recorder.py");
    let recorder = PortPrinter::spawn(Command::new(venv_python("standardwebhooks")).arg(script).arg(&recorded));
    let state = trail.dir.path().join("ocsf.cursor");
    let url = format!("http://127.0.0.1:{}/ocsf", recorder.port);
    let out = trail.forward("ocsf-http", &url, &state, &["--batch-events", "10"]);
    assert!(out.status.success(), "{}", said(&out));
    let requests = lines(&recorded);
    assert!(requests.len() > 1);
    let mut sent = Vec::new();
    for request in &requests {
        assert_eq!(request["path"], "/ocsf");
        assert_eq!(request["headers"]["authorization"], format!("Bearer {TOKEN}"));
        let body: Vec<Value> = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
        sent.extend(body);
    }
    let expected: Vec<Value> = ocsf.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(sent, expected);
}
