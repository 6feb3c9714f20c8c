//! `log_line_prefix`: compiled once from its `%` escapes, then used to take each stderr line
//! apart into the session facts it carries and the rest (`SEVERITY:  message`).
//!
//! Escapes with a fixed shape (%m %t %s %n %p %P %l %c %v %x %e %Q) are read by their shape;
//! free-text escapes (%u %d %a %r %h %b %i) run to the literal text that follows them in the
//! prefix, so two free-text escapes must be separated by some literal text. `%q` ends the
//! prefix for processes that are not sessions (the postmaster, background workers), which is
//! recognised by the severity that then follows at once.

use chrono::{DateTime, NaiveDateTime, Utc};

/// A prefix that cannot be used to read lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("unknown escape %{0} in log_line_prefix")]
    UnknownEscape(char),
    #[error("log_line_prefix has %{0} and %{1} with no text between them: the line cannot be split")]
    Adjacent(char, char),
    #[error("log_line_prefix ends with a lone %")]
    Dangling,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Escape(char),
}

/// A compiled log_line_prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    tokens: Vec<Token>,
}

/// What a line's prefix said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixFields {
    pub time: Option<DateTime<Utc>>,
    pub pid: Option<i32>,
    pub user: Option<String>,
    pub database: Option<String>,
    pub application: Option<String>,
    pub remote_host: Option<String>,
    pub remote_port: Option<String>,
    pub session_id: Option<String>,
    pub session_start: Option<DateTime<Utc>>,
    pub sql_state: Option<String>,
    pub line_number: Option<u64>,
}

const FREE_TEXT: &str = "udarhbi";
const SHAPED: &str = "mtsnpPlcvxeQ";

/// The severities (and the extra lines of an error) PostgreSQL writes after the prefix.
pub const SEVERITIES: [&str; 18] = [
    "LOG",
    "ERROR",
    "FATAL",
    "PANIC",
    "WARNING",
    "NOTICE",
    "INFO",
    "DEBUG",
    "DEBUG1",
    "DEBUG2",
    "DEBUG3",
    "DEBUG4",
    "DEBUG5",
    "STATEMENT",
    "DETAIL",
    "HINT",
    "CONTEXT",
    "QUERY",
];

/// `SEVERITY:  ` at the start of `text`: the severity and the message after it.
pub fn split_severity(text: &str) -> Option<(&str, &str)> {
    let (severity, rest) = text.split_once(":  ")?;
    (SEVERITIES.contains(&severity) || severity == "LOCATION").then_some((severity, rest))
}

/// Parses PostgreSQL's log timestamps: `2026-11-21 22:09:51.062 UTC`, also `+01`, `-0530`.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let (stamp, zone) = text.rsplit_once(' ')?;
    let naive = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    let offset_secs = match zone {
        "UTC" | "GMT" | "Z" | "UCT" => 0,
        z if z.starts_with('+') || z.starts_with('-') => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let digits: String = z[1..].chars().filter(char::is_ascii_digit).collect();
            let (h, m) = match digits.len() {
                2 => (digits.parse::<i32>().ok()?, 0),
                4 => (digits[..2].parse::<i32>().ok()?, digits[2..].parse::<i32>().ok()?),
                _ => return None,
            };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    Some(naive.and_utc() - chrono::Duration::seconds(i64::from(offset_secs)))
}

impl Prefix {
    /// Compiles a log_line_prefix (as in postgresql.conf, without the quotes).
    pub fn compile(prefix: &str) -> Result<Prefix, PrefixError> {
        let mut tokens: Vec<Token> = Vec::new();
        let mut chars = prefix.chars().peekable();
        let mut literal = String::new();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            let escape = chars.next().ok_or(PrefixError::Dangling)?;
            if escape == '%' {
                literal.push('%');
                continue;
            }
            if !FREE_TEXT.contains(escape) && !SHAPED.contains(escape) && escape != 'q' {
                return Err(PrefixError::UnknownEscape(escape));
            }
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut literal)));
            }
            if let Some(Token::Escape(previous)) = tokens.last()
                && FREE_TEXT.contains(*previous)
                && escape != 'q'
            {
                return Err(PrefixError::Adjacent(*previous, escape));
            }
            tokens.push(Token::Escape(escape));
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal));
        }
        Ok(Prefix { tokens })
    }

    /// Takes a line apart: the prefix's fields and the rest of the line (from the
    /// severity on). None when the line does not start with this prefix.
    pub fn parse<'a>(&self, line: &'a str) -> Option<(PrefixFields, &'a str)> {
        let mut fields = PrefixFields::default();
        let mut rest = line;
        let mut i = 0;
        while i < self.tokens.len() {
            match &self.tokens[i] {
                Token::Literal(text) => rest = rest.strip_prefix(text.as_str())?,
                Token::Escape('q') => {
                    if split_severity(rest).is_some() {
                        return Some((fields, rest));
                    }
                }
                Token::Escape(e) if FREE_TEXT.contains(*e) => {
                    let value = match self.tokens[i + 1..].iter().find_map(|t| match t {
                        Token::Literal(l) => Some(l.as_str()),
                        Token::Escape(_) => None,
                    }) {
                        Some(next) => {
                            let end = rest.find(next)?;
                            let value = &rest[..end];
                            rest = &rest[end..];
                            value
                        }
                        None => {
                            // Last in the prefix: runs to the severity.
                            let end = (0..rest.len()).filter(|&n| rest.is_char_boundary(n)).find(|&n| {
                                (n == 0 || rest[..n].ends_with(' ')) && split_severity(&rest[n..]).is_some()
                            })?;
                            let value = rest[..end].trim_end_matches(' ');
                            rest = &rest[end..];
                            value
                        }
                    };
                    set_free(&mut fields, *e, value);
                }
                Token::Escape(e) => rest = read_shaped(&mut fields, *e, rest)?,
            }
            i += 1;
        }
        Some((fields, rest))
    }
}

fn known(value: &str) -> Option<String> {
    (!value.is_empty() && value != "[unknown]").then(|| value.to_string())
}

fn set_free(fields: &mut PrefixFields, escape: char, value: &str) {
    match escape {
        'u' => fields.user = known(value),
        'd' => fields.database = known(value),
        'a' => fields.application = known(value),
        'h' => fields.remote_host = known(value),
        'r' => {
            // host(port), or [local]
            match value.strip_suffix(')').and_then(|v| v.rsplit_once('(')) {
                Some((host, port)) => {
                    fields.remote_host = known(host);
                    fields.remote_port = known(port);
                }
                None => fields.remote_host = known(value),
            }
        }
        _ => {}
    }
}

/// Reads an escape of fixed shape from the start of `rest`.
fn read_shaped<'a>(fields: &mut PrefixFields, escape: char, rest: &'a str) -> Option<&'a str> {
    let word_end = |s: &str| s.find(|c: char| c.is_whitespace() || c == ']' || c == ')' || c == ',').unwrap_or(s.len());
    match escape {
        'm' | 't' | 's' => {
            // date, time, zone: three space-separated words
            let mut end = 0;
            for _ in 0..3 {
                let skip = rest[end..].len() - rest[end..].trim_start_matches(' ').len();
                end += skip;
                end += word_end(&rest[end..]);
            }
            let time = parse_time(&rest[..end])?;
            if escape == 's' {
                fields.session_start = Some(time);
            } else {
                fields.time = Some(time);
            }
            Some(&rest[end..])
        }
        'n' => {
            let end = word_end(rest);
            let secs: f64 = rest[..end].parse().ok()?;
            fields.time = DateTime::from_timestamp_micros((secs * 1e6) as i64);
            Some(&rest[end..])
        }
        'p' | 'P' | 'l' | 'x' | 'Q' => {
            let sign = usize::from(escape == 'Q' && rest.starts_with('-'));
            let end = rest[sign..].find(|c: char| !c.is_ascii_digit()).map_or(rest.len(), |n| n + sign);
            let digits = &rest[..end];
            match escape {
                'p' => fields.pid = Some(digits.parse().ok()?),
                'l' => fields.line_number = digits.parse().ok(),
                _ => {}
            }
            Some(&rest[end..])
        }
        'c' | 'v' | 'e' => {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '/')).unwrap_or(rest.len());
            let value = &rest[..end];
            match escape {
                'c' => fields.session_id = known(value),
                'e' => fields.sql_state = known(value),
                _ => {}
            }
            Some(&rest[end..])
        }
        _ => Some(rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_prefix_splits_session_and_postmaster_lines() {
        let prefix = Prefix::compile("%m [%p] %q%u@%d ").unwrap();
        let (f, rest) = prefix
            .parse("2026-11-21 22:09:51.198 UTC [9539] postgres@auditdemo LOG:  connection authorized: user=postgres")
            .unwrap();
        assert_eq!(f.pid, Some(9539));
        assert_eq!((f.user.as_deref(), f.database.as_deref()), (Some("postgres"), Some("auditdemo")));
        assert_eq!(f.time.unwrap().to_rfc3339(), "2026-11-21T22:09:51.198+00:00");
        assert_eq!(rest, "LOG:  connection authorized: user=postgres");
        let (f, rest) = prefix.parse("2026-11-21 22:09:51.062 UTC [9521] LOG:  starting PostgreSQL 15.18").unwrap();
        assert_eq!((f.pid, f.user), (Some(9521), None));
        assert_eq!(rest, "LOG:  starting PostgreSQL 15.18");
        let (f, _) = prefix.parse("2026-11-21 22:09:51.183 UTC [9539] [unknown]@[unknown] LOG:  x").unwrap();
        assert_eq!((f.user, f.database), (None, None));
        assert!(prefix.parse("\tcontinuation").is_none());
    }

    #[test]
    fn other_prefixes() {
        let prefix = Prefix::compile("%t [%p-%l] %q%u@%d,app=%a,client=%r,sid=%c ").unwrap();
        let (f, rest) = prefix
            .parse(
                "2026-11-21 23:09:51 +01 [42-7] bob@db,app=psql,client=10.0.0.1(5000),sid=6b0216af.2543 ERROR:  boom",
            )
            .unwrap();
        assert_eq!(f.time.unwrap().to_rfc3339(), "2026-11-21T22:09:51+00:00");
        assert_eq!((f.pid, f.line_number), (Some(42), Some(7)));
        assert_eq!(f.application.as_deref(), Some("psql"));
        assert_eq!((f.remote_host.as_deref(), f.remote_port.as_deref()), (Some("10.0.0.1"), Some("5000")));
        assert_eq!(f.session_id.as_deref(), Some("6b0216af.2543"));
        assert_eq!(rest, "ERROR:  boom");
        assert_eq!(Prefix::compile("%u%d").unwrap_err(), PrefixError::Adjacent('u', 'd'));
        assert_eq!(Prefix::compile("%z").unwrap_err(), PrefixError::UnknownEscape('z'));
    }
}
