//! The real `pgtrail` binary: proxy from flags and from a file, SIGTERM, tail, errors, and
//! a process log free of SQL text and secrets.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgtrail_event::{ActivityEvent, EventClass, ExitCode};
use pgtrail_testkit::*;

fn spawn_proxy(args: &[String], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(pgtrail_binary())
        .arg("proxy")
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("pgtrail starts")
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "pgtrail did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn keys_init_says_where_keys_go(dir: &Path) {
    let text = keys_init(dir);
    assert!(text.contains("wrapping.key") && text.contains("off the proxy host"), "{text}");
}

#[test]
fn proxy_from_flags_then_sigterm_then_tail() {
    let pg = start_pg(HostAuth::ScramSha256);
    pg.psql(&format!("CREATE ROLE auditor LOGIN PASSWORD '{PASSWORD}'")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let keys = dir.path().join("keys");
    keys_init_says_where_keys_go(&keys);
    let log = dir.path().join("pgtrail.log");
    let port = free_port();
    let args = vec![
        "--keys".to_string(),
        keys.display().to_string(),
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--upstream".to_string(),
        format!("postgres://127.0.0.1:{}", pg.port()),
        "--journal".to_string(),
        journal.display().to_string(),
    ];
    let mut proxy = spawn_proxy(&args, &log);
    wait_listening(port);
    let secret_text = "SELECT 'very-distinctive-literal' AS marker";
    for user in ["postgres", "auditor"] {
        let url = format!("postgres://{user}:{PASSWORD}@127.0.0.1:{port}/postgres");
        assert_ok(&psql(&pg, &url, &["-c", secret_text, "-c", "CREATE TEMP TABLE x (i int)"]));
    }
    signal(&proxy, "-TERM");
    assert!(wait_exit(&mut proxy, Duration::from_secs(20)).success(), "clean exit on SIGTERM");

    // The process log is structured and has neither SQL nor the password.
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("session started"), "{log_text}");
    assert!(!log_text.contains("very-distinctive-literal") && !log_text.contains(PASSWORD), "{log_text}");

    // Reading needs the private key; the proxy never had it.
    let j = journal.to_str().unwrap();
    let key = keys.join("wrapping.key");
    let key = key.to_str().unwrap();
    let tail = |extra: &[&str]| {
        let mut args = vec!["tail", "--journal", j, "--key", key];
        args.extend_from_slice(extra);
        run_pgtrail(&args)
    };
    let no_key = run_pgtrail(&["tail", "--journal", j]);
    assert!(!no_key.status.success() && String::from_utf8_lossy(&no_key.stderr).contains("--key"), "{no_key:?}");
    // Records are DAS records: nothing of the SQL text is visible in the segment files.
    for entry in std::fs::read_dir(&journal).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("very-distinctive-literal"));
    }
    // JSON lines: every event, parseable.
    let json = tail(&["--json"]);
    let events: Vec<ActivityEvent> =
        String::from_utf8(json.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.iter().filter(|e| e.class == EventClass::Connect).count(), 2);
    assert!(events.iter().any(|e| e.command_text.as_deref() == Some(secret_text)));
    // Filters.
    let by_user = tail(&["--json", "--user", "auditor"]);
    let by_user: Vec<ActivityEvent> =
        String::from_utf8(by_user.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!by_user.is_empty() && by_user.iter().all(|e| e.db_user_name.as_deref() == Some("auditor")));
    let ddl = tail(&["--class", "ddl"]);
    let table = String::from_utf8(ddl.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TIME") && lines[0].contains("STATEMENT"), "{table}");
    assert_eq!(lines.len(), 3, "header and two CREATE TABLE rows: {table}");
    assert!(lines[1..].iter().all(|l| l.contains("CREATE TABLE")));
    // A bad class is a clear error.
    let bad = tail(&["--class", "nope"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown class"));

    // verify needs only the public key, and passes; the clean shutdown left a checkpoint.
    let vkey = keys.join("verify.pub");
    let verify = run_pgtrail(&["verify", "--journal", j, "--verify-key", vkey.to_str().unwrap()]);
    let report = String::from_utf8_lossy(&verify.stdout).to_string();
    assert!(verify.status.success(), "{verify:?}");
    assert!(report.starts_with("OK:") && !report.contains("not yet signed"), "{report}");

    // export: jsonl matches tail --json; das lines are the records as written, and
    // `keys unwrap` gives each one's data key.
    let jsonl = run_pgtrail(&["export", "--journal", j, "--key", key, "--format", "jsonl"]);
    assert!(jsonl.status.success(), "{jsonl:?}");
    assert_eq!(String::from_utf8_lossy(&jsonl.stdout), String::from_utf8_lossy(&tail(&["--json"]).stdout));
    let das = run_pgtrail(&["export", "--journal", j, "--key", key, "--format", "das"]);
    let das = String::from_utf8(das.stdout).unwrap();
    let first: serde_json::Value = serde_json::from_str(das.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "DatabaseActivityMonitoringRecords");
    assert_eq!(first["version"], "1.1");
    let unwrap = run_pgtrail(&["keys", "unwrap", "--key", key, "--journal", j, "--seq", "1"]);
    assert!(unwrap.status.success(), "{unwrap:?}");
    let data_key = String::from_utf8(unwrap.stdout).unwrap();
    assert_eq!(data_key.trim().len(), 64, "{data_key}");
    // With the data key alone, the record decrypts (the way DAS consumers do it).
    let message = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        first["databaseActivityEvents"].as_str().unwrap(),
    )
    .unwrap();
    let raw = pgtrail_envelope::RawAesKey::das(hex::decode(data_key.trim()).unwrap().try_into().unwrap());
    let inner =
        pgtrail_envelope::das::gunzip_one_member(&pgtrail_envelope::message::decrypt(&raw, &message).unwrap()).unwrap();
    assert!(String::from_utf8(inner).unwrap().starts_with("{\"type\":\"DatabaseActivityMonitoringRecord\""));

    // A changed byte in the journal: verify fails, naming the record.
    let segment = std::fs::read_dir(&journal).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[128 + 96 + 40] ^= 0x20; // inside record 1's payload
    std::fs::write(&segment, bytes).unwrap();
    let verify = run_pgtrail(&["verify", "--journal", j, "--verify-key", vkey.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(1), "{verify:?}");
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(text.contains("FAILED: record 1 ") && text.contains("CRC32C"), "{text}");
}

#[test]
fn config_file_and_shutdown_grace() {
    let pg = start_pg(HostAuth::Trust);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    keys_init_says_where_keys_go(&dir.path().join("keys"));
    let config = dir.path().join("pgtrail.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace_ms = 300\n\n[upstream]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"disable\"\n\n[journal]\ndir = \"{}\"\n\n[keys]\ndir = \"{}\"\n",
            pg.port(),
            dir.path().join("journal").display(),
            dir.path().join("keys").display()
        ),
    )
    .unwrap();
    let mut proxy = spawn_proxy(&["--config".into(), config.display().to_string()], &dir.path().join("log"));
    wait_listening(port);
    // An idle session is still open at SIGTERM: after the grace period it is ended with
    // 57P01, and its DISCONNECT is in the journal before the process exits.
    let idle = Command::new(pg.binaries().bin("psql"))
        .arg(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .args(["-X", "-c", "SELECT pg_sleep(30)"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    signal(&proxy, "-TERM");
    assert!(wait_exit(&mut proxy, Duration::from_secs(20)).success());
    let out = idle.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("terminating connection due to administrator command"),
        "{out:?}"
    );
    let ring = pgtrail_keys::load_key_ring(&[dir.path().join("keys/wrapping.key")]).unwrap();
    let events = pgtrail_reader::read_all(&dir.path().join("journal"), ring).unwrap();
    let disconnect = events.iter().find(|e| e.class == EventClass::Disconnect).expect("DISCONNECT recorded");
    assert_eq!(disconnect.exit_code, Some(ExitCode::SqlState("57P01".into())));

    // Operators restart the proxy right away, while connections it closed itself are still
    // in TIME_WAIT on its port: it must listen again at once.
    let mut first = spawn_proxy(&["--config".into(), config.display().to_string()], &dir.path().join("log1"));
    wait_listening(port);
    {
        use std::io::{Read, Write};
        // A client the proxy hangs up on: the proxy closes first, so the TIME_WAIT is its.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    signal(&first, "-TERM");
    assert!(wait_exit(&mut first, Duration::from_secs(20)).success());
    let mut again = spawn_proxy(&["--config".into(), config.display().to_string()], &dir.path().join("log2"));
    wait_listening(port);
    signal(&again, "-TERM");
    assert!(wait_exit(&mut again, Duration::from_secs(20)).success());

    // Unknown keys are errors that name the key.
    std::fs::write(&config, "[proxy]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(pgtrail_binary()).args(["proxy", "--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lisen"), "{out:?}");
    // Missing upstream: says how to give one.
    let out = Command::new(pgtrail_binary()).args(["proxy", "--journal", "/tmp/x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"), "{out:?}");
}

#[test]
fn quickstart_smoke() {
    let out = Command::new(pgtrail_binary()).args(["quickstart", "--smoke", "--port", "0"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("psql \"postgres://postgres:pgtrail@127.0.0.1:"), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("READ") && l.contains("SELECT 1")), "{stdout}");
    // The built-in rule pack ran on the events: postgres is a superuser.
    assert!(stdout.lines().any(|l| l.starts_with("ALERT [medium] superuser session")), "{stdout}");
}

/// `quickstart --oidc`: a real OIDC provider, token login over TLS, certificate upstream;
/// the smoke run logs in as alice with an ID token from the provider.
#[test]
fn quickstart_oidc_smoke() {
    let out = Command::new(pgtrail_binary()).args(["quickstart", "--oidc", "--smoke", "--port", "0"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("/dev/token?user=alice"), "{stdout}");
    assert!(stdout.contains("sslmode=require"), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("alice") && l.contains("READ") && l.contains("SELECT 1")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("identity: alice alice@example.com (http://127.0.0.1:")), "{stdout}");
}
