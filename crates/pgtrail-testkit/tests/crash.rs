//! Crash safety of sync delivery, with the real binary: kill -9 the proxy while pgbench
//! runs through it, restart it on the same journal, and check that every statement pgbench
//! saw complete has its event, that `pgtrail verify` passes, and that a cut tail (if the
//! kill tore one) is recorded by a control event.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgtrail_testkit::*;

#[test]
fn kill_9_during_pgbench_in_sync_mode_loses_no_completed_statement() {
    let pg = start_pg(HostAuth::Trust);
    pg.psql("CREATE TABLE crash_log (client int, n int)").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (journal, keys) = (dir.path().join("journal"), dir.path().join("keys"));
    keys_init(&keys);
    let port = free_port();
    let config = dir.path().join("pgtrail.toml");
    write_proxy_config(&config, port, &pg, &journal, &keys, "[delivery]\nmode = \"sync\"\n");
    let mut proxy = spawn_proxy_with_config(&config, &dir.path().join("proxy1.log"), port);

    // Each client numbers its statements (pgbench keeps variables across transactions),
    // so the journal can be checked statement by statement against pgbench's own log.
    let script = dir.path().join("crash.sql");
    std::fs::write(&script, "\\set n :n + 1\nINSERT INTO crash_log VALUES (:client_id, :n);\n").unwrap();
    let pgbench = Command::new(pg.binaries().bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-n", "-M", "simple"])
        .args(["-c", "4", "-j", "2", "-T", "30", "-D", "n=0", "-l", "-f", script.to_str().unwrap()])
        .arg(format!("--log-prefix={}", dir.path().join("pgbench_log").display()))
        .arg("postgres")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    signal(&proxy, "-KILL");
    let _ = proxy.wait();
    let bench = pgbench.wait_with_output().unwrap();
    let bench_err = String::from_utf8_lossy(&bench.stderr);
    assert!(bench_err.contains("aborted") || bench_err.contains("connection"), "pgbench lost its proxy: {bench_err}");

    // Restart on the same journal: it recovers, records that it did if it cut anything,
    // and runs until a clean stop.
    let mut proxy = spawn_proxy_with_config(&config, &dir.path().join("proxy2.log"), port);
    signal(&proxy, "-TERM");
    assert!(proxy.wait().unwrap().success());
    let restart_log = std::fs::read_to_string(dir.path().join("proxy2.log")).unwrap();

    // What pgbench saw complete: per client, the number of transactions in its log.
    let mut completed: BTreeMap<u32, u32> = BTreeMap::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap().starts_with("pgbench_log") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let client: u32 = line.split_whitespace().next().unwrap().parse().unwrap();
                *completed.entry(client).or_default() += 1;
            }
        }
    }
    let total: u32 = completed.values().sum();
    assert!(total > 20, "pgbench completed {total} transactions before the kill");

    let export = Command::new(pgtrail_binary())
        .args(["export", "--journal", journal.to_str().unwrap(), "--key", keys.join("wrapping.key").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(export.status.success(), "{export:?}");
    let events: Vec<pgtrail_event::ActivityEvent> =
        String::from_utf8(export.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let texts: std::collections::HashSet<&str> = events.iter().filter_map(|e| e.command_text.as_deref()).collect();
    for (client, count) in &completed {
        for n in 1..=*count {
            let text = format!("INSERT INTO crash_log VALUES ({client}, {n});");
            assert!(
                texts.contains(text.as_str()) || texts.contains(text.trim_end_matches(';')),
                "pgbench saw {text} complete, but the journal has no event for it"
            );
        }
    }

    let verify = Command::new(pgtrail_binary())
        .args(["verify", "--journal", journal.to_str().unwrap(), "--verify-key"])
        .arg(keys.join("verify.pub"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");

    let started = events.iter().filter(|e| e.command == "CAPTURE STARTED").count();
    assert_eq!(started, 2, "both runs of the proxy are in the stream");
    let recovered = events.iter().any(|e| e.command == "JOURNAL RECOVERED");
    assert_eq!(
        recovered,
        restart_log.contains("truncated a torn tail"),
        "a cut tail is recorded in the stream exactly when recovery cut one:\n{restart_log}"
    );
}
