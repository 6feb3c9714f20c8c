//! Passwords in statement text: password changes that only a statement's string literals
//! show, and redaction of passwords wherever they appear.
//!
//! The parser sees `ALTER ROLE a PASSWORD 'x'` as a role statement, but a DO block or a
//! function body is one string constant to it, and so is the text that dynamic SQL
//! (`EXECUTE '...'`, `format(...)`, `dblink_exec(...)`) runs. These functions look inside
//! literals, at any depth of quoting, and treat all literals of one statement as one
//! text, so `'ALTER ROLE a PASS' || 'WORD ''x'''` and `format('%s PASSWORD %L', ...)` are
//! seen too.
//!
//! Out of reach: SQL whose text is computed from values no literal shows (`chr(80)`,
//! table contents, function results). PostgreSQL then runs a statement that the proxy
//! never saw; pgAudit's record of it (and the "password change" rule on it) sees it after
//! the fact.

use crate::literals::{Literal, Token, lex, quote_like};

/// How deep literals inside literals are followed.
const MAX_DEPTH: usize = 8;

const REDACTED: &str = "<REDACTED>";

fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Reads like a statement that sets a role's password.
fn reads_like_password_change(text: &str) -> bool {
    contains_ci(text, "password")
        && (contains_ci(text, "role") || contains_ci(text, "user"))
        && (contains_ci(text, "alter") || contains_ci(text, "create"))
}

/// The statements of a token list, split at top-level semicolons (empty ones left out).
fn statements<'t, 'a>(tokens: &'t [Token<'a>]) -> impl Iterator<Item = &'t [Token<'a>]> {
    tokens.split(|t| *t == Token::Semicolon).filter(|s| !s.is_empty())
}

fn literals<'t>(statement: &'t [Token<'_>]) -> impl Iterator<Item = &'t Literal> {
    statement.iter().filter_map(|t| match t {
        Token::Literal(l) => Some(l),
        _ => None,
    })
}

/// The index of the first top-level statement of `sql` whose string literals change a
/// role's password (a DO block or function body that does, dynamic SQL that would), if
/// any. Statements that do it in plain SQL are the parser's to find
/// ([`crate::Traits::sets_password`]).
pub fn password_change_in_literals(sql: &str, standard_conforming_strings: bool) -> Option<usize> {
    // No literal, nothing to find (most statements): no lexing.
    if !sql.contains(['\'', '$']) {
        return None;
    }
    let tokens = lex(sql, standard_conforming_strings);
    statements(&tokens).position(|statement| literals_change_a_password(statement, standard_conforming_strings, 0))
}

fn literals_change_a_password(statement: &[Token<'_>], scs: bool, depth: usize) -> bool {
    let joined: String = literals(statement).map(|l| l.content.as_str()).collect();
    if reads_like_password_change(&joined) {
        return true;
    }
    depth < MAX_DEPTH
        && literals(statement).any(|l| {
            reads_like_password_change(&l.content)
                || statements(&lex(&l.content, scs)).any(|inner| literals_change_a_password(inner, scs, depth + 1))
        })
}

/// Whether `sql` may hold a password that [`redact_passwords_with`] would remove: a cheap
/// test that lets most statements skip lexing.
fn may_hold_a_password(sql: &str) -> bool {
    contains_ci(sql, "password") || sql.contains("||") || contains_ci(sql, "format") || contains_ci(sql, "concat")
}

/// [`redact_passwords_with`] for a session with standard_conforming_strings on.
pub fn redact_passwords(sql: &str) -> String {
    redact_passwords_with(sql, true)
}

/// Replaces passwords in `sql` with `<REDACTED>`:
/// - in `CREATE`/`ALTER` statements, the literal after `PASSWORD` (`ALTER USER a PASSWORD
///   <REDACTED>`; psql's `\password`), also when the grammar rejects the statement;
/// - inside literals (DO blocks, function bodies, dynamic SQL), at any depth: once a
///   statement's literals mention a password, that literal's password and every later
///   literal of the statement, so `format('... PASSWORD %L', 'x')` and
///   `'... PASS' || 'WORD ''x'''` lose it too.
///
/// Each statement of a multi-statement text on its own: pgAudit repeats the whole text in
/// every record, so a password in the third statement goes from all of them.
pub fn redact_passwords_with(sql: &str, standard_conforming_strings: bool) -> String {
    if !may_hold_a_password(sql) {
        return sql.to_owned();
    }
    redact_level(sql, standard_conforming_strings, 0)
}

fn redact_level(text: &str, scs: bool, depth: usize) -> String {
    let tokens = lex(text, scs);
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for statement in statements(&tokens) {
        let role_statement = matches!(statement.first(), Some(Token::Word(w)) if w.eq_ignore_ascii_case("create") || w.eq_ignore_ascii_case("alter"));
        // Inside a literal: once the statement has mentioned a password, every later
        // literal goes (it may be the password, passed as an argument or concatenated).
        let mut redact_rest = false;
        let mut joined = String::new();
        let mut after_password_keyword = false;
        for token in statement {
            let Token::Literal(literal) = token else {
                after_password_keyword = matches!(token, Token::Word(w) if w.eq_ignore_ascii_case("password"));
                redact_rest |= depth > 0 && after_password_keyword;
                continue;
            };
            let keyword_literal = after_password_keyword && (role_statement || depth > 0);
            after_password_keyword = false;
            joined.push_str(&literal.content);
            if keyword_literal && depth == 0 {
                edits.push((literal.start, literal.end, REDACTED.to_owned()));
                continue;
            }
            let mentions = contains_ci(&literal.content, "password");
            if keyword_literal || redact_rest || (depth > 0 && !mentions && contains_ci(&joined, "password")) {
                edits.push((literal.start, literal.end, quote_like(REDACTED, &literal.quoting)));
                redact_rest |= depth > 0;
                continue;
            }
            if depth < MAX_DEPTH && (mentions || literal.content.contains(['\'', '$'])) {
                let inner = redact_level(&literal.content, scs, depth + 1);
                if inner != literal.content {
                    edits.push((literal.start, literal.end, quote_like(&inner, &literal.quoting)));
                }
            }
            redact_rest |= depth > 0 && mentions;
        }
    }
    if edits.is_empty() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end, replacement) in edits {
        out.push_str(&text[copied..start]);
        out.push_str(&replacement);
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_statements_lose_their_password() {
        for (sql, expected) in [
            ("CREATE ROLE app LOGIN PASSWORD 'hunter2'", "CREATE ROLE app LOGIN PASSWORD <REDACTED>"),
            (
                "ALTER USER app WITH ENCRYPTED PASSWORD 'SCRAM-SHA-256$4096:abc'",
                "ALTER USER app WITH ENCRYPTED PASSWORD <REDACTED>",
            ),
            (
                "create user x password 'a''b' valid until 'infinity'",
                "create user x password <REDACTED> valid until 'infinity'",
            ),
            ("ALTER ROLE app PASSWORD NULL", "ALTER ROLE app PASSWORD NULL"),
            ("SELECT 'password' AS password", "SELECT 'password' AS password"),
            ("ALTER ROLE app PASSWORD E'a\\'b'", "ALTER ROLE app PASSWORD <REDACTED>"),
        ] {
            assert_eq!(redact_passwords(sql), expected);
        }
        assert_eq!(
            redact_passwords(
                "SELECT 1; CREATE ROLE a PASSWORD 'x'; SELECT 'PASSWORD' || 'y'; ALTER USER b PASSWORD 'z'"
            ),
            "SELECT 1; CREATE ROLE a PASSWORD <REDACTED>; SELECT 'PASSWORD' || 'y'; ALTER USER b PASSWORD <REDACTED>"
        );
    }

    #[test]
    fn passwords_inside_do_blocks_and_function_bodies_are_redacted() {
        let cases = [
            (
                "DO $$ BEGIN EXECUTE 'ALTER ROLE alice PASSWORD ''y'''; END $$",
                "DO $$ BEGIN EXECUTE 'ALTER ROLE alice PASSWORD ''<REDACTED>'''; END $$",
            ),
            (
                "DO $$ BEGIN EXECUTE 'ALTER ROLE alice PASS' || 'WORD ''y'''; END $$",
                "DO $$ BEGIN EXECUTE 'ALTER ROLE alice PASS' || '<REDACTED>'; END $$",
            ),
            (
                "DO $$ BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', 'alice', 'y'); END $$",
                "DO $$ BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', '<REDACTED>', '<REDACTED>'); END $$",
            ),
            (
                "DO $$ BEGIN ALTER ROLE alice PASSWORD 'y'; END $$",
                "DO $$ BEGIN ALTER ROLE alice PASSWORD '<REDACTED>'; END $$",
            ),
            (
                "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS 'BEGIN EXECUTE ''ALTER ROLE alice PASSWORD ''''y''''''; END'",
                "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS 'BEGIN EXECUTE ''ALTER ROLE alice PASSWORD ''''<REDACTED>''''''; END'",
            ),
            (
                "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $f$ALTER ROLE alice PASSWORD 'y'$f$",
                "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $f$ALTER ROLE alice PASSWORD '<REDACTED>'$f$",
            ),
        ];
        for (sql, expected) in cases {
            let redacted = redact_passwords(sql);
            assert_eq!(redacted, expected);
            assert!(!redacted.contains("''y''") && !redacted.contains("'y'"), "{redacted}");
        }
        // Nothing else is touched.
        let plain = "DO $$ BEGIN RAISE NOTICE 'hello'; END $$";
        assert_eq!(redact_passwords(plain), plain);
    }

    #[test]
    fn password_changes_hidden_in_literals_are_found() {
        for sql in [
            "DO $$ BEGIN EXECUTE 'ALTER ROLE alice PASSWORD ''y'''; END $$",
            "DO $$ BEGIN EXECUTE 'ALTER ROLE alice PASS'||'WORD ''y'''; END $$",
            "DO $$ BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', 'alice', 'y'); END $$",
            "DO $$ BEGIN EXECUTE format('%s ROLE alice %s ''y''', 'ALTER', 'PASS' || 'WORD'); END $$",
            "do $x$ begin alter role alice password 'y'; end $x$",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN EXECUTE 'ALTER ROLE alice PASSWORD ''y'''; END $f$",
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS E'ALTER ROLE alice \\x50ASSWORD ''y'''",
            "SELECT dblink_exec('dbname=x', 'ALTER USER alice PASSWORD ''y''')",
        ] {
            assert_eq!(password_change_in_literals(sql, true), Some(0), "{sql}");
        }
        assert_eq!(
            password_change_in_literals("SELECT 1; DO $$ BEGIN ALTER ROLE a PASSWORD 'x'; END $$", true),
            Some(1)
        );
        for sql in [
            "DO $$ BEGIN RAISE NOTICE 'hello'; END $$",
            "SELECT 'password' AS password",
            "INSERT INTO tickets (body) VALUES ('user forgot the password')",
            "ALTER ROLE alice PASSWORD 'y'",
        ] {
            assert_eq!(password_change_in_literals(sql, true), None, "{sql}");
        }
    }
}
