//! Journal behaviour a user relies on: records come back in order across segments and
//! restarts, a torn tail is cut on open, readers follow a live writer.

use std::io::Write;

use pgtrail_journal::*;

fn options(segment_max_bytes: u64) -> JournalOptions {
    JournalOptions { segment_max_bytes, ..JournalOptions::default() }
}

#[test]
fn records_survive_reopen_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), options(200)).unwrap();
    for i in 0..20u32 {
        assert_eq!(j.append(i64::from(i), format!("payload {i}").as_bytes()).unwrap(), u64::from(i) + 1);
    }
    j.sync().unwrap();
    drop(j);
    let segments = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(segments > 3, "small segments rotate ({segments})");
    let mut j = Journal::open(dir.path(), options(200)).unwrap();
    assert_eq!(j.next_seq(), 21);
    j.append(99, b"after reopen").unwrap();
    j.sync().unwrap();
    let all: Vec<Record> = JournalReader::open(dir.path(), 1).unwrap().map(Result::unwrap).collect();
    assert_eq!(all.len(), 21);
    assert!(all.iter().enumerate().all(|(i, r)| r.seq == i as u64 + 1));
    assert_eq!(all[20].payload, b"after reopen");
    let from_ten: Vec<u64> = JournalReader::open(dir.path(), 10).unwrap().map(|r| r.unwrap().seq).collect();
    assert_eq!(from_ten, (10..=21).collect::<Vec<_>>());
}

#[test]
fn torn_tail_is_truncated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    j.append(1, b"one").unwrap();
    j.append(2, b"two").unwrap();
    j.sync().unwrap();
    drop(j);
    let seg = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
    let good_len = std::fs::metadata(&seg).unwrap().len();
    // A crash in the middle of writing record 3: its header and half its payload.
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[50, 0, 0, 0, 1, 2, 3, 4, 1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0]).unwrap();
    drop(f);
    let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len, "tail cut back to the last good record");
    assert_eq!(j.next_seq(), 3);
    j.append(3, b"three").unwrap();
    j.sync().unwrap();
    let payloads: Vec<Vec<u8>> = JournalReader::open(dir.path(), 1).unwrap().map(|r| r.unwrap().payload).collect();
    assert_eq!(payloads, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
}

#[test]
fn corruption_in_the_middle_is_reported_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    for i in 0..3 {
        j.append(i, b"abcdefgh").unwrap();
    }
    j.sync().unwrap();
    drop(j);
    let seg = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Flip a payload byte of the second record (128 header + 104 first record + 96 header).
    bytes[128 + 104 + 96] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let results: Vec<_> = JournalReader::open(dir.path(), 1).unwrap().collect();
    assert!(results[0].is_ok());
    let err = results[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("CRC32C"), "{err}");
}

#[test]
fn reader_follows_a_live_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), options(100)).unwrap();
    let mut reader = JournalReader::open(dir.path(), 1).unwrap();
    assert!(reader.next_record().unwrap().is_none());
    for round in 0..5u8 {
        j.append(0, &[round; 40]).unwrap();
        j.sync().unwrap();
        let r = reader.next_record().unwrap().expect("new record visible");
        assert_eq!(r.payload, vec![round; 40]);
        assert!(reader.next_record().unwrap().is_none());
    }
    assert_eq!(reader.position(), 6);
}

#[tokio::test]
async fn recorder_batches_and_reports_every_drop() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let config = RecorderConfig {
        max_batch_items: 3,
        max_batch_delay: std::time::Duration::from_millis(5),
        queue_capacity: 4,
        heartbeat: None,
    };
    let (recorder, handle) = Recorder::spawn(
        journal,
        config,
        Box::new(|batch: &[String]| batch.join(",").into_bytes()),
        Box::new(|count, _from, _to, _cause: &LossCause| format!("LOST {count}")),
    );
    // A burst far larger than the queue: some items must be dropped.
    let accepted: Vec<String> = (0..20_000).map(|i| format!("e{i}")).filter(|e| recorder.record(e.clone())).collect();
    let dropped = recorder.stats().dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(accepted.len() as u64 + dropped, 20_000);
    assert!(dropped > 0, "the queue of 4 overflowed");
    drop(recorder);
    handle.await.unwrap().unwrap();
    let payloads: Vec<String> =
        JournalReader::open(dir.path(), 1).unwrap().map(|r| String::from_utf8(r.unwrap().payload).unwrap()).collect();
    let items: Vec<&str> = payloads.iter().flat_map(|p| p.split(',')).collect();
    let written: Vec<&str> = items.iter().copied().filter(|i| i.starts_with('e')).collect();
    assert_eq!(written, accepted, "every accepted item, in order");
    let lost: u64 = items.iter().filter_map(|i| i.strip_prefix("LOST ")).map(|n| n.parse::<u64>().unwrap()).sum();
    assert_eq!(lost, dropped, "every drop is accounted for in the journal");
    assert!(payloads.iter().all(|p| p.split(',').count() <= 4), "batches respect the limit (plus a loss item)");
}

#[tokio::test]
async fn oversized_batches_are_split_across_records() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let config = RecorderConfig {
        max_batch_items: 100,
        max_batch_delay: std::time::Duration::from_millis(200),
        queue_capacity: 100,
        heartbeat: None,
    };
    let (recorder, handle) = Recorder::spawn(
        journal,
        config,
        Box::new(|batch: &[Vec<u8>]| batch.concat()),
        Box::new(|count, _from, _to, _cause: &LossCause| format!("LOST {count}").into_bytes()),
    );
    // Five items of 20 MiB: one batch of 100 MiB would exceed the 64 MiB record limit.
    for i in 0..5u8 {
        assert!(recorder.record(vec![i; 20 << 20]));
    }
    // And one item that no record can hold.
    assert!(recorder.record(vec![9; MAX_PAYLOAD + 1]));
    drop(recorder);
    handle.await.unwrap().unwrap();
    let records: Vec<Record> = JournalReader::open(dir.path(), 1).unwrap().map(Result::unwrap).collect();
    assert!(records.len() >= 3, "split into several records");
    assert!(records.iter().all(|r| r.payload.len() <= MAX_PAYLOAD));
    let data: usize = records.iter().map(|r| r.payload.iter().filter(|b| **b < 5).count()).sum();
    assert_eq!(data, 5 * (20 << 20), "every byte of the five items is there");
    assert_eq!(records.last().unwrap().payload, b"LOST 1", "the oversized item left a loss record");
}
