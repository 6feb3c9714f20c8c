//! Tamper evidence of the archive: an archive made from a journal (with a retention run
//! and a journal prune behind it) verifies against the journal; every random tampering
//! of it (1,000 trials: changed bytes in data files and manifest entries, files and
//! entries deleted, added, swapped or moved, rows added, removed or changed with the
//! manifest rewritten and re-signed by a key that is not the archive's, the manifest cut
//! short) fails verification.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use chrono::{Duration, Utc};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pgtrail_archive::manifest::Entry;
use pgtrail_archive::{ArchiveRun, Roll, verify_archive};
use pgtrail_envelope::{KeyRing, Sealer, SealerConfig, WrappingPrivateKey};
use pgtrail_event::{ActivityEvent, EventClass, activity_record_json};
use pgtrail_journal::{Before, CheckpointSigner, Journal, JournalOptions, VerifierSet};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const INSTANCE: &str = "db-ARCHTAMPER";

struct Fixture {
    dir: tempfile::TempDir,
    /// The journal's directory name under `dir`, and its instance.
    journal: &'static str,
    instance: &'static str,
    keys: VerifierSet,
    wrapping: WrappingPrivateKey,
    archive_key: CheckpointSigner,
}

impl Fixture {
    fn journal(&self) -> PathBuf {
        self.dir.path().join(self.journal)
    }
    fn archive(&self) -> PathBuf {
        self.dir.path().join("archive")
    }
    fn run(&self, retention_days: Option<u32>) {
        self.archive_into(&self.archive(), 40, retention_days).unwrap();
    }

    /// Archives this fixture's journal into `target` with its keys.
    fn archive_into(
        &self,
        target: &Path,
        roll_events: usize,
        retention_days: Option<u32>,
    ) -> Result<pgtrail_archive::Progress, pgtrail_reader::ConsumerError> {
        let mut ring = KeyRing::new();
        ring.add(WrappingPrivateKey::from_bytes(&self.wrapping.to_bytes()).unwrap());
        let run = ArchiveRun {
            journal: self.journal().into(),
            target: target.display().to_string(),
            state: None,
            follow: false,
            roll: Roll { events: roll_events, age: std::time::Duration::from_secs(60) },
            progress: false,
            signer: self.archive_key.clone(),
            retention_days,
        };
        pgtrail_archive::run(&run, ring, &|| false)
    }
}

/// Appends `records` records of 1 to 4 events, the events of record i at `start` + i s.
fn append(fixture: &Fixture, signer: &CheckpointSigner, records: u64, start: chrono::DateTime<Utc>) {
    let options = JournalOptions {
        segment_max_bytes: 8_000,
        instance: fixture.instance.into(),
        signer: Some(signer.clone()),
        checkpoint_every_records: 5,
        ..JournalOptions::default()
    };
    let mut journal = Journal::open(fixture.journal(), options).unwrap();
    let mut sealer = Sealer::new(Arc::new(fixture.wrapping.public_key()), SealerConfig::default());
    for i in 0..records {
        let events: Vec<ActivityEvent> = (0..1 + i % 4)
            .map(|k| {
                let at = start + Duration::seconds(i as i64);
                let mut e = ActivityEvent::new(EventClass::Read, "SELECT", at);
                e.command_text = Some(format!("SELECT {i}, {k} FROM accounts").into());
                e.db_user_name = Some(Arc::from(format!("teller_{}", i % 3)));
                e
            })
            .collect();
        let sealed = sealer.seal(&activity_record_json("cluster", fixture.instance, &events)).unwrap();
        journal.append(Utc::now().timestamp_micros(), sealed.json.as_bytes()).unwrap();
        journal.checkpoint_if_due().unwrap();
    }
    journal.close().unwrap();
}

/// A journal of 150 records over two dates ten days apart; archived; a retention run
/// deletes the old date; 30 more records archived; then the journal pruned.
fn fixture() -> Fixture {
    let signer = CheckpointSigner::generate();
    let archive_key = CheckpointSigner::generate();
    let mut keys = VerifierSet::new();
    keys.add(signer.verifying_key());
    keys.add(archive_key.verifying_key());
    let fixture = Fixture {
        dir: tempfile::tempdir().unwrap(),
        journal: "journal",
        instance: INSTANCE,
        keys,
        wrapping: WrappingPrivateKey::generate(),
        archive_key,
    };
    let now = Utc::now();
    append(&fixture, &signer, 60, now - Duration::days(10));
    append(&fixture, &signer, 60, now - Duration::hours(2));
    fixture.run(None);
    fixture.run(Some(5));
    append(&fixture, &signer, 30, now - Duration::hours(1));
    fixture.run(Some(5));
    let pruned = pgtrail_archive::prune_journal(
        &fixture.journal(),
        &fixture.archive().display().to_string(),
        Before::Seq(100),
        &signer,
        &fixture.keys,
    )
    .unwrap();
    assert!(pruned.anchor.is_some() && !pruned.deleted.is_empty(), "the fixture's journal is pruned");
    fixture
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path, ext));
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn verify(archive: &Path, fixture: &Fixture) -> Result<pgtrail_archive::ArchiveReport, String> {
    match verify_archive(&archive.display().to_string(), &fixture.keys, Some(&fixture.journal())) {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(failure)) => Err(failure.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

fn manifest_entries(archive: &Path) -> Vec<(PathBuf, Entry)> {
    files(&archive.join("_manifest"), "json")
        .into_iter()
        .map(|p| {
            let entry = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (p, entry)
        })
        .collect()
}

/// Rewrites entries from `index` on with `signer`, relinking the chain (what an attacker
/// without the archive key can do at best).
fn reseal_from(entries: &mut [(PathBuf, Entry)], index: usize, signer: &CheckpointSigner) {
    for i in index..entries.len() {
        if i > 0 {
            entries[i].1.prev = entries[i - 1].1.hash.clone();
        }
        entries[i].1 = entries[i].1.clone().sealed(signer);
        std::fs::write(&entries[i].0, serde_json::to_vec(&entries[i].1).unwrap()).unwrap();
    }
}

/// Rewrites a data file's rows with `change`, and its entry to match.
fn rewrite_rows(archive: &Path, rng: &mut StdRng, change: u32) {
    let mut entries = manifest_entries(archive);
    let live: Vec<usize> = (0..entries.len()).filter(|&i| archive.join(&entries[i].1.path).exists()).collect();
    let index = live[rng.random_range(0..live.len())];
    let path = archive.join(&entries[index].1.path);
    let bytes = bytes::Bytes::from(std::fs::read(&path).unwrap());
    let batch: RecordBatch =
        ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap().next().unwrap().unwrap();
    let n = batch.num_rows();
    let batch = match change {
        0 if n > 1 => batch.slice(1, n - 1),                          // a row removed
        0 | 1 => arrow_select_concat(&batch, &batch.slice(n - 1, 1)), // a row repeated
        _ => {
            // A value changed: every db_user_name is someone else's.
            let column = batch.schema().index_of("db_user_name").unwrap();
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            columns[column] = Arc::new(StringArray::from(vec![Some("mallory"); n]));
            RecordBatch::try_new(batch.schema(), columns).unwrap()
        }
    };
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    std::fs::write(&path, &out).unwrap();
    use sha2::Digest;
    entries[index].1.sha256 = hex::encode(sha2::Sha256::digest(&out));
    entries[index].1.rows = batch.num_rows() as u64;
    reseal_from(&mut entries, index, &CheckpointSigner::generate());
}

fn arrow_select_concat(a: &RecordBatch, b: &RecordBatch) -> RecordBatch {
    let columns = (0..a.num_columns())
        .map(|i| arrow_select::concat::concat(&[a.column(i).as_ref(), b.column(i).as_ref()]).unwrap())
        .collect();
    RecordBatch::try_new(a.schema(), columns).unwrap()
}

fn tamper(archive: &Path, rng: &mut StdRng) -> &'static str {
    let data = files(archive, "parquet");
    let mut entries = manifest_entries(archive);
    let pick = |rng: &mut StdRng, n: usize| rng.random_range(0..n);
    match rng.random_range(0..11) {
        0 => {
            let path = &data[pick(rng, data.len())];
            let mut bytes = std::fs::read(path).unwrap();
            let at = pick(rng, bytes.len());
            bytes[at] ^= 1 << rng.random_range(0..8);
            std::fs::write(path, bytes).unwrap();
            "a bit flipped in a data file"
        }
        1 => {
            let (path, _) = &entries[pick(rng, entries.len())];
            let mut bytes = std::fs::read(path).unwrap();
            let at = pick(rng, bytes.len());
            let mut changed = bytes[at];
            while changed == bytes[at] {
                changed = rng.random_range(0x20..0x7f);
            }
            bytes[at] = changed;
            std::fs::write(path, bytes).unwrap();
            "a character changed in a manifest entry"
        }
        2 => {
            std::fs::remove_file(&data[pick(rng, data.len())]).unwrap();
            "a data file deleted"
        }
        3 => {
            std::fs::remove_file(&entries[pick(rng, entries.len())].0).unwrap();
            "a manifest entry deleted"
        }
        4 => {
            let from = &data[pick(rng, data.len())];
            let dir = data[pick(rng, data.len())].parent().unwrap().to_path_buf();
            std::fs::copy(from, dir.join(format!("part-{:08}.parquet", 90_000_000 + pick(rng, 1000)))).unwrap();
            "an extra data file"
        }
        5 => {
            let (path, last) = entries.last().unwrap().clone();
            let mut extra = last.clone();
            extra.seq += 1;
            extra.prev = last.hash.clone();
            extra.from_record_seq = last.through_record_seq + 1;
            extra.through_record_seq = last.through_record_seq + 1;
            let extra = extra.sealed(&CheckpointSigner::generate());
            let name = path.with_file_name(format!("{:010}.json", extra.seq));
            std::fs::write(name, serde_json::to_vec(&extra).unwrap()).unwrap();
            "an extra manifest entry signed by another key"
        }
        6 => {
            let change = rng.random_range(0..3);
            rewrite_rows(archive, rng, change);
            ["a row removed", "a row repeated", "values changed"][change as usize]
        }
        7 => {
            let cut = pick(rng, entries.len());
            for (path, entry) in &entries[cut..] {
                std::fs::remove_file(path).unwrap();
                let _ = std::fs::remove_file(archive.join(&entry.path));
            }
            "the manifest cut short with its files"
        }
        8 => {
            let (a, b) = (pick(rng, data.len()), pick(rng, data.len()));
            let b = if a == b { (b + 1) % data.len() } else { b };
            let (bytes_a, bytes_b) = (std::fs::read(&data[a]).unwrap(), std::fs::read(&data[b]).unwrap());
            std::fs::write(&data[a], bytes_b).unwrap();
            std::fs::write(&data[b], bytes_a).unwrap();
            "two data files swapped"
        }
        9 => {
            let from = &data[pick(rng, data.len())];
            let to = archive.join("date=2020-01-01").join(format!("instance={INSTANCE}"));
            std::fs::create_dir_all(&to).unwrap();
            std::fs::rename(from, to.join(from.file_name().unwrap())).unwrap();
            "a data file moved to another date"
        }
        _ => {
            // An entry's signature replaced by a valid one of another key, the chain intact.
            let index = pick(rng, entries.len());
            let other = CheckpointSigner::generate();
            entries[index].1 = entries[index].1.clone().sealed(&other);
            std::fs::write(&entries[index].0, serde_json::to_vec(&entries[index].1).unwrap()).unwrap();
            "an entry re-signed by another key"
        }
    }
}

#[test]
fn a_thousand_random_tamperings_of_the_archive_are_all_detected() {
    let fixture = fixture();
    let report = verify(&fixture.archive(), &fixture).expect("the untouched archive verifies");
    let instance = &report.instances[0];
    let mut reader = pgtrail_journal::JournalReader::open(fixture.journal(), 1).unwrap();
    let mut last_envelope = 0;
    while let Some(record) = reader.next_record().unwrap() {
        if record.kind == pgtrail_journal::RecordKind::Envelope {
            last_envelope = record.seq;
        }
    }
    assert_eq!(instance.through_record_seq, last_envelope, "the archive reaches the journal's last envelope");
    assert!(instance.expired_files > 0 && instance.pinned_entry.is_some(), "{instance:?}");

    let untouched = fixture.dir.path().join("untouched");
    copy_dir(&fixture.archive(), &untouched);
    assert_eq!(verify(&untouched, &fixture), Ok(report), "a copy verifies as the original does");

    let mut rng = StdRng::seed_from_u64(16);
    let mut kinds = std::collections::BTreeMap::new();
    for trial in 0..1000 {
        let archive = fixture.dir.path().join(format!("trial-{trial}"));
        copy_dir(&fixture.archive(), &archive);
        let kind = tamper(&archive, &mut rng);
        let result = verify(&archive, &fixture);
        assert!(result.is_err(), "trial {trial}: {kind} was not detected");
        if std::env::var_os("SHOW_TAMPER").is_some() {
            eprintln!("{kind}: {}", result.unwrap_err());
        }
        *kinds.entry(kind).or_insert(0) += 1;
        std::fs::remove_dir_all(&archive).unwrap();
    }
    assert_eq!(kinds.len(), 13, "every kind of tampering was tried: {kinds:?}");
}

#[test]
fn retention_deletes_old_dates_and_says_so_in_the_manifest_and_a_control_event() {
    let fixture = fixture();
    let entries = manifest_entries(&fixture.archive());
    let retention: Vec<&Entry> = entries.iter().map(|(_, e)| e).filter(|e| !e.expired.is_empty()).collect();
    assert_eq!(retention.len(), 1, "one retention run deleted files");
    let old = (Utc::now() - Duration::days(10)).date_naive().format("%Y-%m-%d").to_string();
    for seq in &retention[0].expired {
        let expired = &entries[*seq as usize - 1].1;
        assert_eq!(expired.date, old, "only files of the old date expire");
        assert!(!fixture.archive().join(&expired.path).exists());
    }
    assert!(
        !fixture.archive().join(format!("date={old}")).exists()
            || files(&fixture.archive().join(format!("date={old}")), "parquet").is_empty()
    );
    // The control event is in the archive, as a row an auditor's query finds.
    let bytes = bytes::Bytes::from(std::fs::read(fixture.archive().join(&retention[0].path)).unwrap());
    let batch = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap().next().unwrap().unwrap();
    let column = |name: &str| {
        batch.column_by_name(name).unwrap().as_any().downcast_ref::<StringArray>().unwrap().value(0).to_owned()
    };
    assert_eq!((column("type"), column("command")), ("control".to_owned(), "ARCHIVE RETENTION".to_owned()));
    assert!(column("command_text").contains(&format!("dates {old} to {old}")), "{}", column("command_text"));
}

/// Two journals archived into one archive: before each instance had a manifest chain of
/// its own, the second journal's records were skipped as "archived already" because the
/// first journal's manifest reached further.
#[test]
fn a_second_instance_was_skipped_by_the_first_instances_manifest() {
    let signer = CheckpointSigner::generate();
    let first = fixture();
    let second = Fixture {
        dir: tempfile::tempdir().unwrap(),
        journal: "journal",
        instance: "db-SECOND",
        keys: first.keys.clone(),
        wrapping: WrappingPrivateKey::from_bytes(&first.wrapping.to_bytes()).unwrap(),
        archive_key: first.archive_key.clone(),
    };
    append(&second, &signer, 20, Utc::now() - Duration::minutes(5));
    let done = second.archive_into(&first.archive(), Roll::EVENTS, None).unwrap();
    assert_eq!((done.skipped, done.events), (0, (0..20).map(|i| 1 + i % 4).sum()), "{done:?}");
    let mut keys = first.keys.clone();
    keys.add(signer.verifying_key());
    let report =
        verify_archive(&first.archive().display().to_string(), &keys, Some(&second.journal())).unwrap().unwrap();
    let names: Vec<&str> = report.instances.iter().map(|i| i.instance.as_str()).collect();
    assert_eq!(names, [INSTANCE, "db-SECOND"]);
    assert!(report.instances[1].journal_checked.is_some());
}

/// An archive made by the earlier format (one unsigned chain at `_manifest/N.json`) is left
/// alone: the archiver would otherwise take its files for orphans and delete them.
#[test]
fn an_archive_of_the_earlier_format_is_refused_and_left_untouched() {
    let fixture = fixture();
    let old = fixture.dir.path().join("old");
    let file = old.join(format!("date=2026-11-01/instance={INSTANCE}/part-00000001.parquet"));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::copy(&files(&fixture.archive(), "parquet")[0], &file).unwrap();
    std::fs::create_dir_all(old.join("_manifest")).unwrap();
    std::fs::write(old.join("_manifest/0000000001.json"), b"{}").unwrap();
    let error = fixture.archive_into(&old, Roll::EVENTS, None).unwrap_err().to_string();
    assert!(error.contains("earlier pgtrail"), "{error}");
    assert!(file.exists(), "the earlier archive's file is still there");
}
