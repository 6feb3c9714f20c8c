//! TLS on both hops: clients to the proxy (rustls server), and the proxy to PostgreSQL
//! (require / verify-full), with SCRAM across both.

use std::time::Duration;

use pgtrail_event::EventClass;
use pgtrail_proxy::{ClientTlsConfig, UpstreamTlsMode};
use pgtrail_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_pg(files: &TlsFiles) -> LocalPg {
    start_pg_with(LocalPgOptions {
        auth: HostAuth::ScramSha256,
        superuser_password: PASSWORD.into(),
        tls: Some((files.cert_pem.clone(), files.key_pem.clone())),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_hops_with_scram() {
    let files = TlsFiles::generate();
    let pg = tls_pg(&files);
    let capture = TestCapture::start_with(&pg, |c| {
        c.proxy.client_tls = Some(ClientTlsConfig { cert_file: files.cert_path(), key_file: files.key_path() });
        c.proxy.upstream.tls = UpstreamTlsMode::VerifyFull;
        c.proxy.upstream.ca_file = Some(files.ca_path());
    })
    .await;
    let base = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        capture.url("postgres", PASSWORD, "postgres"),
        files.ca_path().display()
    );
    // Channel binding cannot span two TLS sessions, so the proxy offers only
    // SCRAM-SHA-256; a libpq client on TLS then still flags "I could bind", which
    // PostgreSQL on TLS refuses. The proxy says what to do instead.
    let prefer = psql(&pg, &base, &["-c", "SELECT 1"]);
    assert!(!prefer.status.success());
    assert!(String::from_utf8_lossy(&prefer.stderr).contains("channel_binding=disable"), "{prefer:?}");
    // The client verifies the proxy's certificate, both hops are TLS, SCRAM succeeds.
    let url = format!("{base}&channel_binding=disable");
    let out = assert_ok(&psql(
        &pg,
        &url,
        &["-c", "\\conninfo", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
    ));
    assert!(out.contains("SSL connection"), "client hop is TLS: {out}");
    assert!(out.lines().any(|l| l.trim() == "t"), "upstream hop is TLS: {out}");
    // A client that insists on channel binding is refused by libpq with a clear reason.
    let strict = psql(&pg, &format!("{url}&channel_binding=require"), &["-c", "SELECT 1"]);
    assert!(!strict.status.success());
    assert!(String::from_utf8_lossy(&strict.stderr).contains("channel binding"), "{strict:?}");
    let events = capture.stop().await;
    assert!(events.iter().any(|e| e.command == "SELECT" && e.class == EventClass::Read), "{}", describe(&events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_ssl_is_refused_and_plain_works() {
    let pg = start_pg(HostAuth::ScramSha256);
    let capture = TestCapture::start(&pg).await;
    let base = capture.url("postgres", PASSWORD, "postgres");
    let refused = psql(&pg, &format!("{base}?sslmode=require"), &["-c", "SELECT 1"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not support SSL"), "{refused:?}");
    assert_ok(&psql(&pg, &format!("{base}?sslmode=prefer"), &["-c", "SELECT 1"]));
    // GSSENCRequest is answered 'N' and the client may go on with a normal startup.
    let mut s = tokio::net::TcpStream::connect(capture.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await.unwrap();
    let mut answer = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut answer)).await.unwrap().unwrap();
    assert_eq!(&answer, b"N");
    capture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_verification_failures_are_clear() {
    let files = TlsFiles::generate();
    let other_ca = TlsFiles::generate();
    let pg = tls_pg(&files);
    // verify-full against the wrong CA: refused, with an ErrorResponse and an event.
    let capture = TestCapture::start_with(&pg, |c| {
        c.proxy.upstream.tls = UpstreamTlsMode::VerifyFull;
        c.proxy.upstream.ca_file = Some(other_ca.ca_path());
    })
    .await;
    let err = connect(&capture.url("postgres", PASSWORD, "postgres")).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("08006"), "{err}");
    let events = capture.stop().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].sql_state.as_deref(), Some("08006"));

    // require against a server without TLS: refused.
    let plain = start_pg(HostAuth::ScramSha256);
    let capture = TestCapture::start_with(&plain, |c| c.proxy.upstream.tls = UpstreamTlsMode::Require).await;
    let err = connect(&capture.url("postgres", PASSWORD, "postgres")).await.unwrap_err();
    let db = err.as_db_error().expect("ErrorResponse");
    assert!(db.message().contains("refused TLS"), "{}", db.message());
    capture.stop().await;
}
