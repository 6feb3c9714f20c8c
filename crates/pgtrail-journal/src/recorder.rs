//! The recorder: batches items (events) by count and time into journal records.
//!
//! Two ways in:
//! - [`Recorder::record`] never waits: the queue is bounded and an item that does not fit
//!   is dropped and counted (async delivery). Dropped items are never silent: the recorder
//!   puts a loss item (made by the caller's `loss` function, with the count and the time
//!   window) into the next batch, logs a warning, and the count shows in [`RecorderStats`].
//! - [`Recorder::record_durable`] (sync delivery) waits for room in the queue instead of
//!   dropping, and its future resolves once the record holding the item is fsync'd. Items
//!   that arrive while a write and fsync are under way go into the next batch together:
//!   concurrent sessions share one fsync (group commit).
//!
//! The writer runs on its own thread (from the blocking pool): encoding, appends and fsync
//! never take time from the async workers that relay client traffic. When the journal
//! cannot write (disk full, I/O error) the writer keeps the batch, marks itself unhealthy
//! ([`Recorder::healthy`]), and retries every second; waiting items stay queued. When the
//! write succeeds again it reports recovery and carries on: nothing is lost silently.
//!
//! When idle the writer wakes twice a second: to sign a checkpoint that has come due and
//! to write a heartbeat item when nothing was written for the heartbeat interval.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::{Journal, JournalError, MAX_PAYLOAD, now_micros};

/// Batching and queueing limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecorderConfig {
    /// A batch is written once it holds this many items...
    pub max_batch_items: usize,
    /// ...or this long after its first item arrived, whichever comes first. A batch with
    /// an item someone waits for (sync delivery) is written at once.
    pub max_batch_delay: Duration,
    /// Items waiting to be written; beyond this, async items are dropped and counted.
    pub queue_capacity: usize,
    /// A heartbeat item is written after this long without any record (None: never).
    pub heartbeat: Option<Duration>,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            max_batch_items: 1000,
            max_batch_delay: Duration::from_millis(200),
            queue_capacity: 65_536,
            heartbeat: Some(Duration::from_secs(5)),
        }
    }
}

/// How often a batch being collected looks for more items.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How often an idle writer wakes up (checkpoints, heartbeats).
const IDLE_WAKEUP: Duration = Duration::from_millis(500);
/// How long a failed write waits before trying again.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Attempts at the last write after every producer is gone (shutdown), before giving up.
const SHUTDOWN_ATTEMPTS: u32 = 3;

/// Counters shared between producers and the writer.
#[derive(Debug, Default)]
pub struct RecorderStats {
    pub recorded: AtomicU64,
    pub dropped: AtomicU64,
    pub records_written: AtomicU64,
    pub loss_records: AtomicU64,
    pub heartbeats: AtomicU64,
    pub fsyncs: AtomicU64,
    pub write_failures: AtomicU64,
    /// Items (events, heartbeats) now durable in the journal.
    pub items_written: AtomicU64,
    /// Bytes appended to the journal (record headers and payloads).
    pub bytes_written: AtomicU64,
    /// When the last batch became durable, in µs since the epoch (0: not yet).
    pub last_write_micros: AtomicU64,
    /// The sequence of the last record known durable (fsync'd): what a publisher may read.
    pub durable_seq: AtomicU64,
}

/// Builds the loss item for `count` items dropped between two times (µs since epoch).
pub type LossFn<T> = Box<dyn Fn(u64, i64, i64, &LossCause) -> T + Send>;

/// Why items were lost, as the loss item says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossCause {
    /// The queue was full: items came faster than the journal wrote them.
    QueueFull,
    /// The journal could not write (disk full, I/O error); the queue filled while the
    /// writer retried. Holds the write error.
    JournalFailing(String),
    /// The writer had stopped.
    WriterStopped,
    /// One item was too large for any journal record.
    TooLarge,
}

impl std::fmt::Display for LossCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::QueueFull => f.write_str("the recorder queue was full"),
            Self::JournalFailing(error) => {
                write!(f, "the journal could not write ({error}) and the recorder queue filled while it retried")
            }
            Self::WriterStopped => f.write_str("the journal writer had stopped"),
            Self::TooLarge => f.write_str("an event was larger than a journal record can hold"),
        }
    }
}

/// How serious a cause is: a loss record names the most serious of its window (a failing
/// journal explains a full queue, not the other way round). 0 is no loss.
mod rank {
    pub(super) const QUEUE_FULL: u8 = 1;
    pub(super) const TOO_LARGE: u8 = 2;
    pub(super) const JOURNAL_FAILING: u8 = 3;
    pub(super) const WRITER_STOPPED: u8 = 4;
}

impl LossCause {
    fn rank(&self) -> u8 {
        match self {
            Self::QueueFull => rank::QUEUE_FULL,
            Self::TooLarge => rank::TOO_LARGE,
            Self::JournalFailing(_) => rank::JOURNAL_FAILING,
            Self::WriterStopped => rank::WRITER_STOPPED,
        }
    }
}

/// What producers and the writer share about losses and health.
#[derive(Debug, Default)]
struct LossState {
    /// The most serious cause of the current loss window ([`LossCause::rank`]), 0 for
    /// none: a drop takes the lock below only when it would raise this.
    rank: std::sync::atomic::AtomicU8,
    /// That cause.
    cause: std::sync::Mutex<Option<LossCause>>,
    /// The last journal write error, while the journal is failing.
    write_error: std::sync::Mutex<Option<String>>,
}

/// An error and its causes, `a: b: c`, as the operator and the loss record need them.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
/// Turns a batch into one record payload.
pub type EncodeFn<T> = Box<dyn FnMut(&[T]) -> Vec<u8> + Send>;
/// Makes a heartbeat item.
pub type HeartbeatFn<T> = Box<dyn Fn() -> T + Send>;

/// The future of [`Recorder::record_durable`]: the sequence of the last durable journal
/// record once the item is in it (the item's record or a later one).
pub type Durable = Pin<Box<dyn Future<Output = Result<u64, JournalError>> + Send>>;

struct Entry<T> {
    item: T,
    ack: Option<oneshot::Sender<u64>>,
}

/// The producer side. Cloning is cheap; the writer finishes when every clone is dropped.
pub struct Recorder<T> {
    tx: SyncSender<Entry<T>>,
    stats: Arc<RecorderStats>,
    first_drop_micros: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    losses: Arc<LossState>,
    /// Held by every producer; the writer sees the producers are gone when it cannot
    /// upgrade its weak copy (even while it is busy retrying a write).
    alive: Arc<()>,
}

impl<T> std::fmt::Debug for Recorder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("stats", &self.stats).field("healthy", &self.healthy()).finish()
    }
}

impl<T> Clone for Recorder<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            stats: Arc::clone(&self.stats),
            first_drop_micros: Arc::clone(&self.first_drop_micros),
            healthy: Arc::clone(&self.healthy),
            losses: Arc::clone(&self.losses),
            alive: Arc::clone(&self.alive),
        }
    }
}

/// What the writer is given besides the journal.
pub struct WriterParts<T> {
    pub encode: EncodeFn<T>,
    pub loss: LossFn<T>,
    pub heartbeat: Option<HeartbeatFn<T>>,
}

impl<T> std::fmt::Debug for WriterParts<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterParts").finish_non_exhaustive()
    }
}

impl<T> Recorder<T> {
    /// The first drop of a loss window, or one with a more serious cause than before: the
    /// operator hears of it now, with the cause (at most a few lines per window).
    fn note_loss_cause(&self, rank: u8) {
        let cause = match rank {
            rank::WRITER_STOPPED => LossCause::WriterStopped,
            rank::JOURNAL_FAILING => LossCause::JournalFailing(
                locked(&self.losses.write_error).clone().unwrap_or_else(|| "write error".into()),
            ),
            _ => LossCause::QueueFull,
        };
        let mut current = locked(&self.losses.cause);
        let first = current.is_none();
        if current.as_ref().is_none_or(|c| c.rank() < cause.rank()) {
            if first {
                warn!(%cause, "events are being dropped; a loss record will say how many");
            } else {
                warn!(%cause, "events are still being dropped, for a more serious reason");
            }
            *current = Some(cause);
        }
    }

    /// False while the journal cannot make records durable (the writer is retrying).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The flag behind [`Recorder::healthy`], for readers that must not keep the recorder
    /// alive (a readiness probe).
    pub fn health_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.healthy)
    }

    pub fn stats(&self) -> &Arc<RecorderStats> {
        &self.stats
    }
}

impl<T: Send + 'static> Recorder<T> {
    /// Starts the writer. The returned handle resolves when all producers are gone and
    /// everything queued has been written, checkpointed and synced. Must be called inside
    /// a Tokio runtime.
    pub fn spawn(
        journal: Journal,
        config: RecorderConfig,
        encode: EncodeFn<T>,
        loss: LossFn<T>,
    ) -> (Self, JoinHandle<Result<(), JournalError>>) {
        Self::spawn_with(journal, config, WriterParts { encode, loss, heartbeat: None })
    }

    pub fn spawn_with(
        journal: Journal,
        config: RecorderConfig,
        parts: WriterParts<T>,
    ) -> (Self, JoinHandle<Result<(), JournalError>>) {
        let (tx, rx) = sync_channel(config.queue_capacity.max(1));
        let stats = Arc::new(RecorderStats::default());
        let first_drop_micros = Arc::new(AtomicU64::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let losses = Arc::new(LossState::default());
        let alive = Arc::new(());
        let writer = Writer {
            journal,
            rx,
            config,
            parts,
            stats: Arc::clone(&stats),
            first_drop_micros: Arc::clone(&first_drop_micros),
            healthy: Arc::clone(&healthy),
            losses: Arc::clone(&losses),
            alive: Arc::downgrade(&alive),
            reported_drops: 0,
            last_write: Instant::now(),
        };
        writer.note_durable();
        let handle = tokio::task::spawn_blocking(move || writer.run());
        (Self { tx, stats, first_drop_micros, healthy, losses, alive }, handle)
    }

    /// Queues an item without waiting. Returns false if it was dropped (queue full or the
    /// writer gone); the drop is counted and will be reported in the journal.
    pub fn record(&self, item: T) -> bool {
        match self.tx.try_send(Entry { item, ack: None }) {
            Ok(()) => {
                self.stats.recorded.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(error) => {
                let _ = self.first_drop_micros.compare_exchange(
                    0,
                    now_micros().max(1) as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                let rank = match error {
                    TrySendError::Disconnected(_) => rank::WRITER_STOPPED,
                    TrySendError::Full(_) if !self.healthy() => rank::JOURNAL_FAILING,
                    TrySendError::Full(_) => rank::QUEUE_FULL,
                };
                if self.losses.rank.fetch_max(rank, Ordering::Relaxed) < rank {
                    self.note_loss_cause(rank);
                }
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Queues an item, waiting for room rather than dropping it; the future resolves when
    /// the record holding it is durable, or fails if the writer has stopped.
    ///
    /// The item is queued now, not when the future is first polled: the items of one batch
    /// (a pipeline, a multi-statement query, one poll of the pgAudit logs) reach the writer
    /// together and share one record and one fsync, however their futures are awaited.
    /// Only when the queue is full does the future wait for room (and an item recorded
    /// after it may then be written first).
    pub fn record_durable(&self, item: T) -> Durable {
        let (ack, done) = oneshot::channel();
        let entry = Entry { item, ack: Some(ack) };
        let waiting_for_room = match self.tx.try_send(entry) {
            Ok(()) => {
                self.stats.recorded.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(TrySendError::Full(back)) => Some(back),
            Err(TrySendError::Disconnected(_)) => return Box::pin(async { Err(JournalError::RecorderStopped) }),
        };
        let tx = self.tx.clone();
        let stats = Arc::clone(&self.stats);
        Box::pin(async move {
            if let Some(mut entry) = waiting_for_room {
                loop {
                    match tx.try_send(entry) {
                        Ok(()) => break,
                        // The queue is full: the client waits, nothing is dropped.
                        Err(TrySendError::Full(back)) => {
                            entry = back;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(TrySendError::Disconnected(_)) => return Err(JournalError::RecorderStopped),
                    }
                }
                stats.recorded.fetch_add(1, Ordering::Relaxed);
            }
            done.await.map_err(|_| JournalError::RecorderStopped)
        })
    }
}

struct Writer<T> {
    journal: Journal,
    rx: Receiver<Entry<T>>,
    config: RecorderConfig,
    parts: WriterParts<T>,
    stats: Arc<RecorderStats>,
    first_drop_micros: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    losses: Arc<LossState>,
    alive: Weak<()>,
    reported_drops: u64,
    last_write: Instant,
}

impl<T> Writer<T> {
    fn run(mut self) -> Result<(), JournalError> {
        // Block only for the first item of a batch; then collect by polling. A receiver
        // blocked in recv makes every send a futex wake-up (one per statement under load);
        // a sleeping one costs the senders nothing.
        let mut disconnected = false;
        while !disconnected {
            let first = match self.rx.recv_timeout(IDLE_WAKEUP) {
                Ok(entry) => entry,
                Err(RecvTimeoutError::Timeout) => {
                    self.idle()?;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut waited_for = first.ack.is_some();
            let mut batch = vec![first];
            let deadline = Instant::now() + self.config.max_batch_delay;
            loop {
                while batch.len() < self.config.max_batch_items {
                    match self.rx.try_recv() {
                        Ok(entry) => {
                            waited_for |= entry.ack.is_some();
                            batch.push(entry);
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            disconnected = true;
                            break;
                        }
                    }
                }
                let now = Instant::now();
                // Someone waits: write now; whatever arrives meanwhile shares the next fsync.
                if waited_for || disconnected || batch.len() >= self.config.max_batch_items || now >= deadline {
                    break;
                }
                std::thread::sleep(POLL_INTERVAL.min(deadline - now));
            }
            self.write(batch)?;
        }
        // Producers are gone; report drops that happened after the last batch.
        self.write(Vec::new())?;
        // A clean shutdown ends with a checkpoint covering everything.
        self.journal.checkpoint().inspect_err(|e| error!(error = %e, "final journal checkpoint failed"))?;
        self.note_durable();
        Ok(())
    }

    /// Nothing arrived for a while: checkpoint if due, heartbeat if due.
    fn idle(&mut self) -> Result<(), JournalError> {
        if let (Some(every), Some(make)) = (self.config.heartbeat, &self.parts.heartbeat)
            && self.last_write.elapsed() >= every
        {
            let item = make();
            self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            self.write(vec![Entry { item, ack: None }])?;
        }
        let checkpointed = self.journal.checkpoint_if_due().map(drop).or_else(|e| {
            // Not fatal: the next write or idle tick tries again.
            warn!(error = %e, "journal checkpoint failed; will retry");
            Ok(())
        });
        self.note_durable();
        checkpointed
    }

    fn add_loss_item(&mut self, batch: &mut Vec<T>) {
        let dropped = self.stats.dropped.load(Ordering::Relaxed);
        let new = dropped - self.reported_drops;
        if new == 0 {
            return;
        }
        let cause = {
            let mut cause = locked(&self.losses.cause);
            self.losses.rank.store(0, Ordering::Relaxed);
            cause.take().unwrap_or(LossCause::QueueFull)
        };
        let from = self.first_drop_micros.swap(0, Ordering::Relaxed) as i64;
        let to = now_micros();
        warn!(dropped = new, %cause, "events were dropped; a loss record is written");
        batch.push((self.parts.loss)(new, from, to, &cause));
        self.reported_drops = dropped;
        self.stats.loss_records.fetch_add(1, Ordering::Relaxed);
    }

    /// Encodes, appends and syncs a batch, retrying until it is durable; then releases
    /// everyone waiting for it. Fails only when every producer is gone and the journal
    /// still cannot write.
    fn write(&mut self, batch: Vec<Entry<T>>) -> Result<(), JournalError> {
        let mut items = Vec::with_capacity(batch.len() + 1);
        let mut acks = Vec::new();
        let entries = batch.len() as u64;
        for entry in batch {
            items.push(entry.item);
            acks.extend(entry.ack);
        }
        self.add_loss_item(&mut items);
        if items.is_empty() {
            return Ok(());
        }
        let payloads = self.encode_within_limit(&items);
        let mut attempts = 0u32;
        loop {
            match self.append_all(&payloads) {
                Ok(()) => break,
                Err(e) => {
                    attempts += 1;
                    self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
                    *locked(&self.losses.write_error) = Some(with_sources(&e));
                    if self.healthy.swap(false, Ordering::Relaxed) {
                        error!(error = %e, "journal write failed: events wait in memory; retrying every second");
                    }
                    if self.alive.strong_count() == 0 && attempts >= SHUTDOWN_ATTEMPTS {
                        error!(error = %e, events = items.len(), "journal still failing at shutdown: events not recorded");
                        return Err(e);
                    }
                    std::thread::sleep(RETRY_INTERVAL);
                }
            }
        }
        if !self.healthy.swap(true, Ordering::Relaxed) {
            *locked(&self.losses.write_error) = None;
            info!("journal writes again: recovered");
        }
        self.last_write = Instant::now();
        self.stats.items_written.fetch_add(entries, Ordering::Relaxed);
        self.stats.last_write_micros.store(now_micros().max(0) as u64, Ordering::Relaxed);
        let durable = self.note_durable();
        for ack in acks {
            let _ = ack.send(durable);
        }
        if let Err(e) = self.journal.checkpoint_if_due() {
            warn!(error = %e, "journal checkpoint failed; will retry");
        }
        self.note_durable();
        Ok(())
    }

    /// Publishes the last durable record's sequence (every record appended so far is
    /// synced when this is called: after a sync, a checkpoint, or at open).
    fn note_durable(&self) -> u64 {
        let last = self.journal.next_seq().saturating_sub(1);
        self.stats.durable_seq.store(last, Ordering::Release);
        last
    }

    /// Appends the payloads and syncs. A failure part-way leaves the journal where it was
    /// before this batch (the writer cuts a partial append), so a retry starts clean.
    fn append_all(&mut self, payloads: &[Vec<u8>]) -> Result<(), JournalError> {
        let mark = self.journal.mark();
        let result = payloads
            .iter()
            .try_for_each(|payload| self.journal.append(now_micros(), payload).map(drop))
            .and_then(|()| self.journal.sync());
        if result.is_ok() {
            self.stats.records_written.fetch_add(payloads.len() as u64, Ordering::Relaxed);
            let bytes: usize = payloads.iter().map(|p| p.len() + crate::format::RECORD_HEADER_LEN).sum();
            self.stats.bytes_written.fetch_add(bytes as u64, Ordering::Relaxed);
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        } else {
            self.journal.rewind(mark)?;
        }
        result
    }

    /// Encodes a batch into one payload, or into several when one would exceed the record
    /// limit (halving until each fits). A single item too large for any record is replaced
    /// by a loss item, so even that is visible in the journal.
    fn encode_within_limit(&mut self, batch: &[T]) -> Vec<Vec<u8>> {
        let payload = (self.parts.encode)(batch);
        if payload.len() <= MAX_PAYLOAD {
            return vec![payload];
        }
        if batch.len() == 1 {
            error!(bytes = payload.len(), "an event exceeds the journal record limit; a loss record replaces it");
            self.stats.loss_records.fetch_add(1, Ordering::Relaxed);
            let now = now_micros();
            let loss = (self.parts.loss)(1, now, now, &LossCause::TooLarge);
            return vec![(self.parts.encode)(&[loss])];
        }
        let (left, right) = batch.split_at(batch.len() / 2);
        let mut out = self.encode_within_limit(left);
        out.extend(self.encode_within_limit(right));
        out
    }
}
