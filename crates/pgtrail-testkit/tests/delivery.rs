//! Delivery modes with the real proxy, recorder and journal: sync delivery holds
//! completions and logins until their events are durable (and shares fsyncs), fail-closed
//! refuses work while the journal cannot write and recovers by itself, and the stream
//! carries heartbeats and control events.

use std::time::Duration;

use pgtrail_proxy::Delivery;
use pgtrail_testkit::*;

fn has_statement(events: &[pgtrail_event::ActivityEvent], text: &str) -> bool {
    events.iter().any(|e| e.command_text.as_deref() == Some(text))
}

/// With a long batch delay, async delivery has not written the event when the client
/// gets its answer; sync delivery has, for the login and for every statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_completions_wait_for_the_journal_and_async_ones_do_not() {
    let pg = start_pg(HostAuth::ScramSha256);
    for delivery in [Delivery::Async, Delivery::Sync] {
        let capture = TestCapture::start_with(&pg, |c| {
            c.proxy.delivery = delivery;
            c.writer.recorder.max_batch_delay = Duration::from_secs(5);
        })
        .await;
        let client = connect(&capture.url("postgres", PASSWORD, "postgres")).await.unwrap();
        let connected = capture.events().iter().any(|e| e.command == "CONNECT");
        client.simple_query("SELECT 41").await.unwrap();
        let simple = has_statement(&capture.events(), "SELECT 41");
        let row = client.query_one("SELECT $1::int + 1", &[&6i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 7);
        let extended = has_statement(&capture.events(), "SELECT $1::int + 1");
        let failed = client.simple_query("SELECT 1/0").await.unwrap_err();
        assert_eq!(failed.code().unwrap().code(), "22012");
        let error = capture.events().iter().any(|e| e.sql_state.as_deref() == Some("22012"));
        match delivery {
            Delivery::Sync => assert!(
                connected && simple && extended && error,
                "sync: every event durable before its answer (login {connected}, simple {simple}, extended {extended}, error {error})"
            ),
            _ => assert!(
                !connected && !simple && !extended && !error,
                "async with a 5 s batch delay: nothing written yet (the test can tell the modes apart)"
            ),
        }
        drop(client);
        capture.stop().await;
    }
}

/// Concurrent sessions in sync mode share fsyncs, and pgbench's results are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sync_sessions_share_fsyncs() {
    let pg = start_pg(HostAuth::Trust);
    let capture = TestCapture::start_with(&pg, |c| c.proxy.delivery = Delivery::Sync).await;
    let url = capture.url("postgres", "", "postgres");
    let mut tasks = Vec::new();
    for client_no in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await.unwrap();
            for i in 0..25 {
                client.simple_query(&format!("SELECT {client_no} * 1000 + {i}")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = capture.recorder_stats();
    let fsyncs = stats.fsyncs.load(std::sync::atomic::Ordering::Relaxed);
    let events = capture.stop().await;
    let statements = statements(&events).len() as u64;
    assert_eq!(statements, 200);
    // 200 statements and 8 CONNECTs each waited for their own fsync: fewer fsyncs than
    // waits means they were shared (group commit).
    assert!(fsyncs < statements, "{fsyncs} fsyncs for {statements} statements");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_while_the_disk_is_full_and_recovers_by_itself() {
    let pg = start_pg(HostAuth::Trust);
    let disk = Tmpfs::mount("2m");
    let journal = disk.0.join("journal");
    let capture = TestCapture::start_with(&pg, |c| {
        c.proxy.delivery = Delivery::SyncFailClosed;
        c.writer.journal_dir = journal.clone();
    })
    .await;
    let url = capture.url("postgres", "", "postgres");
    let a = connect(&url).await.unwrap();
    let b = connect(&url).await.unwrap();
    b.simple_query("SELECT 'b before'").await.unwrap();

    let filler = disk.fill();
    // A's statements run, until the journal's last page has no room left: then a
    // completion waits, because its event cannot be made durable.
    let mut a = a;
    let mut attempt = 0;
    let (held, held_text) = loop {
        let text = format!("SELECT 'a during {attempt}'");
        let query = text.clone();
        let task = tokio::spawn(async move { a.simple_query(&query).await.map(|_| a) });
        tokio::time::sleep(Duration::from_millis(400)).await;
        if !task.is_finished() {
            break (task, text);
        }
        a = task.await.unwrap().expect("a statement that fit in the last page completes");
        attempt += 1;
        assert!(attempt < 200, "the journal never ran out of room");
    };
    let stats = capture.recorder_stats();
    assert!(stats.write_failures.load(std::sync::atomic::Ordering::Relaxed) > 0, "the held write failed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a completion reached the client before its event was durable");

    // New statements are refused with 58030, in the simple and the extended protocol, and
    // the session stays usable; new logins are refused too.
    let refused = b.simple_query("SELECT 'b refused'").await.unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "58030", "{refused}");
    assert!(refused.as_db_error().unwrap().message().contains("audit journal"), "{refused}");
    let refused = b.query("SELECT $1::text", &[&"x"]).await.unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "58030", "{refused}");
    let login = connect(&url).await.expect_err("login refused");
    assert_eq!(login.code().map(|c| c.code()), Some("58030"), "{login}");
    assert!(capture.proxy_stats().refused.load(std::sync::atomic::Ordering::Relaxed) >= 2);

    // Room again: the writer recovers by itself, the held completion arrives, work resumes.
    std::fs::remove_file(&filler).unwrap();
    let a = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("held completion released")
        .unwrap()
        .expect("the held statement succeeds");
    a.simple_query("SELECT 'a after'").await.unwrap();
    let rows = b.query("SELECT $1::text", &[&"b after"]).await.unwrap();
    assert_eq!(rows[0].get::<_, &str>(0), "b after");
    connect(&url).await.expect("logins work again");

    let events = capture.events();
    for text in ["SELECT 'b before'", held_text.as_str(), "SELECT 'a after'"] {
        assert!(has_statement(&events, text), "{text} missing:\n{}", describe(&events));
    }
    assert!(!has_statement(&events, "SELECT 'b refused'"), "a refused statement never ran");
    drop((a, b));
    let keys = capture.keys_dir();
    let mut capture = capture;
    capture.shutdown().await;
    let verify = std::process::Command::new(pgtrail_binary())
        .args(["verify", "--journal", journal.to_str().unwrap(), "--verify-key"])
        .arg(keys.join("verify.pub"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_control_events_are_in_the_stream() {
    let pg = start_pg(HostAuth::Trust);
    let mut capture = TestCapture::start_with(&pg, |c| {
        c.writer.recorder.heartbeat = Some(Duration::from_secs(1));
        c.writer.envelope.rotate_after_records = 2;
    })
    .await;
    let client = connect(&capture.url("postgres", "", "postgres")).await.unwrap();
    for i in 0..3 {
        client.simple_query(&format!("SELECT {i}")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(client);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    capture.shutdown().await;
    let all = capture.all_events();
    let kinds: Vec<(&str, &str)> = all.iter().map(|e| (e.kind.as_str(), e.command.as_str())).collect();
    // Each record under a new data key after the first opens with KEYS ROTATED; the
    // capture's start and stop frame everything else.
    let framing: Vec<_> = kinds.iter().filter(|k| k.1 != "KEYS ROTATED").collect();
    assert_eq!(framing.first(), Some(&&("control", "CAPTURE STARTED")), "{kinds:?}");
    assert_eq!(framing.last(), Some(&&("control", "CAPTURE STOPPED")), "{kinds:?}");
    assert_eq!(kinds.first(), Some(&("control", "CAPTURE STARTED")), "{kinds:?}");
    assert!(kinds.iter().any(|k| k.0 == "heartbeat"), "idle for 2.5 s with 1 s heartbeats: {kinds:?}");
    let rotations = kinds.iter().filter(|k| k.1 == "KEYS ROTATED").count();
    assert!(rotations >= 2, "a new data key every 2 records: {kinds:?}");

    // A torn tail from a crash: the next start cuts it and says so in the stream.
    let journal = capture.journal_dir().to_path_buf();
    let segment = std::fs::read_dir(&journal).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&segment).unwrap();
        f.write_all(&[200, 0, 0, 0, 9, 9, 9, 9, 1, 0, 0]).unwrap();
    }
    let keys = capture.keys_dir();
    let mut again = TestCapture::start_with(&pg, |c| {
        c.writer.journal_dir = journal.clone();
        c.writer.wrapping_public_key = keys.join("wrapping.pub");
        c.writer.signing_key = keys.join("signing.key");
    })
    .await;
    again.shutdown().await;
    let events = read_events_with(&journal, &keys);
    let recovered = events.iter().find(|e| e.command == "JOURNAL RECOVERED").expect("recovery recorded");
    assert!(recovered.command_text.as_deref().unwrap().contains("11 bytes cut"), "{recovered:?}");
}
