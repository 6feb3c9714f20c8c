//! A lexer that replaces literal values with `?`, so that statements differing only in
//! their constants share one classification (pgbench, ORMs and hand-written SQL inline
//! literals; parsing every distinct text would cost tens of microseconds each).
//!
//! Safety argument: every token that is not a literal or a comment is copied verbatim into
//! the key, so two texts with the same key have the same token sequence apart from
//! constant values, hence the same parse tree shape, command, class, objects and
//! fingerprint (pg_query's fingerprint ignores constants too). Anything this lexer is not
//! sure about (an unterminated literal, several statements, a NUL byte) yields `None`
//! and the caller parses the text itself.

/// A text with literals replaced, and where its single statement ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Normalized {
    pub(crate) key: String,
    /// Byte offset of the end of the statement (its top-level `;`, or the end of text).
    pub(crate) statement_end: usize,
}

use crate::literals::{dollar_delimiter, is_ident_cont, is_ident_start};

/// Lexes `sql` as PostgreSQL does for the purpose of finding literals. With
/// `standard_conforming_strings` off, backslashes escape in plain '...' strings too.
pub(crate) fn normalize(sql: &str, standard_conforming_strings: bool) -> Option<Normalized> {
    let b = sql.as_bytes();
    let mut key = String::with_capacity(sql.len());
    let mut statement_end = None;
    let mut i = 0;
    // Start of the bytes to copy verbatim.
    let mut copied = 0;
    while i < b.len() {
        let c = b[i];
        if statement_end.is_some() && !c.is_ascii_whitespace() && !starts_comment(b, i) {
            // A second statement: leave it to the parser.
            return None;
        }
        match c {
            0 => return None,
            b'\'' => {
                key.push_str(&sql[copied..i]);
                i = skip_quoted(b, i, !standard_conforming_strings)?;
                key.push('?');
                copied = i;
            }
            b'"' => i = skip_quoted_identifier(b, i)?,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                key.push_str(&sql[copied..i]);
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                key.push(' ');
                copied = i;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                key.push_str(&sql[copied..i]);
                i = skip_block_comment(b, i)?;
                key.push(' ');
                copied = i;
            }
            b'$' => {
                if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    // A parameter placeholder $n: kept.
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                } else {
                    key.push_str(&sql[copied..i]);
                    i = skip_dollar_quoted(b, i)?;
                    key.push('?');
                    copied = i;
                }
            }
            b';' => {
                statement_end = Some(i);
                i += 1;
            }
            c if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) => {
                key.push_str(&sql[copied..i]);
                i = skip_number(b, i);
                key.push('?');
                copied = i;
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident_cont(b[i]) {
                    i += 1;
                }
                // E'..', B'..', X'..', N'..' are literals with a one-letter prefix.
                if i - start == 1 && b.get(i) == Some(&b'\'') && matches!(c | 0x20, b'e' | b'b' | b'x' | b'n') {
                    key.push_str(&sql[copied..start]);
                    i = skip_quoted(b, i, (c | 0x20) == b'e' || !standard_conforming_strings)?;
                    key.push('?');
                    copied = i;
                }
            }
            _ => i += 1,
        }
    }
    key.push_str(&sql[copied..]);
    Some(Normalized { key, statement_end: statement_end.unwrap_or(sql.len()) })
}

fn starts_comment(b: &[u8], i: usize) -> bool {
    (b[i] == b'-' && b.get(i + 1) == Some(&b'-')) || (b[i] == b'/' && b.get(i + 1) == Some(&b'*'))
}

/// Skips a '...' literal starting at `i`; returns the index after it.
fn skip_quoted(b: &[u8], mut i: usize, backslash_escapes: bool) -> Option<usize> {
    i += 1;
    loop {
        match *b.get(i)? {
            b'\\' if backslash_escapes => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

fn skip_quoted_identifier(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match *b.get(i)? {
            b'"' if b.get(i + 1) == Some(&b'"') => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// Block comments nest in PostgreSQL.
fn skip_block_comment(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        if b.get(i) == Some(&b'/') && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b.get(i) == Some(&b'*') && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Some(i);
            }
        } else {
            b.get(i)?;
            i += 1;
        }
    }
}

/// `$$...$$` or `$tag$...$tag$`. A `$` that starts neither is an operator character.
fn skip_dollar_quoted(b: &[u8], i: usize) -> Option<usize> {
    let range = dollar_delimiter(b, i)?;
    let body = range.end() + 1;
    let delimiter = &b[range];
    let end = b[body..].windows(delimiter.len()).position(|w| w == delimiter)?;
    Some(body + end + delimiter.len())
}

fn skip_number(b: &[u8], mut i: usize) -> usize {
    let digits = |b: &[u8], mut i: usize| {
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
        i
    };
    i = digits(b, i);
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i = digits(b, i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let exp = if matches!(b.get(i + 1), Some(b'+' | b'-')) { i + 2 } else { i + 1 };
        if b.get(exp).is_some_and(u8::is_ascii_digit) {
            i = digits(b, exp);
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> Option<String> {
        normalize(sql, true).map(|n| n.key)
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            key("SELECT * FROM t WHERE id = 42 AND name = 'o''brien';").unwrap(),
            "SELECT * FROM t WHERE id = ? AND name = ?;"
        );
        assert_eq!(
            key("select 1.5e-3, .5, E'a\\'b', $$x$$, $f$ y $f$, t1.c2, $1").unwrap(),
            "select ?, ?, ?, ?, ?, t1.c2, $1"
        );
        assert_eq!(key("SELECT \"we'ird\" FROM x -- note 5\n").unwrap(), "SELECT \"we'ird\" FROM x  \n");
        assert_eq!(key("SELECT /* a /* nested */ 7 */ 3").unwrap(), "SELECT   ?");
        assert_eq!(key("SELECT 'a'"), key("SELECT 'something much longer'"));
    }

    #[test]
    fn statement_end_is_the_single_semicolon() {
        let n = normalize("UPDATE t SET x = 1 ; -- done\n", true).unwrap();
        assert_eq!(n.statement_end, 19);
        assert_eq!(normalize("SELECT 1", true).unwrap().statement_end, 8);
    }

    #[test]
    fn anything_uncertain_is_left_to_the_parser() {
        assert_eq!(key("SELECT 1; SELECT 2"), None);
        assert_eq!(key("SELECT 'unterminated"), None);
        assert_eq!(key("SELECT $$open"), None);
        assert_eq!(key("SELECT /* open"), None);
        assert_eq!(key("SELECT \"open"), None);
        assert_eq!(key("SELECT 1\0"), None);
    }

    #[test]
    fn backslashes_follow_standard_conforming_strings() {
        // With it on, 'a\' is a complete literal; with it off the quote is escaped.
        assert_eq!(normalize("SELECT 'a\\' ", true).unwrap().key, "SELECT ? ");
        assert_eq!(normalize("SELECT 'a\\' ", false), None);
        assert_eq!(normalize("SELECT 'a\\'' ", false).unwrap().key, "SELECT ? ");
    }
}
