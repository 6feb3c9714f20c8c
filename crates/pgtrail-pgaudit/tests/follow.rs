//! Following a log directory: partial lines, rotation to a new file, truncation in place,
//! and restarts from the saved position without repeats or gaps.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use pgtrail_pgaudit::{Follower, Format, Prefix};

fn format() -> Format {
    Format::Stderr(Prefix::compile("%m [%p] %q%u@%d ").unwrap())
}

fn audit(n: u32) -> String {
    format!(
        "2026-11-21 22:09:5{}.000 UTC [42] alice@db LOG:  AUDIT: SESSION,{n},1,READ,SELECT,,,SELECT {n},<none>\n",
        n % 10
    )
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
}

/// Statement ids handed out by polls until nothing more comes (waiting out the quiet time).
fn drain(follower: &mut Follower) -> Vec<u64> {
    let mut ids = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(30));
        for item in follower.poll().unwrap() {
            let entry = item.entry.unwrap();
            let record = pgtrail_pgaudit::AuditRecord::parse(&entry.message).unwrap();
            ids.push(record.statement_id);
        }
    }
    ids
}

#[test]
fn partial_lines_rotation_truncation_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let logs = dir.path().join("log");
    std::fs::create_dir(&logs).unwrap();
    let first = logs.join("postgresql-1.log");
    append(&first, &audit(1));
    append(&first, &audit(2));
    let third = audit(3);
    append(&first, &third[..20]); // a partial line: the writer is mid-way

    let mut follower = Follower::open(&logs, format(), &state).unwrap();
    follower.quiet = Duration::from_millis(10);
    assert_eq!(drain(&mut follower), [1, 2]);
    follower.commit().unwrap();
    append(&first, &third[20..]);
    assert_eq!(drain(&mut follower), [3]);
    follower.commit().unwrap();

    // A restart resumes after 3: nothing repeated.
    drop(follower);
    append(&first, &audit(4));
    let mut follower = Follower::open(&logs, format(), &state).unwrap();
    follower.quiet = Duration::from_millis(10);
    assert_eq!(drain(&mut follower), [4]);
    follower.commit().unwrap();

    // Rotation: a newer file; the rest of the old one is read first.
    append(&first, &audit(5));
    std::thread::sleep(Duration::from_millis(20));
    let second = logs.join("postgresql-2.log");
    append(&second, &audit(6));
    assert_eq!(drain(&mut follower), [5, 6]);
    follower.commit().unwrap();

    // A restart without a commit repeats only what was not committed.
    append(&second, &audit(7));
    assert_eq!(drain(&mut follower), [7]);
    drop(follower);
    let mut follower = Follower::open(&logs, format(), &state).unwrap();
    follower.quiet = Duration::from_millis(10);
    assert_eq!(drain(&mut follower), [7]);
    follower.commit().unwrap();

    // Truncated in place (log_truncate_on_rotation reusing the name): read from the start.
    std::fs::write(&second, audit(8)).unwrap();
    assert_eq!(drain(&mut follower), [8]);
}

#[test]
fn a_stderr_entry_is_not_saved_past_while_it_may_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, state) = (dir.path().join("log"), dir.path().join("state.json"));
    std::fs::create_dir(&logs).unwrap();
    let file = logs.join("postgresql.log");
    append(
        &file,
        "2026-11-21 22:09:51.000 UTC [42] alice@db LOG:  AUDIT: SESSION,1,1,DDL,CREATE TABLE,,,\"CREATE TABLE t (\n",
    );
    let mut follower = Follower::open(&logs, format(), &state).unwrap();
    follower.quiet = Duration::from_secs(60);
    assert!(follower.poll().unwrap().is_empty(), "the entry may still continue");
    follower.commit().unwrap();
    drop(follower);
    append(&file, "\tid int\n\t)\",<none>\n");
    append(&file, &audit(2));
    let mut follower = Follower::open(&logs, format(), &state).unwrap();
    follower.quiet = Duration::from_millis(10);
    let items = follower.poll().unwrap();
    let first = items[0].entry.as_ref().unwrap();
    assert!(first.message.ends_with("CREATE TABLE t (\nid int\n)\",<none>"), "{:?}", first.message);
    assert_eq!(first.line, 1);
}
