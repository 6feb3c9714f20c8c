//! The noise flag on real traffic: psql's own \d-family introspection queries, sent by
//! the real psql through the proxy, are all noise; the user's statements are not.

use pgtrail_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_meta_commands_are_noise_and_user_statements_are_not() {
    let pg = start_pg(HostAuth::Trust);
    let capture = TestCapture::start(&pg).await;
    let url = capture.url("postgres", "", "postgres");
    assert_ok(&psql(
        &pg,
        &url,
        &[
            "-c",
            "CREATE TABLE phonebook (id int PRIMARY KEY, name text)",
            "-c",
            "INSERT INTO phonebook VALUES (1, 'a')",
        ],
    ));
    let meta = ["\\d", "\\dt", "\\d phonebook", "\\l", "\\dn", "\\du", "\\df", "\\dv", "\\di", "\\dx", "\\dp"];
    let mut args = Vec::new();
    for m in meta {
        args.extend(["-c", m]);
    }
    assert_ok(&psql(&pg, &url, &args));
    assert_ok(&psql(&pg, &url, &["-c", "SELECT name FROM phonebook", "-c", "SELECT pg_read_file('PG_VERSION')"]));
    let events = capture.stop().await;
    let stmts = statements(&events);
    let noise: Vec<_> = stmts.iter().filter(|e| e.noise).collect();
    let signal: Vec<_> = stmts.iter().filter(|e| !e.noise).map(|e| e.command_text.as_deref().unwrap_or("")).collect();
    assert!(noise.len() >= meta.len(), "every meta-command sent at least one query: {}", describe(&events));
    assert_eq!(
        signal,
        vec![
            "CREATE TABLE phonebook (id int PRIMARY KEY, name text)",
            "INSERT INTO phonebook VALUES (1, 'a')",
            "SELECT name FROM phonebook",
            "SELECT pg_read_file('PG_VERSION')",
        ],
        "only the user's own statements are not noise"
    );
    assert!(noise.iter().all(|e| e.class == pgtrail_event::EventClass::Read), "introspection is all reads");
}

/// The PostgreSQL JDBC driver (Debian's libpostgresql-jdbc-java), as DBeaver, DataGrip and
/// JDBC applications use it, browsing a schema through the proxy: every statement it sends
/// is noise, and the one user query is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_metadata_queries_are_noise() {
    let jar = std::path::Path::new("/usr/share/java/postgresql.jar");
    assert!(
        jar.is_file(),
        "the PostgreSQL JDBC driver is needed at {} (scripts/setup.sh installs libpostgresql-jdbc-java)",
        jar.display()
    );
    let pg = start_pg(HostAuth::ScramSha256);
    pg.psql("CREATE TABLE phonebook (id int PRIMARY KEY, name text)").unwrap();
    let capture = TestCapture::start(&pg).await;
    let program = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/noise/JdbcIntrospect.java");
    let url = format!("jdbc:postgresql://{}/postgres?sslmode=disable", capture.addr);
    let out = std::process::Command::new("java")
        .arg("-cp")
        .arg(jar)
        .arg(program)
        .args([&url, "postgres", PASSWORD])
        .output()
        .expect("java runs");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("done"), "{out:?}");
    let events = capture.stop().await;
    let stmts = statements(&events);
    let signal: Vec<_> = stmts.iter().filter(|e| !e.noise).map(|e| e.command_text.as_deref().unwrap_or("")).collect();
    assert_eq!(signal, vec!["SELECT name FROM phonebook"], "{}", describe(&events));
    let noise = stmts.iter().filter(|e| e.noise).count();
    assert!(noise >= 15, "the driver sent {noise} introspection statements: {}", describe(&events));
    eprintln!("the JDBC driver sent {noise} introspection statements, all noise");
}

/// A real pgAdmin 4 (the pgadmin4 package in `.venv-pgadmin`, made by scripts/setup.sh)
/// connects through the proxy and browses a table as its object browser does: every
/// statement it sends is noise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgadmin_browsing_is_noise() {
    let python = std::env::var_os("PGTRAIL_PGADMIN_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-pgadmin/bin/python"));
    let site = std::process::Command::new(&python)
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        .output();
    let site = site.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let app = site.map(|s| std::path::PathBuf::from(s).join("pgadmin4/pgAdmin4.py")).filter(|p| p.is_file());
    let app = app.unwrap_or_else(|| {
        panic!("pgAdmin 4 is needed in {} (scripts/setup.sh installs the pgadmin4 package there)", python.display())
    });
    let pg = start_pg(HostAuth::ScramSha256);
    pg.psql("CREATE TABLE phonebook (id int PRIMARY KEY, name text NOT NULL, phone text CHECK (phone <> ''))").unwrap();
    let capture = TestCapture::start(&pg).await;

    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("config_local.py"),
        "import os\nSERVER_MODE = False\nDATA_DIR = os.environ['PGADMIN_DATA']\n\
         LOG_FILE = os.path.join(DATA_DIR, 'pgadmin4.log')\nSQLITE_PATH = os.path.join(DATA_DIR, 'pgadmin4.db')\n\
         SESSION_DB_PATH = os.path.join(DATA_DIR, 'sessions')\nSTORAGE_DIR = os.path.join(DATA_DIR, 'storage')\n\
         WTF_CSRF_ENABLED = False\nMASTER_PASSWORD_REQUIRED = False\nUPGRADE_CHECK_ENABLED = False\n\
         DEFAULT_SERVER_PORT = int(os.environ['PGADMIN_PORT'])\n",
    )
    .unwrap();
    let port = free_port();
    let mut pgadmin = std::process::Command::new(&python)
        .arg(&app)
        .env("PYTHONPATH", data.path())
        .env("PGADMIN_DATA", data.path())
        .env("PGADMIN_PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(data.path().join("stderr.log")).unwrap())
        .spawn()
        .expect("pgAdmin starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "pgAdmin did not start: {:?}",
            std::fs::read_to_string(data.path().join("stderr.log"))
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/noise/pgadmin_browse.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}"))
        .args([&capture.addr.ip().to_string(), &capture.addr.port().to_string(), "postgres", PASSWORD, "phonebook"])
        .output()
        .unwrap();
    let _ = pgadmin.kill();
    let _ = pgadmin.wait();
    assert!(out.status.success(), "{out:?}");
    let events = capture.stop().await;
    let stmts = statements(&events);
    let signal: Vec<_> = stmts.iter().filter(|e| !e.noise).map(|e| e.command_text.as_deref().unwrap_or("")).collect();
    assert!(signal.is_empty(), "pgAdmin statements not marked noise:\n{}", signal.join("\n---\n"));
    assert!(stmts.len() >= 20, "pgAdmin sent {} statements: {}", stmts.len(), describe(&events));
    eprintln!("pgAdmin sent {} statements through the proxy, all noise", stmts.len());
}
