//! Journals for the transport benchmark (bench/transport.sh): N simulated instances
//! (`sim-0` … `sim-{N-1}`), each a journal of EVENTS statement events sealed in records of
//! BATCH events (as the recorder groups them under load) and checkpointed every 1000
//! records, all under the keys in DIR/keys.
//!
//!   cargo run --release -p pgtrail-transport-nats --example fleet_journals -- DIR N EVENTS BATCH [RATE]
//!
//! With RATE (events per second, all instances together), the journals are written live
//! instead: every BATCH * N / RATE seconds one record per instance, its events timed now,
//! until each holds EVENTS events (the steady-rate phase: publishers and a consumer follow
//! them as they grow).

use std::sync::Arc;

use chrono::{Duration, Utc};
use pgtrail_envelope::{Sealer, SealerConfig};
use pgtrail_event::{ActivityEvent, EventClass, ExitCode, activity_record_json};
use pgtrail_journal::{Journal, JournalOptions};

fn event(i: u64, start: chrono::DateTime<Utc>) -> ActivityEvent {
    let at = start + Duration::microseconds(i as i64 * 50);
    let aid = i * 7919 % 1_000_000;
    let mut e = ActivityEvent::new(EventClass::Read, "SELECT", at);
    e.command_text = Some(format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}").into());
    e.db_user_name = Some(Arc::from(format!("teller_{}", i % 10)));
    e.database_name = Some(Arc::from("bank"));
    e.client_application = Some(Arc::from("pgbench"));
    e.remote_host = Some(Arc::from("10.0.3.17"));
    e.session_id = Some(Arc::from(format!("6740c1f2.{:x}", i % 64)));
    e.pid = Some(14_000 + (i % 64) as i32);
    e.statement_id = i;
    e.row_count = Some(1);
    e.exit_code = Some(ExitCode::Clean(0));
    e.end_time = Some(at);
    e
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: fleet_journals DIR N EVENTS BATCH";
    let dir = std::path::PathBuf::from(args.get(1).expect(usage));
    let number: usize = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let events: u64 = args.get(3).and_then(|a| a.parse().ok()).expect(usage);
    let batch: u64 = args.get(4).and_then(|a| a.parse().ok()).expect(usage);
    let keys = dir.join("keys");
    if !keys.join(pgtrail_keys::WRAPPING_PRIVATE).exists() {
        pgtrail_keys::init(&keys, false).expect("keys");
    }
    let private = pgtrail_keys::load_wrapping_private(&keys.join(pgtrail_keys::WRAPPING_PRIVATE)).expect("key");
    let rate: Option<f64> = args.get(5).and_then(|a| a.parse().ok());
    let open = |instance: &str| {
        let journal_dir = dir.join(instance).join("journal");
        let _ = std::fs::remove_dir_all(&journal_dir);
        Journal::open(
            &journal_dir,
            JournalOptions {
                instance: instance.to_owned(),
                signer: Some(pgtrail_keys::load_signer(&keys.join(pgtrail_keys::SIGNING_PRIVATE)).expect("key")),
                checkpoint_every_records: 1000,
                ..JournalOptions::default()
            },
        )
        .expect("journal")
    };
    let mut sealer = Sealer::new(Arc::new(private.public_key()), SealerConfig::default());
    let mut append = |journal: &mut Journal, instance: &str, from: u64, start: chrono::DateTime<Utc>| {
        let batch: Vec<ActivityEvent> = (from..(from + batch).min(events)).map(|k| event(k, start)).collect();
        let record = sealer.seal(&activity_record_json("fleet-bench", instance, &batch)).expect("seal");
        journal.append(Utc::now().timestamp_micros(), record.json.as_bytes()).expect("append");
        journal.checkpoint_if_due().expect("checkpoint");
        batch.len() as u64
    };
    let finish = |mut journal: Journal, instance: &str| {
        journal.checkpoint().expect("checkpoint");
        journal.sync().expect("sync");
        let records = journal.next_seq() - 1;
        journal.close().expect("close");
        println!("{instance} {records}");
    };
    let instances: Vec<String> = (0..number).map(|n| format!("sim-{n}")).collect();
    let Some(rate) = rate else {
        let start = Utc::now() - Duration::hours(1);
        for instance in &instances {
            let mut journal = open(instance);
            let mut i = 0;
            while i < events {
                i += append(&mut journal, instance, i, start);
            }
            finish(journal, instance);
        }
        return;
    };
    // Live: one record per instance per round, each event timed when its record is made
    // (event k's time is start + 50 us * k: start is set so that the record's events end now).
    let mut journals: Vec<Journal> = instances.iter().map(|i| open(i)).collect();
    let round = std::time::Duration::from_secs_f64(batch as f64 * number as f64 / rate);
    let began = std::time::Instant::now();
    let (mut i, mut rounds) = (0, 0u32);
    while i < events {
        let start = Utc::now() - Duration::microseconds((i + batch) as i64 * 50);
        let mut wrote = 0;
        for (journal, instance) in journals.iter_mut().zip(&instances) {
            wrote = append(journal, instance, i, start);
            journal.sync().expect("sync");
        }
        i += wrote;
        rounds += 1;
        if let Some(wait) = (began + round * rounds).checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    for (journal, instance) in journals.into_iter().zip(&instances) {
        finish(journal, instance);
    }
}
