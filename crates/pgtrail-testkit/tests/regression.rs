//! Regression tests, end to end against real PostgreSQL 15 and real clients, each named
//! after the bug it pins (issue and item in the docs). Each was written to fail before
//! its fix.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgtrail_event::{ActivityEvent, EventSource, Verdict};
use pgtrail_testkit::*;
use pgtrail_wire::{
    Authentication, BackendMessage, FrontendMessage, Limits, PROTOCOL_V3, StartupMessage, decode_backend,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn policy(json: serde_json::Value) -> pgtrail_proxy::PolicyConfig {
    serde_json::from_value(json).expect("policy")
}

fn denied<'a>(events: &'a [ActivityEvent], rule: &str) -> Vec<&'a ActivityEvent> {
    events.iter().filter(|e| e.verdict == Some(Verdict::Denied) && e.denied_by.as_deref() == Some(rule)).collect()
}

fn table_exists(pg: &LocalPg, name: &str) -> bool {
    pg.psql(&format!("SELECT to_regclass('{name}') IS NOT NULL")).expect("query").trim() == "t"
}

/// Issue 12.1: with a rule denying DROP TABLE, a text whose DROP is hidden inside a
/// literal when standard_conforming_strings is on ran its DROP once the session turned it
/// off: the proxy reused its parse made with it on, and learnt of a pipelined SET only
/// from the server's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue12_1_deny_rule_bypassed_through_standard_conforming_strings() {
    let pg = start_pg(HostAuth::Trust);
    pg.psql("CREATE TABLE victim (id int); INSERT INTO victim VALUES (1)").expect("setup");
    let capture = TestCapture::start_with(&pg, |c| {
        c.proxy.policy = policy(serde_json::json!({
            "deny": [{"name": "no drop", "when": "statement.command == \"DROP TABLE\"", "message": "no dropping"}],
        }));
    })
    .await;
    let url = capture.url("postgres", "x", "postgres");
    let hidden = "SELECT 1; SELECT 'a\\'' ; DROP TABLE victim; -- '";

    // Sequential, as in the report: psql -c Q -c "SET standard_conforming_strings = off" -c Q.
    let out = psql(
        &pg,
        &url,
        &["-v", "ON_ERROR_STOP=0", "-c", hidden, "-c", "SET standard_conforming_strings = off", "-c", hidden],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("denied by rule \"no drop\"").count(), 2, "{stderr}");
    assert!(table_exists(&pg, "victim"), "the DROP ran: {stderr}");

    // Pipelined: the SET and the text in one write, before the SET's reply is back.
    let client = connect(&url).await.expect("connects");
    let fresh = "SELECT 'b\\'' ; DROP TABLE victim; -- '";
    let (set, run) =
        tokio::join!(client.simple_query("SET standard_conforming_strings = off"), client.simple_query(fresh));
    set.expect("SET runs");
    let error = run.expect_err("the hidden DROP is denied");
    assert_eq!(error.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{error}");
    drop(client);
    assert!(table_exists(&pg, "victim"), "the pipelined DROP ran");

    let events = capture.stop().await;
    let denials = denied(&events, "no drop");
    assert_eq!(denials.len(), 3, "{}", describe(&events));
    assert!(denials.iter().all(|e| e.command == "DROP TABLE"), "{}", describe(&events));
}

/// Issue 12.3: with restrict_password_commands on, a user not in password_admins changed a
/// password through a DO block (EXECUTE of a literal, a concatenation, format()), a
/// function body, and the trick of 12.1; the texts were journaled with the password in
/// clear. SQL built at run time stays out of the proxy's reach: pgAudit's record of it
/// (and the "password change" rule) sees it after the fact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue12_3_password_restriction_escaped_through_do_blocks_and_functions() {
    let pg = start_pgaudit_pg("csvlog");
    pg.psql("CREATE EXTENSION pgaudit; CREATE ROLE alice LOGIN PASSWORD 'old-password'").expect("setup");
    let dir = tempfile::tempdir().unwrap();
    let (log_dir, state) = (pg.log_dir(), dir.path().join("position"));
    let capture = TestCapture::start_with(&pg, move |c| {
        c.proxy.policy = policy(serde_json::json!({
            "restrict_password_commands": true,
            "password_admins": ["postgres"],
        }));
        c.pgaudit = Some(pgtrail_pgaudit::IngestConfig { log_dir, format: pgtrail_pgaudit::Format::Csvlog, state });
    })
    .await;
    let url = capture.url("alice", "old-password", "postgres");
    let attempts = [
        "DO $$ BEGIN EXECUTE 'ALTER ROLE alice PASSWORD ''leaked-1'''; END $$",
        "DO $$ BEGIN EXECUTE 'ALTER ROLE alice PASS' || 'WORD ''leaked-2'''; END $$",
        "DO $$ BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', 'alice', 'leaked-3'); END $$",
        "CREATE FUNCTION set_pw() RETURNS void LANGUAGE plpgsql AS $f$BEGIN EXECUTE 'ALTER ROLE alice PASSWORD ''leaked-4'''; END$f$",
        "SELECT set_pw()",
        "SET standard_conforming_strings = off",
        "SELECT 'a\\'' ; ALTER ROLE alice PASSWORD 'leaked-5'; -- '",
    ];
    let mut args = vec!["-v", "ON_ERROR_STOP=0"];
    for attempt in &attempts {
        args.extend(["-c", attempt]);
    }
    let out = psql(&pg, &url, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("setting a password is restricted").count(), 5, "{stderr}");
    assert!(stderr.contains("function set_pw() does not exist"), "{stderr}");
    // The extended protocol (Parse) is judged the same way.
    let client = connect(&url).await.expect("alice connects");
    let error = client
        .execute("DO $$ BEGIN EXECUTE 'ALTER ROLE alice PASSWORD ''leaked-6'''; END $$", &[])
        .await
        .expect_err("denied in a Parse too");
    assert_eq!(error.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{error}");
    drop(client);
    // The password is still the old one.
    let direct = format!("postgres://alice:old-password@127.0.0.1:{}/postgres", pg.port());
    assert_ok(&psql(&pg, &direct, &["-c", "SELECT 'old password still works'"]));

    // Built at run time: out of reach before it runs, recorded by pgAudit after.
    let runtime = "DO $$ BEGIN EXECUTE 'ALTER ROLE alice ' || chr(80) || 'ASSWORD ''runtime-pw'''; END $$";
    assert_ok(&psql(&pg, &url, &["-c", runtime]));
    capture
        .wait_for("pgAudit's record of the run-time ALTER ROLE", |events| {
            events.iter().any(|e| e.source == Some(EventSource::Pgaudit) && e.command == "ALTER ROLE")
        })
        .await;
    let events = capture.stop().await;
    for event in &events {
        let text = event.command_text.as_deref().unwrap_or_default();
        for i in 1..=6 {
            assert!(!text.contains(&format!("leaked-{i}")), "password in the trail: {text}");
        }
    }
    assert_eq!(denied(&events, "restrict_password_commands").len(), 6, "{}", describe(&events));
    let in_engine = events
        .iter()
        .find(|e| e.source == Some(EventSource::Pgaudit) && e.command == "ALTER ROLE")
        .expect("pgAudit's record");
    let text = in_engine.command_text.as_deref().unwrap_or_default();
    assert!(!text.contains("runtime-pw"), "{text}");
    let mut engine = pgtrail_rules::Engine::new(pgtrail_rules::RuleSet::parse("builtin = true\n", "pack").unwrap());
    let fired: Vec<String> = engine.process(in_engine).into_iter().map(|a| a.rule).collect();
    assert!(fired.iter().any(|r| r == "password change"), "{fired:?} for {text}");
}

/// Sends a startup packet for `user` and reads up to the server's first request.
async fn start_login(addr: std::net::SocketAddr, user: &str) -> (TcpStream, BackendMessage) {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let mut out = BytesMut::new();
    StartupMessage::Startup {
        version: PROTOCOL_V3,
        params: vec![("user".into(), user.into()), ("database".into(), "postgres".into())],
    }
    .encode(&mut out);
    stream.write_all(&out).await.expect("startup sent");
    let mut buf = BytesMut::new();
    loop {
        if let Some(msg) = decode_backend(&mut buf, &Limits::default()).expect("valid") {
            return (stream, msg);
        }
        assert!(stream.read_buf(&mut buf).await.expect("reads") > 0, "closed during login");
    }
}

/// Logs in with a cleartext password and reads up to ReadyForQuery.
async fn password_login(addr: std::net::SocketAddr, password: &str) -> TcpStream {
    let (mut stream, request) = start_login(addr, "postgres").await;
    assert!(matches!(request, BackendMessage::Authentication(Authentication::CleartextPassword)), "{request:?}");
    let mut out = BytesMut::new();
    let mut body = password.as_bytes().to_vec();
    body.push(0);
    FrontendMessage::AuthResponse(body.into()).encode(&mut out);
    stream.write_all(&out).await.expect("password sent");
    let mut buf = BytesMut::new();
    loop {
        stream.read_buf(&mut buf).await.expect("reads");
        while let Some(msg) = decode_backend(&mut buf, &Limits::default()).expect("valid") {
            if matches!(msg, BackendMessage::ReadyForQuery { .. }) {
                return stream;
            }
        }
    }
}

/// Polls `condition` every 10 ms for up to 10 s.
async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Issue 12.4: the startup timeout covered only the first packet, so clients that sent
/// most of a password message and went idle held a socket and up to 1 MB each for as
/// long as they liked; there was no limit on client connections; and large messages read
/// whole could make the proxy hold gigabytes across sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue12_4_logins_that_never_time_out_and_unbounded_buffers() {
    let pg = start_pg(HostAuth::Password);
    let capture = TestCapture::start_with(&pg, |c| {
        c.proxy.authentication_timeout = Duration::from_millis(1500);
        c.proxy.max_client_connections = 3;
        c.proxy.max_buffered_message_bytes = 3 << 20;
    })
    .await;
    let stats = capture.proxy_stats();

    // Most of a password message, then silence: refused once the login deadline passes.
    let started = Instant::now();
    let (mut stalled, _) = start_login(capture.addr, "postgres").await;
    stalled.write_all(&[b'p', 0, 0, 0x10, 0, b'h', b'u', b'n']).await.expect("partial password");
    let messages = read_until_closed(&mut stalled).await;
    assert_eq!(fatal_code(&messages).as_deref(), Some("08P01"), "{messages:?}");
    assert!(started.elapsed() >= Duration::from_millis(1400), "{:?}", started.elapsed());

    // A password message larger than any login needs is refused from its header alone.
    let (mut big, _) = start_login(capture.addr, "postgres").await;
    big.write_all(&[b'p', 0, 0x10, 0, 0]).await.expect("header of a 1 MiB password");
    assert_eq!(fatal_code(&read_until_closed(&mut big).await).as_deref(), Some("08P01"));
    let events = capture
        .wait_for("two failed logins", |events| {
            events
                .iter()
                .filter(|e| e.class == pgtrail_event::EventClass::Connect && e.sql_state.as_deref() == Some("08P01"))
                .count()
                == 2
        })
        .await;
    assert!(!events.iter().any(|e| e.class == pgtrail_event::EventClass::Disconnect), "{}", describe(&events));

    // The connection limit: three idle connections, the fourth is refused with 53300.
    until("no sessions", || stats.sessions_active.load(Ordering::Relaxed) == 0).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(capture.addr).await.expect("connects"));
    }
    until("three sessions", || stats.sessions_active.load(Ordering::Relaxed) == 3).await;
    let mut fourth = TcpStream::connect(capture.addr).await.expect("connects");
    assert_eq!(fatal_code(&read_until_closed(&mut fourth).await).as_deref(), Some("53300"));
    assert_eq!(stats.connections_refused.load(Ordering::Relaxed), 1);
    drop(idle);
    until("the idle connections to go", || stats.sessions_active.load(Ordering::Relaxed) == 0).await;

    // The buffer budget (3 MiB): one session holds most of a 2 MiB Query, a second one's
    // 2 MiB Query is refused with 53200, and the first one completes and runs.
    let mut holder = password_login(capture.addr, PASSWORD).await;
    let text = format!("SELECT 'held' /* {} */", "x".repeat(2 << 20));
    let mut query = BytesMut::new();
    FrontendMessage::Query { query: text }.encode(&mut query);
    holder.write_all(&query[..1 << 20]).await.expect("first half");
    until("the first half to be buffered", || stats.buffered_message_bytes.load(Ordering::Relaxed) >= 2 << 20).await;
    let mut refused = password_login(capture.addr, PASSWORD).await;
    refused.write_all(&query[..1 << 20]).await.expect("first half");
    let messages = read_until_closed(&mut refused).await;
    assert_eq!(fatal_code(&messages).as_deref(), Some("53200"), "{messages:?}");
    holder.write_all(&query[1 << 20..]).await.expect("second half");
    let mut buf = BytesMut::new();
    let mut rows = Vec::new();
    'reply: loop {
        holder.read_buf(&mut buf).await.expect("reads");
        while let Some(msg) = decode_backend(&mut buf, &Limits::default()).expect("valid") {
            match msg {
                BackendMessage::DataRow(values) => rows.push(values),
                BackendMessage::ReadyForQuery { .. } => break 'reply,
                _ => {}
            }
        }
    }
    assert_eq!(rows.len(), 1);
    until("the budget to be given back", || stats.buffered_message_bytes.load(Ordering::Relaxed) == 0).await;
    drop(holder);
    capture.stop().await;
}

/// Reads backend messages until `count` ReadyForQuery have arrived.
async fn read_replies(stream: &mut TcpStream, count: usize) -> Vec<BackendMessage> {
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut ready = 0;
    while ready < count {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(&mut buf)).await;
        assert!(read.expect("replies in time").expect("reads") > 0, "closed; got {messages:?}");
        while let Some(msg) = decode_backend(&mut buf, &Limits::default()).expect("valid") {
            ready += usize::from(matches!(msg, BackendMessage::ReadyForQuery { .. }));
            messages.push(msg);
        }
    }
    messages
}

/// Issue 12.5: a FunctionCallResponse popped its call, and the ReadyForQuery after it then
/// popped the next pipelined request; an error in a FunctionCall drained every pipelined
/// request up to a Sync. Events were lost or given to the wrong request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue12_5_pipelined_function_calls_lost_the_requests_after_them() {
    let pg = start_pg(HostAuth::Trust);
    let oid: u32 = pg.psql("SELECT 'pg_backend_pid'::regproc::oid").expect("oid").trim().parse().expect("number");
    let capture = TestCapture::start(&pg).await;
    let mut s = logged_in(capture.addr).await;
    let call = |oid: u32| FrontendMessage::FunctionCall { oid, arg_formats: vec![], args: vec![], result_format: 0 };
    let mut out = BytesMut::new();
    for msg in [
        call(oid),
        FrontendMessage::Query { query: "SELECT 'after the call'".into() },
        call(1),
        FrontendMessage::Query { query: "SELECT 'after the failed call'".into() },
        call(oid),
    ] {
        msg.encode(&mut out);
    }
    s.write_all(&out).await.expect("one write");
    let replies = read_replies(&mut s, 5).await;
    assert_eq!(replies.iter().filter(|m| matches!(m, BackendMessage::DataRow(_))).count(), 2, "{replies:?}");
    drop(s);
    let events = capture.wait_for("the DISCONNECT", |e| e.iter().any(|e| e.command == "DISCONNECT")).await;
    let seen: Vec<(String, Option<String>, Option<String>)> = statements(&events)
        .iter()
        .map(|e| (e.command.clone(), e.command_text.as_deref().map(str::to_owned), e.sql_state.clone()))
        .collect();
    let call_text = format!("<function call oid={oid}>");
    assert_eq!(
        seen,
        vec![
            ("FUNCTION CALL".into(), Some(call_text.clone()), None),
            ("SELECT".into(), Some("SELECT 'after the call'".into()), None),
            ("FUNCTION CALL".into(), Some("<function call oid=1>".into()), Some("42883".into())),
            ("SELECT".into(), Some("SELECT 'after the failed call'".into()), None),
            ("FUNCTION CALL".into(), Some(call_text), None),
        ],
        "{}",
        describe(&events)
    );
    capture.stop().await;
}

/// Issue 12.6: the farewell ErrorResponse (57P01 at shutdown, 08P01 after a protocol
/// violation, 08006 when the upstream closes) was written after part of a DataRow, inside
/// the row's bytes, where no client can parse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue12_6_farewell_written_inside_a_data_row() {
    let pg = start_pg(HostAuth::Trust);
    let capture = TestCapture::start(&pg).await;
    let mut s = logged_in(capture.addr).await;
    const ROW: usize = 48 << 20;
    let mut out = BytesMut::new();
    FrontendMessage::Query { query: format!("SELECT repeat('x', {ROW})") }.encode(&mut out);
    s.write_all(&out).await.expect("query sent");
    // Read the start of the row, then stop reading: the proxy is left writing the row.
    let mut received = BytesMut::new();
    while received.len() < 64 * 1024 {
        assert!(s.read_buf(&mut received).await.expect("reads") > 0);
    }
    // A protocol violation ends the session while the row is half-way through.
    s.write_all(&[b'S', 0, 0, 0, 2]).await.expect("garbage sent");
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.read_buf(&mut received)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the proxy did not close the connection"),
        }
    }
    // RowDescription, then the DataRow's header: everything after it must be the row's own
    // bytes, however much of it arrived.
    let row_start = received.iter().position(|&b| b == b'D').expect("a DataRow started");
    let body = &received[row_start + 5 + 2 + 4..];
    assert!(body.len() < ROW, "the whole row arrived; the test did not cut it");
    let foreign = body.iter().position(|&b| b != b'x');
    assert_eq!(
        foreign,
        None,
        "bytes that are not the row's inside the row: {:?}",
        foreign.map(|at| String::from_utf8_lossy(&body[at..(at + 60).min(body.len())]).into_owned())
    );
    let events = capture.stop().await;
    let ended = events.iter().find(|e| e.command == "DISCONNECT").expect("DISCONNECT");
    assert_eq!(ended.sql_state.as_deref(), Some("08P01"), "still recorded: {}", describe(&events));
}

/// Issue 12.9: `pgtrail verify ... | head -1` panicked with a backtrace when the reader
/// closed the pipe; every command must end quietly on EPIPE.
#[test]
fn issue12_9_broken_pipe_panicked_with_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    keys_init(&keys);
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let vkey = keys.join("verify.pub");
    for args in [
        vec!["verify", "--journal", journal.to_str().unwrap(), "--verify-key", vkey.to_str().unwrap()],
        vec!["keys", "init", "--help"],
    ] {
        // A pipe whose reader is closed before the command writes anything.
        let out = run_pgtrail_into_closed_pipe(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
    }
}

/// Issue 12.9: after the journal's disk filled, the loss record blamed "the recorder queue
/// was full" instead of the failing journal, and nothing was logged while events were
/// being dropped.
#[test]
fn issue12_9_loss_record_blamed_the_queue_for_a_full_disk() {
    let pg = start_pg(HostAuth::Trust);
    let disk = Tmpfs::mount("2m");
    let dir = tempfile::tempdir().unwrap();
    let (journal, keys) = (disk.0.join("journal"), dir.path().join("keys"));
    keys_init(&keys);
    let port = free_port();
    let config = dir.path().join("pgtrail.toml");
    write_proxy_config(&config, port, &pg, &journal, &keys, "[recorder]\nqueue_capacity = 4\n");
    let log = dir.path().join("proxy.log");
    let mut proxy = spawn_proxy_with_config(&config, &log, port);
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    assert_ok(&psql(&pg, &url, &["-c", "SELECT 'before the disk filled'"]));

    let filler = disk.fill();
    // Async delivery: statements go on; their events wait, then overflow the queue.
    let script = dir.path().join("many.sql");
    // Text that does not compress, so the events need more room than the disk has left.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut noise = || {
        (0..64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                format!("{:016x}", state)
            })
            .collect::<String>()
    };
    let statements: String = (0..400).map(|i| format!("SELECT 'while full {i} {}';\n", noise())).collect();
    std::fs::write(&script, statements).unwrap();
    assert_ok(&psql(&pg, &url, &["-q", "-f", script.to_str().unwrap()]));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("journal write failed") {
        assert!(Instant::now() < deadline, "the journal never failed to write");
        assert_ok(&psql(&pg, &url, &["-q", "-f", script.to_str().unwrap()]));
    }
    // More work while it fails: these drops are the failing journal's.
    assert_ok(&psql(&pg, &url, &["-q", "-f", script.to_str().unwrap()]));
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("journal writes again") {
        assert!(Instant::now() < deadline, "the journal did not recover");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ok(&psql(&pg, &url, &["-c", "SELECT 'after the disk had room'"]));
    signal(&proxy, "-TERM");
    assert!(proxy.wait().unwrap().success());

    let events = read_events_with(&journal, &keys);
    let losses: Vec<&ActivityEvent> = events.iter().filter(|e| e.kind == pgtrail_event::EventKind::Loss).collect();
    assert!(!losses.is_empty(), "events were dropped: {}", describe(&events));
    let causes: Vec<&str> = losses.iter().map(|e| e.error_message.as_deref().unwrap_or_default()).collect();
    // Drops while the journal was failing name the failure (earlier ones, before the
    // first write failed, may name the full queue: a queue of 4 fills at once).
    assert!(
        causes.iter().any(|why| why.contains("the journal could not write") && why.contains("No space left")),
        "{causes:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    let started_dropping = log_text.lines().filter(|l| l.contains("events are being dropped")).count();
    assert_eq!(started_dropping, losses.len(), "one line when each loss window starts:\n{log_text}");
    assert!(
        log_text.lines().any(|l| l.contains("dropped") && l.contains("No space left")),
        "the log names the cause:\n{log_text}"
    );
    assert!(events.iter().any(|e| e.command_text.as_deref() == Some("SELECT 'after the disk had room'")));
}

/// Issue 12.10: quickstart's event printer held stdout's lock for its whole life, so the
/// alert consumer's lines waited for it: no ALERT line appeared until Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue12_10_quickstart_held_its_alerts_back_until_ctrl_c() {
    let mut child = std::process::Command::new(pgtrail_binary())
        .args(["quickstart", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("quickstart starts");
    let stdout = child.stdout.take().expect("stdout");
    let quickstart = KillOnDrop(child);
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let url = loop {
        let line = next_line(&mut lines).await;
        if let Some(rest) = line.split("psql \"").nth(1) {
            break rest.trim_end_matches('"').to_owned();
        }
    };
    // A superuser session, kept open: "superuser session" fires on its CONNECT.
    let client = connect(&url).await.expect("connects through quickstart's proxy");
    client.simple_query("SELECT 'a statement in an open session'").await.expect("runs");
    let alert = loop {
        let line = next_line(&mut lines).await;
        if line.starts_with("ALERT") && line.contains("superuser session") {
            break line;
        }
    };
    assert!(!client.is_closed(), "the session is still open when the alert shows: {alert}");
    drop(client);
    signal(&quickstart.0, "-INT");
    drop(quickstart);
}

/// The next line a child printed, within 60 s.
async fn next_line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    let line = tokio::time::timeout(Duration::from_secs(60), lines.recv()).await;
    line.expect("printed nothing for 60 s").expect("the process ended")
}

/// Issue 12.2, end to end with the binary: one flipped byte in the middle of the last
/// segment, and the next start cut it and every valid record after it (checkpoints
/// included), after which verify said OK; a start that then failed (the port taken) left
/// not even a control event.
#[test]
fn issue12_2_restart_erased_tampered_evidence() {
    let pg = start_pg(HostAuth::Trust);
    let dir = tempfile::tempdir().unwrap();
    let (journal, keys) = (dir.path().join("journal"), dir.path().join("keys"));
    keys_init(&keys);
    let port = free_port();
    let config = dir.path().join("pgtrail.toml");
    write_proxy_config(&config, port, &pg, &journal, &keys, "");
    let log = dir.path().join("proxy.log");
    let mut proxy = spawn_proxy_with_config(&config, &log, port);
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    for i in 0..20 {
        assert_ok(&psql(&pg, &url, &["-c", &format!("SELECT 'evidence {i}'")]));
    }
    signal(&proxy, "-TERM");
    assert!(proxy.wait().unwrap().success());
    let (j, vkey) = (journal.to_str().unwrap(), keys.join("verify.pub"));
    let verify = || run_pgtrail(&["verify", "--journal", j, "--verify-key", vkey.to_str().unwrap()]);
    let intact = verify();
    assert!(intact.status.success(), "{intact:?}");
    assert!(String::from_utf8_lossy(&intact.stdout).contains("truncation NOT checked"), "{intact:?}");

    let segment = std::fs::read_dir(&journal).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    assert_eq!(verify().status.code(), Some(1));

    // The start refuses, names the record and leaves the journal as it was.
    let refused =
        std::process::Command::new(pgtrail_binary()).args(["proxy", "--config"]).arg(&config).output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("the journal is damaged: record") && stderr.contains("--set-aside-damaged-journal"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "nothing was cut");
    assert_eq!(verify().status.code(), Some(1), "verify still fails");

    // Set aside on request, with the port taken: the start fails after the repair, and
    // the repair is in the journal all the same.
    let taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let failed = std::process::Command::new(pgtrail_binary())
        .args(["proxy", "--set-aside-damaged-journal", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!failed.status.success(), "the port is taken");
    drop(taken);
    let aside: Vec<_> = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".damaged-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes, "the damaged segment is kept intact");
    let events = read_events_with(&journal, &keys);
    let repaired = events.iter().find(|e| e.command == "JOURNAL REPAIRED").expect("the repair is recorded");
    assert!(repaired.command_text.as_deref().unwrap_or_default().contains("set aside intact"), "{repaired:?}");
    let mut engine = pgtrail_rules::Engine::new(pgtrail_rules::RuleSet::parse("builtin = true\n", "pack").unwrap());
    let alerts: Vec<String> =
        engine.process(repaired).into_iter().map(|a| format!("{:?} {}", a.severity, a.rule)).collect();
    assert!(alerts.iter().any(|a| a.contains("journal damaged")), "{alerts:?}");
    let after = verify();
    let report = String::from_utf8_lossy(&after.stdout);
    assert!(after.status.success() && report.contains("set aside"), "{after:?}");
}

/// Issue 12.11: with pgAudit ingest on, every statement was shown twice (once from the
/// proxy, once from pgAudit) and every alert rule fired twice for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue12_11_every_statement_counted_twice_with_pgaudit_on() {
    let pg = start_pgaudit_pg("csvlog");
    pg.psql("CREATE EXTENSION pgaudit").expect("pgaudit");
    let dir = tempfile::tempdir().unwrap();
    let (log_dir, state) = (pg.log_dir(), dir.path().join("position"));
    let capture = TestCapture::start_with(&pg, move |c| {
        c.pgaudit = Some(pgtrail_pgaudit::IngestConfig { log_dir, format: pgtrail_pgaudit::Format::Csvlog, state });
    })
    .await;
    let url = capture.url("postgres", PASSWORD, "postgres");
    let statements = [
        "CREATE TABLE phonebook (id serial PRIMARY KEY, name text, phone text)",
        "INSERT INTO phonebook (name, phone) VALUES ('Alice', '555-0100'), ('Bob', '555-0101')",
        "SELECT * FROM phonebook ORDER BY name",
        "ALTER USER postgres PASSWORD 'pgtrail'",
        "DO $$ BEGIN PERFORM count(*) FROM phonebook; END $$",
        "COPY (SELECT name FROM phonebook) TO STDOUT",
        "SELECT * FROM no_such_table",
    ];
    let mut args = vec!["-v", "ON_ERROR_STOP=0"];
    for statement in &statements {
        args.extend(["-c", statement]);
    }
    psql(&pg, &url, &args);
    // pgAudit's record of the DO block's inner statement is the last one it writes.
    capture
        .wait_for("pgAudit's records", |events| {
            events.iter().any(|e| {
                e.source == Some(EventSource::Pgaudit)
                    && e.command_text.as_deref() == Some("SELECT count(*) FROM phonebook")
            })
        })
        .await;
    let mut capture = capture;
    capture.shutdown().await;
    let events = capture.events();

    // What tail shows: one event per statement, each from the proxy.
    let shown: Vec<&ActivityEvent> = events
        .iter()
        .filter(|e| {
            e.confirms.is_none()
                && !matches!(e.class, pgtrail_event::EventClass::Connect | pgtrail_event::EventClass::Disconnect)
        })
        .collect();
    for statement in statements {
        let expected = statement.replace("'pgtrail'", "<REDACTED>");
        let count = shown.iter().filter(|e| e.command_text.as_deref() == Some(expected.as_str())).count();
        assert_eq!(count, 1, "{statement}:\n{}", describe(&events));
    }
    // Every pgAudit record of those statements confirms the proxy event of its session.
    let do_event = shown.iter().find(|e| e.command == "DO").expect("the DO block");
    let confirmations: Vec<&ActivityEvent> = events.iter().filter(|e| e.confirms.is_some()).collect();
    assert!(confirmations.len() >= statements.len() - 1, "{}", describe(&events));
    for confirmation in &confirmations {
        let named = events.iter().any(|e| {
            e.source == Some(EventSource::Proxy)
                && Some(e.statement_id) == confirmation.confirms
                && e.session_id == confirmation.session_id
        });
        assert!(named, "{confirmation:?} names no proxy event");
    }
    // The DO block's inner SELECT appears once, linked to its DO.
    let inner: Vec<&&ActivityEvent> =
        shown.iter().filter(|e| e.command_text.as_deref() == Some("SELECT count(*) FROM phonebook")).collect();
    assert_eq!(inner.len(), 1, "{}", describe(&events));
    assert_eq!(inner[0].source, Some(EventSource::Pgaudit));
    assert_eq!(
        (inner[0].session_id.clone(), inner[0].statement_id),
        (do_event.session_id.clone(), do_event.statement_id)
    );
    assert!(inner[0].substatement_id > 1);

    // One alert per statement: "DDL" for the CREATE TABLE, "password change" for ALTER USER.
    let mut engine = pgtrail_rules::Engine::new(pgtrail_rules::RuleSet::parse("builtin = true\n", "pack").unwrap());
    // (The log also holds the direct session that created the extension: not counted.)
    let session = do_event.session_id.clone();
    let fired: Vec<String> =
        events.iter().filter(|e| e.session_id == session).flat_map(|e| engine.process(e)).map(|a| a.rule).collect();
    assert_eq!(fired.iter().filter(|r| *r == "DDL").count(), 1, "{fired:?}");
    assert_eq!(fired.iter().filter(|r| *r == "password change").count(), 1, "{fired:?}");

    // tail hides the confirmations unless asked.
    let j = capture.journal_dir().to_str().unwrap().to_owned();
    let key = capture.keys_dir().join("wrapping.key");
    let tail = |extra: &[&str]| {
        let mut args = vec!["tail", "--journal", j.as_str(), "--key", key.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let out = run_pgtrail(&args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().lines().count()
    };
    assert_eq!(tail(&[]) + confirmations.len(), tail(&["--confirmations"]));
}

/// Logs in as postgres (trust) with a raw socket; returns it with the pid its
/// BackendKeyData named.
async fn login_with_pid(addr: std::net::SocketAddr) -> (TcpStream, i32) {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let mut out = BytesMut::new();
    StartupMessage::Startup {
        version: PROTOCOL_V3,
        params: vec![("user".into(), "postgres".into()), ("database".into(), "postgres".into())],
    }
    .encode(&mut out);
    stream.write_all(&out).await.expect("startup sent");
    let mut buf = BytesMut::new();
    let mut pid = None;
    loop {
        stream.read_buf(&mut buf).await.expect("reads");
        while let Some(msg) = decode_backend(&mut buf, &Limits::default()).expect("valid") {
            match msg {
                BackendMessage::BackendKeyData { pid: key_pid, .. } => pid = Some(key_pid),
                BackendMessage::ReadyForQuery { .. } => {
                    return (stream, pid.expect("BackendKeyData before ReadyForQuery"));
                }
                _ => {}
            }
        }
    }
}

/// Runs one simple query on a raw connection; returns the first column of each row.
async fn raw_query(stream: &mut TcpStream, sql: &str) -> Vec<String> {
    let mut out = BytesMut::new();
    FrontendMessage::Query { query: sql.into() }.encode(&mut out);
    stream.write_all(&out).await.expect("query sent");
    read_replies(stream, 1)
        .await
        .into_iter()
        .filter_map(|m| match m {
            BackendMessage::DataRow(values) => values[0].as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
            _ => None,
        })
        .collect()
}

/// Issue 13.2: the proxy gave clients a random BackendKeyData pid, so pg_backend_pid()
/// differed from what the driver knew, pg_terminate_backend(driver's pid) did nothing and
/// NotificationResponse's pid matched nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue13_2_clients_saw_a_random_backend_pid() {
    let pg = start_pg(HostAuth::Trust);
    let capture = TestCapture::start(&pg).await;
    let (mut a, a_pid) = login_with_pid(capture.addr).await;
    assert_eq!(raw_query(&mut a, "SELECT pg_backend_pid()").await, vec![a_pid.to_string()]);

    // NOTIFY from another session names that session's real pid.
    let (mut listener, _) = login_with_pid(capture.addr).await;
    raw_query(&mut listener, "LISTEN news").await;
    raw_query(&mut a, "NOTIFY news").await;
    let mut out = BytesMut::new();
    FrontendMessage::Query { query: "SELECT 1".into() }.encode(&mut out);
    listener.write_all(&out).await.expect("sent");
    let notified = read_replies(&mut listener, 1).await.into_iter().find_map(|m| match m {
        BackendMessage::NotificationResponse { pid, .. } => Some(pid),
        _ => None,
    });
    assert_eq!(notified, Some(a_pid));

    // pg_terminate_backend with the pid the client was given ends that session.
    assert_eq!(raw_query(&mut listener, &format!("SELECT pg_terminate_backend({a_pid})")).await, vec!["t"]);
    let messages = read_until_closed(&mut a).await;
    assert_eq!(fatal_code(&messages).as_deref(), Some("57P01"), "{messages:?}");
    drop(listener);
    capture.stop().await;
}

/// Issue 13.3: garbage or a Terminate before the startup packet got a FATAL message back
/// (PostgreSQL only closes: node-postgres's quick-disconnect test failed on it), and when
/// PostgreSQL gave up on a login (authentication_timeout), the client stayed connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue13_3_startup_and_login_edges_differed_from_postgresql() {
    let pg = start_pg_with(LocalPgOptions {
        auth: HostAuth::ScramSha256,
        superuser_password: PASSWORD.into(),
        settings: vec!["authentication_timeout = '1s'".into()],
        ..Default::default()
    });
    let capture = TestCapture::start(&pg).await;
    for before_startup in [&[b'X', 0, 0, 0, 4][..], b"GET / HTTP/1.1\r\n\r\n", &[0, 0, 0, 3]] {
        let mut s = TcpStream::connect(capture.addr).await.expect("connects");
        s.write_all(before_startup).await.expect("sent");
        let _ = s.shutdown().await;
        assert!(read_until_closed(&mut s).await.is_empty(), "{before_startup:?} got an answer");
    }

    // A SCRAM login left idle: PostgreSQL ends it after 1 s, and so does the proxy (its own
    // deadline is 60 s).
    let started = Instant::now();
    let (mut idle, request) = start_login(capture.addr, "postgres").await;
    assert!(matches!(request, BackendMessage::Authentication(Authentication::Sasl { .. })), "{request:?}");
    let messages = read_until_closed(&mut idle).await;
    assert!(started.elapsed() < Duration::from_secs(10), "closed after {:?}", started.elapsed());
    assert!(fatal_code(&messages).is_some(), "the client is told: {messages:?}");
    capture
        .wait_for("the failed login", |events| {
            events.iter().any(|e| e.class == pgtrail_event::EventClass::Connect && e.sql_state.is_some())
        })
        .await;
    capture.stop().await;
}

/// Sends `messages` in one write on a fresh logged-in raw connection, then `end`s it.
async fn send_and_leave(addr: std::net::SocketAddr, messages: Vec<FrontendMessage>, close_at_once: bool) {
    let mut s = logged_in(addr).await;
    let mut out = BytesMut::new();
    for message in messages {
        message.encode(&mut out);
    }
    s.write_all(&out).await.expect("one write");
    if !close_at_once {
        // Wait until the server has started answering (COPY's CopyInResponse, a result).
        let mut buf = BytesMut::new();
        s.read_buf(&mut buf).await.expect("an answer starts");
    }
    drop(s);
}

/// Issue 13.1: a statement sent just before the client went away (Query and Terminate in
/// one write, a close right after sending, an aborted COPY FROM STDIN, a pipelined batch
/// cut before its Sync) ran on the server, and no event was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue13_1_statements_ran_without_their_event_when_the_client_left() {
    let pg = start_pg_with(LocalPgOptions {
        auth: HostAuth::Trust,
        superuser_password: PASSWORD.into(),
        settings: vec!["log_statement = 'all'".into()],
        ..Default::default()
    });
    pg.psql("CREATE TABLE t (id int)").expect("table");
    let capture = TestCapture::start(&pg).await;
    let q = |sql: &str| FrontendMessage::Query { query: sql.into() };
    let parse_bind_execute = |sql: &str| {
        vec![
            FrontendMessage::Parse { name: String::new(), query: sql.into(), param_types: vec![] },
            FrontendMessage::Bind {
                portal: String::new(),
                statement: String::new(),
                param_formats: vec![],
                params: vec![],
                result_formats: vec![],
            },
            FrontendMessage::Execute { portal: String::new(), max_rows: 0 },
        ]
    };
    // Query and Terminate in one write.
    send_and_leave(capture.addr, vec![q("INSERT INTO t VALUES (1)"), FrontendMessage::Terminate], true).await;
    // Query, then the socket closes at once.
    send_and_leave(capture.addr, vec![q("INSERT INTO t VALUES (2)")], true).await;
    // Still running when the client leaves.
    send_and_leave(capture.addr, vec![q("INSERT INTO t SELECT 3 FROM pg_sleep(0.3)")], true).await;
    // COPY FROM STDIN with some data, then gone.
    send_and_leave(
        capture.addr,
        vec![q("COPY t FROM STDIN"), FrontendMessage::CopyData(bytes::Bytes::from_static(b"4\n"))],
        false,
    )
    .await;
    // A batch with its Sync, then one cut before it.
    let mut batch = parse_bind_execute("INSERT INTO t VALUES (5)");
    batch.push(FrontendMessage::Sync);
    batch.extend(parse_bind_execute("INSERT INTO t VALUES (6)"));
    send_and_leave(capture.addr, batch, true).await;
    // A transaction block left open.
    send_and_leave(capture.addr, vec![q("BEGIN"), q("INSERT INTO t VALUES (7)")], true).await;

    let events =
        capture.wait_for("six sessions to end", |e| e.iter().filter(|e| e.command == "DISCONNECT").count() == 6).await;
    capture.stop().await;
    let text_of = |text: &str| events.iter().find(|e| e.command_text.as_deref() == Some(text));
    for committed in [
        "INSERT INTO t VALUES (1)",
        "INSERT INTO t VALUES (2)",
        "INSERT INTO t SELECT 3 FROM pg_sleep(0.3)",
        "INSERT INTO t VALUES (5)",
    ] {
        let e = text_of(committed).unwrap_or_else(|| panic!("no event for {committed}:\n{}", describe(&events)));
        assert_eq!((e.row_count, e.sql_state.as_deref(), e.outcome.as_deref()), (Some(1), None, None), "{e:?}");
    }
    let copy = text_of("COPY t FROM STDIN").unwrap_or_else(|| panic!("no COPY event:\n{}", describe(&events)));
    assert_eq!(copy.sql_state.as_deref(), Some("57014"), "the COPY failed when its client left: {copy:?}");
    for rolled_back in ["INSERT INTO t VALUES (6)", "INSERT INTO t VALUES (7)"] {
        let e = text_of(rolled_back).unwrap_or_else(|| panic!("no event for {rolled_back}:\n{}", describe(&events)));
        let later = events.iter().any(|r| {
            r.session_id == e.session_id
                && r.command == "ROLLBACK"
                && r.command_text.as_deref() == Some(pgtrail_proxy::tracker::LEFT_OPEN_TEXT)
        });
        assert!(later, "the rollback of {rolled_back} is recorded:\n{}", describe(&events));
    }
    // Every statement PostgreSQL logged has its event.
    let log = pg.log();
    for line in log.lines() {
        let Some(statement) = line.split("statement: ").nth(1).or_else(|| line.split("execute <unnamed>: ").nth(1))
        else {
            continue;
        };
        if statement.starts_with("CREATE TABLE") {
            continue;
        }
        assert!(text_of(statement.trim()).is_some(), "PostgreSQL ran {statement:?}, no event:\n{}", describe(&events));
    }
    assert_eq!(pg.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t").expect("rows").trim(), "1,2,3,5");
}

/// Issue 13.5: a leading comment was dropped from commandText (`/* app:tag1 */ select 1`
/// stored as `select 1`); comments are evidence, and sqlcommenter tags name the
/// application request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue13_5_comments_were_dropped_from_the_recorded_text() {
    let pg = start_pg(HostAuth::Trust);
    pg.psql("CREATE TABLE users (id int)").expect("table");
    let capture = TestCapture::start(&pg).await;
    let url = capture.url("postgres", "x", "postgres");
    let tagged = "select * from users /*traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01',route='%2Fusers%2F%3Aid'*/";
    assert_ok(&psql(&pg, &url, &["-c", "/* app:tag1 */ select 1", "-c", tagged]));
    let events = capture.stop().await;
    let texts: Vec<&str> = statements(&events).iter().filter_map(|e| e.command_text.as_deref()).collect();
    assert_eq!(texts, vec!["/* app:tag1 */ select 1", tagged]);
    let with_tags =
        statements(&events).into_iter().find(|e| e.command_text.as_deref() == Some(tagged)).expect("tagged");
    assert_eq!(with_tags.tags.get("route").map(String::as_str), Some("/users/:id"));
    assert_eq!(
        with_tags.tags.get("traceparent").map(String::as_str),
        Some("00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01")
    );
    // A rule can use them.
    let set = pgtrail_rules::RuleSet::parse(
        "[[rule]]\nname = \"users route\"\ncondition = '\"route\" in tags && tags.route == \"/users/:id\"'\n",
        "rules.toml",
    )
    .expect("rule");
    let mut engine = pgtrail_rules::Engine::new(set);
    let fired: usize = events.iter().map(|e| engine.process(e).len()).sum();
    assert_eq!(fired, 1);
}

/// The parameters PostgreSQL logged with each `execute` (log_statement = 'all'), in order:
/// `$1 = '0', $2 = NULL` as values.
fn logged_parameters(log: &str) -> Vec<Vec<Option<String>>> {
    log.lines()
        .filter_map(|line| line.split("DETAIL:  parameters: ").nth(1))
        .map(|list| {
            let mut values = Vec::new();
            let mut rest = list;
            while let Some(at) = rest.find(" = ") {
                rest = &rest[at + 3..];
                if let Some(after) = rest.strip_prefix("NULL") {
                    values.push(None);
                    rest = after;
                    continue;
                }
                let body = &rest[1..];
                let mut value = String::new();
                let mut chars = body.char_indices().peekable();
                let mut end = body.len();
                while let Some((i, c)) = chars.next() {
                    if c == '\'' {
                        if chars.peek().map(|(_, c)| *c) == Some('\'') {
                            chars.next();
                            value.push('\'');
                            continue;
                        }
                        end = i + 1;
                        break;
                    }
                    value.push(c);
                }
                values.push(Some(value));
                rest = &body[end..];
            }
            values
        })
        .collect()
}

/// Issue 13.6: parameters sent in binary were recorded as the hex of their wire bytes
/// (`\x0000` for an int2 0) where PostgreSQL logs `'0'`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue13_6_binary_parameters_were_recorded_as_hex() {
    let pg = start_pg_with(LocalPgOptions {
        auth: HostAuth::Trust,
        superuser_password: PASSWORD.into(),
        settings: vec!["log_statement = 'all'".into(), "timezone = 'UTC'".into()],
        ..Default::default()
    });
    let capture = TestCapture::start(&pg).await;
    // A driver that prepares (Parse, Describe: the server's ParameterDescription gives the
    // types) and sends binary parameters.
    let client = connect(&capture.url("postgres", "x", "postgres")).await.expect("connects");
    let driver_sql = "SELECT $1::int2, $2::int8, $3::float8, $4::bool, $5::text, $6::bytea, $7::int4";
    let text: &str = "café 'quoted'";
    let bytes: Vec<u8> = vec![0xde, 0xad];
    let none: Option<i32> = None;
    client.query(driver_sql, &[&0i16, &-7i64, &1.5f64, &true, &text, &bytes, &none]).await.expect("runs");
    drop(client);

    // Types given in the Parse itself, values built by hand in binary.
    let mut s = logged_in(capture.addr).await;
    let typed_sql = "SELECT $1::numeric, $2::date, $3::timestamptz, $4::interval, $5::uuid, $6::jsonb, $7::int4[]";
    let mut interval = 3_723_000_000i64.to_be_bytes().to_vec();
    interval.extend(3i32.to_be_bytes());
    interval.extend(14i32.to_be_bytes());
    let mut int_array = Vec::new();
    for word in [1i32, 1, 23, 3, 1] {
        int_array.extend(word.to_be_bytes()); // 1 dimension, has nulls, int4, 3 elements, lower bound 1
    }
    for element in [Some(1i32), Some(2), None] {
        match element {
            Some(v) => {
                int_array.extend(4i32.to_be_bytes());
                int_array.extend(v.to_be_bytes());
            }
            None => int_array.extend((-1i32).to_be_bytes()),
        }
    }
    let params: Vec<Option<bytes::Bytes>> = [
        vec![0, 3, 0, 1, 0, 0, 0, 4, 0, 1, 0x09, 0x29, 0x1a, 0x2c],
        0i32.to_be_bytes().to_vec(),
        1_500_000i64.to_be_bytes().to_vec(),
        interval,
        (0u8..16).collect(),
        b"\x01{\"a\": 1}".to_vec(),
        int_array,
    ]
    .into_iter()
    .map(|v| Some(bytes::Bytes::from(v)))
    .collect();
    let mut out = BytesMut::new();
    for message in [
        FrontendMessage::Parse {
            name: String::new(),
            query: typed_sql.into(),
            param_types: vec![1700, 1082, 1184, 1186, 2950, 3802, 1007],
        },
        FrontendMessage::Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: vec![1],
            params,
            result_formats: vec![],
        },
        FrontendMessage::Execute { portal: String::new(), max_rows: 0 },
        FrontendMessage::Sync,
    ] {
        message.encode(&mut out);
    }
    s.write_all(&out).await.expect("sent");
    let replies = read_replies(&mut s, 1).await;
    assert!(!replies.iter().any(|m| matches!(m, BackendMessage::ErrorResponse(_))), "{replies:?}");
    drop(s);

    let events = capture.stop().await;
    let recorded: Vec<Vec<Option<String>>> = [driver_sql, typed_sql]
        .iter()
        .map(|sql| {
            let e = events.iter().find(|e| e.command_text.as_deref() == Some(*sql)).expect("the statement's event");
            e.param_list.clone()
        })
        .collect();
    let logged = logged_parameters(&pg.log());
    assert_eq!(recorded, logged, "as PostgreSQL logged them");
    assert_eq!(recorded[1][1].as_deref(), Some("2000-01-01"));
}

/// Issue 13.4: with a client_encoding other than UTF8, what the proxy recorded was damaged
/// (`select * from "café"` in LATIN1 recorded as `"caf\u{fffd}"`, likewise errorMessage
/// and objectName).
#[test]
fn issue13_4_text_in_other_client_encodings_was_damaged() {
    use std::os::unix::ffi::OsStrExt;
    let pg = start_pg(HostAuth::Trust);
    pg.psql("CREATE TABLE \"café\" (id int)").expect("table");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut capture = rt.block_on(TestCapture::start(&pg));
    let url = capture.url("postgres", "x", "postgres");
    let cases: [(&str, &[u8], &str); 5] = [
        ("LATIN1", b"select * from \"caf\xe9\"", "select * from \"café\""),
        ("WIN1252", b"select '\x80 5' AS euro", "select '€ 5' AS euro"),
        ("EUC_JP", b"select '\xa5\xc6\xa5\xb9\xa5\xc8' AS t", "select 'テスト' AS t"),
        // ソ is 0x83 0x5C in Shift-JIS: its second byte is a backslash to a UTF-8 reader.
        ("SJIS", b"select '\x83\x5c' AS so, 1", "select 'ソ' AS so, 1"),
        ("LATIN1", b"select * from \"nosuch_\xe9\"", "select * from \"nosuch_é\""),
    ];
    for (encoding, sql, _) in cases {
        std::process::Command::new(pg.binaries().bin("psql"))
            .arg(&url)
            .args(["-X", "-c"])
            .arg(std::ffi::OsStr::from_bytes(sql))
            .env("PGCLIENTENCODING", encoding)
            .output()
            .expect("psql runs");
    }
    rt.block_on(capture.shutdown());
    let events = capture.events();
    for (encoding, _, expected) in cases {
        let e = events
            .iter()
            .find(|e| e.command_text.as_deref() == Some(expected))
            .unwrap_or_else(|| panic!("{encoding}: {expected:?} not recorded:\n{}", describe(&events)));
        assert_eq!(e.class, pgtrail_event::EventClass::Read, "{e:?}");
    }
    let cafe = events.iter().find(|e| e.command_text.as_deref() == Some(cases[0].2)).expect("café");
    assert_eq!(cafe.object_name.as_deref(), Some("café"));
    let missing = events.iter().find(|e| e.command_text.as_deref() == Some(cases[4].2)).expect("the error");
    let message = missing.error_message.as_deref().unwrap_or_default();
    assert!(message.contains("\"nosuch_é\""), "{message}");
    let so = events.iter().find(|e| e.command_text.as_deref() == Some(cases[3].2)).expect("SJIS");
    assert_eq!(so.row_count, Some(1), "one statement, one row: {so:?}");
}
