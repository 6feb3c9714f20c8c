//! Rules on real traffic, through the CLI: events recorded by the proxy, exported, and run
//! through `pgtrail rules test`; `pgtrail rules check` on good and broken files.

use std::path::Path;
use std::process::Command;

use pgtrail_testkit::*;

const RULES: &str = r#"
[[rule]]
name = "failed login burst"
condition = 'class == "CONNECT" && sqlState == "28P01"'
severity = "high"
group_by = ["dbUserName"]
window_secs = 60
threshold = 3
suppress_secs = 300

[[rule]]
name = "ddl"
condition = 'class == "DDL"'
severity = "medium"

[[rule]]
name = "catalog reads"
condition = 'class == "READ" && objects.exists(o, o.name.startsWith("pg_"))'
severity = "info"

[[rule]]
name = "never"
condition = 'command == "VACUUM"'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_test_shows_which_rules_fire_on_recorded_traffic() {
    let pg = start_pg(HostAuth::ScramSha256);
    pg.psql(&format!("CREATE ROLE bob LOGIN PASSWORD '{PASSWORD}'")).unwrap();
    let mut capture = TestCapture::start(&pg).await;
    for _ in 0..4 {
        let out = psql(&pg, &capture.url("bob", "wrong-password", "postgres"), &["-c", "SELECT 1"]);
        assert!(!out.status.success());
    }
    let url = capture.url("postgres", PASSWORD, "postgres");
    assert_ok(&psql(&pg, &url, &["-c", "CREATE TABLE audit_me (id int)", "-c", "\\dt"]));
    capture.shutdown().await;
    let keys = capture.keys_dir();
    let export = run_pgtrail(&[
        "export",
        "--journal",
        capture.journal_dir().to_str().unwrap(),
        "--key",
        keys.join("wrapping.key").to_str().unwrap(),
    ]);
    assert!(export.status.success(), "{export:?}");
    let dir = tempfile::tempdir().unwrap();
    let (rules, events) = (dir.path().join("rules.toml"), dir.path().join("events.jsonl"));
    std::fs::write(&rules, RULES).unwrap();
    std::fs::write(&events, &export.stdout).unwrap();

    let check = run_pgtrail(&["rules", "check", rules.to_str().unwrap()]);
    assert!(check.status.success(), "{check:?}");
    assert!(String::from_utf8_lossy(&check.stdout).contains("4 rules OK"));

    let out = run_pgtrail(&["rules", "test", "--rules", rules.to_str().unwrap(), "--events", events.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let firing: Vec<&str> = text.lines().filter(|l| l.starts_with("FIRING")).collect();
    // The burst fires once for bob (the fourth failure is suppressed), DDL once; psql's
    // \dt introspection is noise, so the catalog rule does not fire on it.
    assert_eq!(firing.len(), 2, "{text}");
    assert!(
        firing[0].contains("[high] failed login burst")
            && text.contains("3 matching events within 60s for dbUserName=bob"),
        "{text}"
    );
    assert!(firing[1].contains("[medium] ddl"), "{text}");
    assert!(text.contains("CREATE TABLE audit_me (id int)"), "{text}");
    for state in [
        "ALARM             failed login burst",
        "ALARM             ddl",
        "OK                catalog reads",
        "OK                never",
    ] {
        assert!(text.contains(state), "{state} missing:\n{text}");
    }

    // A broken rule: the line and the problem.
    std::fs::write(&rules, "[[rule]]\nname = \"bad\"\ncondition = 'rowcount > 5'\n").unwrap();
    let check = run_pgtrail(&["rules", "check", rules.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1));
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(err.contains("rules.toml:3: rule \"bad\": condition names rowcount which is not an event field"), "{err}");
}

/// Waits until `path` holds at least `n` lines; returns them.
/// `pgtrail alerts run` on the capture's journal, with its process log discarded.
fn consumer(capture: &TestCapture, rules: &Path, state: &Path, alerts: &Path, gap_secs: u32) -> std::process::Child {
    Command::new(pgtrail_binary())
        .args(["alerts", "run", "--journal"])
        .arg(capture.journal_dir())
        .arg("--key")
        .arg(capture.keys_dir().join("wrapping.key"))
        .arg("--rules")
        .arg(rules)
        .arg("--state")
        .arg(state)
        .arg("--output")
        .arg(alerts)
        .args(["--gap-secs", &gap_secs.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // Only whole lines: the consumer may be writing the next one right now.
        let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        let lines: Vec<serde_json::Value> = whole.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(std::time::Instant::now() < deadline, "waited for {n} alerts, got {}: {text}", lines.len());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerting_consumer_alerts_live_and_resumes_without_duplicates() {
    let pg = start_pg(HostAuth::Trust);
    let capture = TestCapture::start(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let (rules, state, alerts) =
        (dir.path().join("rules.toml"), dir.path().join("cursor"), dir.path().join("alerts.jsonl"));
    std::fs::write(&rules, "[[rule]]\nname = \"ddl\"\ncondition = 'class == \"DDL\"'\nseverity = \"high\"\n").unwrap();
    let start_consumer = || consumer(&capture, &rules, &state, &alerts, 2);
    let url = capture.url("postgres", "", "postgres");
    let mut consumer = start_consumer();
    let sent = std::time::Instant::now();
    assert_ok(&psql(&pg, &url, &["-c", "CREATE TABLE first_table (id int)"]));
    let first = wait_lines(&alerts, 1);
    let latency = sent.elapsed();
    eprintln!("statement to alert: {latency:?} (recorder batch delay 20 ms in tests)");
    assert_eq!(first[0]["rule"], "ddl");
    assert_eq!(first[0]["status"], "firing");
    assert_eq!(first[0]["event"]["commandText"], "CREATE TABLE first_table (id int)");

    // Restart: the first table's alert is not repeated; the next DDL alerts.
    signal(&consumer, "-TERM");
    assert!(consumer.wait().unwrap().success());
    let mut consumer = start_consumer();
    assert_ok(&psql(&pg, &url, &["-c", "CREATE TABLE second_table (id int)"]));
    let all = wait_lines(&alerts, 2);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let all_after = wait_lines(&alerts, 2);
    assert_eq!(all_after.len(), 2, "no duplicate after the restart: {all_after:?}");
    assert_eq!(all[1]["event"]["commandText"], "CREATE TABLE second_table (id int)");

    // Silence (the test capture's heartbeat comes every 5 s) beyond --gap-secs 2: a gap
    // alert; the next record resolves it.
    let gap = wait_lines(&alerts, 3);
    assert_eq!((gap[2]["rule"].as_str(), gap[2]["status"].as_str()), (Some("gap in the stream"), Some("firing")));
    assert_ok(&psql(&pg, &url, &["-c", "SELECT 1"]));
    let resolved = wait_lines(&alerts, 4);
    assert_eq!(
        (resolved[3]["rule"].as_str(), resolved[3]["status"].as_str()),
        (Some("gap in the stream"), Some("resolved"))
    );
    signal(&consumer, "-TERM");
    assert!(consumer.wait().unwrap().success());
    capture.stop().await;
}

/// A resolve decided by the wall clock, and an open gap, are not sent again after a
/// restart (the cursor remembers the last emitting tick and the open gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_resolves_and_gaps_are_not_repeated_after_a_restart() {
    let pg = start_pg(HostAuth::Trust);
    // No heartbeats: silence after the statements is a gap that stays open.
    let capture = TestCapture::start_with(&pg, |c| c.writer.recorder.heartbeat = None).await;
    let dir = tempfile::tempdir().unwrap();
    let (rules, state, alerts) =
        (dir.path().join("rules.toml"), dir.path().join("cursor"), dir.path().join("alerts.jsonl"));
    std::fs::write(&rules, "[[rule]]\nname = \"ddl\"\ncondition = 'class == \"DDL\"'\nresolve_after_secs = 1\n")
        .unwrap();
    let start_consumer = || consumer(&capture, &rules, &state, &alerts, 3);
    let mut consumer = start_consumer();
    assert_ok(&psql(&pg, &capture.url("postgres", "", "postgres"), &["-c", "CREATE TABLE t (id int)"]));
    // firing, resolved after a quiet second, then the gap after three silent seconds.
    let before = wait_lines(&alerts, 3);
    let seen = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .map(|l| format!("{} {}", l["rule"].as_str().unwrap(), l["status"].as_str().unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(seen(&before), ["ddl firing", "ddl resolved", "gap in the stream firing"]);
    signal(&consumer, "-TERM");
    assert!(consumer.wait().unwrap().success());

    consumer = start_consumer();
    // Longer than resolve_after_secs and --gap-secs: nothing new may appear.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let after = wait_lines(&alerts, 3);
    assert_eq!(seen(&after), seen(&before), "the restart repeated alerts");
    // The open gap resolves once, when records come again.
    assert_ok(&psql(&pg, &capture.url("postgres", "", "postgres"), &["-c", "SELECT 1"]));
    let last = wait_lines(&alerts, 4);
    assert_eq!(seen(&last)[3], "gap in the stream resolved");
    signal(&consumer, "-TERM");
    assert!(consumer.wait().unwrap().success());
    capture.stop().await;
}
