//! Issue 14 (architecture), end to end: the typed protocol layer sees real clients'
//! traffic without a single desync, and one condition means the same in a deny rule (in
//! the proxy, before the statement runs) and in an alert rule (over the journal).

use std::process::Command;
use std::sync::atomic::Ordering;

use pgtrail_event::Verdict;
use pgtrail_testkit::*;

/// Issue 14.3: a reply that matches nothing the server owes is counted as a desync. Real
/// clients in every protocol mode (simple, extended, prepared, with describes, pipelines
/// of Parse/Bind/Execute, COPY) must cause none, or the counter would cry wolf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_3_real_clients_in_every_protocol_mode_cause_no_desync() {
    let pg = start_pg(HostAuth::Trust);
    let capture = TestCapture::start(&pg).await;
    let port = capture.addr.port().to_string();
    let pgbench = |args: &[&str]| {
        let out = Command::new(pg.binaries().bin("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(args)
            .arg("postgres")
            .output()
            .expect("pgbench runs");
        assert!(out.status.success(), "pgbench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // -i loads with COPY; then each query mode, read-only and TPC-B.
    pgbench(&["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        pgbench(&["-n", "-M", mode, "-c", "2", "-t", "50"]);
        pgbench(&["-n", "-M", mode, "-c", "2", "-t", "50", "-S"]);
    }
    let url = capture.url("postgres", "", "postgres");
    assert_ok(&psql(
        &pg,
        &url,
        &["-c", "SELECT 1; SELECT count(*) FROM pgbench_branches", "-c", "\\d pgbench_accounts"],
    ));
    let stats = capture.proxy_stats();
    // After a clean stop every reply has been matched and every event written.
    let events = capture.stop().await;
    assert_eq!(stats.desyncs.load(Ordering::Relaxed), 0, "no reply went unmatched");
    assert!(events.len() > 600, "the statements were recorded: {}", events.len());
}

/// Issue 14.5: deny rules and alert rules spoke different vocabularies (`statement.hasWhere`
/// and `user` in one, `dbUserName` in the other, `hasWhere` nowhere). The same condition now
/// denies in the proxy and fires as an alert rule on the events in the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_5_one_condition_works_in_deny_rules_and_alert_rules_alike() {
    let condition = r#"command in ["UPDATE", "DELETE"] && !hasWhere && objects.exists(o, o.name == "accounts") && dbUserName == "postgres""#;
    let pg = start_pg(HostAuth::Trust);
    pg.psql("CREATE TABLE accounts (id int, balance int); INSERT INTO accounts VALUES (1, 10), (2, 20)")
        .expect("setup");
    let capture = TestCapture::start_with(&pg, |c| {
        c.proxy.policy = serde_json::from_value(serde_json::json!({
            "deny": [{"name": "unfiltered writes", "when": condition, "message": "add a WHERE clause"}],
        }))
        .expect("policy");
    })
    .await;
    let url = capture.url("postgres", "", "postgres");
    let refused = psql(&pg, &url, &["-c", "DELETE FROM accounts"]);
    assert!(!refused.status.success(), "the unfiltered DELETE is denied");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("add a WHERE clause"));
    assert_ok(&psql(&pg, &url, &["-c", "UPDATE accounts SET balance = 0 WHERE id = 1"]));
    assert_eq!(pg.psql("SELECT count(*) FROM accounts").expect("count").trim(), "2", "nothing was deleted");

    let events = capture.stop().await;
    let denied: Vec<_> = events.iter().filter(|e| e.verdict == Some(Verdict::Denied)).collect();
    assert_eq!(denied.len(), 1, "{}", describe(&events));
    assert!(!denied[0].has_where);
    let filtered = events.iter().find(|e| e.command == "UPDATE").expect("the UPDATE's event");
    assert!(filtered.has_where, "events carry the statement's traits");

    let rules = format!("[[rule]]\nname = \"unfiltered writes\"\ncondition = '{condition}'\nseverity = \"high\"\n");
    let mut engine = pgtrail_rules::Engine::new(pgtrail_rules::RuleSet::parse(&rules, "rules.toml").expect("rules"));
    let fired: Vec<_> = events.iter().filter(|e| !engine.process(e).is_empty()).collect();
    assert_eq!(fired.len(), 1, "the alert rule fires on exactly the statement the deny rule refused");
    assert_eq!(fired[0].verdict, Some(Verdict::Denied));
}

/// Issue 14 (found while moving tail and export onto the reader's consumer loop): their
/// output errors came back wrapped in the reader's error, where the binary no longer saw a
/// closed pipe, so `pgtrail tail ... | head` ended with "pgtrail: Broken pipe".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_tail_and_export_onto_the_reader_reported_a_closed_pipe_as_an_error() {
    let pg = start_pg(HostAuth::Trust);
    let mut capture = TestCapture::start(&pg).await;
    let url = capture.url("postgres", "", "postgres");
    assert_ok(&psql(&pg, &url, &["-c", "SELECT 1"]));
    capture.shutdown().await;
    let (journal, key) = (capture.journal_dir().to_path_buf(), capture.keys_dir().join("wrapping.key"));
    let (j, k) = (journal.to_str().unwrap(), key.to_str().unwrap());
    for args in [
        vec!["tail", "--journal", j, "--key", k],
        vec!["tail", "--journal", j, "--key", k, "--json"],
        vec!["export", "--journal", j, "--key", k, "--format", "das"],
    ] {
        let out = run_pgtrail_into_closed_pipe(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("Broken pipe") && !stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
    }
}
