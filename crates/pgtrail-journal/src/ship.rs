//! Shipping a journal elsewhere as it is written: the small interface between a journal
//! writer (the proxy, `pgtrail ingest`) and a transport to the fleet's audit stream
//! (`pgtrail-transport-nats` implements it for NATS JetStream; another broker would too).
//!
//! A transport sends each record once the writer reports it durable, exactly as the journal
//! frames it, and keeps [`ShipStats`] for the writer's metrics and for sync delivery
//! waiting on it. The writer knows nothing of the broker.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The last record the local journal holds durably (what a transport may send).
pub type Durable = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A future a transport hands back.
pub type ShipFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the lag watcher reports, for the writer to record as a control event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LagAlarm {
    /// More than the threshold of durable records are not in the stream yet.
    Behind { records: u64, threshold: u64 },
    /// The stream holds everything again after a [`LagAlarm::Behind`].
    CaughtUp { after: Duration },
}

/// A transport a journal writer ships its journal with, configured and not yet started.
pub trait Transport: std::fmt::Debug + Send + Sync {
    /// Where records go, for the log ("JetStream stream PGTRAIL at nats://…"); no secrets.
    fn describe(&self) -> String;
    /// Whether sync delivery also waits until the transport holds a statement's record.
    fn sync_waits(&self) -> bool;
    /// Starts shipping the journal in `journal` up to what `durable` says (on the current
    /// async runtime); `alarm` hears when the lag passes the threshold and when it is made up.
    fn start(&self, journal: PathBuf, durable: Durable, alarm: Box<dyn FnMut(LagAlarm) + Send>) -> Box<dyn Shipping>;
}

/// A transport at work beside a journal writer.
pub trait Shipping: std::fmt::Debug + Send {
    /// Its counters.
    fn stats(&self) -> Arc<ShipStats>;
    /// Stops watching the lag (and drops the alarm, with whatever it holds: a journal
    /// writer waits for every producer to go before it finishes).
    fn stop_alarms(&mut self) -> ShipFuture<'_, ()>;
    /// Ships what is durable (for at most `drain`), then stops; what is left goes with the
    /// next start. The error says why shipping had stopped.
    fn finish(self: Box<Self>, drain: Duration) -> ShipFuture<'static, Result<(), String>>;
}

/// Counters of a transport at work.
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Records acknowledged by the stream (replicated) since start.
    pub records: AtomicU64,
    /// Messages acknowledged since start.
    pub messages: AtomicU64,
    /// The last record the stream holds (acknowledged or found there).
    pub published_seq: AtomicU64,
    /// The last durable record of the local journal, as far as the transport knows.
    pub journal_seq: AtomicU64,
    /// Failed attempts (unreachable, timed out, refused).
    pub failures: AtomicU64,
    /// Whether the last attempt reached the stream.
    pub connected: AtomicBool,
    /// Whether the stream held everything the journal had when last looked.
    pub caught_up: AtomicBool,
    /// Woken whenever `published_seq` moves.
    pub published: tokio::sync::Notify,
}

impl ShipStats {
    /// Records durable in the local journal and not yet in the stream.
    pub fn lag(&self) -> u64 {
        self.journal_seq.load(Ordering::Relaxed).saturating_sub(self.published_seq.load(Ordering::Relaxed))
    }

    /// Waits until the stream holds record `seq` (acknowledged, so stored on its replicas).
    pub async fn wait_published(&self, seq: u64) {
        loop {
            let notified = self.published.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.published_seq.load(Ordering::Acquire) >= seq {
                return;
            }
            notified.await;
        }
    }

    /// The stream holds everything up to `seq` now: wakes whoever waits for it.
    pub fn set_published(&self, seq: u64) {
        self.published_seq.store(seq, Ordering::Release);
        self.published.notify_waiters();
    }
}
