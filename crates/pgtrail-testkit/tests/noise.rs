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
}
