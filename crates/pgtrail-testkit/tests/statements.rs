//! Statements through the proxy with real clients: the events they produce, and results
//! identical to a direct connection.

use pgtrail_event::{EventClass, ExitCode, ObjectKind};
use pgtrail_testkit::*;

const PHONEBOOK: &str = "\
CREATE TABLE phonebook (id serial PRIMARY KEY, name text NOT NULL, phone text);
INSERT INTO phonebook (name, phone) VALUES ('Alice', '555-0100');
INSERT INTO phonebook (name, phone) VALUES ('Bob', '555-0101'), ('Carol', '555-0102');
SELECT name, phone FROM phonebook ORDER BY name;
UPDATE phonebook SET phone = '555-0199' WHERE name = 'Bob';
DROP TABLE phonebook;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phonebook_script_gives_one_event_per_statement() {
    let pg = start_pg(HostAuth::ScramSha256);
    let capture = TestCapture::start(&pg).await;
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), PHONEBOOK).unwrap();
    let via_proxy = psql(&pg, &capture.url("postgres", PASSWORD, "postgres"), &["-f", script.path().to_str().unwrap()]);
    let direct_url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres", pg.port());
    let direct = psql(&pg, &direct_url, &["-f", script.path().to_str().unwrap()]);
    assert_eq!(assert_ok(&via_proxy), assert_ok(&direct), "same output through the proxy as direct");

    let events = capture.stop().await;
    let stmts = statements(&events);
    let got: Vec<_> = stmts
        .iter()
        .map(|e| (e.statement_id, e.class, e.command.as_str(), e.object_name.as_deref(), e.row_count))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, EventClass::Ddl, "CREATE TABLE", Some("phonebook"), None),
            (2, EventClass::Write, "INSERT", Some("phonebook"), Some(1)),
            (3, EventClass::Write, "INSERT", Some("phonebook"), Some(2)),
            (4, EventClass::Read, "SELECT", Some("phonebook"), Some(3)),
            (5, EventClass::Write, "UPDATE", Some("phonebook"), Some(1)),
            (6, EventClass::Ddl, "DROP TABLE", Some("phonebook"), None),
        ],
        "{}",
        describe(&events)
    );
    assert_eq!(stmts[3].command_text.as_deref(), Some("SELECT name, phone FROM phonebook ORDER BY name"));
    assert_eq!(stmts[3].object_type.as_deref(), Some("TABLE"));
    let session = stmts[0].session_id.clone();
    assert!(session.is_some());
    assert!(events.iter().all(|e| e.session_id == session), "one session");
    for e in &stmts {
        assert!(e.start_time <= e.end_time.unwrap() && e.end_time.unwrap() <= e.log_time);
        assert_eq!(e.sql_state, None);
        assert!(e.query_fingerprint.is_some());
        assert_eq!(e.source, Some(pgtrail_event::EventSource::Proxy));
        assert_eq!(e.db_user_name.as_deref(), Some("postgres"));
    }
    // The DAS field set is all there, with Aurora's names.
    let json = serde_json::to_value(stmts[3]).unwrap();
    for field in [
        "class",
        "clientApplication",
        "command",
        "commandText",
        "databaseName",
        "dbProtocol",
        "dbUserName",
        "errorMessage",
        "exitCode",
        "logTime",
        "netProtocol",
        "objectName",
        "objectType",
        "paramList",
        "pid",
        "remoteHost",
        "remotePort",
        "rowCount",
        "serverHost",
        "serverType",
        "serverVersion",
        "serviceName",
        "sessionId",
        "startTime",
        "statementId",
        "substatementId",
        "type",
        "endTime",
        "sqlState",
        "objects",
        "queryFingerprint",
        "source",
    ] {
        assert!(json.get(field).is_some(), "missing {field} in {json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_query_and_failures() {
    let pg = start_pg(HostAuth::Trust);
    let capture = TestCapture::start(&pg).await;
    let client = connect(&capture.url("postgres", "", "postgres")).await.unwrap();
    client.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2); SELECT * FROM t").await.unwrap();
    let err = client.batch_execute("SELECT 1; SELECT * FROM missing; SELECT 3").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"));
    let err = client.batch_execute("selec 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42601"));
    client.batch_execute("ALTER USER postgres PASSWORD 'hunter2'").await.unwrap();
    drop(client);
    let events = capture.wait_for("disconnect", |e| e.iter().any(|e| e.class == EventClass::Disconnect)).await;
    let stmts = statements(&events);
    let got: Vec<_> = stmts
        .iter()
        .map(|e| (e.command.as_str(), e.command_text.as_deref().unwrap(), e.sql_state.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("CREATE TABLE", "CREATE TABLE t (id int)", None),
            ("INSERT", "INSERT INTO t VALUES (1), (2)", None),
            ("SELECT", "SELECT * FROM t", None),
            ("SELECT", "SELECT 1", None),
            ("SELECT", "SELECT * FROM missing", Some("42P01")),
            ("UNKNOWN", "selec 1", Some("42601")),
            ("ALTER ROLE", "ALTER USER postgres PASSWORD <REDACTED>", None),
        ],
        "{}",
        describe(&events)
    );
    let missing = stmts[4];
    assert_eq!(missing.error_message.as_deref(), Some("relation \"missing\" does not exist"));
    assert_eq!(missing.exit_code, Some(ExitCode::SqlState("42P01".into())));
    assert_eq!(stmts[5].class, EventClass::Misc);
    assert_eq!(stmts[6].class, EventClass::Role);
    let ids: Vec<u64> = stmts.iter().map(|e| e.statement_id).collect();
    assert_eq!(ids, (1..=7).collect::<Vec<_>>());
    assert!(!serde_json::to_string(&events).unwrap().contains("hunter2"), "the password is nowhere in the journal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_parameters() {
    let pg = start_pg(HostAuth::Trust);
    pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric, photo bytea)").unwrap();
    let capture = TestCapture::start(&pg).await;
    let client = connect(&capture.url("postgres", "", "postgres")).await.unwrap();
    let insert = client.prepare("INSERT INTO accounts (id, owner, balance) VALUES ($1, $2, NULL)").await.unwrap();
    for (id, owner) in [(1i32, "ann"), (2, "ben")] {
        assert_eq!(client.execute(&insert, &[&id, &owner]).await.unwrap(), 1);
    }
    let owner: Option<&str> = None;
    let rows =
        client.query("SELECT id FROM accounts WHERE owner = $1 OR $1 IS NULL ORDER BY id", &[&owner]).await.unwrap();
    assert_eq!(rows.len(), 2);
    drop(client);
    let events = capture.wait_for("disconnect", |e| e.iter().any(|e| e.class == EventClass::Disconnect)).await;
    let stmts = statements(&events);
    assert_eq!(stmts.len(), 3, "one event per Execute: {}", describe(&events));
    // tokio-postgres sends binary parameters; they are recorded as PostgreSQL prints them.
    assert_eq!(stmts[0].param_list, vec![Some("1".to_string()), Some("ann".to_string())]);
    assert_eq!(stmts[1].param_list, vec![Some("2".to_string()), Some("ben".to_string())]);
    assert_eq!(stmts[2].param_list, vec![None]);
    assert_eq!(
        stmts[0].command_text.as_deref(),
        Some("INSERT INTO accounts (id, owner, balance) VALUES ($1, $2, NULL)")
    );
    assert_eq!(stmts[0].row_count, Some(1));
    assert_eq!(stmts[2].row_count, Some(2));
    assert_eq!(stmts[0].objects[0].kind, ObjectKind::Relation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_are_transparent() {
    let pg = start_pg(HostAuth::Trust);
    pg.psql("CREATE TABLE people (id int, name text)").unwrap();
    let capture = TestCapture::start(&pg).await;
    let data: String = (0..5000).map(|i| format!("{i}\tperson number {i}\n")).collect();
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(input.path(), &data).unwrap();
    let url = capture.url("postgres", "", "postgres");
    let copy_in = format!("\\copy people FROM '{}'", input.path().display());
    assert_ok(&psql(&pg, &url, &["-c", &copy_in]));
    let out = assert_ok(&psql(&pg, &url, &["-c", "COPY people TO STDOUT"]));
    assert_eq!(out, data, "COPY out returns exactly what COPY in loaded");
    let events = capture.stop().await;
    let copies: Vec<_> = statements(&events).into_iter().filter(|e| e.command == "COPY").collect();
    assert_eq!(copies.len(), 2, "{}", describe(&events));
    assert_eq!((copies[0].class, copies[0].row_count), (EventClass::Write, Some(5000)));
    assert_eq!((copies[1].class, copies[1].row_count), (EventClass::Read, Some(5000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_query_is_cancelled_through_the_proxy() {
    let pg = start_pg(HostAuth::Trust);
    let capture = TestCapture::start(&pg).await;
    let client = connect(&capture.url("postgres", "", "postgres")).await.unwrap();
    let token = client.cancel_token();
    let started = std::time::Instant::now();
    let sleeper = tokio::spawn(async move {
        let result = client.simple_query("SELECT pg_sleep(60)").await;
        (client, result)
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.expect("cancel request sent to the proxy");
    let (client, result) = sleeper.await.unwrap();
    let err = result.expect_err("cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // The session goes on after a cancel.
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    let events = capture.wait_for("disconnect", |e| e.iter().any(|e| e.class == EventClass::Disconnect)).await;
    let sleep =
        statements(&events).into_iter().find(|e| e.command_text.as_deref() == Some("SELECT pg_sleep(60)")).unwrap();
    assert_eq!(sleep.sql_state.as_deref(), Some("57014"));
    assert_eq!(sleep.object_type.as_deref(), Some("FUNCTION"));
    assert_eq!(sleep.object_name.as_deref(), Some("pg_sleep"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_large_results_and_large_parameters() {
    let pg = start_pg(HostAuth::Trust);
    let capture = TestCapture::start(&pg).await;
    let url = capture.url("postgres", "", "postgres");
    // LISTEN in one session, NOTIFY from another, both through the proxy.
    let (listener, mut connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // poll_message drives the connection and yields its asynchronous messages.
        while let Some(Ok(msg)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let notifier = connect(&url).await.unwrap();
    notifier.batch_execute("NOTIFY jobs, 'payload-42'").await.unwrap();
    let note = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    assert_eq!(note, ("jobs".to_string(), "payload-42".to_string()));

    // A 30 MB result and a 20 MB parameter pass through unchanged.
    let row = notifier.query_one("SELECT repeat('x', 30000000) AS big", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0).len(), 30_000_000);
    let blob: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    let row = notifier.query_one("SELECT $1::bytea AS echo, length($1::bytea) AS n", &[&blob]).await.unwrap();
    assert_eq!(row.get::<_, i32>(1), 20_000_000);
    assert_eq!(row.get::<_, Vec<u8>>(0), blob);
    drop(notifier);
    drop(listener);
    let events = capture
        .wait_for("two disconnects", |e| e.iter().filter(|e| e.class == EventClass::Disconnect).count() == 2)
        .await;
    let commands: Vec<_> = statements(&events).iter().map(|e| e.command.clone()).collect();
    assert!(commands.contains(&"LISTEN".to_string()) && commands.contains(&"NOTIFY".to_string()), "{commands:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_get_one_event_each_even_around_an_error() {
    let pg = start_pg(HostAuth::Trust);
    pg.psql("CREATE TABLE ledger (id int PRIMARY KEY, amount int)").unwrap();
    let capture = TestCapture::start(&pg).await;
    let client = connect(&capture.url("postgres", "", "postgres")).await.unwrap();
    let insert = client.prepare("INSERT INTO ledger VALUES ($1, $2)").await.unwrap();
    let sum = client.prepare("SELECT sum(amount)::int4 FROM ledger").await.unwrap();
    // tokio-postgres writes all of these before reading any reply: a real pipeline. The
    // duplicate key fails in the middle; the requests after it still run.
    let (a, b, dup, c, total) = tokio::join!(
        client.execute(&insert, &[&1i32, &10i32]),
        client.execute(&insert, &[&2i32, &20i32]),
        client.execute(&insert, &[&1i32, &99i32]),
        client.execute(&insert, &[&3i32, &30i32]),
        client.query_one(&sum, &[]),
    );
    assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (1, 1, 1));
    assert_eq!(dup.unwrap_err().code().map(|c| c.code()), Some("23505"));
    assert_eq!(total.unwrap().get::<_, i32>(0), 60);
    drop(client);
    let events = capture.wait_for("disconnect", |e| e.iter().any(|e| e.class == EventClass::Disconnect)).await;
    let executed: Vec<_> = statements(&events)
        .into_iter()
        .map(|e| (e.command.as_str(), e.param_list.first().cloned().flatten(), e.row_count, e.sql_state.as_deref()))
        .collect();
    assert_eq!(
        executed,
        vec![
            ("INSERT", Some("1".to_string()), Some(1), None),
            ("INSERT", Some("2".to_string()), Some(1), None),
            ("INSERT", Some("1".to_string()), None, Some("23505")),
            ("INSERT", Some("3".to_string()), Some(1), None),
            ("SELECT", None, Some(1), None),
        ],
        "{}",
        describe(&events)
    );
}
