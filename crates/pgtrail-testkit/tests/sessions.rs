//! Many sessions at once, and pgbench through the proxy compared with direct.

use std::process::Command;

use pgtrail_event::EventClass;
use pgtrail_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sessions() {
    let pg = start_pg(HostAuth::ScramSha256);
    let capture = TestCapture::start(&pg).await;
    let url = capture.url("postgres", PASSWORD, "postgres");
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(connect(&url).await.expect("session opens"));
    }
    // All 200 are open at once; each runs a statement while the others stay connected.
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let row = client.query_one("SELECT $1::int4 * 2", &[&(i as i32)]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), i as i32 * 2);
            client
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let active =
        capture.wait_for("200 connects", |e| e.iter().filter(|e| e.class == EventClass::Connect).count() == 200).await;
    assert_eq!(active.iter().filter(|e| e.class == EventClass::Disconnect).count(), 0, "all 200 held open together");
    drop(clients);
    let events = capture
        .wait_for("200 disconnects", |e| e.iter().filter(|e| e.class == EventClass::Disconnect).count() == 200)
        .await;
    assert_eq!(statements(&events).len(), 200);
    let sessions: std::collections::HashSet<_> = events.iter().map(|e| e.session_id.clone()).collect();
    assert_eq!(sessions.len(), 200);
}

fn pgbench(pg: &LocalPg, host: &str, port: u16, args: &[&str]) -> String {
    let out = Command::new(pg.binaries().bin("pgbench"))
        .args(["-h", host, "-p", &port.to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("pgbench runs");
    assert_ok(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn processed(report: &str) -> String {
    report
        .lines()
        .find(|l| l.starts_with("number of transactions actually processed"))
        .unwrap_or_else(|| panic!("no summary in {report}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_modes_match_direct_and_every_statement_is_recorded() {
    let pg = start_pg(HostAuth::ScramSha256);
    pgbench(&pg, "127.0.0.1", pg.port(), &["-i", "-q", "-s", "1"]);
    let capture = TestCapture::start(&pg).await;
    let (clients, transactions) = (2, 30);
    let mut expected_statements = 0;
    for mode in ["simple", "extended", "prepared"] {
        let args = ["-n", "-M", mode, "-c", "2", "-t", "30"];
        let direct = pgbench(&pg, "127.0.0.1", pg.port(), &args);
        let proxied = pgbench(&pg, "127.0.0.1", capture.addr.port(), &args);
        assert_eq!(processed(&direct), processed(&proxied), "{mode}");
        // The TPC-B-like script sends 7 statements per transaction (BEGIN, 3 UPDATEs,
        // SELECT, INSERT, END); pgbench adds two queries of its own per run (the scale
        // from pgbench_branches and the partitioning of pgbench_accounts).
        expected_statements += clients * transactions * 7 + 2;
        let events = capture.wait_for("all pgbench statements", |e| statements(e).len() >= expected_statements).await;
        assert_eq!(statements(&events).len(), expected_statements, "{mode}");
        let count = |command: &str| statements(&events).iter().filter(|e| e.command == command).count();
        let runs = ["simple", "extended", "prepared"].iter().position(|m| *m == mode).unwrap() + 1;
        let per_run = clients * transactions;
        assert_eq!(count("BEGIN"), per_run * runs, "{mode}");
        assert_eq!(count("UPDATE"), 3 * per_run * runs, "{mode}");
        assert_eq!(count("INSERT"), per_run * runs, "{mode}");
        assert_eq!(count("COMMIT"), per_run * runs, "{mode}");
        assert_eq!(count("SELECT"), (per_run + 2) * runs, "{mode}");
        if mode != "simple" {
            let update =
                statements(&events).into_iter().rev().find(|e| e.command == "UPDATE").expect("an UPDATE was recorded");
            // pgbench sends text parameters in extended mode.
            assert!(
                update.param_list.iter().all(|p| p.as_ref().unwrap().parse::<i64>().is_ok()),
                "{:?}",
                update.param_list
            );
            assert!(update.command_text.as_deref().unwrap().contains("$1"));
        }
    }
    // Same balances through the proxy as direct: the data itself.
    let sum = pg.psql("SELECT sum(abalance) = (SELECT sum(delta) FROM pgbench_history) FROM pgbench_accounts").unwrap();
    assert_eq!(sum.trim(), "t");
}

/// Every event says whether the session's role is a superuser, as PostgreSQL reports it,
/// including after SET ROLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_the_superuser_flag_postgres_reports() {
    let pg = start_pg(HostAuth::ScramSha256);
    pg.psql(&format!("CREATE ROLE alice LOGIN PASSWORD '{PASSWORD}'; GRANT pg_read_all_data TO alice")).unwrap();
    let capture = TestCapture::start(&pg).await;
    assert_ok(&psql(&pg, &capture.url("alice", PASSWORD, "postgres"), &["-c", "SELECT 1 AS alice"]));
    assert_ok(&psql(
        &pg,
        &capture.url("postgres", PASSWORD, "postgres"),
        &["-c", "SELECT 2 AS admin", "-c", "SET ROLE alice", "-c", "SELECT 3 AS demoted"],
    ));
    let events = capture.stop().await;
    let flag = |pred: &dyn Fn(&pgtrail_event::ActivityEvent) -> bool| {
        events.iter().find(|e| pred(e)).unwrap_or_else(|| panic!("{}", describe(&events))).superuser
    };
    let connect_of = |user: &'static str| {
        move |e: &pgtrail_event::ActivityEvent| {
            e.class == EventClass::Connect && e.db_user_name.as_deref() == Some(user)
        }
    };
    let text = |t: &'static str| move |e: &pgtrail_event::ActivityEvent| e.command_text.as_deref() == Some(t);
    assert_eq!(flag(&connect_of("alice")), Some(false));
    assert_eq!(flag(&connect_of("postgres")), Some(true));
    assert_eq!(flag(&text("SELECT 2 AS admin")), Some(true));
    assert_eq!(flag(&text("SELECT 3 AS demoted")), Some(false));
}
