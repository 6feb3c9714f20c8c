//! Owns: `pgtrail forward`: a journal consumer with its own cursor that sends events to a
//! SIEM in batches (Splunk HEC, CEF over syslog, OCSF over HTTP), retries what failed, and
//! says "save the cursor" only once the destination has confirmed a batch: at least once,
//! never lost. Each event carries its journal position (instance:record:index) so that a
//! batch sent twice (after a crash or an acknowledgement that never came) can be told apart.
//! Must not: format events itself (pgtrail-export does), or write to the journal.

mod hec;
mod http;
mod ocsf_http;
mod syslog;

use std::time::Duration;

use pgtrail_event::ActivityEvent;
use pgtrail_export::Position;
use pgtrail_reader::{Consumer, ConsumerError, Cursor, Opened, Step};

/// Where events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Splunk's HTTP Event Collector: `/services/collector/event`, with indexer
    /// acknowledgements when asked.
    SplunkHec,
    /// CEF lines in RFC 5424 syslog messages over TCP, with TLS (RFC 5425 framing).
    SyslogCef,
    /// OCSF 1.8.0 events as a JSON array per request (HTTP POST).
    OcsfHttp,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "splunk-hec" => Ok(Target::SplunkHec),
            "syslog-cef" => Ok(Target::SyslogCef),
            "ocsf-http" => Ok(Target::OcsfHttp),
            _ => Err(format!("unknown destination {s:?}: splunk-hec, syslog-cef or ocsf-http")),
        }
    }
}

/// How to reach the destination.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
    /// splunk-hec: the collector's base URL (https://splunk:8088); ocsf-http: the URL to
    /// POST to; syslog-cef: tls://HOST:PORT (or tcp:// on loopback or with `plaintext`).
    pub url: String,
    /// The HEC token, or the bearer token of ocsf-http.
    pub token: Option<String>,
    /// Splunk HEC: use indexer acknowledgements (a channel, then ack polling).
    pub ack: bool,
    /// Splunk HEC: how long to wait for an acknowledgement before sending the batch again.
    pub ack_timeout: Duration,
    pub index: Option<String>,
    pub sourcetype: String,
    /// A PEM file of CA certificates trusted besides the system's (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// Allow plain HTTP or TCP to a host other than loopback.
    pub plaintext: bool,
    /// Events per batch (one request, or one burst of syslog frames).
    pub batch_events: usize,
    /// Splunk HEC with acknowledgements: batches sent before waiting for their acks.
    pub window: usize,
    /// A request that gets no answer in this time failed (and is retried).
    pub timeout: Duration,
}

impl Settings {
    pub const BATCH_EVENTS: usize = 500;
    pub const WINDOW: usize = 16;
    pub const TIMEOUT: Duration = Duration::from_secs(30);
    pub const ACK_TIMEOUT: Duration = Duration::from_secs(120);
    /// The environment variable a token can come from (never argv: others can read it).
    pub const TOKEN_ENV: &'static str = "PGTRAIL_FORWARD_TOKEN";

    /// The destination's token: the first line of `file` if given, else `PGTRAIL_FORWARD_TOKEN`.
    pub fn token(file: Option<&std::path::Path>) -> Result<Option<String>, ForwardError> {
        match file {
            Some(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| ForwardError::Setup(format!("cannot read the token file {}: {e}", path.display()))),
            None => Ok(std::env::var(Self::TOKEN_ENV).ok().filter(|t| !t.is_empty())),
        }
    }
}

/// What can go wrong while forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{0}")]
    Setup(String),
    /// The destination refused a batch for a reason a retry will not change.
    #[error("the destination refused a batch: {0}")]
    Refused(String),
    /// Stopped (SIGTERM) while a batch was not yet confirmed: it will be sent again.
    #[error("stopped before the destination confirmed the last batch (it is sent again on the next run)")]
    Stopped,
}

/// A failed delivery attempt.
#[derive(Debug)]
pub(crate) struct Failure {
    /// Worth retrying (the network, a busy or restarting server).
    pub retriable: bool,
    pub message: String,
}

impl Failure {
    pub fn retriable(message: impl Into<String>) -> Failure {
        Failure { retriable: true, message: message.into() }
    }

    pub fn fatal(message: impl Into<String>) -> Failure {
        Failure { retriable: false, message: message.into() }
    }
}

/// A destination: collects a batch, sends it whole, and (for those that acknowledge)
/// confirms what it was sent.
pub(crate) trait Destination: Send {
    /// Adds one event to the batch.
    fn add(&mut self, event: &ActivityEvent, at: Position<'_>);
    /// Events in the batch not sent yet.
    fn pending(&self) -> usize;
    /// Sends the batch (which is then empty). A destination without acknowledgements has
    /// it once this returns `Ok`; one with them still has to confirm it. A batch that
    /// failed stays as it is, to be sent again.
    fn send(&mut self) -> Result<(), Failure>;
    /// Batches sent and not confirmed yet.
    fn unconfirmed(&self) -> usize {
        0
    }
    /// Waits until every batch sent is confirmed, checking `stop` between polls; a batch
    /// not confirmed in time fails this call and is sent again by the next one.
    fn confirm(&mut self, _stop: &dyn Fn() -> bool) -> Result<(), Failure> {
        Ok(())
    }
}

/// Counts of a forwarding run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub events: u64,
    pub batches: u64,
    /// Attempts that failed and were tried again.
    pub retries: u64,
}

/// The consumer: batches events to its destination and asks for the cursor to be saved
/// only after the destination confirmed everything handed over so far. With
/// acknowledgements, up to `window` batches are in flight before it waits for them.
pub struct Forwarder<'a> {
    destination: Box<dyn Destination>,
    batch_events: usize,
    window: usize,
    stop: &'a (dyn Fn() -> bool + Sync),
    progress: Progress,
    /// Records handed over since the cursor was last saved.
    unsaved: bool,
}

impl std::fmt::Debug for Forwarder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").field("progress", &self.progress).finish_non_exhaustive()
    }
}

impl<'a> Forwarder<'a> {
    /// A forwarder to the destination `settings` name; `stop` ends retrying.
    pub fn open(settings: &Settings, stop: &'a (dyn Fn() -> bool + Sync)) -> Result<Forwarder<'a>, ForwardError> {
        let destination: Box<dyn Destination> = match settings.target {
            Target::SplunkHec => Box::new(hec::Hec::open(settings)?),
            Target::SyslogCef => Box::new(syslog::Syslog::open(settings)?),
            Target::OcsfHttp => Box::new(ocsf_http::OcsfHttp::open(settings)?),
        };
        Ok(Forwarder {
            destination,
            batch_events: settings.batch_events.max(1),
            window: settings.window.max(1),
            stop,
            progress: Progress::default(),
            unsaved: false,
        })
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Runs `step` until it succeeds, the destination refuses for good, or `stop`;
    /// between attempts it waits 0.5 s, doubling to 30 s.
    fn retrying(
        &mut self,
        what: &str,
        mut step: impl FnMut(&mut dyn Destination, &dyn Fn() -> bool) -> Result<(), Failure>,
    ) -> Result<(), ForwardError> {
        let mut wait = Duration::from_millis(500);
        let stop = self.stop;
        loop {
            match step(self.destination.as_mut(), &|| stop()) {
                Ok(()) => return Ok(()),
                Err(failure) if !failure.retriable => return Err(ForwardError::Refused(failure.message)),
                Err(failure) => {
                    if stop() {
                        return Err(ForwardError::Stopped);
                    }
                    self.progress.retries += 1;
                    tracing::warn!(
                        error = %failure.message,
                        retry_in_ms = wait.as_millis() as u64,
                        "{what} failed; retrying"
                    );
                    let until = std::time::Instant::now() + wait;
                    while std::time::Instant::now() < until {
                        if stop() {
                            return Err(ForwardError::Stopped);
                        }
                        std::thread::sleep(Duration::from_millis(50).min(wait));
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Sends the pending batch.
    fn send(&mut self) -> Result<(), ForwardError> {
        let events = self.destination.pending() as u64;
        self.retrying("sending a batch", |d, _| d.send())?;
        self.progress.events += events;
        self.progress.batches += 1;
        Ok(())
    }

    /// Waits until the destination confirmed every batch sent.
    fn confirm(&mut self) -> Result<(), ForwardError> {
        if self.destination.unconfirmed() == 0 {
            return Ok(());
        }
        self.retrying("confirming batches", |d, stop| d.confirm(stop))
    }
}

impl Consumer for Forwarder<'_> {
    fn record(
        &mut self,
        opened: &Opened,
        events: Vec<ActivityEvent>,
        _replay: bool,
        cursor: &mut Cursor,
    ) -> Result<Step, ConsumerError> {
        let instance = cursor.instance.clone().unwrap_or_default();
        for (index, event) in events.iter().enumerate() {
            self.destination.add(event, Position { instance: &instance, record_seq: opened.seq, event_index: index });
        }
        self.unsaved = true;
        if self.destination.pending() < self.batch_events {
            return Ok(Step::Continue);
        }
        self.send().map_err(ConsumerError::consumer)?;
        // Everything up to this record is sent; once it is all confirmed, the cursor moves.
        if self.destination.unconfirmed() > 0 && self.destination.unconfirmed() < self.window {
            return Ok(Step::Continue);
        }
        self.confirm().map_err(ConsumerError::consumer)?;
        self.unsaved = false;
        Ok(Step::Save)
    }

    fn caught_up(&mut self, _cursor: &mut Cursor) -> Result<Step, ConsumerError> {
        if self.destination.pending() > 0 {
            self.send().map_err(ConsumerError::consumer)?;
        }
        self.confirm().map_err(ConsumerError::consumer)?;
        if std::mem::take(&mut self.unsaved) { Ok(Step::Save) } else { Ok(Step::Continue) }
    }
}

/// One `pgtrail forward` run.
#[derive(Debug, Clone)]
pub struct ForwardRun {
    /// Where the events come from: a journal directory, or one instance of the audit stream.
    pub journal: pgtrail_reader::Origin,
    /// Where the forwarder keeps its cursor (a file, or the audit stream's bucket).
    pub state: std::sync::Arc<dyn pgtrail_reader::CursorStore>,
    /// Keep following the journal until `stop`.
    pub follow: bool,
    pub settings: Settings,
}

/// Forwards the journal's events after the cursor (then returns, or with `follow` until
/// `stop`); the cursor is saved each time the destination confirmed a batch.
pub fn run(
    run: &ForwardRun,
    ring: pgtrail_envelope::KeyRing,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Progress, ConsumerError> {
    use pgtrail_reader::{Follow, Reader, Resume, consume};
    let mut forwarder = Forwarder::open(&run.settings, stop).map_err(ConsumerError::consumer)?;
    let cursor = run.state.load()?;
    let mut reader = Reader::resume_from(&run.journal, ring, &cursor, Resume::AfterCursor)?;
    let follow = if run.follow { Follow::every(Duration::from_millis(200)) } else { Follow::NO };
    consume(&mut reader, cursor, Some(&*run.state), &mut forwarder, follow, stop)?;
    Ok(forwarder.progress())
}

/// A hex GUID (version 4 layout), for Splunk's request channel.
pub(crate) fn random_guid() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut hex = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        let b = match i {
            6 => (b & 0x0f) | 0x40,
            8 => (b & 0x3f) | 0x80,
            _ => *b,
        };
        if matches!(i, 4 | 6 | 8 | 10) {
            hex.push('-');
        }
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}
