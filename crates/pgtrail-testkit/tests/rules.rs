//! Rules on real traffic, through the CLI: events recorded by the proxy, exported, and run
//! through `pgtrail rules test`; `pgtrail rules check` on good and broken files.

use std::process::Command;

use pgtrail_testkit::*;

fn pgtrail(args: &[&str]) -> std::process::Output {
    Command::new(pgtrail_binary()).args(args).output().unwrap()
}

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
    let export = pgtrail(&[
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

    let check = pgtrail(&["rules", "check", rules.to_str().unwrap()]);
    assert!(check.status.success(), "{check:?}");
    assert!(String::from_utf8_lossy(&check.stdout).contains("4 rules OK"));

    let out = pgtrail(&["rules", "test", "--rules", rules.to_str().unwrap(), "--events", events.to_str().unwrap()]);
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
    let check = pgtrail(&["rules", "check", rules.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1));
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(err.contains("rules.toml:3: rule \"bad\": condition names rowcount which is not an event field"), "{err}");
}
