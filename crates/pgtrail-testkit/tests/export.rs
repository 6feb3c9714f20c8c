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

/// Every event of real traffic (logins that work and one that fails, reads, writes, DDL, an
/// error, the capture starting and stopping), exported as OCSF, validates against the OCSF
/// 1.8.0 JSON schema of its class (PyPI ocsf-json-schema with jsonschema): required
/// attributes, enums and objects included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ocsf_export_validates_against_the_ocsf_1_8_schema() {
    let pg = start_pg(HostAuth::Trust);
    let mut capture = TestCapture::start(&pg).await;
    let url = capture.url("postgres", "", "postgres");
    let statements = [
        "CREATE TABLE accounts (id int primary key, balance int)",
        "INSERT INTO accounts VALUES (1, 100), (2, 50)",
        "UPDATE accounts SET balance = 0 WHERE id = 2",
        "SELECT * FROM accounts",
        "DELETE FROM accounts WHERE id = 1",
        "DROP TABLE accounts",
    ];
    assert_ok(&psql(&pg, &url, &statements.iter().flat_map(|s| ["-c", s]).collect::<Vec<_>>()));
    assert!(!psql(&pg, &url, &["-c", "SELECT * FROM no_such_table"]).status.success());
    assert!(!psql(&pg, &capture.url("postgres", "", "no_such_db"), &["-c", "SELECT 1"]).status.success());
    capture.shutdown().await;
    let (journal, keys) = (capture.journal_dir().to_path_buf(), capture.keys_dir());
    let (_, said) = export_ocsf(&journal, &keys.join("wrapping.key"));
    let seen: Vec<&str> = said.lines().collect();
    for expected in [
        "3002 1 1", // a login
        "3002 1 2", // the refused one (no such database)
        "3002 2 1", // a logoff
        "6005 6 1", // CREATE
        "6005 5 1", // INSERT
        "6005 2 1", // UPDATE
        "6005 1 1", // SELECT
        "6005 7 1", // DELETE and DROP
        "6005 1 2", // the failed SELECT
        "1008 6 1", // the capture started
    ] {
        assert!(seen.iter().any(|l| l.starts_with(&format!("{expected} "))), "no {expected}: {said}");
    }
}

/// `pgtrail export --format ocsf` of `journal`, and what [`validate_ocsf`] says of it.
fn export_ocsf(journal: &std::path::Path, key: &std::path::Path) -> (Vec<u8>, String) {
    let (j, k) = (journal.to_str().unwrap(), key.to_str().unwrap());
    let out = run_pgtrail(&["export", "--journal", j, "--key", k, "--format", "ocsf"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = validate_ocsf(&out.stdout);
    (out.stdout, said)
}

/// Validates each line of `exported` against the OCSF 1.8.0 schema of its class (PyPI
/// ocsf-json-schema, jsonschema); returns "class activity status count" lines.
fn validate_ocsf(exported: &[u8]) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), exported).unwrap();
    let script = r#"
import collections, json, sys
import jsonschema
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema
ocsf = OcsfJsonSchemaEmbedded(get_ocsf_schema(version="1.8.0"))
names = {3002: "authentication", 6005: "datastore_activity", 1008: "event_log_actvity"}
validators = {uid: jsonschema.Draft202012Validator(ocsf.get_class_schema(name)) for uid, name in names.items()}
seen = collections.Counter()
for n, line in enumerate(open(sys.argv[1]), 1):
    event = json.loads(line)
    errors = list(validators[event["class_uid"]].iter_errors(event))
    if errors:
        print(f"line {n}: {errors[0].message} at {list(errors[0].absolute_path)}: {line}")
        sys.exit(1)
    seen[(event["class_uid"], event["activity_id"], event.get("status_id"))] += 1
for key, count in sorted(seen.items()):
    print(*key, count)
"#;
    let run = std::process::Command::new(venv_python("ocsf_json_schema"))
        .args(["-c", script])
        .arg(file.path())
        .output()
        .expect("python runs");
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{said}{}", String::from_utf8_lossy(&run.stderr));
    said.into_owned()
}

/// What real traffic here does not produce: a person from the identity provider, a
/// statement the policy denied, a loss record, a heartbeat, a pgAudit event without a
/// client address. Written to a journal as the recorder writes them, exported as OCSF by
/// the CLI, each validated.
#[test]
fn ocsf_keeps_the_person_and_the_role_and_validates_for_denials_and_losses() {
    use std::sync::Arc;

    use pgtrail_event::{
        ActivityEvent, EventClass, Identity, Verdict, activity_record_json, heartbeat_event, loss_event,
    };
    let dir = tempfile::tempdir().unwrap();
    let (journal, keys) = (dir.path().join("journal"), dir.path().join("keys"));
    pgtrail_keys::init(&keys, false).unwrap();
    let now = chrono::Utc::now();
    let mut person = ActivityEvent::new(EventClass::Write, "UPDATE", now);
    person.command_text = Some("UPDATE accounts SET balance = 0".into());
    person.db_user_name = Some(Arc::from("app_rw"));
    person.database_name = Some(Arc::from("bank"));
    person.remote_host = Some(Arc::from("10.1.2.3"));
    person.remote_port = Some(Arc::from("51234"));
    person.identity = Some(Arc::new(Identity {
        issuer: "https://idp.example".into(),
        subject: "u-42".into(),
        name: Some("Alice Auditor".into()),
        email: Some("alice@example.com".into()),
        groups: vec!["dba".into()],
        token_id: None,
        auth_method: "oidc".into(),
    }));
    let mut denied = person.clone();
    denied.command = "DELETE".into();
    denied.verdict = Some(Verdict::Denied);
    denied.denied_by = Some("no-deletes".into());
    denied.sql_state = Some("42501".into());
    let mut local = ActivityEvent::new(EventClass::Read, "SELECT", now);
    local.command_text = Some("SELECT 1".into());
    local.db_user_name = Some(Arc::from("postgres"));
    let events = vec![person, denied, local, loss_event(3, 0, 1_000_000, &"queue full"), heartbeat_event()];

    let wrapping = pgtrail_keys::load_wrapping_public(&keys.join(pgtrail_keys::WRAPPING_PUBLIC)).unwrap();
    let mut sealer = pgtrail_envelope::Sealer::new(Arc::new(wrapping), pgtrail_envelope::SealerConfig::default());
    let options = pgtrail_journal::JournalOptions { instance: "db-ocsf".into(), ..Default::default() };
    let mut writer = pgtrail_journal::Journal::open(&journal, options).unwrap();
    let record = sealer.seal(&activity_record_json("cluster", "db-ocsf", &events)).unwrap();
    writer.append(now.timestamp_micros(), record.json.as_bytes()).unwrap();
    writer.close().unwrap();

    let (exported, said) = export_ocsf(&journal, &keys.join(pgtrail_keys::WRAPPING_PRIVATE));
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        ["1008 99 1 1", "1008 99 2 1", "6005 1 1 1", "6005 2 1 1", "6005 7 2 1"],
        "{said}"
    );
    let lines: Vec<serde_json::Value> =
        String::from_utf8(exported).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let user = &lines[0]["actor"]["user"];
    assert_eq!((user["uid"].as_str(), user["email_addr"].as_str()), (Some("u-42"), Some("alice@example.com")));
    assert_eq!(user["account"]["name"], "app_rw", "the database role is kept beside the person");
    assert_eq!(lines[0]["query_info"]["query_string"], "UPDATE accounts SET balance = 0");
    assert_eq!(lines[0]["src_endpoint"]["ip"], "10.1.2.3");
    assert_eq!(lines[1]["status_id"], 2);
    assert!(lines[1]["status_detail"].as_str().unwrap().contains("no-deletes"));
    assert_eq!((lines[3]["severity_id"].as_i64(), lines[3]["count"].as_i64()), (Some(4), Some(3)), "{}", lines[3]);
}
