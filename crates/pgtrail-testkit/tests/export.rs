//! `pgtrail export --format cef` on real traffic: one line per event, and hostile SQL text
//! (with `|`, `=`, `\` and a line break) comes out escaped as the CEF specification says.

use pgtrail_testkit::*;

/// CEF's escaping of an extension value, written here from the specification.
fn cef_value(text: &str) -> String {
    text.replace('\\', "\\\\").replace('=', "\\=").replace('\n', "\\n").replace('\r', "\\r")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cef_export_keeps_hostile_sql_on_one_escaped_line() {
    let pg = start_pg(HostAuth::Trust);
    let mut capture = TestCapture::start(&pg).await;
    let url = capture.url("postgres", "", "postgres");
    let hostile = "SELECT 'a|b=c\\d' AS \"x=y\",\n  'CEF:0|fake|x|1|2|3|10|' AS forged";
    assert_ok(&psql(&pg, &url, &["-c", hostile]));
    capture.shutdown().await;
    let (journal, keys) = (capture.journal_dir().to_path_buf(), capture.keys_dir());
    let key = keys.join("wrapping.key");
    let (j, k) = (journal.to_str().unwrap(), key.to_str().unwrap());

    let out = run_pgtrail(&["export", "--journal", j, "--key", k, "--format", "cef"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cef = String::from_utf8(out.stdout).unwrap();
    let jsonl = run_pgtrail(&["export", "--journal", j, "--key", k, "--format", "jsonl"]);
    let events = String::from_utf8(jsonl.stdout).unwrap().lines().count();
    let lines: Vec<&str> = cef.lines().collect();
    assert_eq!(lines.len(), events, "one line per event");
    assert!(lines.iter().all(|l| l.starts_with("CEF:0|pgtrail|pgtrail|")), "{cef}");

    let statement: Vec<&str> = lines.iter().copied().filter(|l| l.contains("|READ|SELECT|")).collect();
    assert_eq!(statement.len(), 1, "{cef}");
    let expected = format!("msg={} ", cef_value(hostile));
    assert!(statement[0].contains(&expected), "{}\nshould contain\n{expected}", statement[0]);
    assert!(statement[0].contains(" duser=postgres") && statement[0].contains(" outcome=success"), "{}", statement[0]);
    // The forged header inside the text is data: the line has exactly one real header.
    assert_eq!(statement[0].matches("CEF:0|pgtrail").count(), 1);
}
