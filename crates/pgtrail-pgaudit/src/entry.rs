//! Log entries from the three formats PostgreSQL writes, assembled line by line.
//!
//! - stderr: each entry starts with the log_line_prefix; continuation lines of a multi-line
//!   message start with a TAB; an error's STATEMENT, DETAIL, HINT, CONTEXT and QUERY lines
//!   follow it with the same prefix. An entry is complete when the next one starts (or at
//!   [`Assembler::flush`], when the file has been quiet).
//! - csvlog: one CSV record per entry, which spans lines when a quoted field holds newlines.
//! - jsonlog: one JSON object per line.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::csv;
use crate::prefix::{Prefix, parse_time, split_severity};

/// Which format a log file is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Stderr(Prefix),
    Csvlog,
    Jsonlog,
}

/// One log entry, whatever the format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogEntry {
    pub time: Option<DateTime<Utc>>,
    pub pid: Option<i32>,
    pub user: Option<String>,
    pub database: Option<String>,
    pub remote_host: Option<String>,
    pub remote_port: Option<String>,
    pub session_id: Option<String>,
    pub session_start: Option<DateTime<Utc>>,
    pub application: Option<String>,
    pub backend_type: Option<String>,
    pub severity: String,
    pub sql_state: Option<String>,
    pub message: String,
    pub detail: Option<String>,
    /// The statement an error belongs to (STATEMENT line, csvlog query, jsonlog statement).
    pub statement: Option<String>,
    /// The entry's first line in its file (1-based).
    pub line: u64,
}

/// A line (or record) that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}: {detail}")]
pub struct ParseError {
    pub line: u64,
    /// A short, stable name for the kind of problem (logged once per kind).
    pub kind: &'static str,
    pub detail: String,
}

fn parse_error(line: u64, kind: &'static str, detail: impl Into<String>) -> ParseError {
    ParseError { line, kind, detail: detail.into() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Message,
    Statement,
    Detail,
    Other,
}

/// Turns lines into entries.
#[derive(Debug)]
pub struct Assembler {
    format: Format,
    pending: Option<(LogEntry, Part)>,
    partial: String,
    partial_line: u64,
}

impl Assembler {
    pub fn new(format: Format) -> Assembler {
        Assembler { format, pending: None, partial: String::new(), partial_line: 0 }
    }

    /// Feeds one complete line (without its newline); returns the entries it completed.
    pub fn push_line(&mut self, line: &str, line_no: u64) -> Vec<Result<LogEntry, ParseError>> {
        match &self.format {
            Format::Stderr(_) => self.push_stderr(line, line_no),
            Format::Csvlog => {
                if self.partial.is_empty() {
                    self.partial_line = line_no;
                } else {
                    self.partial.push('\n');
                }
                self.partial.push_str(line);
                if csv::inside_quotes(&self.partial) {
                    return Vec::new();
                }
                let record = std::mem::take(&mut self.partial);
                vec![csv_entry(&record, self.partial_line)]
            }
            Format::Jsonlog => {
                if line.trim().is_empty() {
                    return Vec::new();
                }
                vec![json_entry(line, line_no)]
            }
        }
    }

    /// Completes what is pending (the file has been quiet, or it ended).
    pub fn flush(&mut self) -> Option<Result<LogEntry, ParseError>> {
        if let Some((entry, _)) = self.pending.take() {
            return Some(Ok(entry));
        }
        if !self.partial.is_empty() && matches!(self.format, Format::Csvlog) {
            let record = std::mem::take(&mut self.partial);
            return Some(Err(parse_error(self.partial_line, "unterminated csvlog record", clip(&record))));
        }
        None
    }

    /// Whether an entry is waiting for its possible continuation.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some() || !self.partial.is_empty()
    }

    fn push_stderr(&mut self, line: &str, line_no: u64) -> Vec<Result<LogEntry, ParseError>> {
        if let Some(continued) = line.strip_prefix('\t') {
            return match &mut self.pending {
                Some((entry, part)) => {
                    let target = match part {
                        Part::Message => Some(&mut entry.message),
                        Part::Statement => entry.statement.as_mut(),
                        Part::Detail => entry.detail.as_mut(),
                        Part::Other => None,
                    };
                    if let Some(text) = target {
                        text.push('\n');
                        text.push_str(continued);
                    }
                    Vec::new()
                }
                None => vec![Err(parse_error(line_no, "continuation without an entry", clip(line)))],
            };
        }
        let Format::Stderr(prefix) = &self.format else { unreachable!("stderr only") };
        let Some((fields, rest)) = prefix.parse(line) else {
            let mut out: Vec<_> = self.flush().into_iter().collect();
            out.push(Err(parse_error(line_no, "line does not match log_line_prefix", clip(line))));
            return out;
        };
        let Some((severity, message)) = split_severity(rest) else {
            let mut out: Vec<_> = self.flush().into_iter().collect();
            out.push(Err(parse_error(line_no, "no severity after the prefix", clip(line))));
            return out;
        };
        // An error's extra lines belong to the entry before them (same process).
        if let Some((entry, part)) = &mut self.pending
            && entry.pid == fields.pid
        {
            let extra = match severity {
                "STATEMENT" => Some((Part::Statement, &mut entry.statement)),
                "DETAIL" => Some((Part::Detail, &mut entry.detail)),
                "HINT" | "CONTEXT" | "QUERY" | "LOCATION" => Some((Part::Other, &mut None)),
                _ => None,
            };
            if let Some((new_part, slot)) = extra {
                *slot = Some(message.to_string());
                *part = new_part;
                return Vec::new();
            }
        }
        let done = self.flush();
        let entry = LogEntry {
            time: fields.time,
            pid: fields.pid,
            user: fields.user,
            database: fields.database,
            remote_host: fields.remote_host,
            remote_port: fields.remote_port,
            session_id: fields.session_id,
            session_start: fields.session_start,
            application: fields.application,
            backend_type: None,
            severity: severity.to_string(),
            sql_state: fields.sql_state,
            message: message.to_string(),
            detail: None,
            statement: None,
            line: line_no,
        };
        self.pending = Some((entry, Part::Message));
        done.into_iter().collect()
    }
}

fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

/// csvlog columns (PostgreSQL 13 to 17; later versions add columns at the end).
fn csv_entry(record: &str, line: u64) -> Result<LogEntry, ParseError> {
    let fields = csv::split(record).map_err(|e| parse_error(line, "malformed csvlog record", e.to_string()))?;
    if fields.len() < 23 {
        return Err(parse_error(
            line,
            "csvlog record too short",
            format!("{} columns, expected 23 or more", fields.len()),
        ));
    }
    let get = |i: usize| fields.get(i).cloned().flatten();
    let time_text = get(0).unwrap_or_default();
    let time = parse_time(&time_text).ok_or_else(|| parse_error(line, "bad log time", clip(&time_text)))?;
    let (remote_host, remote_port) = match get(4) {
        Some(from) => match from.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
                (Some(host.to_string()), Some(port.to_string()))
            }
            _ => (Some(from), None),
        },
        None => (None, None),
    };
    Ok(LogEntry {
        time: Some(time),
        user: get(1),
        database: get(2),
        pid: get(3).and_then(|p| p.parse().ok()),
        remote_host,
        remote_port,
        session_id: get(5),
        session_start: get(8).and_then(|t| parse_time(&t)),
        severity: get(11).unwrap_or_default(),
        sql_state: get(12).filter(|s| s != "00000"),
        message: get(13).unwrap_or_default(),
        detail: get(14),
        statement: get(19),
        application: get(22).filter(|a| !a.is_empty()),
        backend_type: get(23),
        line,
    })
}

#[derive(Debug, Deserialize)]
struct JsonLine {
    timestamp: String,
    user: Option<String>,
    dbname: Option<String>,
    pid: Option<i32>,
    remote_host: Option<String>,
    remote_port: Option<serde_json::Value>,
    session_id: Option<String>,
    session_start: Option<String>,
    error_severity: String,
    state_code: Option<String>,
    message: Option<String>,
    detail: Option<String>,
    statement: Option<String>,
    application_name: Option<String>,
    backend_type: Option<String>,
}

fn json_entry(text: &str, line: u64) -> Result<LogEntry, ParseError> {
    let j: JsonLine =
        serde_json::from_str(text).map_err(|e| parse_error(line, "malformed jsonlog line", e.to_string()))?;
    let time = parse_time(&j.timestamp).ok_or_else(|| parse_error(line, "bad log time", clip(&j.timestamp)))?;
    Ok(LogEntry {
        time: Some(time),
        pid: j.pid,
        user: j.user,
        database: j.dbname,
        remote_host: j.remote_host,
        remote_port: j.remote_port.map(|p| match p {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }),
        session_id: j.session_id,
        session_start: j.session_start.and_then(|t| parse_time(&t)),
        application: j.application_name.filter(|a| !a.is_empty()),
        backend_type: j.backend_type,
        severity: j.error_severity,
        sql_state: j.state_code.filter(|s| s != "00000"),
        message: j.message.unwrap_or_default(),
        detail: j.detail,
        statement: j.statement,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_entries_gather_continuations_and_statement_lines() {
        let mut a = Assembler::new(Format::Stderr(Prefix::compile("%m [%p] %q%u@%d ").unwrap()));
        let lines = [
            "2026-11-21 22:09:53.700 UTC [9826] postgres@auditdemo LOG:  AUDIT: SESSION,1,1,DDL,CREATE TABLE,,,\"CREATE TABLE t (",
            "\t    id int",
            "\t);\",<none>",
            "2026-11-21 22:09:53.795 UTC [9826] postgres@auditdemo ERROR:  division by zero",
            "2026-11-21 22:09:53.795 UTC [9826] postgres@auditdemo STATEMENT:  SELECT 1/0",
            "\t  AS boom;",
            "2026-11-21 22:09:53.796 UTC [9826] postgres@auditdemo LOG:  disconnection: session time: 0:00:00.020",
        ];
        let mut entries = Vec::new();
        for (n, line) in lines.iter().enumerate() {
            entries.extend(a.push_line(line, n as u64 + 1));
        }
        entries.extend(a.flush());
        let entries: Vec<LogEntry> = entries.into_iter().map(Result::unwrap).collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0].message,
            "AUDIT: SESSION,1,1,DDL,CREATE TABLE,,,\"CREATE TABLE t (\n    id int\n);\",<none>"
        );
        assert_eq!(
            (entries[1].severity.as_str(), entries[1].statement.as_deref()),
            ("ERROR", Some("SELECT 1/0\n  AS boom;"))
        );
        assert_eq!(entries[2].line, 7);
    }

    #[test]
    fn csv_records_span_lines() {
        let mut a = Assembler::new(Format::Csvlog);
        let first = "2026-11-21 22:09:53.700 UTC,\"postgres\",\"db\",9826,\"127.0.0.1:37576\",6b0216b1.2662,5,\"INSERT\",2026-11-21 22:09:53 UTC,3/5,0,LOG,00000,\"AUDIT: SESSION,5,1,WRITE,INSERT,,,\"\"INSERT";
        assert!(a.push_line(first, 10).is_empty());
        let done = a.push_line("VALUES (1)\"\",<none>\",,,,,,,,,\"psql\",\"client backend\",,0", 11);
        let entry = done.into_iter().next().unwrap().unwrap();
        assert_eq!(entry.message, "AUDIT: SESSION,5,1,WRITE,INSERT,,,\"INSERT\nVALUES (1)\",<none>");
        assert_eq!((entry.remote_host.as_deref(), entry.remote_port.as_deref()), (Some("127.0.0.1"), Some("37576")));
        assert_eq!((entry.line, entry.application.as_deref()), (10, Some("psql")));
    }
}
