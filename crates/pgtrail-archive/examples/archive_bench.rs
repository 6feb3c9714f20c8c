//! Archive throughput: writes a journal of EVENTS pgbench-shaped events (in records of
//! BATCH events, as the recorder groups them under load), then archives it into Parquet
//! on one thread REPEATS times (each into a new archive) and reports events per second
//! (each run and the median) and bytes per million events. The last archive is left in
//! DIR/archive, with the journal (checkpointed every 1000 records) in DIR/journal and the
//! keys in DIR/keys, for query and report timings (bench/archive.sh, bench/report.sh).
//!
//! Half the database users log in as people of the identity provider; one event in a
//! thousand is something a compliance report looks for: a GRANT, a failed login, a denied
//! DELETE, a connection that bypassed the proxy.
//!
//!   cargo run --release -p pgtrail-archive --example archive_bench -- DIR [EVENTS] [BATCH] [REPEATS]

use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, Utc};
use pgtrail_envelope::{KeyRing, Sealer, SealerConfig, WrappingPrivateKey};
use pgtrail_event::{
    ActivityEvent, EventClass, EventSource, ExitCode, Identity, ObjectKind, ObjectRef, Verdict, activity_record_json,
};
use pgtrail_journal::{Journal, JournalOptions};

/// Event `i` of a TPC-B-like run by ten database users.
fn event(i: u64, start: chrono::DateTime<Utc>) -> ActivityEvent {
    let aid = i * 7919 % 1_000_000;
    let (class, command, table, text) = match i % 5 {
        0 => (
            EventClass::Write,
            "UPDATE",
            "pgbench_accounts",
            format!("UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {aid}", i % 5000),
        ),
        1 => (
            EventClass::Read,
            "SELECT",
            "pgbench_accounts",
            format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}"),
        ),
        2 => (
            EventClass::Write,
            "UPDATE",
            "pgbench_tellers",
            format!("UPDATE pgbench_tellers SET tbalance = tbalance + {} WHERE tid = {}", i % 5000, i % 100),
        ),
        3 => (
            EventClass::Write,
            "UPDATE",
            "pgbench_branches",
            format!("UPDATE pgbench_branches SET bbalance = bbalance + {} WHERE bid = {}", i % 5000, i % 10),
        ),
        _ => (
            EventClass::Write,
            "INSERT",
            "pgbench_history",
            format!(
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({}, {}, {aid}, {}, CURRENT_TIMESTAMP)",
                i % 100,
                i % 10,
                i % 5000
            ),
        ),
    };
    let at = start + Duration::microseconds(i as i64 * 50);
    let mut e = ActivityEvent::new(class, command, at);
    e.command_text = Some(text.into());
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
    e.object_type = Some("TABLE".into());
    e.object_name = Some(table.into());
    e.objects = vec![ObjectRef { kind: ObjectKind::Relation, name: table.into() }];
    if i % 10 < 5 {
        let person = format!("person_{}@bank.example", i % 3);
        e.identity = Some(Arc::new(Identity {
            issuer: "https://idp.bank.example".into(),
            subject: format!("sub-{}", i % 3),
            name: None,
            email: Some(person),
            groups: vec!["tellers".into()],
            token_id: None,
            auth_method: "oidc".into(),
        }));
    }
    match i % 1000 {
        7 => {
            e.class = EventClass::Role;
            e.command = "GRANT".into();
            e.command_text = Some("GRANT SELECT ON pgbench_accounts TO auditor".into());
        }
        17 => {
            e.class = EventClass::Connect;
            e.command = "CONNECT".into();
            e.command_text = None;
            e.sql_state = Some("28P01".into());
            e.error_message = Some(format!("password authentication failed for user \"teller_{}\"", i % 10));
        }
        27 => {
            e.command = "DELETE".into();
            e.command_text = Some("DELETE FROM pgbench_history".into());
            e.verdict = Some(Verdict::Denied);
            e.denied_by = Some("no unfiltered delete".into());
            e.sql_state = Some("42501".into());
        }
        37 => {
            e.class = EventClass::Misc;
            e.command = "DIRECT CONNECTION".into();
            e.command_text = None;
            e.source = Some(EventSource::Pgaudit);
        }
        _ => {}
    }
    e
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("usage: archive_bench DIR [EVENTS] [BATCH]"));
    let n: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let batch: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100);
    let repeats: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(1);
    std::fs::create_dir_all(&dir).expect("bench directory");
    let journal_dir = dir.join("journal");
    let archive_dir = dir.join("archive");
    let keys = dir.join("keys");
    if !keys.join(pgtrail_keys::WRAPPING_PRIVATE).exists() {
        pgtrail_keys::init(&keys, false).expect("keys");
    }
    let private = pgtrail_keys::load_wrapping_private(&keys.join(pgtrail_keys::WRAPPING_PRIVATE)).expect("key");
    let _ = std::fs::remove_dir_all(&journal_dir);

    let t = Instant::now();
    let mut journal = Journal::open(
        &journal_dir,
        JournalOptions {
            instance: "db-bench".into(),
            signer: Some(pgtrail_keys::load_signer(&keys.join(pgtrail_keys::SIGNING_PRIVATE)).expect("key")),
            checkpoint_every_records: 1000,
            ..JournalOptions::default()
        },
    )
    .expect("journal");
    let mut sealer = Sealer::new(Arc::new(private.public_key()), SealerConfig::default());
    let start = Utc::now() - Duration::hours(1);
    let mut i = 0;
    while i < n {
        let events: Vec<ActivityEvent> = (i..(i + batch).min(n)).map(|k| event(k, start)).collect();
        i += events.len() as u64;
        let record = sealer.seal(&activity_record_json("cluster-bench", "db-bench", &events)).expect("seal");
        journal.append(Utc::now().timestamp_micros(), record.json.as_bytes()).expect("append");
        journal.checkpoint_if_due().expect("checkpoint");
    }
    journal.checkpoint().expect("checkpoint");
    journal.sync().expect("sync");
    journal.close().expect("close");
    eprintln!("journal of {n} events in records of {batch} written in {:.1} s", t.elapsed().as_secs_f64());

    let signer = pgtrail_keys::load_signer(&keys.join(pgtrail_keys::ARCHIVE_PRIVATE)).expect("archive key");
    let mut rates = Vec::new();
    for repeat in 1..=repeats {
        let _ = std::fs::remove_dir_all(&archive_dir);
        let mut ring = KeyRing::new();
        ring.add(WrappingPrivateKey::from_bytes(&private.to_bytes()).expect("key"));
        let run = pgtrail_archive::ArchiveRun {
            journal: journal_dir.clone().into(),
            target: archive_dir.display().to_string(),
            state: None,
            follow: false,
            roll: pgtrail_archive::Roll::default(),
            progress: false,
            signer: signer.clone(),
            retention_days: None,
        };
        let t = Instant::now();
        let done = pgtrail_archive::run(&run, ring, &|| false).expect("archive");
        let seconds = t.elapsed().as_secs_f64();
        let rate = done.events as f64 / seconds;
        println!(
            "run {repeat}: archived {} events into {} files in {seconds:.2} s: {rate:.0} events/s",
            done.events, done.files
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    let bytes: u64 = walk(&archive_dir).iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum();
    let journal_bytes: u64 =
        std::fs::read_dir(&journal_dir).expect("journal").flatten().map(|e| e.metadata().map_or(0, |m| m.len())).sum();
    println!("archive throughput {:.0} events/s (median of {repeats})", rates[rates.len() / 2]);
    println!("archive size {:.1} MB per million events", bytes as f64 / 1e6 / (n as f64 / 1e6));
    println!("journal size {:.1} MB per million events", journal_bytes as f64 / 1e6 / (n as f64 / 1e6));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    out
}
