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

mod outbox;

pub use outbox::{
    Mismatch, RunSize, check_resume, hex_hash, instance_once_written, load_position, next_run, record_at, save_position,
};

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

/// A publish loop: given the counters and a stop test, ships the journal until the test
/// says so; the error says why shipping stopped for good.
pub type PublishLoop = Box<
    dyn FnOnce(Arc<ShipStats>, Box<dyn Fn() -> bool + Send + Sync>) -> ShipFuture<'static, Result<(), String>> + Send,
>;

/// A transport's publish loop running beside a journal writer (on the current async
/// runtime), with the lag watcher: what every [`Transport::start`] hands back.
#[derive(Debug)]
pub struct Running {
    stats: Arc<ShipStats>,
    stop: Arc<AtomicBool>,
    /// Set at shutdown: publish what is durable, then stop.
    draining: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
    /// The lag watcher, until stopped.
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// The broker's name, for the log ("JetStream", "Kafka").
    broker: &'static str,
}

impl Running {
    /// Starts `publish` (shipping up to what `durable` says is durable) and a watcher that
    /// tells `alarm` when more than `threshold` records lag and when the lag is made up.
    pub fn start(
        broker: &'static str,
        durable: Durable,
        threshold: u64,
        mut alarm: Box<dyn FnMut(LagAlarm) + Send>,
        publish: PublishLoop,
    ) -> Running {
        let stats = Arc::new(ShipStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicBool::new(false));
        let task = {
            let (watched, stop, draining, limit) =
                (Arc::clone(&stats), Arc::clone(&stop), Arc::clone(&draining), Arc::clone(&durable));
            let stopped = move || {
                stop.load(Ordering::Relaxed)
                    || (draining.load(Ordering::Relaxed) && watched.published_seq.load(Ordering::Relaxed) >= limit())
            };
            let running = publish(Arc::clone(&stats), Box::new(stopped));
            tokio::spawn(async move {
                let result = running.await;
                if let Err(e) = &result {
                    tracing::error!(error = %e, broker, "publishing stopped: records stay in the local journal");
                }
                result
            })
        };
        let watcher = {
            let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut behind_since: Option<std::time::Instant> = None;
                while !stop.load(Ordering::Relaxed) {
                    stats.journal_seq.fetch_max(durable(), Ordering::Relaxed);
                    let lag = stats.lag();
                    match behind_since {
                        None if lag > threshold => {
                            tracing::warn!(records = lag, threshold, "the audit stream lags behind the journal");
                            alarm(LagAlarm::Behind { records: lag, threshold });
                            behind_since = Some(std::time::Instant::now());
                        }
                        Some(since) if lag == 0 => {
                            tracing::info!("the audit stream has caught up with the journal");
                            alarm(LagAlarm::CaughtUp { after: since.elapsed() });
                            behind_since = None;
                        }
                        _ => {}
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        Running { stats, stop, draining, task, watcher: Some(watcher), broker }
    }

    async fn stop_watching(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
            let _ = watcher.await;
        }
    }

    /// Publishes what is durable (for at most `drain`), then stops. Records left over are
    /// published by the next run, from the stream's own position.
    pub async fn finish(mut self, drain: Duration) -> Result<(), String> {
        self.draining.store(true, Ordering::Relaxed);
        let result = match tokio::time::timeout(drain, &mut self.task).await {
            Ok(joined) => joined.unwrap_or_else(|e| Err(format!("the publisher failed: {e}"))),
            Err(_) => {
                self.task.abort();
                tracing::warn!(
                    broker = self.broker,
                    "the audit stream did not take every record before shutdown; the next start publishes the rest"
                );
                Ok(())
            }
        };
        self.stop.store(true, Ordering::Relaxed);
        self.stop_watching().await;
        result
    }
}

impl Shipping for Running {
    fn stats(&self) -> Arc<ShipStats> {
        Arc::clone(&self.stats)
    }

    fn stop_alarms(&mut self) -> ShipFuture<'_, ()> {
        Box::pin(self.stop_watching())
    }

    fn finish(self: Box<Self>, drain: Duration) -> ShipFuture<'static, Result<(), String>> {
        Box::pin(Running::finish(*self, drain))
    }
}

/// A publisher's retry pacing, with one log line when publishing fails and one when it
/// recovers (not one per attempt).
#[derive(Debug)]
pub struct Backoff {
    broker: &'static str,
    delay: Duration,
    failing: bool,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    /// Pacing for publishing to `broker` ("JetStream", "Kafka").
    pub fn new(broker: &'static str) -> Backoff {
        Backoff { broker, delay: Duration::ZERO, failing: false }
    }

    /// An attempt failed for the reason `why` (said once until it recovers).
    pub fn failed(&mut self, why: &str) {
        if !self.failing {
            tracing::warn!(
                error = why,
                "publishing to {} failed: records wait in the local journal; retrying",
                self.broker
            );
        }
        self.failing = true;
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MAX);
    }

    /// An attempt succeeded.
    pub fn recovered(&mut self, instance: &str) {
        if self.failing {
            tracing::info!(instance, "publishing to {} again", self.broker);
        }
        self.failing = false;
        self.delay = Duration::ZERO;
    }

    /// Waits before the next attempt.
    pub async fn wait(&self) {
        tokio::time::sleep(self.delay).await;
    }
}
