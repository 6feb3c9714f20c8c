//! The consumer loop against real journals written by pgtrail-journal and sealed by
//! pgtrail-envelope: resuming at a durable cursor, replaying, and refusing a cursor that
//! belongs to another journal.

use std::path::Path;
use std::sync::Arc;

use pgtrail_envelope::{KeyRing, Sealer, SealerConfig, WrappingPrivateKey};
use pgtrail_event::{ActivityEvent, EventClass, activity_record_json};
use pgtrail_journal::{CheckpointSigner, Journal, JournalOptions};
use pgtrail_reader::{
    Consumer, ConsumerError, Cursor, CursorFile, Follow, Opened, ReadError, Reader, Resume, Step, consume,
};

/// Appends `commands` as one-event records (a checkpoint every third record).
fn append(dir: &Path, instance: &str, key: &WrappingPrivateKey, commands: &[String]) {
    let options = JournalOptions {
        instance: instance.into(),
        signer: Some(CheckpointSigner::generate()),
        checkpoint_every_records: 3,
        ..JournalOptions::default()
    };
    let mut journal = Journal::open(dir, options).unwrap();
    let mut sealer = Sealer::new(Arc::new(key.public_key()), SealerConfig::default());
    for command in commands {
        let event = ActivityEvent::new(EventClass::Read, command.clone(), chrono::Utc::now());
        let inner = activity_record_json("cluster", instance, &[event]);
        let sealed = sealer.seal(&inner).unwrap();
        journal.append(0, sealed.json.as_bytes()).unwrap();
    }
    journal.sync().unwrap();
    journal.close().unwrap();
}

fn commands(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("STMT {i}")).collect()
}

fn ring(key: &WrappingPrivateKey) -> KeyRing {
    let mut ring = KeyRing::new();
    ring.add(WrappingPrivateKey::from_bytes(&key.to_bytes()).unwrap());
    ring
}

/// Collects commands; says its output is durable after each record when `durable`.
#[derive(Default)]
struct Collect {
    seen: Vec<(String, bool)>,
    durable: bool,
    resume: Option<Resume>,
}

impl Consumer for Collect {
    fn resume(&self) -> Resume {
        self.resume.unwrap_or(Resume::AfterCursor)
    }

    fn record(
        &mut self,
        _: &Opened,
        events: Vec<ActivityEvent>,
        replay: bool,
        _: &mut Cursor,
    ) -> Result<Step, ConsumerError> {
        self.seen.extend(events.into_iter().map(|e| (e.command, replay)));
        Ok(if self.durable { Step::Save } else { Step::Continue })
    }
}

fn run(
    dir: &Path,
    key: &WrappingPrivateKey,
    file: &CursorFile,
    consumer: &mut Collect,
) -> Result<Cursor, ConsumerError> {
    let cursor = file.load()?;
    let mut reader = Reader::resume_at(dir, ring(key), &cursor, consumer.resume())?;
    consume(&mut reader, cursor, Some(file), consumer, Follow::NO, &|| false)
}

#[test]
fn a_consumer_resumes_after_its_cursor_without_repeating_or_skipping() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key) = (tmp.path().join("journal"), WrappingPrivateKey::generate());
    let file = CursorFile::new(tmp.path().join("consumer.cursor"));
    append(&dir, "db-1", &key, &commands(0..5));
    let mut first = Collect { durable: true, ..Collect::default() };
    run(&dir, &key, &file, &mut first).unwrap();
    // The writer goes on (a new segment after a restart, checkpoints in between).
    append(&dir, "db-1", &key, &commands(5..9));
    let mut second = Collect { durable: true, ..Collect::default() };
    let cursor = run(&dir, &key, &file, &mut second).unwrap();
    let all: Vec<String> = first.seen.iter().chain(&second.seen).map(|(c, _)| c.clone()).collect();
    assert_eq!(all, commands(0..9), "every record exactly once across the restart");
    assert_eq!(second.seen.first().map(|(c, _)| c.as_str()), Some("STMT 5"));
    assert_eq!(file.load().unwrap(), cursor, "the last durable position is on disk");
    assert_eq!(cursor.instance.as_deref(), Some("db-1"));
}

#[test]
fn a_cursor_is_saved_only_when_the_consumer_says_its_output_is_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key) = (tmp.path().join("journal"), WrappingPrivateKey::generate());
    let file = CursorFile::new(tmp.path().join("consumer.cursor"));
    append(&dir, "db-1", &key, &commands(0..4));
    let mut not_durable = Collect::default();
    run(&dir, &key, &file, &mut not_durable).unwrap();
    assert_eq!(file.load().unwrap(), Cursor::default(), "nothing was durable: nothing saved");
    // After a crash, everything comes again: nothing is skipped.
    let mut again = Collect::default();
    run(&dir, &key, &file, &mut again).unwrap();
    assert_eq!(again.seen.len(), 4);
}

#[test]
fn a_replaying_consumer_sees_the_records_up_to_its_cursor_as_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key) = (tmp.path().join("journal"), WrappingPrivateKey::generate());
    let file = CursorFile::new(tmp.path().join("consumer.cursor"));
    append(&dir, "db-1", &key, &commands(0..3));
    run(&dir, &key, &file, &mut Collect { durable: true, ..Collect::default() }).unwrap();
    append(&dir, "db-1", &key, &commands(3..5));
    let mut replaying = Collect { durable: true, resume: Some(Resume::ReplayToCursor), ..Collect::default() };
    run(&dir, &key, &file, &mut replaying).unwrap();
    let replayed: Vec<bool> = replaying.seen.iter().map(|(_, replay)| *replay).collect();
    assert_eq!(replayed, vec![true, true, true, false, false]);
}

#[test]
fn a_cursor_of_another_journal_is_refused_not_silently_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let key = WrappingPrivateKey::generate();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    append(&a, "db-a", &key, &commands(0..4));
    append(&b, "db-b", &key, &commands(0..4));
    // Same instance name and length as `a`, other contents: only the hash tells them apart.
    append(&c, "db-a", &key, &commands(10..14));
    let file = CursorFile::new(tmp.path().join("consumer.cursor"));
    run(&a, &key, &file, &mut Collect { durable: true, ..Collect::default() }).unwrap();
    for other in [&b, &c] {
        let err = run(other, &key, &file, &mut Collect::default()).unwrap_err();
        assert!(matches!(err, ConsumerError::Read(ReadError::CursorMismatch { .. })), "{other:?}: {err}");
    }
}
