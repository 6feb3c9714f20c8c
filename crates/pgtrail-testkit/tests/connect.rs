//! Connections through the proxy, with real clients and every password method: the
//! events of successful and failed logins, and of disconnects.

use pgtrail_event::{EventClass, ExitCode};
use pgtrail_testkit::*;

async fn login_cycle(auth: HostAuth) {
    let pg = start_pg(auth);
    pg.psql(&format!("CREATE ROLE alice LOGIN PASSWORD '{PASSWORD}'")).unwrap();
    let capture = TestCapture::start(&pg).await;

    // psql, right password.
    let out = psql(&pg, &capture.url("alice", PASSWORD, "postgres"), &["-c", "SELECT current_user"]);
    assert_eq!(assert_ok(&out).lines().nth(2).map(str::trim), Some("alice"));
    // psql, wrong password: the client sees PostgreSQL's own error.
    let out = psql(&pg, &capture.url("alice", "wrong", "postgres"), &["-c", "SELECT 1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if auth != HostAuth::Trust {
        assert!(!out.status.success());
        assert!(stderr.contains("password authentication failed"), "{stderr}");
    }
    // tokio-postgres, right and wrong password.
    let client = connect(&capture.url("alice", PASSWORD, "postgres")).await.expect("login");
    let row = client.query_one("SELECT current_user::text", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "alice");
    drop(client);
    let wrong = connect(&capture.url("alice", "wrong", "postgres")).await;
    if auth != HostAuth::Trust {
        let err = wrong.expect_err("wrong password refused");
        assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    } else {
        drop(wrong.expect("trust ignores the password"));
    }

    let events = capture.stop().await;
    let connects: Vec<_> = events.iter().filter(|e| e.class == EventClass::Connect).collect();
    assert_eq!(connects.len(), 4, "{}", describe(&events));
    let failed: Vec<_> = connects.iter().filter(|e| e.error_message.is_some()).collect();
    let succeeded: Vec<_> = connects.iter().filter(|e| e.error_message.is_none()).collect();
    if auth == HostAuth::Trust {
        assert_eq!(succeeded.len(), 4);
    } else {
        assert_eq!(failed.len(), 2, "{}", describe(&events));
        for e in &failed {
            assert_eq!(e.sql_state.as_deref(), Some("28P01"));
            assert_eq!(e.exit_code, Some(ExitCode::SqlState("28P01".into())));
            assert!(e.error_message.as_deref().unwrap().contains("password authentication failed for user \"alice\""));
            assert_eq!(e.db_user_name.as_deref(), Some("alice"));
        }
    }
    for e in &succeeded {
        assert_eq!(e.command, "CONNECT");
        assert_eq!(e.db_user_name.as_deref(), Some("alice"));
        assert_eq!(e.database_name.as_deref(), Some("postgres"));
        assert_eq!(e.remote_host.as_deref(), Some("127.0.0.1"));
        assert!(e.remote_port.as_deref().unwrap().parse::<u16>().unwrap() > 0);
        assert!(e.server_version.as_deref().unwrap().starts_with("15"), "{:?}", e.server_version);
        let pid = e.pid.expect("pid from BackendKeyData");
        // %c: hex start time, dot, hex pid of the backend.
        let sid = e.session_id.as_deref().unwrap();
        assert!(sid.ends_with(&format!(".{pid:x}")), "{sid} vs pid {pid}");
    }
    // psql's connection names itself; every successful session ends with a clean DISCONNECT.
    assert!(succeeded.iter().any(|e| e.client_application.as_deref() == Some("psql")));
    let disconnects: Vec<_> = events.iter().filter(|e| e.class == EventClass::Disconnect).collect();
    assert_eq!(disconnects.len(), succeeded.len(), "{}", describe(&events));
    assert!(disconnects.iter().all(|e| e.exit_code == Some(ExitCode::Clean(0))), "{}", describe(&events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_logins() {
    login_cycle(HostAuth::ScramSha256).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_logins() {
    login_cycle(HostAuth::Md5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_password_logins() {
    login_cycle(HostAuth::Password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_logins() {
    login_cycle(HostAuth::Trust).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_upstream_gives_a_clear_error_and_an_event() {
    let mut pg = start_pg(HostAuth::Trust);
    let capture = TestCapture::start(&pg).await;
    pg.stop();
    let err = connect(&capture.url("postgres", PASSWORD, "postgres")).await.expect_err("no upstream");
    let db = err.as_db_error().expect("an ErrorResponse, not a dropped socket");
    assert_eq!(db.code().code(), "08006");
    assert!(db.message().contains("could not connect to upstream"), "{}", db.message());
    let events = capture.stop().await;
    assert_eq!(events.len(), 1, "{}", describe(&events));
    assert_eq!(events[0].class, EventClass::Connect);
    assert_eq!(events[0].sql_state.as_deref(), Some("08006"));
}
