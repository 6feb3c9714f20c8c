//! What `pgtrail tail` and `pgtrail export` show: which events (a filter), as a table or as
//! JSON lines, and the DAS records exactly as written. Both are consumers of the reader.

use std::io::Write;
use std::time::Duration;

use pgtrail_envelope::KeyRing;
use pgtrail_event::{ActivityEvent, EventClass, EventKind, ExitCode, format_das_time};

use crate::{Consumer, ConsumerError, Cursor, Follow, Opened, Reader, Step, consume};

/// Which events to show.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub user: Option<String>,
    pub class: Option<EventClass>,
    /// Show heartbeats too (hidden by default: they say only that the stream is alive).
    pub heartbeats: bool,
    /// Show pgAudit records that confirm a proxy event too (hidden by default: the same
    /// statement, seen a second time).
    pub confirmations: bool,
}

impl Filter {
    pub fn matches(&self, e: &ActivityEvent) -> bool {
        self.user.as_ref().is_none_or(|u| e.db_user_name.as_deref() == Some(u.as_str()))
            && self.class.is_none_or(|c| e.class == c && e.kind == EventKind::Record)
            && (self.heartbeats || e.kind != EventKind::Heartbeat)
            && (self.confirmations || e.confirms.is_none())
    }
}

/// Output format of `tail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Prints matching events; with `follow`, keeps waiting for new ones until `stop` says so.
pub fn run(
    origin: &crate::Origin,
    ring: KeyRing,
    filter: &Filter,
    format: Format,
    follow: bool,
    out: &mut dyn Write,
    stop: &dyn Fn() -> bool,
) -> Result<(), ConsumerError> {
    let mut reader = Reader::new(origin.open(1).map_err(crate::ReadError::from)?, ring);
    if format == Format::Table {
        writeln!(out, "{}", table_header()).map_err(ConsumerError::consumer)?;
    }
    let follow = if follow { Follow::every(Duration::from_millis(100)) } else { Follow::NO };
    let mut printer = Printer { filter, format, out };
    consume(&mut reader, Cursor::default(), None, &mut printer, follow, stop)?;
    Ok(())
}

/// `tail`'s consumer: prints the matching events of each record.
struct Printer<'a> {
    filter: &'a Filter,
    format: Format,
    out: &'a mut dyn Write,
}

impl Consumer for Printer<'_> {
    fn record(
        &mut self,
        _: &Opened,
        events: Vec<ActivityEvent>,
        _: bool,
        _: &mut Cursor,
    ) -> Result<Step, ConsumerError> {
        let mut print = || -> std::io::Result<()> {
            for event in events.iter().filter(|e| self.filter.matches(e)) {
                match self.format {
                    Format::Json => writeln!(self.out, "{}", serde_json::to_string(event)?)?,
                    Format::Table => writeln!(self.out, "{}", table_row(event))?,
                }
            }
            self.out.flush()
        };
        print().map_err(ConsumerError::consumer)?;
        Ok(Step::Continue)
    }
}

/// Standard output shared line by line: each writer keeps its own partial line and writes
/// complete lines under stdout's lock, so two writers (events and alerts in quickstart)
/// interleave whole lines and neither holds the lock while it waits for more.
#[derive(Debug, Default)]
pub struct SharedStdout {
    partial: Vec<u8>,
}

impl Write for SharedStdout {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(bytes);
        if let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&self.partial[..=end])?;
            stdout.flush()?;
            self.partial.drain(..=end);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&self.partial)?;
        self.partial.clear();
        stdout.flush()
    }
}

pub fn table_header() -> String {
    format!(
        "{:<26} {:<16} {:<12} {:<10} {:<10} {:<22} {:>6} {:<7} {}",
        "TIME", "SESSION", "USER", "DATABASE", "CLASS", "COMMAND", "ROWS", "STATUS", "STATEMENT"
    )
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

pub fn table_row(e: &ActivityEvent) -> String {
    let status = match (&e.exit_code, &e.sql_state) {
        (Some(ExitCode::SqlState(code)), _) | (None, Some(code)) => code.clone(),
        (Some(ExitCode::Clean(c)), _) => c.to_string(),
        (None, None) if e.error_message.is_some() => "error".into(),
        (None, None) => "ok".into(),
    };
    let text = e
        .command_text
        .as_deref()
        .or(e.error_message.as_deref())
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    // Refused by pgtrail's policy before PostgreSQL saw it: say so first.
    let text = match &e.denied_by {
        Some(rule) => format!("DENIED by {rule:?}: {text}"),
        None => text,
    };
    // Control events and heartbeats are about pgtrail itself: their type says so.
    let class = match e.kind {
        EventKind::Record => e.class.as_str().to_owned(),
        other => other.as_str().to_ascii_uppercase(),
    };
    format!(
        "{:<26} {:<16} {:<12} {:<10} {:<10} {:<22} {:>6} {:<7} {}",
        format_das_time(&e.log_time).trim_end_matches("+00"),
        clip(e.session_id.as_deref().unwrap_or("-"), 16),
        clip(e.db_user_name.as_deref().unwrap_or("-"), 12),
        clip(e.database_name.as_deref().unwrap_or("-"), 10),
        class,
        clip(&e.command, 22),
        e.row_count.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
        status,
        clip(&text, 80),
    )
}

/// Formats one event as a line (without the line break), given the journal's instance,
/// the record's sequence number and the event's index in it.
pub type LineFn = dyn Fn(&ActivityEvent, &str, u64, usize) -> String;

/// Output format of `export`.
#[derive(Clone, Copy)]
pub enum ExportFormat<'a> {
    /// One event per line.
    Jsonl,
    /// One DAS record per line, exactly as written (still encrypted).
    Das,
    /// One event per line, as the function writes it (a SIEM format).
    Lines(&'a LineFn),
}

impl std::fmt::Debug for ExportFormat<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExportFormat::Jsonl => "Jsonl",
            ExportFormat::Das => "Das",
            ExportFormat::Lines(_) => "Lines",
        })
    }
}

/// Writes every record `reader` has (a journal's, or one instance's in the audit stream);
/// returns (records, events) written.
pub fn export<S: crate::RecordSource>(
    reader: &mut Reader<S>,
    format: ExportFormat<'_>,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, u64), ConsumerError> {
    let mut exporter = Exporter { format, out, progress, records: 0, events: 0 };
    consume(reader, Cursor::default(), None, &mut exporter, Follow::NO, &|| false)?;
    exporter.out.flush().map_err(ConsumerError::consumer)?;
    Ok((exporter.records, exporter.events))
}

/// `export`'s consumer.
struct Exporter<'a> {
    format: ExportFormat<'a>,
    out: &'a mut dyn Write,
    progress: &'a mut dyn FnMut(u64),
    records: u64,
    events: u64,
}

impl Consumer for Exporter<'_> {
    fn record(
        &mut self,
        opened: &Opened,
        events: Vec<ActivityEvent>,
        _: bool,
        cursor: &mut Cursor,
    ) -> Result<Step, ConsumerError> {
        self.records += 1;
        let instance = cursor.instance.as_deref().unwrap_or_default();
        let mut write = || -> std::io::Result<()> {
            match self.format {
                ExportFormat::Das => {
                    self.out.write_all(&opened.envelope)?;
                    self.out.write_all(b"\n")?;
                }
                ExportFormat::Jsonl => {
                    for event in &events {
                        serde_json::to_writer(&mut *self.out, event)?;
                        self.out.write_all(b"\n")?;
                        self.events += 1;
                    }
                }
                ExportFormat::Lines(format) => {
                    for (index, event) in events.iter().enumerate() {
                        let mut line = format(event, instance, opened.seq, index);
                        line.push('\n');
                        self.out.write_all(line.as_bytes())?;
                        self.events += 1;
                    }
                }
            }
            Ok(())
        };
        write().map_err(ConsumerError::consumer)?;
        (self.progress)(self.records);
        Ok(Step::Continue)
    }
}
