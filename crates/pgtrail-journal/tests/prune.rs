//! Pruning keeps the proof: after `prune`, what remains verifies from the signed anchor,
//! readers read on from it, and deleting a journal's head any other way still fails.

use std::path::Path;

use pgtrail_journal::*;

const INSTANCE: &str = "db-PRUNETEST";
const T0: i64 = 1_700_000_000_000_000;

fn options(signer: &CheckpointSigner, witness: &Path) -> JournalOptions {
    JournalOptions {
        segment_max_bytes: 1500,
        instance: INSTANCE.into(),
        signer: Some(signer.clone()),
        checkpoint_every_records: 4,
        checkpoint_every: std::time::Duration::from_secs(3600),
        witness_dir: Some(witness.to_path_buf()),
        set_aside_damage: false,
    }
}

/// A journal of 60 envelopes of 100 bytes, one second apart, in many small segments.
fn journal(dir: &Path, signer: &CheckpointSigner) {
    let mut j = Journal::open(dir.join("j"), options(signer, &dir.join("w"))).unwrap();
    for i in 0..60i64 {
        j.append(T0 + i * 1_000_000, &[i as u8; 100]).unwrap();
        j.checkpoint_if_due().unwrap();
    }
    j.close().unwrap();
}

fn keys(signer: &CheckpointSigner) -> VerifierSet {
    let mut keys = VerifierSet::new();
    keys.add(signer.verifying_key());
    keys
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    out.sort();
    out
}

#[test]
fn a_pruned_journal_verifies_from_its_anchor_and_readers_read_on_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let signer = CheckpointSigner::generate();
    journal(dir.path(), &signer);
    let j = dir.path().join("j");
    let before = verify_dir(&j, &keys(&signer), Some(&dir.path().join("w"))).unwrap().unwrap();
    let count = segments(&j).len();

    let report = prune(&j, Before::Seq(40), u64::MAX, None, &signer, &VerifierSet::new()).unwrap();
    let anchor = report.anchor.clone().expect("segments before record 40 are pruned");
    assert!(!report.deleted.is_empty() && report.deleted.len() < count);
    assert!(anchor.first_seq > 1 && anchor.first_seq <= 40, "only whole segments before 40: {}", anchor.first_seq);
    assert_eq!(segments(&j).len(), count - report.deleted.len());

    let after = verify_dir(&j, &keys(&signer), Some(&dir.path().join("w"))).unwrap().unwrap();
    assert_eq!(
        (after.last_seq, after.last_hash, after.pruned_before),
        (before.last_seq, before.last_hash, anchor.first_seq)
    );
    assert!(after.witnessed_pruned > 0, "witnessed checkpoints of pruned records are accounted for");
    assert_eq!(after.witnessed + after.witnessed_pruned, before.witnessed);

    let mut reader = JournalReader::open(&j, 1).unwrap();
    let first = reader.next_record().unwrap().unwrap();
    assert_eq!(first.seq, anchor.first_seq);
    assert_eq!(reader.pruned(), Some((1, anchor.first_seq - 1)));
    let mut last = first.seq;
    while let Some(r) = reader.next_record().unwrap() {
        last = r.seq;
    }
    assert_eq!(last, before.last_seq);
}

#[test]
fn a_prune_goes_no_further_than_what_is_kept_elsewhere_nor_past_the_time_given() {
    let dir = tempfile::tempdir().unwrap();
    let signer = CheckpointSigner::generate();
    journal(dir.path(), &signer);
    let j = dir.path().join("j");

    let report = prune(&j, Before::Seq(u64::MAX), 12, None, &signer, &VerifierSet::new()).unwrap();
    let first = report.anchor.expect("something is archived").first_seq;
    assert!(first <= 13, "records after 12 are not kept elsewhere: the journal starts at {first}");
    assert!(report.stopped_by.contains("after 12"), "{}", report.stopped_by);

    // Records are one second apart: those appended before T0 + 30 s may go.
    let report = prune(&j, Before::Time(T0 + 30_000_000), u64::MAX, None, &signer, &VerifierSet::new()).unwrap();
    let first = report.anchor.expect("a later anchor").first_seq;
    let mut reader = JournalReader::open(&j, 1).unwrap();
    let kept = reader.next_record().unwrap().unwrap();
    assert_eq!(kept.seq, first);
    assert!(first > 13, "the second prune went further");
    // The first segment kept holds a record appended at or after the time: it had to stay.
    let next_first: u64 = segments(&j)[1].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let mut latest = kept.timestamp_micros;
    while reader.position() < next_first {
        latest = latest.max(reader.next_record().unwrap().unwrap().timestamp_micros);
    }
    assert!(latest >= T0 + 30_000_000, "the first segment kept could have been pruned");
    assert!(verify_dir(&j, &keys(&signer), None).unwrap().is_ok());
}

#[test]
fn a_head_deleted_without_the_signing_key_still_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let signer = CheckpointSigner::generate();
    journal(dir.path(), &signer);
    let j = dir.path().join("j");
    let keys = keys(&signer);

    let copy_of = |name: &str| {
        let copy = dir.path().join(name);
        std::fs::create_dir(&copy).unwrap();
        for seg in segments(&j) {
            std::fs::copy(&seg, copy.join(seg.file_name().unwrap())).unwrap();
        }
        copy
    };
    // Deleted segments, no anchor: verification and readers both say so.
    let copy = copy_of("copy");
    std::fs::remove_file(&segments(&copy)[0]).unwrap();
    let failure = verify_dir(&copy, &keys, None).unwrap().unwrap_err();
    assert!(failure.problem.contains("earlier segments are missing"), "{failure}");
    let error = JournalReader::open(&copy, 1).unwrap().next_record().unwrap_err();
    assert!(error.to_string().contains("no prune anchor"), "{error}");

    // An anchor signed by another key.
    let stranger = CheckpointSigner::generate();
    let copy = copy_of("stranger");
    prune(&copy, Before::Seq(30), u64::MAX, None, &stranger, &keys).unwrap();
    let failure = verify_dir(&copy, &keys, None).unwrap().unwrap_err();
    assert!(failure.problem.contains("not among the verification keys"), "{failure}");

    // A real anchor moved on by hand (to hide more records): its signature breaks.
    prune(&j, Before::Seq(20), u64::MAX, None, &signer, &keys).unwrap();
    let mut anchor = read_anchor(&j).unwrap().unwrap();
    let later = segments(&j)[1].clone();
    let later_first: u64 = later.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    std::fs::remove_file(&segments(&j)[0]).unwrap();
    let header = std::fs::read(&later).unwrap();
    anchor.first_seq = later_first;
    anchor.start_hash = hex::encode(&header[24..56]);
    std::fs::write(j.join("anchor.json"), serde_json::to_vec(&anchor).unwrap()).unwrap();
    let failure = verify_dir(&j, &keys, None).unwrap().unwrap_err();
    assert!(failure.problem.contains("signature is invalid"), "{failure}");

    // The anchor deleted.
    std::fs::remove_file(j.join("anchor.json")).unwrap();
    assert!(verify_dir(&j, &keys, None).unwrap().is_err());
}

/// A prune that stopped after writing its anchor but before deleting every segment leaves
/// a journal that verifies; the next prune finishes the job.
#[test]
fn segments_left_before_the_anchor_by_an_interrupted_prune_are_ignored_then_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let signer = CheckpointSigner::generate();
    journal(dir.path(), &signer);
    let j = dir.path().join("j");
    let first = segments(&j)[0].clone();
    let saved = std::fs::read(&first).unwrap();
    prune(&j, Before::Seq(30), u64::MAX, None, &signer, &VerifierSet::new()).unwrap();
    std::fs::write(&first, saved).unwrap();

    let report = verify_dir(&j, &keys(&signer), None).unwrap().unwrap();
    assert_eq!(report.leftover_segments, 1);
    let mut reader = JournalReader::open(&j, 1).unwrap();
    assert_eq!(reader.next_record().unwrap().unwrap().seq, read_anchor(&j).unwrap().unwrap().first_seq);

    let report = prune(&j, Before::Seq(1), u64::MAX, None, &signer, &VerifierSet::new()).unwrap();
    assert_eq!(report.deleted, vec![first.clone()]);
    assert!(!first.exists());
}
