//! Journal throughput on one thread: batches of events through the same stages the
//! recorder's writer runs (DAS inner JSON, gzip, ESDK encryption under a rotating data key,
//! hash-chained append, fsync per batch, checkpoints), and each stage on its own.
//!
//! Run it through `bench/journal.sh`, which pins it to one core.
//!
//!   cargo run --release -p pgtrail --example journal_bench -- [EVENTS] [BATCH]

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use pgtrail_envelope::{Sealer, SealerConfig, WrappingPrivateKey};
use pgtrail_event::{ActivityEvent, EventClass, ExitCode, activity_record_json};
use pgtrail_journal::{CheckpointSigner, Journal, JournalOptions};

/// Events shaped like pgbench's TPC-B-like traffic through the proxy.
fn events(n: usize) -> Vec<ActivityEvent> {
    let session: Arc<str> = Arc::from("6740c1f2.3a41");
    let (user, db, host, app): (Arc<str>, Arc<str>, Arc<str>, Arc<str>) =
        (Arc::from("app_user"), Arc::from("postgres"), Arc::from("10.0.3.17"), Arc::from("pgbench"));
    (0..n)
        .map(|i| {
            let now = Utc::now();
            let (class, command, text) = match i % 5 {
                0 => (EventClass::Write, "UPDATE", format!("UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {};", i % 5000, i * 7 % 100_000)),
                1 => (EventClass::Read, "SELECT", format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", i * 7 % 100_000)),
                2 => (EventClass::Write, "UPDATE", format!("UPDATE pgbench_tellers SET tbalance = tbalance + {} WHERE tid = {};", i % 5000, i % 10)),
                3 => (EventClass::Write, "UPDATE", format!("UPDATE pgbench_branches SET bbalance = bbalance + {} WHERE bid = 1;", i % 5000)),
                _ => (EventClass::Write, "INSERT", format!("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({}, 1, {}, {}, CURRENT_TIMESTAMP);", i % 10, i * 7 % 100_000, i % 5000)),
            };
            let mut e = ActivityEvent::new(class, command, now);
            e.command_text = Some(text.into());
            e.session_id = Some(Arc::clone(&session));
            e.db_user_name = Some(Arc::clone(&user));
            e.database_name = Some(Arc::clone(&db));
            e.remote_host = Some(Arc::clone(&host));
            e.remote_port = Some(Arc::from("51234"));
            e.client_application = Some(Arc::clone(&app));
            e.pid = Some(14913);
            e.statement_id = i as u64;
            e.row_count = Some(1);
            e.exit_code = Some(ExitCode::Clean(0));
            e.end_time = Some(now);
            e.object_name = Some("pgbench_accounts".into());
            e
        })
        .collect()
}

fn rate(label: &str, events: usize, seconds: f64) {
    println!("{label:<44} {:>12.0} events/s", events as f64 / seconds);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let batch: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let events = events(n);
    let batches: Vec<&[ActivityEvent]> = events.chunks(batch).collect();
    let wrapping = WrappingPrivateKey::generate().public_key();
    let dir = tempfile::Builder::new().prefix("pgtrail-journal-bench-").tempdir_in(".").expect("temp dir");
    println!("{n} events in batches of {batch}; journal in {}", dir.path().display());

    // Each stage alone.
    let t = Instant::now();
    let json: Vec<Vec<u8>> = batches.iter().map(|b| activity_record_json("cluster-bench", "db-bench", b)).collect();
    rate("inner record JSON", n, t.elapsed().as_secs_f64());
    let bytes: usize = json.iter().map(Vec::len).sum();
    println!("  ({:.0} bytes of JSON per event)", bytes as f64 / n as f64);
    let t = Instant::now();
    let gz: Vec<Vec<u8>> = json.iter().map(|j| pgtrail_envelope::das::gzip(j, 1)).collect();
    rate("gzip (level 1)", n, t.elapsed().as_secs_f64());
    let gz_bytes: usize = gz.iter().map(Vec::len).sum();
    println!("  ({:.0} bytes gzip'd per event)", gz_bytes as f64 / n as f64);
    let key = pgtrail_envelope::DataKey::random().raw_aes();
    let t = Instant::now();
    let sealed: Vec<Vec<u8>> = gz
        .iter()
        .map(|g| pgtrail_envelope::message::encrypt(&key, pgtrail_envelope::Suite::Aes256GcmHkdfSha256, g))
        .collect();
    rate("ESDK encrypt (0x0178)", n, t.elapsed().as_secs_f64());
    drop(sealed);

    // The whole writer path, as the recorder runs it.
    for (label, fsync) in [("whole path, fsync per batch", true), ("whole path, no fsync (CPU only)", false)] {
        let jdir = dir.path().join(if fsync { "sync" } else { "nosync" });
        let options = JournalOptions {
            instance: "db-bench".into(),
            signer: Some(CheckpointSigner::generate()),
            ..JournalOptions::default()
        };
        let mut journal = Journal::open(&jdir, options).expect("journal");
        let mut sealer = Sealer::new(Arc::new(wrapping.clone()), SealerConfig::default());
        let t = Instant::now();
        for b in &batches {
            let inner = activity_record_json("cluster-bench", "db-bench", b);
            let record = sealer.seal(&inner).expect("seal");
            journal.append(Utc::now().timestamp_micros(), record.json.as_bytes()).expect("append");
            if fsync {
                journal.sync().expect("fsync");
            }
            journal.checkpoint_if_due().expect("checkpoint");
        }
        journal.close().expect("close");
        rate(label, n, t.elapsed().as_secs_f64());
    }
}
