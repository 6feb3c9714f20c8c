//! Reading events back from a journal: filters and the two output formats of `pgtrail tail`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use pgtrail_envelope::{KeyRing, Opener};
use pgtrail_event::{ActivityEvent, ActivityRecord, EventClass, ExitCode, format_das_time};
use pgtrail_journal::{JournalReader, RecordKind};

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
            && self.class.is_none_or(|c| e.class == c && e.kind == "record")
            && (self.heartbeats || e.kind != "heartbeat")
            && (self.confirmations || e.confirms.is_none())
    }
}

/// Decodes one inner DAS record (decrypted) into its events.
pub fn decode_inner(inner: &[u8]) -> anyhow::Result<Vec<ActivityEvent>> {
    let record: ActivityRecord =
        serde_json::from_slice(inner).context("record payload is not a DAS activity record")?;
    Ok(record.database_activity_event_list)
}

/// Reads a journal's envelopes in order, checking the hash chain (the journal reader does)
/// and decrypting each with a key ring. Checkpoint records are skipped here; `pgtrail
/// verify` checks their signatures.
#[derive(Debug)]
pub struct EnvelopeReader {
    reader: JournalReader,
    opener: Opener,
}

/// One envelope record, opened.
#[derive(Debug)]
pub struct Opened {
    pub seq: u64,
    /// The DAS record exactly as written.
    pub envelope: Vec<u8>,
    /// The decrypted, inflated inner record JSON.
    pub inner: Vec<u8>,
}

impl EnvelopeReader {
    pub fn open(dir: &Path, ring: KeyRing) -> anyhow::Result<Self> {
        let reader =
            JournalReader::open(dir, 1).with_context(|| format!("cannot read the journal in {}", dir.display()))?;
        Ok(Self { reader, opener: Opener::new(ring) })
    }

    /// The next envelope, or `None` at the live tail.
    pub fn next_envelope(&mut self) -> anyhow::Result<Option<Opened>> {
        while let Some(record) = self.reader.next_record()? {
            if record.kind != RecordKind::Envelope {
                continue;
            }
            let inner =
                self.opener.open(&record.payload).with_context(|| format!("record {} cannot be opened", record.seq))?;
            return Ok(Some(Opened { seq: record.seq, envelope: record.payload, inner }));
        }
        Ok(None)
    }
}

/// All events currently in a journal (tests and tools).
pub fn read_all(dir: &Path, ring: KeyRing) -> anyhow::Result<Vec<ActivityEvent>> {
    let mut reader = EnvelopeReader::open(dir, ring)?;
    let mut events = Vec::new();
    while let Some(opened) = reader.next_envelope()? {
        events.extend(decode_inner(&opened.inner).with_context(|| format!("record {}", opened.seq))?);
    }
    Ok(events)
}

/// Output format of `tail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Prints matching events; with `follow`, keeps waiting for new ones until `stop` says so.
pub fn run(
    dir: &Path,
    ring: KeyRing,
    filter: &Filter,
    format: Format,
    follow: bool,
    out: &mut dyn Write,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    let mut reader = EnvelopeReader::open(dir, ring)?;
    if format == Format::Table {
        writeln!(out, "{}", table_header())?;
    }
    loop {
        while let Some(opened) = reader.next_envelope()? {
            for event in decode_inner(&opened.inner).with_context(|| format!("record {}", opened.seq))? {
                if filter.matches(&event) {
                    match format {
                        Format::Json => writeln!(out, "{}", serde_json::to_string(&event)?)?,
                        Format::Table => writeln!(out, "{}", table_row(&event))?,
                    }
                }
            }
            out.flush()?;
        }
        if !follow || stop() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
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
    let class = match e.kind.as_ref() {
        "record" => e.class.as_str().to_owned(),
        other => other.to_ascii_uppercase(),
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

/// Output format of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One event per line.
    Jsonl,
    /// One DAS record per line, exactly as written (still encrypted).
    Das,
}

/// Writes every record of the journal; returns (records, events) written.
pub fn export(
    dir: &Path,
    ring: KeyRing,
    format: ExportFormat,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<(u64, u64)> {
    let mut reader = EnvelopeReader::open(dir, ring)?;
    let (mut records, mut events) = (0u64, 0u64);
    while let Some(opened) = reader.next_envelope()? {
        records += 1;
        match format {
            ExportFormat::Das => {
                out.write_all(&opened.envelope)?;
                out.write_all(b"\n")?;
            }
            ExportFormat::Jsonl => {
                for event in decode_inner(&opened.inner).with_context(|| format!("record {}", opened.seq))? {
                    serde_json::to_writer(&mut *out, &event)?;
                    out.write_all(b"\n")?;
                    events += 1;
                }
            }
        }
        progress(records);
    }
    out.flush()?;
    Ok((records, events))
}
