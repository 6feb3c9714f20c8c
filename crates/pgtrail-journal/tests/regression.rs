//! Regression tests, each named after the bug it pins (issue numbers in the docs).

use std::path::{Path, PathBuf};

use pgtrail_journal::*;

const INSTANCE: &str = "db-REGRESSION";

fn options(witness: Option<&Path>, signer: &CheckpointSigner) -> JournalOptions {
    JournalOptions {
        instance: INSTANCE.into(),
        signer: Some(signer.clone()),
        checkpoint_every_records: 10,
        checkpoint_every: std::time::Duration::from_secs(3600),
        witness_dir: witness.map(Path::to_path_buf),
        ..JournalOptions::default()
    }
}

/// Writes 60 envelope records (and their checkpoints) into one segment; returns it.
fn write(dir: &Path, witness: Option<&Path>, signer: &CheckpointSigner) -> PathBuf {
    let mut j = Journal::open(dir, options(witness, signer)).unwrap();
    for i in 0..60i64 {
        j.append(1_700_000_000_000_000 + i, format!("record payload number {i:04}").as_bytes()).unwrap();
        j.checkpoint_if_due().unwrap();
    }
    j.close().unwrap();
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    assert_eq!(segments.len(), 1);
    segments.remove(0)
}

fn keys(signer: &CheckpointSigner) -> VerifierSet {
    let mut keys = VerifierSet::new();
    keys.add(signer.verifying_key());
    keys
}

/// Issue 12.2: one flipped byte in a record in the middle of the last segment made the
/// next start treat it and every valid record after it (checkpoints included) as a torn
/// tail and cut them, after which `verify` said OK.
#[test]
fn regression_restart_erased_records_after_a_tampered_one() {
    let dir = tempfile::tempdir().unwrap();
    let signer = CheckpointSigner::generate();
    let segment = write(&dir.path().join("j"), None, &signer);
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let failure = verify_dir(&dir.path().join("j"), &keys(&signer), None).unwrap().unwrap_err();

    // Opening for writing refuses, names the record, and changes nothing.
    let err = Journal::open(dir.path().join("j"), options(None, &signer)).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, JournalError::Damaged { .. }), "{message}");
    assert!(message.contains("damage or tampering") && message.contains("record"), "{message}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "the damaged segment is untouched");
    let again = verify_dir(&dir.path().join("j"), &keys(&signer), None).unwrap().unwrap_err();
    assert_eq!(again.to_string(), failure.to_string(), "verify still fails at the same record");

    // Setting the damage aside keeps the damaged segment intact and continues the chain.
    let mut set_aside = options(None, &signer);
    set_aside.set_aside_damage = true;
    let mut j = Journal::open(dir.path().join("j"), set_aside).unwrap();
    let recovery = j.recovery().cloned().expect("the repair is reported");
    let aside = recovery.set_aside.expect("set aside");
    assert_eq!(std::fs::read(&aside).unwrap(), bytes, "the set-aside file is the damaged segment, byte for byte");
    assert!(recovery.reason.contains("damaged"), "{}", recovery.reason);
    j.append(1, b"after the repair").unwrap();
    j.close().unwrap();
    let report = verify_dir(&dir.path().join("j"), &keys(&signer), None).unwrap().expect("the chain verifies");
    assert!(report.last_seq > 1);
}

/// Issue 12.2: a torn tail (an incomplete last record) is still cut, but a record that the
/// witness holds a checkpoint for is never cut, even when it looks torn.
#[test]
fn regression_recovery_cut_a_record_the_witness_had_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let signer = CheckpointSigner::generate();
    let witness = dir.path().join("w");
    let segment = write(&dir.path().join("j"), Some(&witness), &signer);
    let bytes = std::fs::read(&segment).unwrap();
    // Cut the final checkpoint record in half: it looks like a torn write.
    std::fs::write(&segment, &bytes[..bytes.len() - 40]).unwrap();
    let err = Journal::open(dir.path().join("j"), options(Some(&witness), &signer)).unwrap_err();
    assert!(err.to_string().contains("witness holds a checkpoint"), "{err}");
    assert_eq!(std::fs::read(&segment).unwrap().len(), bytes.len() - 40, "nothing was cut");

    // Without a checkpoint of it anywhere, the same cut is a torn tail and recovers.
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), options(None, &signer)).unwrap();
    for i in 0..5 {
        j.append(i, b"payload").unwrap();
    }
    j.sync().unwrap();
    drop(j);
    let segment = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
    let bytes = std::fs::read(&segment).unwrap();
    std::fs::write(&segment, &bytes[..bytes.len() - 3]).unwrap();
    let j = Journal::open(dir.path(), options(None, &signer)).unwrap();
    let recovery = j.recovery().expect("cut reported");
    assert_eq!(recovery.set_aside, None);
    assert_eq!(j.next_seq(), 5);
}
