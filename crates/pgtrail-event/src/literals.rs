//! A small lexer for what hides inside string literals: the bodies of DO blocks and
//! functions, and the strings that dynamic SQL (`EXECUTE`, `format()`, `dblink_exec`) runs.
//!
//! The parser sees a DO block or a function body as one opaque string constant, and the
//! shape cache sees it as one `?`: neither can tell `DO $$ ... $$` apart from another DO
//! block. This lexer finds every literal with its unescaped content, so password changes
//! can be found and redacted at any depth of quoting.
//!
//! It never fails: an unterminated literal runs to the end of the text, as the server's
//! own lexer would complain about rather than reinterpret.

/// How a literal was quoted, so a changed content can be written back the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Quoting {
    /// `'...'` (backslashes escape only with standard_conforming_strings off).
    Plain,
    /// `E'...'`: backslash escapes.
    Escape,
    /// `U&'...'`: Unicode escapes; written back as a plain or escape string.
    Unicode,
    /// `$tag$...$tag$`, with its delimiter.
    Dollar(String),
}

/// A string literal in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Literal {
    /// Byte range of the whole literal, quotes and prefix included.
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// The value the server sees.
    pub(crate) content: String,
    pub(crate) quoting: Quoting,
}

/// A token, as far as password handling needs one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    Literal(Literal),
    /// A keyword or identifier (quoted identifiers too, with their quotes).
    Word(&'a str),
    /// The `||` operator.
    Concat,
    /// A `;` at this level: the end of a statement.
    Semicolon,
    /// The inside of a block comment (only from [`lex_with_comments`]).
    Comment(&'a str),
    /// Anything else (operators, numbers, punctuation).
    Other,
}

pub(crate) fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

pub(crate) fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// The opening delimiter of a dollar-quoted literal (`$$` or `$tag$`) at `i`, as a byte
/// range, or `None` when the `$` there is an operator character.
pub(crate) fn dollar_delimiter(b: &[u8], i: usize) -> Option<std::ops::RangeInclusive<usize>> {
    let mut j = i + 1;
    if b.get(j).is_some_and(|c| is_ident_start(*c)) {
        while j < b.len() && is_ident_cont(b[j]) && b[j] != b'$' {
            j += 1;
        }
    }
    (b.get(j) == Some(&b'$')).then_some(i..=j)
}

/// Lexes `sql`; comments and whitespace are left out.
pub(crate) fn lex(sql: &str, standard_conforming_strings: bool) -> Vec<Token<'_>> {
    let mut tokens = lex_with_comments(sql, standard_conforming_strings);
    tokens.retain(|t| !matches!(t, Token::Comment(_)));
    tokens
}

/// The insides of the block comments of `sql` (outside literals), in order.
pub(crate) fn block_comments(sql: &str, standard_conforming_strings: bool) -> Vec<&str> {
    lex_with_comments(sql, standard_conforming_strings)
        .into_iter()
        .filter_map(|t| match t {
            Token::Comment(inside) => Some(inside),
            _ => None,
        })
        .collect()
}

/// Lexes `sql` with block comments as tokens; whitespace and line comments left out.
pub(crate) fn lex_with_comments(sql: &str, standard_conforming_strings: bool) -> Vec<Token<'_>> {
    let b = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            c if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let start = i;
                i = skip_block_comment(b, i);
                let inside_end = if sql[start..i].ends_with("*/") && i - start >= 4 { i - 2 } else { i };
                tokens.push(Token::Comment(&sql[start + 2..inside_end]));
            }
            b'\'' => {
                let quoting = if standard_conforming_strings { Quoting::Plain } else { Quoting::Escape };
                let (literal, next) = quoted(sql, i, i, quoting);
                tokens.push(Token::Literal(literal));
                i = next;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' && b.get(i + 1) == Some(&b'"') {
                        i += 2;
                    } else if b[i] == b'"' {
                        i += 1;
                        break;
                    } else {
                        i += 1;
                    }
                }
                tokens.push(Token::Word(&sql[start..i.min(b.len())]));
            }
            b'$' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => match dollar_quoted(sql, i) {
                Some((literal, next)) => {
                    tokens.push(Token::Literal(literal));
                    i = next;
                }
                None => {
                    tokens.push(Token::Other);
                    i += 1;
                }
            },
            b'|' if b.get(i + 1) == Some(&b'|') => {
                tokens.push(Token::Concat);
                i += 2;
            }
            b';' => {
                tokens.push(Token::Semicolon);
                i += 1;
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident_cont(b[i]) {
                    i += 1;
                }
                let word = &sql[start..i];
                let prefix = word.to_ascii_lowercase();
                if b.get(i) == Some(&b'\'') && matches!(prefix.as_str(), "e" | "n" | "b" | "x") {
                    let quoting = match prefix.as_str() {
                        "e" => Quoting::Escape,
                        _ if standard_conforming_strings => Quoting::Plain,
                        _ => Quoting::Escape,
                    };
                    let (literal, next) = quoted(sql, start, i, quoting);
                    tokens.push(Token::Literal(literal));
                    i = next;
                } else if prefix == "u" && b.get(i) == Some(&b'&') && b.get(i + 1) == Some(&b'\'') {
                    let (literal, next) = quoted(sql, start, i + 1, Quoting::Unicode);
                    tokens.push(Token::Literal(literal));
                    i = next;
                } else {
                    tokens.push(Token::Word(word));
                }
            }
            _ => {
                tokens.push(Token::Other);
                i += 1;
            }
        }
    }
    tokens
}

/// Block comments nest in PostgreSQL; an unterminated one runs to the end.
fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// A `'...'` literal whose opening quote is at `quote` (the literal starts at `start`,
/// before any prefix); returns it and the index after it.
fn quoted(sql: &str, start: usize, quote: usize, quoting: Quoting) -> (Literal, usize) {
    let b = sql.as_bytes();
    let backslashes = quoting == Quoting::Escape;
    let mut i = quote + 1;
    let body_start = i;
    let mut body_end = b.len();
    let mut end = b.len();
    while i < b.len() {
        match b[i] {
            b'\\' if backslashes => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => {
                body_end = i;
                end = i + 1;
                break;
            }
            _ => i += 1,
        }
    }
    let body_end = body_end.min(b.len());
    let raw = sql.get(body_start..body_end).unwrap_or("");
    let content = match quoting {
        Quoting::Escape => unescape(raw),
        Quoting::Unicode => unescape_unicode(raw),
        _ => raw.replace("''", "'"),
    };
    (Literal { start, end, content, quoting }, end)
}

/// `$tag$...$tag$` at `i`, or `None` when the `$` starts no such literal.
fn dollar_quoted(sql: &str, i: usize) -> Option<(Literal, usize)> {
    let range = dollar_delimiter(sql.as_bytes(), i)?;
    let body = range.end() + 1;
    let delimiter = &sql[range];
    let (content_end, end) = match sql[body..].find(delimiter) {
        Some(n) => (body + n, body + n + delimiter.len()),
        None => (sql.len(), sql.len()),
    };
    let literal = Literal {
        start: i,
        end,
        content: sql[body..content_end].to_owned(),
        quoting: Quoting::Dollar(delimiter.to_owned()),
    };
    Some((literal, end))
}

/// The value of an escape string body: `''`, `\'`, `\n`, octal, hex and Unicode escapes.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                out.push('\'');
            }
            '\\' => match chars.next() {
                Some('b') => out.push('\u{8}'),
                Some('f') => out.push('\u{c}'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('x') => out.push(number(&mut chars, 16, 2).unwrap_or('x')),
                Some('u') => out.push(number(&mut chars, 16, 4).unwrap_or('u')),
                Some('U') => out.push(number(&mut chars, 16, 8).unwrap_or('U')),
                Some(d @ '0'..='7') => {
                    let mut value = d.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match chars.peek().and_then(|c| c.to_digit(8)) {
                            Some(v) => {
                                value = value * 8 + v;
                                chars.next();
                            }
                            None => break,
                        }
                    }
                    out.push(char::from_u32(value).unwrap_or('?'));
                }
                Some(other) => out.push(other),
                None => {}
            },
            c => out.push(c),
        }
    }
    out
}

/// Up to `max` digits of `radix` as one character.
fn number(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, radix: u32, max: usize) -> Option<char> {
    let mut value = 0u32;
    let mut digits = 0;
    while digits < max {
        let Some(v) = chars.peek().and_then(|c| c.to_digit(radix)) else { break };
        value = value.saturating_mul(radix).saturating_add(v);
        chars.next();
        digits += 1;
    }
    if digits == 0 { None } else { char::from_u32(value) }
}

/// The value of a `U&'...'` body with the default escape character.
fn unescape_unicode(raw: &str) -> String {
    let raw = raw.replace("''", "'");
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('\\') => {
                chars.next();
                out.push('\\');
            }
            Some('+') => {
                chars.next();
                out.push(number(&mut chars, 16, 6).unwrap_or('+'));
            }
            _ => out.push(number(&mut chars, 16, 4).unwrap_or('\\')),
        }
    }
    out
}

/// Writes `content` back as a literal quoted like `quoting`, valid whatever the session's
/// standard_conforming_strings.
pub(crate) fn quote_like(content: &str, quoting: &Quoting) -> String {
    if let Quoting::Dollar(delimiter) = quoting
        && !content.contains(delimiter.as_str())
    {
        return format!("{delimiter}{content}{delimiter}");
    }
    let doubled = content.replace('\'', "''");
    if content.contains('\\') { format!("E'{}'", doubled.replace('\\', "\\\\")) } else { format!("'{doubled}'") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literals(sql: &str, scs: bool) -> Vec<String> {
        lex(sql, scs)
            .into_iter()
            .filter_map(|t| match t {
                Token::Literal(l) => Some(l.content),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn literal_contents_are_unescaped() {
        assert_eq!(
            literals("SELECT 'a''b', E'c\\'d\\x41\\101\\u0042', $f$ x $f$, U&'\\0041'", true),
            vec!["a'b", "c'dAAB", " x ", "A"]
        );
        assert_eq!(
            literals("DO $$ BEGIN EXECUTE 'ALTER ROLE a PASSWORD ''y'''; END $$", true),
            vec![" BEGIN EXECUTE 'ALTER ROLE a PASSWORD ''y'''; END "]
        );
        // Comments and quoted identifiers hide nothing.
        assert_eq!(literals("SELECT \"it's\" /* 'no' /* 'nested' */ */ -- 'x'\n, 'yes'", true), vec!["yes"]);
    }

    #[test]
    fn backslashes_follow_the_setting() {
        assert_eq!(literals("SELECT 'a\\' ; DROP TABLE x; --'", true), vec!["a\\"]);
        assert_eq!(literals("SELECT 'a\\' ; DROP TABLE x; --'", false), vec!["a' ; DROP TABLE x; --"]);
    }

    #[test]
    fn unterminated_literals_run_to_the_end() {
        assert_eq!(literals("SELECT 'open", true), vec!["open"]);
        assert_eq!(literals("SELECT $a$ open", true), vec![" open"]);
    }

    #[test]
    fn written_back_the_same_way() {
        assert_eq!(quote_like("it's", &Quoting::Plain), "'it''s'");
        assert_eq!(quote_like("a\\b", &Quoting::Plain), "E'a\\\\b'");
        assert_eq!(quote_like("x", &Quoting::Dollar("$f$".into())), "$f$x$f$");
        assert_eq!(quote_like("$f$", &Quoting::Dollar("$f$".into())), "'$f$'");
    }
}
