//! `pgtrail report` on real traffic through the proxy, archived: each kind lists what
//! happened, every report ends with an integrity statement naming the journal's
//! checkpoint and the archive manifest, the report's signature catches any change to it,
//! a damaged archive makes the report say NOT VERIFIED, and the HTML report renders and
//! prints to PDF in headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;

use pgtrail_testkit::*;

const HOSTILE: &str = "SELECT '<script>alert(1)</script>' AS x FROM accounts LIMIT 1";

struct Trail {
    journal: PathBuf,
    keys: PathBuf,
    archive: PathBuf,
    dir: tempfile::TempDir,
    /// Holds the journal's and the keys' directories.
    _capture: TestCapture,
}

impl Trail {
    /// `pgtrail report --kind KIND --format FORMAT` from 2026 on, into `name`.
    fn report(&self, kind: &str, format: &str, name: &str, extra: &[&str]) -> (std::process::Output, PathBuf) {
        let output = self.dir.path().join(name);
        let mut args = vec!["--kind", kind, "--from", "2026-01-01", "--format", format];
        args.extend_from_slice(extra);
        (report(&self.archive, &self.journal, &self.keys, &output, &args), output)
    }

    /// The CSV report's rows as maps from heading to value (the `#` lines left out).
    fn csv_rows(&self, kind: &str, extra: &[&str]) -> Vec<std::collections::HashMap<String, String>> {
        let (out, path) = self.report(kind, "csv", &format!("{kind}.csv"), extra);
        assert!(out.status.success(), "report {kind}: {}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(path).unwrap();
        let body: String = text.split_inclusive("\r\n").filter(|l| !l.starts_with('#')).collect();
        let script = "import csv, json, sys\nprint(json.dumps(list(csv.DictReader(sys.stdin))))";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
        let parsed = child.wait_with_output().unwrap();
        serde_json::from_slice(&parsed.stdout).expect("python's csv module reads the report")
    }

    fn verify(&self, file: &Path) -> std::process::Output {
        run_pgtrail(&[
            "report",
            "verify",
            file.to_str().unwrap(),
            "--verify-key",
            self.keys.join("verify.pub").to_str().unwrap(),
        ])
    }
}

/// Real traffic of every kind a report looks for, through the proxy, archived.
async fn trail() -> Trail {
    let pg = start_pg(HostAuth::Trust);
    let policy: pgtrail_proxy::PolicyConfig = serde_json::from_value(serde_json::json!({
        "deny": [{"name": "no unfiltered deletes", "when": "command == \"DELETE\" && !hasWhere",
                  "message": "DELETE needs a WHERE clause"}],
    }))
    .unwrap();
    let mut capture = TestCapture::start_with(&pg, |config| {
        config.writer.journal.checkpoint_every_records = 3;
        config.proxy.policy = policy;
    })
    .await;
    // The administrator sets up; the application's role (no superuser) does the work.
    let admin = capture.url("postgres", "", "postgres");
    let setup = [
        "CREATE ROLE app LOGIN",
        "CREATE TABLE accounts (id int primary key, balance int)",
        "GRANT ALL ON accounts TO app",
    ];
    assert_ok(&psql(&pg, &admin, &setup.iter().flat_map(|s| ["-c", s]).collect::<Vec<_>>()));
    let app = capture.url("app", "", "postgres");
    let work = [
        "INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g",
        "SELECT balance FROM accounts WHERE id = 3",
        "SELECT balance FROM accounts WHERE id = 4",
        "UPDATE accounts SET balance = 0 WHERE id = 2",
        HOSTILE,
    ];
    assert_ok(&psql(&pg, &app, &work.iter().flat_map(|s| ["-c", s]).collect::<Vec<_>>()));
    let denied = psql(&pg, &app, &["-c", "DELETE FROM accounts"]);
    assert!(!denied.status.success(), "the policy denies an unfiltered DELETE");
    // Two quiet seconds (no heartbeat comes in 5 s): a silence for the coverage report.
    // Time itself is what is tested here, so this is a wait on the clock, not a condition.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let failed = psql(&pg, &capture.url("app", "", "no_such_db"), &["-c", "SELECT 1"]);
    assert!(!failed.status.success(), "no such database");
    capture.shutdown().await;
    let (journal, keys) = (capture.journal_dir().to_path_buf(), capture.keys_dir());
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    archive_journal(&journal, &keys, &archive, &["--roll-events", "5"]);
    Trail { journal, keys, archive, dir, _capture: capture }
}

fn column<'a>(rows: &'a [std::collections::HashMap<String, String>], name: &str) -> Vec<&'a str> {
    rows.iter().map(|r| r[name].as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_report_kind_lists_what_happened_and_ends_with_a_verified_integrity_statement() {
    let trail = trail().await;

    // Object access to accounts: every statement on it, and nothing else.
    let rows = trail.csv_rows("object-access", &["--object", "accounts"]);
    let texts = column(&rows, "text");
    for expected in [
        "INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g",
        "SELECT balance FROM accounts WHERE id = 3",
        "SELECT balance FROM accounts WHERE id = 4",
        "UPDATE accounts SET balance = 0 WHERE id = 2",
        "DELETE FROM accounts",
        HOSTILE,
    ] {
        assert_eq!(texts.iter().filter(|t| **t == expected).count(), 1, "{expected} in {texts:#?}");
    }
    assert!(texts.iter().all(|t| t.contains("accounts")), "{texts:#?}");
    let times = column(&rows, "time (UTC)");
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "rows in time order: {times:?}");

    // Privileged: the administrator's role changes and DDL (a superuser session: all of
    // it); nothing of the application's role.
    let rows = trail.csv_rows("privileged", &[]);
    let commands = column(&rows, "command");
    for expected in ["CREATE ROLE", "CREATE TABLE", "GRANT"] {
        assert!(commands.contains(&expected), "{expected} in {commands:?}");
    }
    assert!(column(&rows, "database user").iter().all(|u| *u == "postgres"), "{rows:#?}");

    // The failed login, with its SQLSTATE.
    let rows = trail.csv_rows("failed-logins", &[]);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!((rows[0]["database"].as_str(), rows[0]["outcome"].as_str()), ("no_such_db", "error 3D000"));

    // The denied statement, with its rule.
    let rows = trail.csv_rows("denied", &[]);
    assert_eq!(column(&rows, "text"), ["DELETE FROM accounts"]);
    assert_eq!(rows[0]["outcome"], "denied by no unfiltered deletes");

    // Coverage: the capture's start and stop are there; no bypass, no loss; the quiet
    // two seconds are a silence longer than --gap 1, and the only one of 2 s or more.
    let rows = trail.csv_rows("coverage", &["--gap", "1"]);
    let csv = std::fs::read_to_string(trail.dir.path().join("coverage.csv")).unwrap();
    let silences: Vec<&str> = csv.lines().filter(|l| l.starts_with("# silence:")).collect();
    let seconds = |l: &str| -> u64 { l.rsplit('(').next().unwrap().trim_end_matches(" s)").parse().unwrap() };
    let long: Vec<&&str> = silences.iter().filter(|l| seconds(l) >= 2).collect();
    assert_eq!(long.len(), 1, "{silences:?}");
    let commands = column(&rows, "command");
    assert!(commands.contains(&"CAPTURE STARTED") && commands.contains(&"CAPTURE STOPPED"), "{commands:?}");
    assert!(column(&rows, "class").iter().all(|c| *c == "CONTROL"), "{rows:#?}");

    // JSON: the same rows, the summary, and the integrity statement tied to the journal's
    // checkpoint and the archive manifest's last entry.
    let (out, path) = trail.report("object-access", "json", "access.json", &["--object", "accounts"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(report["summary"]["events"].as_u64().unwrap() as usize, report["rows"].as_array().unwrap().len());
    assert_eq!(report["rows"].as_array().unwrap().len(), texts.len());
    let integrity = &report["integrity"];
    assert_eq!(integrity["verified"], true, "{integrity:#}");
    let instance = &integrity["instances"][0];
    let last_record = instance["last_record"].as_u64().unwrap();
    let checkpoint = instance["checkpoint_seq"].as_u64().expect("a checkpoint signs the records");
    assert!(checkpoint >= last_record, "{instance:#}");
    let verify_pub = std::fs::read_to_string(trail.keys.join("verify.pub")).unwrap();
    let key = instance["checkpoint_key"].as_str().unwrap();
    assert!(verify_pub.contains(key), "the checkpoint key {key} is the journal's: {verify_pub}");
    let mut manifest: Vec<PathBuf> = walk(&trail.archive.join("_manifest"));
    manifest.sort();
    let last: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest.last().unwrap()).unwrap()).unwrap();
    assert_eq!(instance["manifest_hash"], last["hash"]);
    assert_eq!(instance["manifest_entry"], last["seq"]);
    assert!(report["integrity_statement"][0].as_str().unwrap().starts_with("VERIFIED"));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_is_signed_renders_in_chromium_and_says_when_the_archive_was_damaged() {
    let trail = trail().await;
    let (out, html) = trail.report("object-access", "html", "access.html", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("VERIFIED") && page.contains("Signed by journal checkpoint at record"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "the hostile text is shown, escaped");
    assert!(!page.contains("<script"), "no script in the page");
    assert!(page.contains("<svg"), "the chart is inline");

    // The signature holds, and any change to the report is caught.
    let ok = trail.verify(&html);
    assert!(ok.status.success(), "{}{}", String::from_utf8_lossy(&ok.stdout), String::from_utf8_lossy(&ok.stderr));
    let forged = page.replacen("accounts", "acc0unts", 1);
    std::fs::write(&html, &forged).unwrap();
    let caught = trail.verify(&html);
    assert_eq!(caught.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&caught.stdout).contains("FAILED"), "{caught:?}");
    std::fs::write(&html, &page).unwrap();

    // Headless Chromium renders it and prints it to PDF.
    let pdf = trail.dir.path().join("access.pdf");
    let printed = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer"])
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium runs (installed by scripts/setup.sh)");
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let bytes = std::fs::read(&pdf).expect("chromium wrote the PDF");
    assert!(bytes.starts_with(b"%PDF-"), "a PDF");
    let count = |needle: &[u8]| bytes.windows(needle.len()).filter(|w| *w == needle).count();
    let pages = count(b"/Type /Page") - count(b"/Type /Pages");
    assert!(pages >= 1, "the PDF has pages ({} bytes)", bytes.len());

    // An archived file deleted (events taken out of the evidence): the report is still
    // written, says NOT VERIFIED, and the command fails.
    let parquet = walk(&trail.archive).into_iter().find(|p| p.extension().is_some_and(|e| e == "parquet")).unwrap();
    std::fs::remove_file(&parquet).unwrap();
    let (out, damaged) = trail.report("denied", "html", "denied.html", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(&damaged).unwrap();
    assert!(page.contains("NOT VERIFIED") && page.contains("missing"), "{page}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT VERIFIED"));
}

/// A journal of one DDL statement a day for 30 days (signed checkpoints), archived.
fn month_of_ddl(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use std::sync::Arc;
    let (journal, keys, archive) = (dir.join("journal"), dir.join("keys"), dir.join("archive"));
    pgtrail_keys::init(&keys, false).unwrap();
    let wrapping = pgtrail_keys::load_wrapping_public(&keys.join("wrapping.pub")).unwrap();
    let signer = pgtrail_keys::load_signer(&keys.join("signing.key")).unwrap();
    let options =
        pgtrail_journal::JournalOptions { instance: "db-month".into(), signer: Some(signer), ..Default::default() };
    let mut writer = pgtrail_journal::Journal::open(&journal, options).unwrap();
    let mut sealer = pgtrail_envelope::Sealer::new(Arc::new(wrapping), Default::default());
    let first: chrono::DateTime<chrono::Utc> = "2026-10-01T12:00:00Z".parse().unwrap();
    for day in 0..30 {
        let at = first + chrono::Duration::days(day);
        let mut event = pgtrail_event::ActivityEvent::new(pgtrail_event::EventClass::Ddl, "CREATE TABLE", at);
        event.command_text = Some(format!("CREATE TABLE t{day} (id int)").into());
        let record = sealer.seal(&pgtrail_event::activity_record_json("c", "db-month", &[event])).unwrap();
        writer.append(at.timestamp_micros(), record.json.as_bytes()).unwrap();
    }
    writer.checkpoint().unwrap();
    writer.close().unwrap();
    archive_journal(&journal, &keys, &archive, &[]);
    (journal, keys, archive)
}

/// The chart once read the archive's microsecond times as nanoseconds: a month of events
/// looked like 43 minutes, drawn in thousands of one-minute bars.
#[test]
fn a_months_chart_has_six_hour_bars_from_the_first_day_regression_microseconds_read_as_nanoseconds() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, keys, archive) = month_of_ddl(dir.path());
    let output = dir.path().join("month.json");
    let args = ["--kind", "privileged", "--from", "2026-10-01", "--to", "2026-10-31", "--format", "json"];
    let out = report(&archive, &journal, &keys, &output, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    let summary = &report["summary"];
    assert_eq!(summary["events"], 30);
    // 29 days between the first event and the last: 6-hour bars, 29 * 4 + 1 of them.
    assert_eq!(summary["bucket_seconds"], 6 * 3600);
    let series = summary["series"].as_array().unwrap();
    assert_eq!(series.len(), 29 * 4 + 1);
    assert_eq!(series[0]["from"], "2026-10-01T12:00:00Z");
    assert_eq!(series.iter().map(|b| b["events"].as_u64().unwrap()).sum::<u64>(), 30);
    assert!(series.iter().all(|b| b["events"] == 0 || b["events"] == 1));
    assert_eq!(report["integrity"]["verified"], true, "{:#}", report["integrity"]);
}
