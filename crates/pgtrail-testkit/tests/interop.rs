//! Interoperability: the official AWS Encryption SDK for Python decrypts the records the
//! proxy wrote during a real psql session, the way AWS's sample DAS consumers do (see
//! tests/interop/das_consumer.py), for both suites; the events it decodes are exactly what
//! `pgtrail tail --json` shows.
//!
//! The SDK lives in a virtualenv made by scripts/setup.sh (`.venv-interop` at the
//! repository root, or the python named by PGTRAIL_ESDK_PYTHON). Without it this test
//! fails and says how to install it: it is never skipped.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgtrail_testkit::*;

fn esdk_python() -> PathBuf {
    let python = std::env::var_os("PGTRAIL_ESDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-interop/bin/python"));
    let check = Command::new(&python).args(["-c", "import aws_encryption_sdk"]).output();
    assert!(
        check.as_ref().is_ok_and(|o| o.status.success()),
        "the AWS Encryption SDK for Python is needed at {} (scripts/setup.sh makes it: python3 -m venv .venv-interop && .venv-interop/bin/pip install aws-encryption-sdk): {check:?}",
        python.display()
    );
    python
}

fn session_through_proxy(suite: &str, dir: &std::path::Path, pg: &LocalPg) -> (PathBuf, PathBuf) {
    let (journal, keys) = (dir.join(format!("journal-{suite}")), dir.join(format!("keys-{suite}")));
    keys_init(&keys);
    let port = free_port();
    let config = dir.join(format!("pgtrail-{suite}.toml"));
    let envelope = format!("[envelope]\nsuite = \"{suite}\"\nrotate_after_records = 3\n");
    write_proxy_config(&config, port, pg, &journal, &keys, &envelope);
    let mut proxy = spawn_proxy_with_config(&config, &dir.join(format!("proxy-{suite}.log")), port);
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres");
    // Each -c is its own Query; psql goes on after the failing one (no ON_ERROR_STOP).
    let out = Command::new(pg.binaries().bin("psql"))
        .arg(&url)
        .arg("-X")
        .args(["-c", "CREATE TABLE interop (id int, note text)"])
        .args(["-c", "INSERT INTO interop VALUES (1, 'first'), (2, 'second, with \"quotes\"')"])
        .args(["-c", "SELECT * FROM interop ORDER BY id"])
        .args(["-c", "SELECT 1/0"])
        .args(["-c", "DROP TABLE interop"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("division by zero"), "{out:?}");
    for i in 0..4 {
        // More sessions, so that records span several data keys (a new one every 3 records).
        let out = Command::new(pg.binaries().bin("psql")).arg(&url).args(["-X", "-c", &format!("SELECT {i}")]).output();
        assert!(out.unwrap().status.success());
        std::thread::sleep(Duration::from_millis(250));
    }
    signal(&proxy, "-TERM");
    assert!(proxy.wait().unwrap().success());
    (journal, keys)
}

#[test]
fn the_aws_encryption_sdk_decrypts_what_the_proxy_wrote() {
    let python = esdk_python();
    let pg = start_pg(HostAuth::ScramSha256);
    let dir = tempfile::tempdir().unwrap();
    for suite in ["0x0178", "0x0478"] {
        let (journal, keys) = session_through_proxy(suite, dir.path(), &pg);
        let (j, key) = (journal.to_str().unwrap(), keys.join("wrapping.key"));
        let key = key.to_str().unwrap();
        let das = run_pgtrail(&["export", "--journal", j, "--key", key, "--format", "das"]);
        assert!(das.status.success(), "{das:?}");
        let records = String::from_utf8(das.stdout).unwrap();
        let mut distinct_keys = std::collections::HashSet::new();

        // For each record: its data key from `pgtrail keys unwrap`, as a DAS consumer gets
        // it from kms.decrypt, then the record itself.
        let mut input = String::new();
        for record in records.lines() {
            let mut unwrap = Command::new(pgtrail_binary())
                .args(["keys", "unwrap", "--key", key, "--record", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            unwrap.stdin.take().unwrap().write_all(record.as_bytes()).unwrap();
            let out = unwrap.wait_with_output().unwrap();
            assert!(out.status.success(), "{out:?}");
            let data_key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            distinct_keys.insert(data_key.clone());
            input.push_str(&format!("{data_key} {record}\n"));
        }
        assert!(distinct_keys.len() >= 2, "{suite}: records under several data keys");

        let mut consumer = Command::new(&python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/das_consumer.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        consumer.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = consumer.wait_with_output().unwrap();
        assert!(out.status.success(), "the SDK consumer failed: {}", String::from_utf8_lossy(&out.stderr));
        let suites = String::from_utf8_lossy(&out.stderr);
        assert!(suites.lines().all(|l| l == format!("suite {suite}")), "{suite}: {suites}");
        let by_sdk: Vec<serde_json::Value> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();

        let tail = run_pgtrail(&["tail", "--journal", j, "--key", key, "--json"]);
        assert!(tail.status.success(), "{tail:?}");
        let by_tail: Vec<serde_json::Value> =
            String::from_utf8(tail.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(by_sdk, by_tail, "{suite}: the SDK and pgtrail tail decode the same events");
        let commands: Vec<&str> = by_sdk.iter().filter_map(|e| e["command"].as_str()).collect();
        for expected in ["CONNECT", "CREATE TABLE", "INSERT", "SELECT", "DROP TABLE", "DISCONNECT"] {
            assert!(commands.contains(&expected), "{suite}: {expected} missing from {commands:?}");
        }
        assert!(by_sdk.iter().any(|e| e["sqlState"] == "22012"), "{suite}: the failed statement");
    }
}
