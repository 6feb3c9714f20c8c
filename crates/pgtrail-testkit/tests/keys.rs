//! Key rotation and the witness, end to end: a journal written under one wrapping and
//! signing key, then under new ones, stays readable with a key ring and verifiable with
//! both verification keys; `pgtrail verify --witness` catches a journal cut short, which
//! the chain alone cannot.

use std::path::Path;
use std::process::Command;

use pgtrail_testkit::*;

fn pgtrail(args: &[&str]) -> std::process::Output {
    Command::new(pgtrail_binary()).args(args).output().unwrap()
}

fn keys_init(dir: &Path) {
    assert!(pgtrail(&["keys", "init", "--dir", dir.to_str().unwrap()]).status.success());
}

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
            c.journal_dir = journal.clone();
            c.journal.witness_dir = Some(witness.clone());
            c.wrapping_public_key = keys.join("wrapping.pub");
            c.signing_key = keys.join("signing.key");
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
    let only_new = pgtrail(&["tail", "--journal", j, "--key", new_key.to_str().unwrap(), "--json"]);
    assert!(!only_new.status.success());
    assert!(String::from_utf8_lossy(&only_new.stderr).contains("pgtw-"), "{only_new:?}");
    // A key ring with both reads everything.
    let both = pgtrail(&[
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
    let one = pgtrail(&["verify", "--journal", j, "--verify-key", nv]);
    assert!(!one.status.success(), "an old checkpoint's key is unknown: {one:?}");
    let w = witness.to_str().unwrap();
    let ok = pgtrail(&["verify", "--journal", j, "--verify-key", ov, "--verify-key", nv, "--witness", w]);
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
    let chain_only = pgtrail(&["verify", "--journal", j, "--verify-key", ov, "--verify-key", nv]);
    assert!(chain_only.status.success(), "{chain_only:?}");
    let cut = pgtrail(&["verify", "--journal", j, "--verify-key", ov, "--verify-key", nv, "--witness", w]);
    assert_eq!(cut.status.code(), Some(1), "{cut:?}");
    assert!(String::from_utf8_lossy(&cut.stdout).contains("truncated"), "{cut:?}");
}
