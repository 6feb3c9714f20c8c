//! The publisher inside a journal writer (the proxy, `pgtrail ingest`): started with the
//! writer, publishing each record once it is durable, watching the lag, and given a
//! moment at shutdown to publish what is left.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgtrail_journal::ship::{Durable, LagAlarm, ShipFuture, ShipStats, Shipping, Transport};
use tokio::task::JoinHandle;

use crate::{NatsTransport, TransportError, publish};

impl Transport for NatsTransport {
    fn describe(&self) -> String {
        // The URL may carry credentials (nats://user:password@host): only hosts are named.
        let hosts: Vec<&str> = self
            .settings
            .url
            .split(',')
            .map(|server| server.trim().rsplit_once('@').map_or(server.trim(), |(_, host)| host))
            .collect();
        format!("JetStream stream {} on {}", self.settings.stream, hosts.join(","))
    }

    fn sync_waits(&self) -> bool {
        self.sync_waits_for_stream
    }

    fn start(&self, journal: PathBuf, durable: Durable, alarm: Box<dyn FnMut(LagAlarm) + Send>) -> Box<dyn Shipping> {
        Box::new(RunningPublisher::start(journal, self.clone(), durable, alarm))
    }
}

impl Shipping for RunningPublisher {
    fn stats(&self) -> Arc<ShipStats> {
        Arc::clone(&self.stats)
    }

    fn stop_alarms(&mut self) -> ShipFuture<'_, ()> {
        Box::pin(RunningPublisher::stop_alarms(self))
    }

    fn finish(self: Box<Self>, drain: Duration) -> ShipFuture<'static, Result<(), String>> {
        Box::pin(async move { RunningPublisher::finish(*self, drain).await.map_err(|e| e.to_string()) })
    }
}

/// A publisher running beside a journal writer.
#[derive(Debug)]
pub struct RunningPublisher {
    pub stats: Arc<ShipStats>,
    stop: Arc<AtomicBool>,
    /// Set at shutdown: publish what is durable, then stop.
    draining: Arc<AtomicBool>,
    task: JoinHandle<Result<(), TransportError>>,
    /// The lag watcher, until stopped.
    watcher: Option<JoinHandle<()>>,
}

impl RunningPublisher {
    /// Starts publishing the journal in `journal` up to what `durable` says is durable;
    /// `alarm` hears when the lag passes the threshold and when it is made up.
    pub fn start(
        journal: PathBuf,
        transport: NatsTransport,
        durable: Durable,
        mut alarm: Box<dyn FnMut(LagAlarm) + Send>,
    ) -> Self {
        let stats = Arc::new(ShipStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicBool::new(false));
        let threshold = transport.lag_alarm_records;
        let task = {
            let (stats, stop, draining, durable) =
                (Arc::clone(&stats), Arc::clone(&stop), Arc::clone(&draining), Arc::clone(&durable));
            tokio::spawn(async move {
                let (watched, limit) = (Arc::clone(&stats), Arc::clone(&durable));
                let stopped = move || {
                    stop.load(Ordering::Relaxed)
                        || (draining.load(Ordering::Relaxed)
                            && watched.published_seq.load(Ordering::Relaxed) >= limit())
                };
                let result = publish(&journal, &transport.settings, Some(durable), stats, &stopped).await;
                if let Err(e) = &result {
                    tracing::error!(error = %e, "publishing to JetStream stopped: records stay in the local journal");
                }
                result
            })
        };
        let watcher = {
            let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut behind_since: Option<Instant> = None;
                while !stop.load(Ordering::Relaxed) {
                    stats.journal_seq.fetch_max(durable(), Ordering::Relaxed);
                    let lag = stats.lag();
                    match behind_since {
                        None if lag > threshold => {
                            tracing::warn!(records = lag, threshold, "the audit stream lags behind the journal");
                            alarm(LagAlarm::Behind { records: lag, threshold });
                            behind_since = Some(Instant::now());
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
        Self { stats, stop, draining, task, watcher: Some(watcher) }
    }

    /// Stops watching the lag (and drops the alarm, with whatever it holds: a journal
    /// writer waits for every producer to go before it finishes).
    pub async fn stop_alarms(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
            let _ = watcher.await;
        }
    }

    /// Publishes what is durable (for at most `drain`), then stops. Records left over are
    /// published by the next run, from the stream's own position.
    pub async fn finish(mut self, drain: Duration) -> Result<(), TransportError> {
        self.draining.store(true, Ordering::Relaxed);
        let result = match tokio::time::timeout(drain, &mut self.task).await {
            Ok(joined) => {
                joined.unwrap_or_else(|e| Err(TransportError::JetStream(format!("the publisher failed: {e}"))))
            }
            Err(_) => {
                self.task.abort();
                tracing::warn!(
                    "the audit stream did not take every record before shutdown; the next start publishes the rest"
                );
                Ok(())
            }
        };
        self.stop.store(true, Ordering::Relaxed);
        self.stop_alarms().await;
        result
    }
}
