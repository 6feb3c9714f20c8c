//! `pgtrail archive` on real traffic: the Parquet files hold every event of the journal
//! once, DuckDB reads them as a user would (Hive partitions included), and a restart
//! neither repeats nor skips, whichever step a crash interrupted.

use std::path::Path;
use std::process::Command;

use pgtrail_testkit::*;

/// Runs `SQL` over the archive's files with DuckDB; one output line per row, columns
/// separated by `|`.
fn duckdb(archive: &Path, sql: &str) -> Vec<String> {
    let glob = format!("{}/**/*.parquet", archive.display());
    let script = r#"
import sys, duckdb
con = duckdb.connect()
glob = sys.argv[1].replace("'", "''")
con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{glob}', hive_partitioning = true)")
for row in con.execute(sys.argv[2]).fetchall():
    print("|".join("" if v is None else str(v) for v in row))
"#;
    let out = Command::new(venv_python("duckdb")).args(["-c", script, &glob, sql]).output().expect("python runs");
    assert!(out.status.success(), "duckdb failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

fn archive(journal: &Path, keys: &Path, to: &Path, state: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--state", state.to_str().unwrap()];
    args.extend_from_slice(extra);
    archive_journal(journal, keys, to, &args)
}

/// Every event of the journal, as (record seq, index in its record, type, class, command,
/// text), sorted: what the archive must hold exactly once.
fn journal_rows(journal: &Path, keys: &Path) -> Vec<String> {
    let ring = pgtrail_keys::load_key_ring(&[keys.join(pgtrail_keys::WRAPPING_PRIVATE)]).unwrap();
    let mut reader = pgtrail_reader::Reader::open(journal, ring).unwrap();
    let mut rows = Vec::new();
    while let Some(opened) = reader.next_envelope().unwrap() {
        for (i, e) in opened.events().unwrap().iter().enumerate() {
            let kind = serde_json::to_value(e.kind).unwrap();
            let class = serde_json::to_value(e.class).unwrap();
            rows.push(format!(
                "{}|{}|{}|{}|{}|{}",
                opened.seq,
                i,
                kind.as_str().unwrap(),
                class.as_str().unwrap(),
                e.command,
                e.command_text.as_deref().unwrap_or("")
            ));
        }
    }
    rows.sort();
    rows
}

/// Three statements on a table `accounts` (DDL, then two writes) through `url`.
fn accounts(pg: &LocalPg, url: &str) {
    let statements = [
        "CREATE TABLE accounts (id int primary key, balance int)",
        "INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g",
        "UPDATE accounts SET balance = 0 WHERE id = 2",
    ];
    assert_ok(&psql(pg, url, &statements.iter().flat_map(|s| ["-c", s]).collect::<Vec<_>>()));
}

const ARCHIVED_ROWS: &str = "SELECT record_seq, event_index, type, class, command, command_text FROM events \
    ORDER BY record_seq, event_index";

fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_holds_every_event_once_and_duckdb_reads_it() {
    let pg = start_pg(HostAuth::Trust);
    let mut capture = TestCapture::start(&pg).await;
    let url = capture.url("postgres", "", "postgres");
    accounts(&pg, &url);
    assert_ok(&psql(&pg, &url, &["-c", "SELECT * FROM accounts WHERE id = 2"]));
    for i in 0..20 {
        assert_ok(&psql(&pg, &url, &["-c", &format!("SELECT balance FROM accounts WHERE id = {}", i % 10 + 1)]));
    }
    let failed = psql(&pg, &url, &["-c", "SELECT * FROM no_such_table"]);
    assert!(!failed.status.success());
    capture.shutdown().await;
    let (journal, keys) = (capture.journal_dir().to_path_buf(), capture.keys_dir());
    let expected = journal_rows(&journal, &keys);
    assert!(expected.len() > 40, "traffic made {} events", expected.len());

    let dir = tempfile::tempdir().unwrap();
    let (to, state) = (dir.path().join("archive"), dir.path().join("archive.cursor"));
    let out = archive(&journal, &keys, &to, &state, &["--roll-events", "7"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&format!("archived {} events", expected.len())), "{said}");
    assert_eq!(sorted(duckdb(&to, ARCHIVED_ROWS)), expected);

    // The partitions are the events' dates and the journal's instance.
    let partitions = duckdb(&to, "SELECT DISTINCT date, instance, journal_instance FROM events");
    assert_eq!(partitions.len(), 1, "{partitions:?}");
    let fields: Vec<&str> = partitions[0].split('|').collect();
    assert_eq!(fields[1], fields[2], "the partition names the journal's instance");
    let today = chrono::Utc::now().date_naive().to_string();
    assert_eq!(fields[0], today);
    // The questions an auditor asks, answered from the files.
    assert_eq!(
        duckdb(&to, "SELECT count(*) FROM events WHERE list_contains(objects, 'accounts') AND class = 'WRITE'"),
        ["2"]
    );
    assert_eq!(duckdb(&to, "SELECT sql_state FROM events WHERE command_text LIKE '%no_such_table%'"), ["42P01"]);
    // Many small files, each in the hash-chained manifest.
    let files = duckdb(
        &to,
        &format!("SELECT count(DISTINCT filename) FROM read_parquet('{}/**/*.parquet', filename = true)", to.display()),
    );
    let manifest = walk(&to.join("_manifest"), "json");
    assert_eq!(files, [manifest.len().to_string()]);
    assert!(manifest.len() > 1, "{} files for {} events rolled every 7", manifest.len(), expected.len());
    let rows: u64 = manifest
        .iter()
        .map(|path| {
            let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            entry["rows"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(rows, expected.len() as u64, "the manifest counts every row");
    // The archive proves itself against the journal: every file, row and record.
    let verified = verify_archive(&to, Some(&journal), &keys);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(said.contains(&format!("{} files, {} rows", manifest.len(), expected.len())), "{said}");
    // A file changed after the fact is found and named.
    let changed = &walk(&to, "parquet")[0];
    let mut bytes = std::fs::read(changed).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(changed, &bytes).unwrap();
    let failed = verify_archive(&to, None, &keys);
    let said = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{said}");
    assert!(said.contains("FAILED") && said.contains("was modified"), "{said}");
    bytes[middle] ^= 0x01;
    std::fs::write(changed, &bytes).unwrap();

    // Again: nothing new, nothing twice.
    let again = archive(&journal, &keys, &to, &state, &["--roll-events", "7"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("archived 0 events"));
    assert_eq!(sorted(duckdb(&to, ARCHIVED_ROWS)), expected);
}

/// A crash can stop a run between putting a file and recording it in the manifest, or
/// between the manifest entry and saving the cursor, or anywhere (kill -9). After each,
/// the next run's archive holds every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_resumes_exactly_after_a_crash_at_any_step() {
    let pg = start_pg(HostAuth::Trust);
    let capture = TestCapture::start(&pg).await;
    let url = capture.url("postgres", "", "postgres");
    let (journal, keys) = (capture.journal_dir().to_path_buf(), capture.keys_dir());
    let dir = tempfile::tempdir().unwrap();
    let (to, state) = (dir.path().join("archive"), dir.path().join("archive.cursor"));
    let work = |n: usize| {
        for i in 0..n {
            assert_ok(&psql(&pg, &url, &["-c", &format!("SELECT {i} AS step")]));
        }
    };

    // kill -9 of a following run once it has written a few files.
    work(10);
    let key = keys.join("wrapping.key");
    let mut follower = Command::new(pgtrail_binary())
        .args(["archive", "--follow", "--roll-events", "3", "--roll-secs", "1", "--journal"])
        .arg(&journal)
        .arg("--key")
        .arg(&key)
        .arg("--signing-key")
        .arg(keys.join("archive.key"))
        .arg("--to")
        .arg(&to)
        .arg("--state")
        .arg(&state)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let manifest = to.join("_manifest");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while walk(&manifest, "json").len() < 3 {
        assert!(std::time::Instant::now() < deadline, "the following archive wrote no files");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    work(5);
    follower.kill().unwrap(); // SIGKILL
    follower.wait().unwrap();

    // A cursor from before the last files (as if the crash came before it was saved).
    work(5);
    archive(&journal, &keys, &to, &state, &["--roll-events", "3"]);
    let old_cursor = std::fs::read(&state).unwrap();
    work(7);
    archive(&journal, &keys, &to, &state, &["--roll-events", "3"]);
    std::fs::write(&state, &old_cursor).unwrap();

    // A file put without its manifest entry (the crash came between the two).
    let some_file = walk(&to, "parquet").remove(0);
    let orphan = some_file.with_file_name("part-99999999.parquet");
    std::fs::copy(&some_file, &orphan).unwrap();

    work(4);
    let mut capture = capture;
    capture.shutdown().await;
    let out = archive(&journal, &keys, &to, &state, &["--roll-events", "3"]);
    assert!(!orphan.exists(), "the file no manifest entry names is deleted");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("(0 records were archived already)"), "the stale cursor's records are skipped: {said}");
    assert_eq!(sorted(duckdb(&to, ARCHIVED_ROWS)), journal_rows(&journal, &keys));
    let verified = verify_archive(&to, Some(&journal), &keys);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
}

/// The files under `dir` whose names end in `.ext`, sorted.
fn walk(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path, ext));
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `pgtrail verify --archive` (and the journal, when given) with the test keys.
fn verify_archive(archive: &Path, journal: Option<&Path>, keys: &Path) -> std::process::Output {
    let mut command = Command::new(pgtrail_binary());
    command.args(["verify", "--archive"]).arg(archive);
    if let Some(journal) = journal {
        command.arg("--journal").arg(journal);
    }
    command.arg("--verify-key").arg(keys.join("verify.pub")).arg("--verify-key").arg(keys.join("archive.pub"));
    command.output().expect("pgtrail runs")
}

/// A real S3-compatible server (s3s-fs) on a loopback port, storing under `root`; killed
/// on drop.
fn start_s3(root: &Path, access_key: &str, secret_key: &str) -> (KillOnDrop, u16) {
    let port = free_port();
    let child = Command::new("s3s-fs")
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", access_key])
        .args(["--secret-key", secret_key])
        .arg(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("s3s-fs runs (scripts/setup.sh installs it)");
    let guard = KillOnDrop(child);
    wait_listening(port);
    (guard, port)
}

/// pgtrail with the AWS environment of the local S3 server on `port`.
fn pgtrail_s3(port: u16, secret: &str) -> Command {
    let mut command = Command::new(pgtrail_binary());
    command
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "pgtrail-test")
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", "us-east-1");
    command
}

fn archive_to_s3(journal: &Path, keys: &Path, to: &str, port: u16, secret: &str) -> std::process::Output {
    pgtrail_s3(port, secret)
        .args(["archive", "--roll-events", "5", "--to", to, "--journal"])
        .arg(journal)
        .arg("--key")
        .arg(keys.join("wrapping.key"))
        .arg("--signing-key")
        .arg(keys.join("archive.key"))
        .output()
        .expect("pgtrail runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_goes_to_an_s3_compatible_store() {
    let pg = start_pg(HostAuth::Trust);
    let mut capture = TestCapture::start(&pg).await;
    let url = capture.url("postgres", "", "postgres");
    for i in 0..8 {
        assert_ok(&psql(&pg, &url, &["-c", &format!("SELECT {i} AS step")]));
    }
    capture.shutdown().await;
    let (journal, keys) = (capture.journal_dir().to_path_buf(), capture.keys_dir());
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("audit")).unwrap();
    let secret = "s3-secret-never-logged";
    let (_server, port) = start_s3(root.path(), "pgtrail-test", secret);

    // Wrong credentials: a clear failure that does not print the secret.
    let refused = archive_to_s3(&journal, &keys, "s3://audit/trail", port, "wrong-secret-value");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("archive store"), "{said}");
    assert!(!said.contains("wrong-secret-value"), "{said}");

    // Plain HTTP that would leave this machine is refused before anything is sent.
    let remote = Command::new(pgtrail_binary())
        .args(["archive", "--to", "s3://audit/trail", "--journal"])
        .arg(&journal)
        .arg("--key")
        .arg(keys.join("wrapping.key"))
        .arg("--signing-key")
        .arg(keys.join("archive.key"))
        .env("AWS_ENDPOINT_URL", "http://192.0.2.10:9000")
        .env("AWS_ACCESS_KEY_ID", "pgtrail-test")
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env_remove("AWS_ALLOW_HTTP")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&remote.stderr);
    assert!(!remote.status.success() && said.contains("plain HTTP to another machine"), "{said}");

    let out = archive_to_s3(&journal, &keys, "s3://audit/trail/db1", port, secret);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stored = root.path().join("audit/trail/db1");
    assert_eq!(sorted(duckdb(&stored, ARCHIVED_ROWS)), journal_rows(&journal, &keys));
    assert!(!walk(&stored.join("_manifest"), "json").is_empty());

    // A second run reads the manifest back from the store: nothing new, nothing twice.
    let again = archive_to_s3(&journal, &keys, "s3://audit/trail/db1", port, secret);
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("archived 0 events"), "{said}");
    assert_eq!(sorted(duckdb(&stored, ARCHIVED_ROWS)), journal_rows(&journal, &keys));
    // And it verifies there, read through the S3 API.
    let verified = pgtrail_s3(port, secret)
        .args(["verify", "--archive", "s3://audit/trail/db1", "--journal"])
        .arg(&journal)
        .arg("--verify-key")
        .arg(keys.join("verify.pub"))
        .arg("--verify-key")
        .arg(keys.join("archive.pub"))
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
}

fn query(archive: &Path, format: &str, sql: &str) -> std::process::Output {
    run_pgtrail(&["query", "--archive", archive.to_str().unwrap(), "--format", format, sql])
}

/// Rows of `pgtrail query --format csv` without the header, columns joined by `|` as
/// [`duckdb`] prints them.
fn query_rows(archive: &Path, sql: &str) -> Vec<String> {
    let out = query(archive, "csv", sql);
    assert!(out.status.success(), "pgtrail query failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().skip(1).map(|line| line.replace(',', "|")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgtrail_query_answers_an_auditors_questions_as_duckdb_does() {
    let pg = start_pg(HostAuth::ScramSha256);
    pg.psql(&format!("CREATE ROLE bob LOGIN PASSWORD '{PASSWORD}'")).unwrap();
    let mut capture = TestCapture::start(&pg).await;
    for _ in 0..2 {
        let out = psql(&pg, &capture.url("bob", "wrong-password", "postgres"), &["-c", "SELECT 1"]);
        assert!(!out.status.success());
    }
    let url = capture.url("postgres", PASSWORD, "postgres");
    accounts(&pg, &url);
    assert_ok(&psql(&pg, &capture.url("bob", PASSWORD, "postgres"), &["-c", "SELECT 42"]));
    capture.shutdown().await;
    let dir = tempfile::tempdir().unwrap();
    let (to, state) = (dir.path().join("archive"), dir.path().join("cursor"));
    archive(capture.journal_dir(), &capture.keys_dir(), &to, &state, &["--roll-events", "4"]);
    let today = chrono::Utc::now().date_naive().to_string();

    let questions = [
        "SELECT class, count(*) AS n FROM events GROUP BY class ORDER BY class".to_owned(),
        // Failed logins by host.
        "SELECT remote_host, count(*) AS n FROM events WHERE class = 'CONNECT' AND sql_state IS NOT NULL \
         GROUP BY remote_host ORDER BY remote_host"
            .to_owned(),
        // Who touched a table in a period (the partition filter prunes directories).
        format!(
            "SELECT db_user_name, command FROM events WHERE array_has(objects, 'accounts') AND date >= '{today}' \
             ORDER BY record_seq, event_index"
        ),
        // All statements of one person.
        "SELECT command_text FROM events WHERE db_user_name = 'bob' AND class NOT IN ('CONNECT', 'DISCONNECT') \
         ORDER BY record_seq, event_index"
            .to_owned(),
    ];
    for sql in &questions {
        assert_eq!(query_rows(&to, sql), duckdb(&to, sql), "{sql}");
    }
    assert_eq!(query_rows(&to, &questions[1]), ["127.0.0.1|2"]);
    assert_eq!(query_rows(&to, &questions[2]), ["postgres|CREATE TABLE", "postgres|INSERT", "postgres|UPDATE"]);
    assert_eq!(query_rows(&to, &questions[3]), ["SELECT 42"]);
    // No rows from another day: the partition filter holds.
    assert!(query_rows(&to, "SELECT * FROM events WHERE date < '2000-01-01'").is_empty());

    // JSON lines and the table for people.
    let jsonl = query(&to, "jsonl", &questions[0]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8(jsonl.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), query_rows(&to, &questions[0]).len());
    assert!(lines.iter().all(|l| l["class"].is_string() && l["n"].is_number()), "{lines:?}");
    let table = String::from_utf8(query(&to, "table", &questions[0]).stdout).unwrap();
    assert!(table.contains("| class") && table.contains("| CONNECT"), "{table}");

    // A mistake in the SQL: a clear error, exit 1.
    let bad = query(&to, "table", "SELECT no_such_column FROM events");
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && said.contains("no_such_column"), "{said}");
}

/// `pgtrail journal prune` after `pgtrail archive`: the journal loses its oldest segments
/// but still verifies from the signed anchor, the archive proves the pruned records, and an
/// archive cut short below what the prune relied on is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruned_journal_still_verifies_and_the_archive_stands_for_what_was_pruned() {
    let pg = start_pg(HostAuth::Trust);
    let mut capture = TestCapture::start_with(&pg, |config| {
        config.writer.journal.segment_max_bytes = 4096;
        config.writer.journal.checkpoint_every_records = 3;
    })
    .await;
    let url = capture.url("postgres", "", "postgres");
    for i in 0..20 {
        assert_ok(&psql(&pg, &url, &["-c", &format!("SELECT {i} AS step")]));
    }
    capture.shutdown().await;
    let (journal, keys) = (capture.journal_dir().to_path_buf(), capture.keys_dir());
    let segments = walk(&journal, "seg").len();
    assert!(segments > 3, "{segments} segments");
    let dir = tempfile::tempdir().unwrap();
    let (to, state) = (dir.path().join("archive"), dir.path().join("archive.cursor"));
    let expected = journal_rows(&journal, &keys);

    let prune = |before: &str| {
        let (signing, verify, archive_pub) =
            (keys.join("signing.key"), keys.join("verify.pub"), keys.join("archive.pub"));
        run_pgtrail(&[
            "journal",
            "prune",
            "--journal",
            journal.to_str().unwrap(),
            "--before",
            before,
            "--archive",
            to.to_str().unwrap(),
            "--signing-key",
            signing.to_str().unwrap(),
            "--verify-key",
            verify.to_str().unwrap(),
            "--verify-key",
            archive_pub.to_str().unwrap(),
        ])
    };
    // Nothing archived yet: nothing may go.
    assert!(!prune("1000000").status.success(), "a journal with no archive is not pruned");
    assert_eq!(walk(&journal, "seg").len(), segments);

    archive(&journal, &keys, &to, &state, &["--roll-events", "10"]);
    let out = prune("1000000");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("pruned") && said.contains("now starts at record"), "{said}");
    assert_eq!(walk(&journal, "seg").len(), 1, "every segment but the last is archived and pruned");

    let verified = run_pgtrail(&[
        "verify",
        "--journal",
        journal.to_str().unwrap(),
        "--verify-key",
        keys.join("verify.pub").to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success() && said.contains("signed prune anchor (verified)"), "{said}");
    let verified = verify_archive(&to, Some(&journal), &keys);
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success() && said.contains("pins manifest entry"), "{said}");
    // The pruned records are still all in the archive.
    assert_eq!(sorted(duckdb(&to, ARCHIVED_ROWS)), expected);

    // The manifest's last entry and its file deleted: an archive cut short, caught by the pin.
    let last = walk(&to.join("_manifest"), "json").pop().unwrap();
    let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(&last).unwrap()).unwrap();
    std::fs::remove_file(to.join(entry["path"].as_str().unwrap())).unwrap();
    std::fs::remove_file(&last).unwrap();
    let failed = verify_archive(&to, Some(&journal), &keys);
    let said = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{said}");
    assert!(said.contains("cut short"), "{said}");
}
