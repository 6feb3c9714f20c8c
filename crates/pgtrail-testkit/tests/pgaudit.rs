//! `pgtrail ingest` against a real PostgreSQL 15 with pgaudit 1.7 (Debian's
//! postgresql-15-pgaudit), writing stderr, csvlog and jsonlog at once: one ingester per
//! format, each into its own journal, through log rotation and a restart mid-file.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pgtrail_event::{ActivityEvent, EventClass, EventSource};
use pgtrail_testkit::*;

fn pgaudit_cluster() -> LocalPg {
    start_pgaudit_pg("stderr,csvlog,jsonlog")
}

fn ingester(pg: &LocalPg, format: &str, journal: &Path, keys: &Path, log: &Path) -> Child {
    Command::new(pgtrail_binary())
        .args(["ingest", "--format", format, "--log-dir"])
        .arg(pg.log_dir())
        .arg("--journal")
        .arg(journal)
        .arg("--keys")
        .arg(keys)
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) {
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
}

fn audited(events: &[ActivityEvent]) -> Vec<&ActivityEvent> {
    events.iter().filter(|e| e.source == Some(EventSource::Pgaudit) && e.statement_id > 0).collect()
}

/// The statements the built-in rule "auditing weakened" fires on.
fn weakened(events: &[ActivityEvent]) -> Vec<String> {
    let mut engine = pgtrail_rules::Engine::new(pgtrail_rules::RuleSet::parse("builtin = true\n", "pack").unwrap());
    let mut texts = Vec::new();
    for event in events {
        for alert in engine.process(event) {
            if alert.rule == "auditing weakened" {
                texts.push(event.command_text.as_deref().unwrap_or_default().to_owned());
            }
        }
    }
    texts
}

fn wait_for(journal: &Path, keys: &Path, what: &str, done: impl Fn(&[ActivityEvent]) -> bool) -> Vec<ActivityEvent> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = if journal.exists() { read_events_with(journal, keys) } else { Vec::new() };
        if done(&events) {
            return events;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {}", describe(&events));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_reads_pgaudit_in_all_three_formats_through_rotation_and_restart() {
    let pg = pgaudit_cluster();
    pg.psql(&format!(
        "CREATE EXTENSION pgaudit; CREATE ROLE app_user LOGIN PASSWORD '{PASSWORD}'; \
         CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric); \
         CREATE TABLE app_owned (id int); ALTER TABLE app_owned OWNER TO app_user; \
         CREATE FUNCTION add_interest(rate numeric) RETURNS void LANGUAGE plpgsql AS \
         $$ BEGIN UPDATE accounts SET balance = balance * (1 + rate); END $$"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    keys_init(&keys);
    let formats = ["stderr", "csvlog", "jsonlog"];
    let journals: Vec<_> = formats.iter().map(|f| dir.path().join(format!("journal-{f}"))).collect();
    let logs: Vec<_> = formats.iter().map(|f| dir.path().join(format!("ingest-{f}.log"))).collect();
    let mut children: Vec<_> =
        formats.iter().enumerate().map(|(i, f)| ingester(&pg, f, &journals[i], &keys, &logs[i])).collect();

    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres", pg.port());
    // Part one: the seed's privilege changes by an application user, a DO block, a function
    // call (substatements), COPY, a multi-statement query, a failing statement.
    let app = format!("postgres://app_user:{PASSWORD}@127.0.0.1:{}/postgres", pg.port());
    assert_ok(&psql(
        &pg,
        &app,
        &["-c", "GRANT SELECT ON app_owned TO postgres", "-c", "REVOKE SELECT ON app_owned FROM postgres"],
    ));
    assert_ok(&psql(
        &pg,
        &url,
        &[
            "-c",
            "INSERT INTO accounts VALUES (1, 'O''Brien, Jr.', 10), (2, 'multi\nline', 20)",
            "-c",
            "DO $$ BEGIN UPDATE accounts SET owner = upper(owner) WHERE id = 1; END $$",
            "-c",
            "SELECT add_interest(0.5)",
            "-c",
            "COPY accounts TO STDOUT",
            "-c",
            "SELECT count(*) FROM accounts; SELECT 'two'",
        ],
    ));
    // Someone tries to weaken auditing, directly and through the proxy.
    assert_ok(&psql(&pg, &url, &["-c", "ALTER SYSTEM SET pgaudit.log_catalog = off", "-c", "SELECT pg_reload_conf()"]));
    let capture = TestCapture::start(&pg).await;
    assert_ok(&psql(&pg, &capture.url("postgres", PASSWORD, "postgres"), &["-c", "SET pgaudit.log = 'none'"]));
    let proxied = capture.stop().await;
    assert_eq!(weakened(&proxied), ["SET pgaudit.log = 'none'"], "through the proxy");
    let failed = psql(&pg, &url, &["-c", "SELECT 1/0 AS boom"]);
    assert!(!failed.status.success());
    for (journal, format) in journals.iter().zip(formats) {
        wait_for(journal, &keys, &format!("{format}: part one"), |events| {
            events.iter().any(|e| e.command == "ERROR" && e.command_text.as_deref() == Some("SELECT 1/0 AS boom"))
        });
    }

    // Rotation mid-stream, and a restart of every ingester.
    pg.psql("SELECT pg_rotate_logfile()").unwrap();
    for child in children.drain(..) {
        stop(child);
    }
    // Part two while the ingesters are down, with extended-protocol parameters.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.execute("UPDATE accounts SET owner = $1 WHERE id = $2", &[&"param, \"quoted\"", &2i32]).await.unwrap();
    drop(client);
    children = formats.iter().enumerate().map(|(i, f)| ingester(&pg, f, &journals[i], &keys, &logs[i])).collect();

    let mut all = Vec::new();
    for (journal, format) in journals.iter().zip(formats) {
        let events = wait_for(journal, &keys, &format!("{format}: part two"), |events| {
            events.iter().any(|e| e.param_list.iter().any(|p| p.as_deref() == Some("param, \"quoted\"")))
        });
        all.push((format, events));
    }
    for child in children.drain(..) {
        stop(child);
    }

    let first = audited(&all[0].1);
    for (format, events) in &all {
        let audit = audited(events);
        // No duplicates across the restart: (session, statement, substatement) is unique.
        let mut seen = HashSet::new();
        let repeated: Vec<_> = audit
            .iter()
            .filter(|e| !seen.insert((e.pid, e.statement_id, e.substatement_id, e.command.clone())))
            .map(|e| (e.pid, e.statement_id, e.substatement_id, e.command.clone(), e.command_text.clone()))
            .collect();
        assert!(repeated.is_empty(), "{format}: repeated after the restart: {repeated:#?}");
        // No gaps: the same records in every format.
        assert_eq!(audit.len(), first.len(), "{format}");
        let find = |pred: &dyn Fn(&&ActivityEvent) -> bool| audit.iter().filter(|e| pred(e)).count();
        let by_app = |command: &'static str| {
            move |e: &&ActivityEvent| e.command == command && e.db_user_name.as_deref() == Some("app_user")
        };
        assert_eq!(find(&by_app("GRANT")), 1, "{format}");
        assert_eq!(find(&by_app("REVOKE")), 1, "{format}");
        assert!(audit.iter().any(|e| e.class == EventClass::Role && e.command == "GRANT"), "{format}");
        // Substatements of the DO block and of the function.
        assert!(audit.iter().any(|e| e.command == "UPDATE" && e.substatement_id > 1), "{format}: {}", describe(events));
        assert_eq!(find(&|e| e.command == "COPY"), 1, "{format}");
        // pgaudit.log_rows: the INSERT of two accounts (pgAudit counts 0 for COPY TO STDOUT).
        assert!(
            audit.iter().any(|e| e.command == "INSERT" && e.row_count == Some(2)),
            "{format}: {}",
            describe(events)
        );
        let multi: Vec<_> = audit
            .iter()
            .filter(|e| e.command_text.as_deref() == Some("SELECT count(*) FROM accounts; SELECT 'two'"))
            .collect();
        assert_eq!(multi.len(), 2, "{format}: one record per statement of the multi-statement query");
        assert!(
            audit.iter().any(|e| e.command_text.as_deref().is_some_and(|t| t.contains("'multi\nline'"))),
            "{format}"
        );
        // Extended protocol: the parameters, CSV-quoted by pgAudit, read back exactly.
        assert!(
            audit.iter().any(|e| e.param_list == [Some("param, \"quoted\"".to_string()), Some("2".to_string())]),
            "{format}"
        );
        // The failing statement, connections and disconnections.
        assert!(
            events.iter().any(|e| e.command == "ERROR" && e.command_text.as_deref() == Some("SELECT 1/0 AS boom")),
            "{format}"
        );
        let connects =
            events.iter().filter(|e| e.class == EventClass::Connect && e.source == Some(EventSource::Pgaudit)).count();
        let disconnects = events.iter().filter(|e| e.class == EventClass::Disconnect).count();
        assert!(connects >= 4 && disconnects >= 4, "{format}: {connects} connects, {disconnects} disconnects");
        // The password of CREATE ROLE, repeated by pgAudit in every record of that
        // multi-statement query, is in none of them.
        assert!(!events.iter().any(|e| e.command_text.as_deref().is_some_and(|t| t.contains(PASSWORD))), "{format}");
        // Audit of the auditor, from the logs: ALTER SYSTEM and the reload. The SET that
        // switched pgAudit off in its session is not there: it took effect before pgAudit
        // would have logged it. The proxy saw it (above).
        let mut attempts = weakened(events);
        attempts.sort();
        assert_eq!(attempts, ["ALTER SYSTEM SET pgaudit.log_catalog = off", "SELECT pg_reload_conf()"], "{format}");
        // Nothing it could not read.
        assert!(!events.iter().any(|e| e.command == "LOG PARSE ERROR"), "{format}: {}", describe(events));
    }
    // The journals verify like the proxy's.
    for journal in &journals {
        let out = run_pgtrail(&[
            "verify",
            "--journal",
            journal.to_str().unwrap(),
            "--verify-key",
            keys.join("verify.pub").to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
    }
}

/// The ingester inside the proxy ([pgaudit]): pgAudit's events of a proxied session carry
/// the proxy's session id and the real client's address; a session opened directly against
/// PostgreSQL becomes a DIRECT CONNECTION event and raises the bypass alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_sessions_are_joined_and_a_direct_session_raises_the_bypass_alert() {
    let pg = pgaudit_cluster();
    pg.psql(&format!(
        "CREATE EXTENSION pgaudit; CREATE ROLE app_user LOGIN PASSWORD '{PASSWORD}'; \
         CREATE TABLE accounts (id int); GRANT SELECT ON accounts TO app_user"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (log_dir, state) = (pg.log_dir(), dir.path().join("position"));
    let capture = TestCapture::start_with(&pg, move |c| {
        c.pgaudit = Some(pgtrail_pgaudit::IngestConfig { log_dir, format: pgtrail_pgaudit::Format::Csvlog, state });
    })
    .await;
    assert_ok(&psql(&pg, &capture.url("app_user", PASSWORD, "postgres"), &["-c", "SELECT * FROM accounts"]));
    let direct = format!("postgres://app_user:{PASSWORD}@127.0.0.1:{}/postgres", pg.port());
    assert_ok(&psql(&pg, &direct, &["-c", "SELECT 1 AS around_pgtrail"]));
    capture.wait_for("the bypass event", |events| events.iter().any(|e| e.command == "DIRECT CONNECTION")).await;
    let events = capture.stop().await;

    let proxied_connect = events
        .iter()
        .find(|e| e.class == EventClass::Connect && e.source == Some(EventSource::Proxy))
        .unwrap_or_else(|| panic!("{}", describe(&events)));
    let in_engine = events
        .iter()
        .find(|e| e.source == Some(EventSource::Pgaudit) && e.command_text.as_deref() == Some("SELECT * FROM accounts"))
        .unwrap_or_else(|| panic!("{}", describe(&events)));
    assert_eq!(in_engine.session_id, proxied_connect.session_id, "joined to the proxy session");
    assert_eq!(in_engine.remote_port, proxied_connect.remote_port, "the real client's port, not the proxy's");
    let bypasses: Vec<_> = events.iter().filter(|e| e.command == "DIRECT CONNECTION").collect();
    assert_eq!(bypasses.len(), 1, "{}", describe(&events));
    assert_eq!(bypasses[0].db_user_name.as_deref(), Some("app_user"));
    assert_ne!(bypasses[0].session_id, proxied_connect.session_id);
    let direct_statement =
        events.iter().find(|e| e.command_text.as_deref() == Some("SELECT 1 AS around_pgtrail")).unwrap();
    assert_eq!(direct_statement.source, Some(EventSource::Pgaudit), "seen only in the engine");

    let mut engine = pgtrail_rules::Engine::new(pgtrail_rules::RuleSet::parse("builtin = true\n", "pack").unwrap());
    let alerts: Vec<_> = events
        .iter()
        .flat_map(|e| engine.process(e))
        .filter(|a| a.rule == "direct connection bypassing pgtrail")
        .collect();
    assert_eq!(alerts.len(), 1);
}

/// A line the reader does not understand is recorded (file and line, not its content) and
/// counted; the lines around it are ingested.
#[test]
fn unreadable_lines_are_recorded_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, journal, keys) = (dir.path().join("log"), dir.path().join("journal"), dir.path().join("keys"));
    std::fs::create_dir(&logs).unwrap();
    keys_init(&keys);
    std::fs::write(
        logs.join("postgresql.log"),
        "2026-11-21 22:09:51.203 UTC [9539] alice@db LOG:  AUDIT: SESSION,1,1,READ,SELECT,,,SELECT 1,<none>\n\
         this line was not written by PostgreSQL\n\
         2026-11-21 22:09:51.204 UTC [9539] alice@db LOG:  AUDIT: SESSION,2,1,READ,SELECT,,,SELECT 2,<none>\n\
         2026-11-21 22:09:51.205 UTC [9539] alice@db LOG:  AUDIT: SESSION,x,1,READ,SELECT,,,SELECT 3,<none>\n",
    )
    .unwrap();
    let log = dir.path().join("ingest.log");
    let child = Command::new(pgtrail_binary())
        .args(["ingest", "--format", "stderr", "--log-dir"])
        .arg(&logs)
        .arg("--journal")
        .arg(&journal)
        .arg("--keys")
        .arg(&keys)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let events = wait_for(&journal, &keys, "the three entries", |events| {
        events.iter().filter(|e| e.command == "LOG PARSE ERROR").count() == 2
            && events.iter().filter(|e| e.statement_id > 0).count() == 2
    });
    stop(child);
    let errors: Vec<_> =
        events.iter().filter(|e| e.command == "LOG PARSE ERROR").filter_map(|e| e.command_text.as_deref()).collect();
    assert_eq!(
        errors,
        ["postgresql.log:2: line does not match log_line_prefix", "postgresql.log:4: malformed AUDIT record"]
    );
    let process_log = std::fs::read_to_string(&log).unwrap();
    assert!(!process_log.contains("not written by PostgreSQL") && !process_log.contains("SELECT 3"), "{process_log}");
    assert!(process_log.contains("parse_errors=2"), "{process_log}");
}
