//! Dev-only test harness: real PostgreSQL clusters from the installed binaries, the real
//! proxy and recorder in front of them, and helpers to drive real clients (psql, pgbench,
//! tokio-postgres) and read the journal back.
//!
//! Owns: test scaffolding only. Must not: be a dependency of anything but tests; the
//! binary crate is not one of its dependencies (tests that run the CLI run its binary).
//!
//! Nothing here is global: every test gets its own cluster on a random loopback port in
//! its own temporary directory, so tests run in parallel.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::BytesMut;
pub use kafka::KafkaBroker;
pub use nats::NatsCluster;
use pgtrail_capture::Capture;
use pgtrail_capture::config::{CaptureConfig, FileConfig, Overrides};
use pgtrail_event::{ActivityEvent, EventClass};
pub use pgtrail_localpg::{HostAuth, LocalPg, LocalPgOptions};
use pgtrail_wire::{BackendMessage, Limits, PROTOCOL_V3, StartupMessage, decode_backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod kafka;
mod nats;

/// The password every test role gets unless a test says otherwise.
pub const PASSWORD: &str = "s3cret-pw";

/// Starts a cluster whose 127.0.0.1 clients authenticate with `auth`; the `postgres`
/// superuser's password is [`PASSWORD`].
pub fn start_pg(auth: HostAuth) -> LocalPg {
    start_pg_with(LocalPgOptions { auth, superuser_password: PASSWORD.into(), ..Default::default() })
}

pub fn start_pg_with(options: LocalPgOptions) -> LocalPg {
    LocalPg::start(&options).unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"))
}

/// Starts a SCRAM cluster with pgaudit 1.7 auditing everything (parameters and rows too)
/// into `log/` in the given `log_destination` formats, connections and disconnections
/// logged. Fails clearly when pgaudit is not installed.
pub fn start_pgaudit_pg(log_destination: &str) -> LocalPg {
    let control = Path::new("/usr/share/postgresql/15/extension/pgaudit.control");
    assert!(
        control.is_file(),
        "pgaudit is needed ({} missing): scripts/setup.sh installs postgresql-15-pgaudit",
        control.display()
    );
    let settings = [
        "shared_preload_libraries = 'pgaudit'",
        "pgaudit.log = 'all'",
        "pgaudit.log_parameter = on",
        "pgaudit.log_rows = on",
        "logging_collector = on",
        &format!("log_destination = '{log_destination}'"),
        "log_directory = 'log'",
        "log_line_prefix = '%m [%p] %q%u@%d '",
        "log_connections = on",
        "log_disconnections = on",
        "log_timezone = 'UTC'",
    ];
    start_pg_with(LocalPgOptions {
        auth: HostAuth::ScramSha256,
        superuser_password: PASSWORD.into(),
        settings: settings.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    })
}

/// The proxy and recorder in front of a cluster, writing to a journal in a temp dir.
#[derive(Debug)]
pub struct TestCapture {
    pub addr: std::net::SocketAddr,
    capture: Option<Capture>,
    /// Holds `journal/` and `journal.keys/`; removed on drop.
    _root: tempfile::TempDir,
    journal: PathBuf,
    keys: PathBuf,
}

/// Where the test keys of a journal live: a sibling directory `<journal>.keys`.
pub fn keys_dir(journal: &Path) -> PathBuf {
    journal.with_extension("keys")
}

/// Every event in a journal whose keys are in [`keys_dir`].
pub fn read_events(journal: &Path) -> Vec<ActivityEvent> {
    read_events_with(journal, &keys_dir(journal))
}

/// Every event in a journal, decrypted with the wrapping key in `keys`.
pub fn read_events_with(journal: &Path, keys: &Path) -> Vec<ActivityEvent> {
    let ring = pgtrail_keys::load_key_ring(&[keys.join(pgtrail_keys::WRAPPING_PRIVATE)]).expect("test keys load");
    pgtrail_reader::read_all(journal, ring).expect("journal is readable")
}

/// The capture configuration tests use: everything default but fast batching.
/// Keys are made in `<journal>.keys` (see [`keys_dir`]).
pub fn capture_config(pg: &LocalPg, journal: &Path) -> CaptureConfig {
    let keys = keys_dir(journal);
    if !keys.join(pgtrail_keys::WRAPPING_PUBLIC).exists() {
        pgtrail_keys::init(&keys, false).expect("test keys");
    }
    let mut config = FileConfig::default()
        .resolve(&Overrides {
            listen: Some("127.0.0.1:0".parse().expect("valid address")),
            upstream: Some(format!("postgres://{}:{}", pg.host(), pg.port())),
            journal: Some(journal.to_path_buf()),
            keys: Some(keys),
            ..Overrides::default()
        })
        .expect("test configuration resolves");
    config.writer.recorder.max_batch_delay = Duration::from_millis(20);
    config.proxy.shutdown_grace = Duration::from_secs(2);
    config
}

impl TestCapture {
    pub async fn start(pg: &LocalPg) -> Self {
        Self::start_with(pg, |_| {}).await
    }

    /// Starts with a configuration adjusted by `customize`.
    pub async fn start_with(pg: &LocalPg, customize: impl FnOnce(&mut CaptureConfig)) -> Self {
        let root = tempfile::Builder::new().prefix("pgtrail-capture-").tempdir().expect("temp dir");
        let journal = root.path().join("journal");
        let keys = keys_dir(&journal);
        let mut config = capture_config(pg, &journal);
        customize(&mut config);
        // The customization may have moved the journal (the keys stay where they were made).
        let journal = config.writer.journal_dir.clone();
        let capture = Capture::start(config).await.expect("capture starts");
        Self { addr: capture.addr, capture: Some(capture), _root: root, journal, keys }
    }

    pub fn journal_dir(&self) -> &Path {
        &self.journal
    }

    /// A libpq URL through the proxy.
    pub fn url(&self, user: &str, password: &str, database: &str) -> String {
        format!("postgres://{user}:{password}@{}/{database}", self.addr)
    }

    /// The recorder's counters (fsyncs, drops, heartbeats...).
    pub fn recorder_stats(&self) -> std::sync::Arc<pgtrail_journal::RecorderStats> {
        std::sync::Arc::clone(&self.capture.as_ref().expect("running").recorder_stats)
    }

    /// The proxy's counters.
    pub fn proxy_stats(&self) -> std::sync::Arc<pgtrail_proxy::ProxyStats> {
        std::sync::Arc::clone(&self.capture.as_ref().expect("running").stats)
    }

    /// The directory of this capture's keys.
    pub fn keys_dir(&self) -> PathBuf {
        self.keys.clone()
    }

    /// Activity events (type `record`) in the journal now: what clients did.
    pub fn events(&self) -> Vec<ActivityEvent> {
        self.all_events().into_iter().filter(|e| e.kind == pgtrail_event::EventKind::Record).collect()
    }

    /// Every event, control events and heartbeats included.
    pub fn all_events(&self) -> Vec<ActivityEvent> {
        read_events_with(&self.journal, &self.keys)
    }

    /// Polls the journal until `done` holds (or panics after 15 s with what was there).
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[ActivityEvent]) -> bool) -> Vec<ActivityEvent> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; events:\n{}", describe(&events));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the proxy (all sessions end) and returns every activity event.
    pub async fn stop(mut self) -> Vec<ActivityEvent> {
        self.shutdown().await;
        self.events()
    }

    /// Stops the proxy but keeps the journal and keys for inspection.
    pub async fn shutdown(&mut self) {
        if let Some(capture) = self.capture.take() {
            capture.stop().await.expect("capture stops cleanly");
        }
    }
}

/// One line per event, for assertion messages.
pub fn describe(events: &[ActivityEvent]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "  #{} {:?} {} rows={:?} sqlstate={:?} text={:?}",
                e.statement_id, e.class, e.command, e.row_count, e.sql_state, e.command_text
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Statement events only (no CONNECT / DISCONNECT).
pub fn statements(events: &[ActivityEvent]) -> Vec<&ActivityEvent> {
    events.iter().filter(|e| !matches!(e.class, EventClass::Connect | EventClass::Disconnect)).collect()
}

/// Runs the real psql against `url` with extra arguments; stdin closed.
pub fn psql(pg: &LocalPg, url: &str, args: &[&str]) -> Output {
    Command::new(pg.binaries().bin("psql"))
        .arg(url)
        .args(["-X", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .env_remove("PGPASSWORD")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("psql runs")
}

/// Asserts a process succeeded, showing its output if not.
pub fn assert_ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Connects with tokio-postgres (no TLS) and drives the connection in the background.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A CA and a server certificate for `localhost` / 127.0.0.1, as PEM, plus the CA file path.
#[derive(Debug)]
pub struct TlsFiles {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TlsFiles {
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "pgtrail test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        let dir = tempfile::tempdir().expect("temp dir");
        let files = Self { dir, ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        std::fs::write(files.ca_path(), &files.ca_pem).expect("write");
        std::fs::write(files.cert_path(), &files.cert_pem).expect("write");
        std::fs::write(files.key_path(), &files.key_pem).expect("write");
        files
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; tests bind it right away).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Writes a `pgtrail.toml` for the real binary: listening on `port`, in front of `pg`
/// without TLS, with the journal and key directories given, plus `extra` TOML sections.
pub fn write_proxy_config(path: &Path, port: u16, pg: &LocalPg, journal: &Path, keys: &Path, extra: &str) {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[upstream]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"disable\"\n\
         [journal]\ndir = \"{}\"\n[keys]\ndir = \"{}\"\n{extra}",
        pg.port(),
        journal.display(),
        keys.display()
    );
    std::fs::write(path, text).expect("write the configuration");
}

/// Starts `pgtrail proxy --config CONFIG` with its process log in `log`, and waits until
/// it accepts connections on `port`.
pub fn spawn_proxy_with_config(config: &Path, log: &Path, port: u16) -> std::process::Child {
    let child = Command::new(pgtrail_binary())
        .args(["proxy", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("pgtrail starts");
    wait_listening(port);
    child
}

/// Waits (up to 20 s) until something accepts connections on 127.0.0.1:`port`.
pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the real `pgtrail` binary to completion with `args`.
pub fn run_pgtrail(args: &[&str]) -> Output {
    Command::new(pgtrail_binary()).args(args).output().expect("pgtrail runs")
}

/// Runs the real `pgtrail` binary with its standard output a pipe whose reader has
/// already gone (`pgtrail ... | head` once head has exited), capturing standard error.
pub fn run_pgtrail_into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(pgtrail_binary())
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("pgtrail runs")
}

/// `pgtrail keys init --dir DIR`; asserts it succeeded and returns what it printed.
pub fn keys_init(dir: &Path) -> String {
    let out = run_pgtrail(&["keys", "init", "--dir", dir.to_str().expect("UTF-8 path")]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends a signal (`-TERM`, `-HUP`, `-KILL`...) to a child process.
pub fn signal(child: &std::process::Child, sig: &str) {
    let status = Command::new("kill").args([sig, &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success(), "kill {sig} failed");
}

/// The `pgtrail` binary built for this workspace (tests of the CLI run the real thing).
pub fn pgtrail_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/pgtrail
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("pgtrail");
    assert!(bin.is_file(), "{} not built: run `cargo build --bin pgtrail` first", bin.display());
    bin
}

/// The Python of `.venv-interop` (made by scripts/setup.sh: the AWS Encryption SDK, the
/// official Standard Webhooks library and aiosmtpd), or the one PGTRAIL_VENV_PYTHON names.
/// Panics with how to make it when it is missing: these tests never skip.
pub fn venv_python(module: &str) -> PathBuf {
    let python = std::env::var_os("PGTRAIL_VENV_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-interop/bin/python"));
    let check = Command::new(&python).args(["-c", &format!("import {module}")]).output();
    assert!(
        check.as_ref().is_ok_and(|o| o.status.success()),
        "Python module {module} is needed at {} (scripts/setup.sh installs it): {check:?}",
        python.display()
    );
    python
}

/// A child process that prints the port it listens on as its first line of stdout (the
/// notifier tests' HTTP and SMTP servers); killed on drop.
#[derive(Debug)]
pub struct PortPrinter {
    pub child: std::process::Child,
    pub port: u16,
}

impl PortPrinter {
    pub fn spawn(command: &mut Command) -> PortPrinter {
        use std::io::BufRead;
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("server prints its port");
        let port = line.trim().parse().unwrap_or_else(|_| panic!("server printed {line:?}, not a port"));
        wait_listening(port);
        PortPrinter { child, port }
    }
}

impl Drop for PortPrinter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The local OpenID Connect provider (`tests/oidc/provider.mjs`, the npm package
/// oidc-provider), on a random loopback port; killed on drop.
#[derive(Debug)]
pub struct OidcProvider {
    pub child: std::process::Child,
    pub issuer: String,
    pub kid: String,
    /// Its RSA signing key (PKCS#8 PEM), and next to it public-key.pem and other-key.pem.
    pub key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl OidcProvider {
    pub fn start() -> Self {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/oidc/provider.mjs");
        assert!(
            script.with_file_name("node_modules").exists(),
            "tests/oidc/node_modules is missing: run scripts/setup.sh (npm ci --prefix tests/oidc)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new("node")
            .arg(&script)
            .args(["--dir".as_ref(), dir.path().as_os_str()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("node runs the OIDC provider");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("provider line");
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("provider printed {line:?}"));
        let text = |k: &str| ready[k].as_str().expect("field").to_owned();
        Self { child, issuer: text("issuer"), kid: text("kid"), key_file: PathBuf::from(text("key_file")), _dir: dir }
    }

    /// Runs the authorization code flow for `user` and returns the token endpoint's answer
    /// (`id_token`, `access_token`, ...); `ttl` is the tokens' lifetime in seconds.
    pub fn tokens(&self, user: &str, ttl: u64) -> serde_json::Value {
        use std::io::{Read, Write};
        let authority = self.issuer.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(authority).expect("connect to the provider");
        write!(stream, "GET /dev/token?user={user}&ttl={ttl} HTTP/1.0\r\nHost: {authority}\r\n\r\n").expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
        assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "{response}");
        serde_json::from_str(body).expect("JSON tokens")
    }

    pub fn id_token(&self, user: &str) -> String {
        self.tokens(user, 600)["id_token"].as_str().expect("id_token").to_owned()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy process or other child killed on drop (so a failing test leaves none behind).
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads backend messages until the server (or proxy) closes the connection.
pub async fn read_until_closed(stream: &mut TcpStream) -> Vec<BackendMessage> {
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    loop {
        while let Some(msg) = decode_backend(&mut buf, &Limits::default()).expect("valid backend messages") {
            messages.push(msg);
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return messages,
            Ok(Ok(_)) => {}
            Err(_) => panic!("connection not closed; got {messages:?}"),
        }
    }
}

pub fn fatal_code(messages: &[BackendMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        BackendMessage::ErrorResponse(f) if f.is_fatal() => f.code().map(str::to_owned),
        _ => None,
    })
}

/// Connects a raw client (user postgres, trust auth) and waits for ReadyForQuery.
pub async fn logged_in(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    StartupMessage::Startup {
        version: PROTOCOL_V3,
        params: vec![("user".into(), "postgres".into()), ("database".into(), "postgres".into())],
    }
    .encode(&mut out);
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        stream.read_buf(&mut buf).await.unwrap();
        while let Some(msg) = decode_backend(&mut buf, &Limits::default()).unwrap() {
            if matches!(msg, BackendMessage::ReadyForQuery { .. }) {
                return stream;
            }
        }
    }
}

/// A tmpfs mounted for one test, unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    /// A small tmpfs of its own, so the test can fill the journal's disk. Needs root (CI
    /// runs as root); a clear failure otherwise, never a silent skip.
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new().prefix("pgtrail-tmpfs-").tempdir().unwrap().keep();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "this test mounts a tmpfs and needs root: {out:?}");
        Tmpfs(dir)
    }

    /// Fills the file system with one file; returns it.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A syslog receiver over TLS (the certificate of `tls`) on a loopback port: every
/// octet-counted frame (RFC 5425) it gets, as text.
pub async fn syslog_tls_receiver(tls: &TlsFiles) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;
    let certs: Vec<_> = rustls_pemfile::certs(&mut tls.cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = rustls_pemfile::private_key(&mut tls.key_pem.as_bytes()).unwrap().unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let frames = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&frames);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, sink) = (acceptor.clone(), Arc::clone(&sink));
            tokio::spawn(async move {
                let mut stream = acceptor.accept(tcp).await.expect("TLS handshake");
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    // RFC 5425 framing: MSG-LEN SP SYSLOG-MSG
                    while let Some(space) = buffer.iter().position(|b| *b == b' ') {
                        let len: usize = std::str::from_utf8(&buffer[..space]).unwrap().parse().expect("MSG-LEN");
                        if buffer.len() < space + 1 + len {
                            break;
                        }
                        let frame = buffer[space + 1..space + 1 + len].to_vec();
                        buffer.drain(..space + 1 + len);
                        sink.lock().unwrap().push(String::from_utf8(frame).expect("UTF-8 message"));
                    }
                }
            });
        }
    });
    (port, frames)
}

/// `pgtrail archive` of `journal` into `to` with the keys `pgtrail keys init` made in
/// `keys` (the wrapping key to read, the archive key to sign); `extra` flags after them.
/// Panics with pgtrail's message unless it succeeds.
pub fn archive_journal(journal: &Path, keys: &Path, to: &Path, extra: &[&str]) -> Output {
    let (wrapping, signing) = (keys.join("wrapping.key"), keys.join("archive.key"));
    let mut args = vec![
        "archive",
        "--journal",
        journal.to_str().expect("UTF-8 path"),
        "--key",
        wrapping.to_str().expect("UTF-8 path"),
        "--signing-key",
        signing.to_str().expect("UTF-8 path"),
        "--to",
        to.to_str().expect("UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    let out = run_pgtrail(&args);
    assert!(out.status.success(), "pgtrail archive failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `pgtrail report` over `archive`, checked against `journal`, signed and verified with
/// the keys in `keys`, written to `output`; `extra` holds the kind, the window, the format.
pub fn report(archive: &Path, journal: &Path, keys: &Path, output: &Path, extra: &[&str]) -> Output {
    let (signing, verify, archive_pub) = (keys.join("signing.key"), keys.join("verify.pub"), keys.join("archive.pub"));
    let mut args = vec![
        "report",
        "--archive",
        archive.to_str().expect("UTF-8 path"),
        "--journal",
        journal.to_str().expect("UTF-8 path"),
        "--output",
        output.to_str().expect("UTF-8 path"),
        "--signing-key",
        signing.to_str().expect("UTF-8 path"),
        "--verify-key",
        verify.to_str().expect("UTF-8 path"),
        "--verify-key",
        archive_pub.to_str().expect("UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    run_pgtrail(&args)
}

/// One sample (without labels) of the /metrics endpoint on 127.0.0.1:`port`. (The
/// exposition format itself is checked with the official parser in tests/metrics.rs.)
pub fn metric(port: u16, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint accepts");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = rest.strip_prefix("{}").unwrap_or(rest).strip_prefix(' ')?;
            value.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {name} in {response}"))
}

/// Waits until `done`, polling every 100 ms; fails the test naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines of a JSON-lines file once it has at least `n` (waits up to 60 s).
pub fn wait_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    wait_lines_or(path, n, String::new)
}

/// As [`wait_lines`], with `logs()` in the failure message.
pub fn wait_lines_or(path: &Path, n: usize, logs: impl Fn() -> String) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} lines in {}, {n} wanted: {text}\n{}",
            lines.len(),
            path.display(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
