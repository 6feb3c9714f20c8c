//! The real pgAudit 1.7 output in testdata/pgaudit (one PostgreSQL 15 server lifetime
//! written to stderr, csvlog and jsonlog at once) parses completely, and the three formats
//! give the same events.

use std::path::PathBuf;

use pgtrail_event::{ActivityEvent, EventClass, EventSource};
use pgtrail_pgaudit::{Assembler, Format, Prefix, to_event};

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/pgaudit").join(name)
}

fn events(name: &str, format: Format) -> Vec<ActivityEvent> {
    let text = std::fs::read_to_string(testdata(name)).unwrap();
    let mut assembler = Assembler::new(format);
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        entries.extend(assembler.push_line(line, n as u64 + 1));
    }
    entries.extend(assembler.flush());
    let mut events = Vec::new();
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(event) = to_event(&entry).unwrap_or_else(|e| panic!("{name}: {e}")) {
            events.push(event);
        }
    }
    events
}

fn audit(events: &[ActivityEvent]) -> Vec<&ActivityEvent> {
    events.iter().filter(|e| e.statement_id > 0).collect()
}

#[test]
fn every_audit_record_in_the_three_formats_parses() {
    let stderr = events("stderr.log", Format::Stderr(Prefix::compile("%m [%p] %q%u@%d ").unwrap()));
    let csv = events("csvlog.csv", Format::Csvlog);
    let json = events("jsonlog.json", Format::Jsonlog);
    for (name, events) in [("stderr.log", &stderr), ("csvlog.csv", &csv), ("jsonlog.json", &json)] {
        // Counted in the raw text, independently of the parser.
        let raw = std::fs::read_to_string(testdata(name)).unwrap();
        let expected = raw.matches("AUDIT: SESSION,").count() + raw.matches("AUDIT: OBJECT,").count();
        assert_eq!(expected, 75, "{name}");
        assert_eq!(audit(events).len(), expected, "{name}");
        assert!(events.iter().all(|e| e.source == Some(EventSource::Pgaudit)));
    }
    // The same records, field by field, whatever the format.
    let key = |e: &&ActivityEvent| {
        (e.statement_id, e.substatement_id, e.class, e.command.clone(), e.command_text.clone(), e.param_list.clone())
    };
    let s: Vec<_> = audit(&stderr).iter().map(key).collect();
    assert_eq!(s, audit(&csv).iter().map(key).collect::<Vec<_>>(), "stderr and csvlog differ");
    assert_eq!(s, audit(&json).iter().map(key).collect::<Vec<_>>(), "stderr and jsonlog differ");
    // Session facts the stderr prefix does not carry come from the other two.
    for e in audit(&csv).iter().chain(audit(&json).iter()) {
        assert!(e.session_id.is_some() && e.remote_host.is_some() && e.pid.is_some(), "{e:?}");
    }

    // A multi-line statement with quotes, commas and a tab, exactly as the workload sent it.
    let workload = std::fs::read_to_string(testdata("workload/workload1.sql")).unwrap();
    let insert =
        audit(&stderr).into_iter().find(|e| e.command_text.as_deref().is_some_and(|t| t.contains("O''Brien"))).unwrap();
    assert!(workload.contains(insert.command_text.as_deref().unwrap()), "{:?}", insert.command_text);
    assert_eq!(insert.class, EventClass::Write);
    // Extended-protocol parameters (pgbench -M extended with log_parameter).
    assert!(audit(&csv).iter().any(|e| !e.param_list.is_empty()));
    // Connections, disconnections and errors with their statements.
    let count = |class: EventClass| csv.iter().filter(|e| e.class == class).count();
    assert!(count(EventClass::Connect) > 0 && count(EventClass::Connect) == count(EventClass::Disconnect));
    let errors: Vec<_> = json.iter().filter(|e| e.command == "ERROR").collect();
    assert!(
        errors.iter().any(
            |e| e.sql_state.as_deref() == Some("22012") && e.command_text.as_deref() == Some("SELECT 1/0 AS boom;")
        )
    );
    let stderr_errors = stderr.iter().filter(|e| e.command == "ERROR").count();
    assert_eq!(stderr_errors, errors.len());
}
