//! Hostile and broken clients: each gets an error for itself, the other sessions keep
//! working, and the journal stays readable.

use bytes::BytesMut;
use pgtrail_event::{EventClass, ExitCode};
use pgtrail_testkit::*;
use pgtrail_wire::{BackendMessage, Limits, decode_backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_errors_and_others_carry_on() {
    let pg = start_pg(HostAuth::Trust);
    let capture = TestCapture::start(&pg).await;
    let url = capture.url("postgres", "", "postgres");
    let bystander = connect(&url).await.unwrap();
    bystander.simple_query("SELECT 1").await.unwrap();

    // A startup packet declaring 2^31-1 bytes: closed without a word, as PostgreSQL does.
    let mut s = TcpStream::connect(capture.addr).await.unwrap();
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).await.unwrap();
    assert!(read_until_closed(&mut s).await.is_empty());

    // Garbage instead of a startup packet (an HTTP request).
    let mut s = TcpStream::connect(capture.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_until_closed(&mut s).await.is_empty());

    // After login: a Query declaring 2^31-1 bytes.
    let mut s = logged_in(capture.addr).await;
    s.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff]).await.unwrap();
    let messages = read_until_closed(&mut s).await;
    assert_eq!(fatal_code(&messages).as_deref(), Some("08P01"), "{messages:?}");

    // After login: a small message with a length below the minimum.
    let mut s = logged_in(capture.addr).await;
    s.write_all(&[b'S', 0, 0, 0, 2]).await.unwrap();
    assert_eq!(fatal_code(&read_until_closed(&mut s).await).as_deref(), Some("08P01"));

    // After login: a Bind whose parameter count exceeds its bytes (a malformed body).
    let mut s = logged_in(capture.addr).await;
    s.write_all(&[b'B', 0, 0, 0, 12, 0, 0, 0, 0, 0x7f, 0xff, 0, 0]).await.unwrap();
    assert_eq!(fatal_code(&read_until_closed(&mut s).await).as_deref(), Some("08P01"));

    // A truncated message, then the client vanishes without Terminate.
    let mut s = logged_in(capture.addr).await;
    s.write_all(&[b'Q', 0, 0, 0, 100, b'S', b'E']).await.unwrap();
    drop(s);

    // The bystander never noticed.
    let row = bystander.query_one("SELECT 42::int4", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    drop(bystander);

    let events = capture.stop().await;
    // Every login that got through has a DISCONNECT, with the proxy's SQLSTATE for the
    // violations and null for the client that vanished.
    let exits: Vec<_> =
        events.iter().filter(|e| e.class == EventClass::Disconnect).map(|e| e.exit_code.clone()).collect();
    let violations = exits.iter().filter(|c| **c == Some(ExitCode::SqlState("08P01".into()))).count();
    assert_eq!(violations, 3, "{}", describe(&events));
    assert!(exits.contains(&None), "the vanished client: {}", describe(&events));
    assert!(exits.contains(&Some(ExitCode::Clean(0))), "the bystander: {}", describe(&events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_server_is_reported_to_the_client() {
    let pg = start_pg(HostAuth::Trust);
    let capture = TestCapture::start(&pg).await;
    // A raw client, so that what the proxy sends is read whatever the timing (a driver may
    // report an unsolicited error only as "connection closed").
    let mut s = logged_in(capture.addr).await;
    let mut out = BytesMut::new();
    pgtrail_wire::FrontendMessage::Query { query: "SELECT pg_backend_pid()".into() }.encode(&mut out);
    s.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    // Read the whole reply, up to ReadyForQuery, so that nothing is left half-read.
    let mut pid = None;
    'reply: loop {
        s.read_buf(&mut buf).await.unwrap();
        while let Some(msg) = decode_backend(&mut buf, &Limits::default()).unwrap() {
            match msg {
                BackendMessage::DataRow(values) => {
                    pid = Some(String::from_utf8(values[0].clone().unwrap().to_vec()).unwrap());
                }
                BackendMessage::ReadyForQuery { .. } => break 'reply,
                _ => {}
            }
        }
    }
    let pid = pid.expect("the backend's pid");
    // The backend dies without a word (as in a crash or a cut network).
    assert!(std::process::Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    let messages = read_until_closed(&mut s).await;
    assert_eq!(fatal_code(&messages).as_deref(), Some("08006"), "{messages:?}");
    let events = capture.wait_for("disconnect", |e| e.iter().any(|e| e.class == EventClass::Disconnect)).await;
    let disconnect = events.iter().find(|e| e.class == EventClass::Disconnect).unwrap();
    assert_eq!(disconnect.exit_code, None, "the peer vanished: {}", describe(&events));
}
