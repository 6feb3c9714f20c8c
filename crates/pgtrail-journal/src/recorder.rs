//! The recorder: batches items (events) by count and time into journal records.
//!
//! Producers call [`Recorder::record`], which never waits: the queue is bounded and an
//! item that does not fit is dropped and counted. Dropped items are never silent: the
//! recorder puts a loss item (made by the caller's `loss` function, with the count and the
//! time window) into the next batch, logs a warning, and the count shows in
//! [`RecorderStats`]. The writer runs on its own thread (from the blocking pool): encoding,
//! appends and fsync never take time from the async workers that relay client traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::{Journal, JournalError, MAX_PAYLOAD};

/// Batching and queueing limits.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// A batch is written once it holds this many items...
    pub max_batch_items: usize,
    /// ...or this long after its first item arrived, whichever comes first.
    pub max_batch_delay: Duration,
    /// Items waiting to be written; beyond this, items are dropped and counted.
    pub queue_capacity: usize,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self { max_batch_items: 1000, max_batch_delay: Duration::from_millis(200), queue_capacity: 65_536 }
    }
}

/// How often a batch being collected looks for more items.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How often an idle writer wakes to see whether a checkpoint is due.
const IDLE_WAKEUP: Duration = Duration::from_millis(500);

/// Counters shared between producers and the writer.
#[derive(Debug, Default)]
pub struct RecorderStats {
    pub recorded: AtomicU64,
    pub dropped: AtomicU64,
    pub records_written: AtomicU64,
    pub loss_records: AtomicU64,
}

/// Builds the loss item for `count` items dropped between two times (µs since epoch).
pub type LossFn<T> = Box<dyn Fn(u64, i64, i64) -> T + Send>;
/// Turns a batch into one record payload.
pub type EncodeFn<T> = Box<dyn FnMut(&[T]) -> Vec<u8> + Send>;

/// The producer side. Cloning is cheap; the writer finishes when every clone is dropped.
#[derive(Debug)]
pub struct Recorder<T> {
    tx: SyncSender<T>,
    stats: Arc<RecorderStats>,
    first_drop_micros: Arc<AtomicU64>,
}

impl<T> Clone for Recorder<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            stats: Arc::clone(&self.stats),
            first_drop_micros: Arc::clone(&self.first_drop_micros),
        }
    }
}

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

impl<T: Send + 'static> Recorder<T> {
    /// Starts the writer. The returned handle resolves when all producers are gone and
    /// everything queued has been written and synced. Must be called inside a Tokio runtime.
    pub fn spawn(
        journal: Journal,
        config: RecorderConfig,
        encode: EncodeFn<T>,
        loss: LossFn<T>,
    ) -> (Self, JoinHandle<Result<(), JournalError>>) {
        let (tx, rx) = sync_channel(config.queue_capacity.max(1));
        let stats = Arc::new(RecorderStats::default());
        let first_drop_micros = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            journal,
            rx,
            config,
            encode,
            loss,
            stats: Arc::clone(&stats),
            first_drop_micros: Arc::clone(&first_drop_micros),
            reported_drops: 0,
        };
        let handle = tokio::task::spawn_blocking(move || writer.run());
        (Self { tx, stats, first_drop_micros }, handle)
    }

    /// Queues an item without waiting. Returns false if it was dropped (queue full or the
    /// writer gone); the drop is counted and will be reported in the journal.
    pub fn record(&self, item: T) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => {
                self.stats.recorded.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let _ = self.first_drop_micros.compare_exchange(
                    0,
                    now_micros().max(1) as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn stats(&self) -> &Arc<RecorderStats> {
        &self.stats
    }
}

struct Writer<T> {
    journal: Journal,
    rx: Receiver<T>,
    config: RecorderConfig,
    encode: EncodeFn<T>,
    loss: LossFn<T>,
    stats: Arc<RecorderStats>,
    first_drop_micros: Arc<AtomicU64>,
    reported_drops: u64,
}

impl<T> Writer<T> {
    fn run(mut self) -> Result<(), JournalError> {
        // Block only for the first item of a batch; then collect by polling. A receiver
        // blocked in recv makes every send a futex wake-up (one per statement under load);
        // a sleeping one costs the senders nothing.
        let mut disconnected = false;
        while !disconnected {
            // Idle: wake up now and then to sign a checkpoint that has come due.
            let first = match self.rx.recv_timeout(IDLE_WAKEUP) {
                Ok(item) => item,
                Err(RecvTimeoutError::Timeout) => {
                    self.checkpoint_if_due()?;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            let deadline = Instant::now() + self.config.max_batch_delay;
            loop {
                while batch.len() < self.config.max_batch_items {
                    match self.rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            disconnected = true;
                            break;
                        }
                    }
                }
                let now = Instant::now();
                if disconnected || batch.len() >= self.config.max_batch_items || now >= deadline {
                    break;
                }
                std::thread::sleep(POLL_INTERVAL.min(deadline - now));
            }
            self.add_loss_item(&mut batch);
            self.write(batch)?;
        }
        // Producers are gone; report drops that happened after the last batch.
        let mut batch = Vec::new();
        self.add_loss_item(&mut batch);
        if !batch.is_empty() {
            self.write(batch)?;
        }
        // A clean shutdown ends with a checkpoint covering everything.
        self.journal.checkpoint().inspect_err(|e| error!(error = %e, "final journal checkpoint failed"))?;
        Ok(())
    }

    fn checkpoint_if_due(&mut self) -> Result<(), JournalError> {
        self.journal.checkpoint_if_due().map(drop).inspect_err(|e| error!(error = %e, "journal checkpoint failed"))
    }

    fn add_loss_item(&mut self, batch: &mut Vec<T>) {
        let dropped = self.stats.dropped.load(Ordering::Relaxed);
        let new = dropped - self.reported_drops;
        if new == 0 {
            return;
        }
        let from = self.first_drop_micros.swap(0, Ordering::Relaxed) as i64;
        let to = now_micros();
        warn!(dropped = new, "recorder queue full: events dropped; a loss record is written");
        batch.push((self.loss)(new, from, to));
        self.reported_drops = dropped;
        self.stats.loss_records.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&mut self, batch: Vec<T>) -> Result<(), JournalError> {
        for payload in self.encode_within_limit(&batch) {
            self.append(&payload)?;
        }
        self.checkpoint_if_due()
    }

    /// Encodes a batch into one payload, or into several when one would exceed the record
    /// limit (halving until each fits). A single item too large for any record is replaced
    /// by a loss item, so even that is visible in the journal.
    fn encode_within_limit(&mut self, batch: &[T]) -> Vec<Vec<u8>> {
        let payload = (self.encode)(batch);
        if payload.len() <= MAX_PAYLOAD {
            return vec![payload];
        }
        if batch.len() == 1 {
            error!(bytes = payload.len(), "an event exceeds the journal record limit; a loss record replaces it");
            self.stats.loss_records.fetch_add(1, Ordering::Relaxed);
            let now = now_micros();
            return vec![(self.encode)(&[(self.loss)(1, now, now)])];
        }
        let (left, right) = batch.split_at(batch.len() / 2);
        let mut out = self.encode_within_limit(left);
        out.extend(self.encode_within_limit(right));
        out
    }

    fn append(&mut self, payload: &[u8]) -> Result<(), JournalError> {
        match self.journal.append(now_micros(), payload).and_then(|_| self.journal.sync()) {
            Ok(()) => {
                self.stats.records_written.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "journal write failed; the recorder stops");
                Err(e)
            }
        }
    }
}
