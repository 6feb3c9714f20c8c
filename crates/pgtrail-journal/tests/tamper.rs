//! Tamper evidence: a journal written with checkpoints and a witness verifies; every
//! random mutation of it (10,000 trials of changed bytes, deleted, inserted, duplicated or
//! reordered records, cut files and segments, and rewrites that recompute every CRC and
//! hash and even re-sign checkpoints with a key of the attacker's) fails verification.
//!
//! The mutations work on the documented byte layout (crate docs), not on the crate's own
//! encoder, so the test also pins the format.

use std::path::{Path, PathBuf};

use pgtrail_journal::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

const INSTANCE: &str = "db-TAMPERTEST";
const SEGMENT_HEADER: usize = 128;
const RECORD_HEADER: usize = 96;

struct Fixture {
    _dir: tempfile::TempDir,
    segments: Vec<(PathBuf, Vec<u8>)>,
    witness: Vec<Checkpoint>,
    keys: VerifierSet,
    signer: CheckpointSigner,
}

fn write_journal(dir: &Path, witness: &Path, signer: &CheckpointSigner, seed: u64) {
    let options = JournalOptions {
        segment_max_bytes: 1500,
        instance: INSTANCE.into(),
        signer: Some(signer.clone()),
        checkpoint_every_records: 4,
        checkpoint_every: std::time::Duration::from_secs(3600),
        witness_dir: Some(witness.to_path_buf()),
        set_aside_damage: false,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut j = Journal::open(dir, options).unwrap();
    for i in 0..30i64 {
        let len = rng.random_range(20..200);
        let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        j.append(1_700_000_000_000_000 + i, &payload).unwrap();
        j.checkpoint_if_due().unwrap();
    }
    j.close().unwrap();
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let signer = CheckpointSigner::generate();
    write_journal(&dir.path().join("j"), &dir.path().join("w"), &signer, 7);
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir.path().join("j")).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    let segments = names.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    let witness = pgtrail_journal::checkpoint::read_witness(&dir.path().join("w"), INSTANCE).unwrap();
    let mut keys = VerifierSet::new();
    keys.add(signer.verifying_key());
    Fixture { _dir: dir, segments, witness, keys, signer }
}

/// Byte ranges of the records of a segment.
fn records(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER;
    while at + RECORD_HEADER <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if at + RECORD_HEADER + len > bytes.len() {
            break;
        }
        out.push(at..at + RECORD_HEADER + len);
        at += RECORD_HEADER + len;
    }
    out
}

fn hash_record(record: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&record[32..64]); // prev hash
    h.update([record[8]]); // kind
    h.update(&record[16..32]); // seq, timestamp
    h.update(&record[0..4]); // payload length
    h.update(&record[RECORD_HEADER..]);
    h.finalize().into()
}

fn seal_record(record: &mut [u8]) {
    let hash = hash_record(record);
    record[64..96].copy_from_slice(&hash);
    let crc = crc32c::crc32c(&record[8..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// What an attacker with write access but no signing key can do best: change a record and
/// recompute every hash, CRC and segment start hash after it; checkpoints after the change
/// are re-signed with the attacker's own key (or left alone).
fn rewrite_from(segments: &mut [(PathBuf, Vec<u8>)], seg: usize, rec: usize, rng: &mut StdRng, resign: bool) {
    let attacker = CheckpointSigner::generate();
    let mut prev: Option<[u8; 32]> = None;
    for (s, (_, bytes)) in segments.iter_mut().enumerate().skip(seg) {
        if bytes.len() < SEGMENT_HEADER {
            continue;
        }
        if let Some(p) = prev {
            bytes[24..56].copy_from_slice(&p);
            let crc = crc32c::crc32c(&bytes[16..SEGMENT_HEADER]);
            bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        }
        for (r, range) in records(bytes).into_iter().enumerate() {
            if s == seg && r < rec {
                continue;
            }
            let record = &mut bytes[range];
            if let Some(p) = prev {
                record[32..64].copy_from_slice(&p);
            }
            if s == seg && r == rec {
                let at = RECORD_HEADER + rng.random_range(0..record.len() - RECORD_HEADER);
                record[at] ^= 1 << rng.random_range(0..8);
            }
            if record[8] == 2 && resign && record.len() > RECORD_HEADER + 64 {
                // Re-sign: same shape, the attacker's key; keeps the length.
                let seq = u64::from_le_bytes(record[16..24].try_into().unwrap());
                let payload = attacker.sign(INSTANCE, seq - 1, record[32..64].try_into().unwrap(), 0);
                assert_eq!(payload.len(), record.len() - RECORD_HEADER);
                record[RECORD_HEADER..].copy_from_slice(&payload);
            }
            seal_record(record);
            prev = Some(record[64..96].try_into().unwrap());
        }
    }
}

fn mutate(segments: &mut Vec<(PathBuf, Vec<u8>)>, rng: &mut StdRng) -> &'static str {
    let seg = rng.random_range(0..segments.len());
    let recs = records(&segments[seg].1);
    if recs.is_empty() {
        // An earlier mutation left nothing to pick from here.
        if segments[seg].1.is_empty() {
            segments.remove(seg);
            return "delete a segment";
        }
        let bytes = &mut segments[seg].1;
        let at = rng.random_range(0..bytes.len());
        bytes[at] ^= 1 << rng.random_range(0..8);
        return "flip a bit";
    }
    match rng.random_range(0..10) {
        0 | 1 => {
            let bytes = &mut segments[seg].1;
            let at = rng.random_range(0..bytes.len());
            bytes[at] ^= 1 << rng.random_range(0..8);
            "flip a bit"
        }
        2 => {
            let r = recs[rng.random_range(0..recs.len())].clone();
            segments[seg].1.drain(r);
            "delete a record"
        }
        3 => {
            let from = recs[rng.random_range(0..recs.len())].clone();
            let copy = segments[seg].1[from].to_vec();
            let to_seg = rng.random_range(0..segments.len());
            let to_recs = records(&segments[to_seg].1);
            let at = if rng.random_bool(0.5) && !to_recs.is_empty() {
                to_recs[rng.random_range(0..to_recs.len())].start
            } else {
                segments[to_seg].1.len()
            };
            segments[to_seg].1.splice(at..at, copy);
            "duplicate a record"
        }
        4 => {
            if recs.len() < 2 {
                segments.remove(seg);
                return "delete a segment";
            }
            let i = rng.random_range(0..recs.len() - 1);
            let (a, b) = (recs[i].clone(), recs[i + 1].clone());
            let bytes = &mut segments[seg].1;
            let first = bytes[a.clone()].to_vec();
            let second = bytes[b.clone()].to_vec();
            let mut swapped = second;
            swapped.extend(first);
            bytes.splice(a.start..b.end, swapped);
            "swap two records"
        }
        5 => {
            let bytes = &mut segments[seg].1;
            let cut = rng.random_range(0..bytes.len());
            bytes.truncate(cut);
            "cut a file at a byte"
        }
        6 => {
            // Cut the journal at a record boundary: drop the tail, whole segments included.
            let keep = rng.random_range(0..recs.len());
            let end = recs[keep].start;
            segments[seg].1.truncate(end);
            segments.truncate(seg + 1);
            "truncate at a record boundary"
        }
        7 => {
            segments.remove(seg);
            "delete a segment"
        }
        8 => {
            let rec = rng.random_range(0..recs.len());
            rewrite_from(segments, seg, rec, rng, false);
            "rewrite and re-chain"
        }
        _ => {
            let rec = rng.random_range(0..recs.len());
            rewrite_from(segments, seg, rec, rng, true);
            "rewrite, re-chain and re-sign"
        }
    }
}

#[test]
fn the_intact_journal_verifies_and_covers_everything() {
    let f = fixture();
    assert!(f.segments.len() >= 3, "the fixture spans segments ({})", f.segments.len());
    let report = verify_segments(&f.segments, &f.keys, Some(&f.witness), true, None).unwrap();
    assert_eq!(report.envelopes, 30);
    assert_eq!(report.checkpoints, 8, "every 4 records and one at close");
    assert_eq!(report.uncovered, 0);
    assert_eq!(report.witnessed, 8);
    assert_eq!(report.instance, INSTANCE);
    // A verifier with some other key refuses the signatures.
    let mut other = VerifierSet::new();
    other.add(CheckpointSigner::generate().verifying_key());
    assert!(verify_segments(&f.segments, &other, None, false, None).is_err());
    let _ = &f.signer;
}

#[test]
fn ten_thousand_random_mutations_are_all_detected() {
    let f = fixture();
    let mut rng = StdRng::seed_from_u64(0x9e37_79b9);
    let mut kinds = std::collections::BTreeMap::<&str, u32>::new();
    for trial in 0..10_000 {
        let mut segments = f.segments.clone();
        let mut applied = Vec::new();
        for _ in 0..rng.random_range(1..=2) {
            if segments.is_empty() {
                break;
            }
            applied.push(mutate(&mut segments, &mut rng));
        }
        if segments == f.segments {
            continue; // e.g. a duplicate inserted and deleted again: nothing changed
        }
        *kinds.entry(applied[0]).or_default() += 1;
        let result = verify_segments(&segments, &f.keys, Some(&f.witness), true, None);
        assert!(result.is_err(), "trial {trial}: mutation {applied:?} went undetected: {result:?}");
    }
    assert!(kinds.values().sum::<u32>() >= 9_900, "{kinds:?}");
    assert!(kinds.len() >= 9, "every kind of mutation ran: {kinds:?}");
}

#[test]
fn without_the_witness_a_clean_cut_is_the_one_undetectable_change() {
    // Documents why the witness exists: cutting whole records off the end leaves a valid
    // (shorter) chain, which only the witness can tell from a journal that was never longer.
    let f = fixture();
    let mut segments = f.segments.clone();
    let last = segments.len() - 1;
    let recs = records(&segments[last].1);
    segments[last].1.truncate(recs[recs.len() - 1].start);
    assert!(verify_segments(&segments, &f.keys, None, false, None).is_ok());
    let err = verify_segments(&segments, &f.keys, Some(&f.witness), true, None).unwrap_err();
    assert!(err.problem.contains("truncated"), "{err}");
}

#[test]
fn verify_dir_names_the_first_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let signer = CheckpointSigner::generate();
    let (jdir, wdir) = (dir.path().join("j"), dir.path().join("w"));
    write_journal(&jdir, &wdir, &signer, 1);
    let mut keys = VerifierSet::new();
    keys.add(signer.verifying_key());
    let report = verify_dir(&jdir, &keys, Some(&wdir)).unwrap().unwrap();
    assert_eq!(report.last_seq, 38);
    // Change one payload byte of record 3 in place.
    let first = std::fs::read_dir(&jdir).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    let r = records(&bytes)[2].clone();
    bytes[r.start + RECORD_HEADER + 1] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let failure = verify_dir(&jdir, &keys, Some(&wdir)).unwrap().unwrap_err();
    assert_eq!(failure.seq, Some(3), "{failure}");
    assert!(failure.problem.contains("CRC32C"), "{failure}");
}
