//! Key rotation and the witness, end to end: a journal written under one wrapping and
//! signing key, then under new ones, stays readable with a key ring and verifiable with
//! both verification keys; `pgtrail verify --witness` catches a journal cut short, which
//! the chain alone cannot.

use pgtrail_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_keys_leave_old_records_readable_and_the_witness_catches_a_cut() {
    let pg = start_pg(HostAuth::Trust);
    let dir = tempfile::tempdir().unwrap();
    let (journal, witness) = (dir.path().join("journal"), dir.path().join("witness"));
    let (old_keys, new_keys) = (dir.path().join("keys-2025"), dir.path().join("keys-2026"));
    keys_init(&old_keys);
    keys_init(&new_keys);
    for (keys, marker) in [(&old_keys, "SELECT 'under the old keys'"), (&new_keys, "SELECT 'under the new keys'")] {
        let mut capture = TestCapture::start_with(&pg, |c| {
            c.writer.journal_dir = journal.clone();
            c.writer.journal.witness_dir = Some(witness.clone());
            c.writer.wrapping_public_key = keys.join("wrapping.pub");
            c.writer.signing_key = keys.join("signing.key");
        })
        .await;
        let client = connect(&capture.url("postgres", "", "postgres")).await.unwrap();
        client.simple_query(marker).await.unwrap();
        drop(client);
        capture.shutdown().await;
    }
    let j = journal.to_str().unwrap();
    let (old_key, new_key) = (old_keys.join("wrapping.key"), new_keys.join("wrapping.key"));

    // The new key alone cannot open the old records, and says which key they need.
    let only_new = run_pgtrail(&["tail", "--journal", j, "--key", new_key.to_str().unwrap(), "--json"]);
    assert!(!only_new.status.success());
    assert!(String::from_utf8_lossy(&only_new.stderr).contains("pgtw-"), "{only_new:?}");
    // A key ring with both reads everything.
    let both = run_pgtrail(&[
        "tail",
        "--journal",
        j,
        "--key",
        old_key.to_str().unwrap(),
        "--key",
        new_key.to_str().unwrap(),
        "--json",
    ]);
    assert!(both.status.success(), "{both:?}");
    let text = String::from_utf8_lossy(&both.stdout);
    assert!(text.contains("under the old keys") && text.contains("under the new keys"), "{text}");

    // Checkpoints signed by both signing keys: verify needs both verification keys.
    let (old_verify, new_verify) = (old_keys.join("verify.pub"), new_keys.join("verify.pub"));
    let (ov, nv) = (old_verify.to_str().unwrap(), new_verify.to_str().unwrap());
    let one = run_pgtrail(&["verify", "--journal", j, "--verify-key", nv]);
    assert!(!one.status.success(), "an old checkpoint's key is unknown: {one:?}");
    let w = witness.to_str().unwrap();
    let ok = run_pgtrail(&["verify", "--journal", j, "--verify-key", ov, "--verify-key", nv, "--witness", w]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("witness:"), "{ok:?}");

    // Cut the journal back to an earlier record boundary: the chain that remains is
    // intact, so only the witness can tell.
    let last = std::fs::read_dir(&journal).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let mut at = 128;
    let mut boundaries = vec![];
    while at + 96 <= bytes.len() {
        boundaries.push(at);
        at += 96 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    std::fs::write(&last, &bytes[..boundaries[boundaries.len() - 2]]).unwrap();
    let chain_only = run_pgtrail(&["verify", "--journal", j, "--verify-key", ov, "--verify-key", nv]);
    assert!(chain_only.status.success(), "{chain_only:?}");
    let cut = run_pgtrail(&["verify", "--journal", j, "--verify-key", ov, "--verify-key", nv, "--witness", w]);
    assert_eq!(cut.status.code(), Some(1), "{cut:?}");
    assert!(String::from_utf8_lossy(&cut.stdout).contains("truncated"), "{cut:?}");
}

#[test]
fn sighup_brings_in_a_new_wrapping_key_and_says_so_in_the_stream() {
    let pg = start_pg(HostAuth::Trust);
    let dir = tempfile::tempdir().unwrap();
    let (journal, keys, next) = (dir.path().join("journal"), dir.path().join("keys"), dir.path().join("next"));
    keys_init(&keys);
    keys_init(&next);
    // Readers keep the old private key next to the new one.
    std::fs::copy(keys.join("wrapping.key"), dir.path().join("wrapping-old.key")).unwrap();
    let port = free_port();
    let config = dir.path().join("pgtrail.toml");
    write_proxy_config(&config, port, &pg, &journal, &keys, "");
    let mut proxy = spawn_proxy_with_config(&config, &dir.path().join("proxy.log"), port);
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let run = |sql: &str| assert_ok(&psql(&pg, &url, &["-c", sql]));
    run("SELECT 'before the new key'");
    std::thread::sleep(std::time::Duration::from_millis(400));
    // The operator puts the new public key in place and sends SIGHUP.
    std::fs::copy(next.join("wrapping.pub"), keys.join("wrapping.pub")).unwrap();
    signal(&proxy, "-HUP");
    std::thread::sleep(std::time::Duration::from_millis(500));
    run("SELECT 'after the new key'");
    signal(&proxy, "-TERM");
    assert!(proxy.wait().unwrap().success());
    let log = std::fs::read_to_string(dir.path().join("proxy.log")).unwrap();
    assert!(log.contains("configuration reloaded"), "{log}");

    let j = journal.to_str().unwrap();
    let old_only =
        run_pgtrail(&["tail", "--journal", j, "--key", dir.path().join("wrapping-old.key").to_str().unwrap()]);
    assert!(!old_only.status.success(), "records after the reload are wrapped to the new key");
    let ring = run_pgtrail(&[
        "tail",
        "--journal",
        j,
        "--key",
        dir.path().join("wrapping-old.key").to_str().unwrap(),
        "--key",
        next.join("wrapping.key").to_str().unwrap(),
        "--json",
    ]);
    assert!(ring.status.success(), "{ring:?}");
    let events: Vec<pgtrail_event::ActivityEvent> =
        String::from_utf8(ring.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let reload = events.iter().find(|e| e.command == "CONFIGURATION RELOADED").expect("reload in the stream");
    assert!(reload.command_text.as_deref().unwrap().contains("applied: wrapping key"), "{reload:?}");
    let texts: Vec<&str> = events.iter().filter_map(|e| e.command_text.as_deref()).collect();
    assert!(texts.contains(&"SELECT 'before the new key'") && texts.contains(&"SELECT 'after the new key'"));
}
