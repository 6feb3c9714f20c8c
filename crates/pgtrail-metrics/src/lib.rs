//! Prometheus metrics, liveness and readiness over HTTP, for the proxy and the alerting
//! consumer: `GET /metrics` (OpenMetrics text), `GET /livez` (200 while the process
//! serves), `GET /readyz` (200 when it can do its job, 503 otherwise).
//!
//! Owns: the HTTP endpoint and the encoding of metric families. Must not: keep counters of
//! its own (components keep theirs and are read at scrape time) or label by audited data.
//!
//! Values are read at scrape time from the counters the components keep anyway (atomics),
//! so metrics cost nothing between scrapes. Labels never carry user names, SQL or anything
//! from the audited traffic: only event classes, sources, rule and destination names from
//! the operator's own configuration, and outcomes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use pgtrail_event::{ActivityEvent, EventClass, EventKind, EventSource};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tracing::{debug, info};

/// One metric family as read at a scrape.
#[derive(Debug)]
pub struct Family {
    /// Without `_total`: the encoder adds it to counters.
    pub name: &'static str,
    pub help: &'static str,
    pub counter: bool,
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    pub fn counter(name: &'static str, help: &'static str) -> Family {
        Family { name, help, counter: true, samples: Vec::new() }
    }

    pub fn gauge(name: &'static str, help: &'static str) -> Family {
        Family { name, help, counter: false, samples: Vec::new() }
    }

    pub fn with(mut self, labels: Vec<(&'static str, String)>, value: f64) -> Family {
        self.samples.push((labels, value));
        self
    }

    pub fn value(self, value: f64) -> Family {
        self.with(Vec::new(), value)
    }
}

type ScrapeFn = Box<dyn Fn() -> Vec<Family> + Send + Sync>;

/// A collector that asks a closure for the families at every scrape.
struct Scrape(ScrapeFn);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in (self.0)() {
            let kind = if family.counter { MetricType::Counter } else { MetricType::Gauge };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            for (labels, value) in &family.samples {
                let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let sample = metric.encode_family(&labels)?;
                if family.counter {
                    ConstCounter::new(*value).encode(sample)?;
                } else {
                    ConstGauge::new(*value).encode(sample)?;
                }
            }
        }
        Ok(())
    }
}

/// A registry with the process metrics, build info and the families `scrape` gives.
pub fn registry(scrape: impl Fn() -> Vec<Family> + Send + Sync + 'static) -> Registry {
    let mut registry = Registry::default();
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    registry.register_collector(Box::new(Scrape(Box::new(move || {
        let mut families = process_families(started);
        families.extend(scrape());
        families
    }))));
    registry
}

/// process_* as the Prometheus client libraries name them, from /proc/self, plus build info.
fn process_families(started: f64) -> Vec<Family> {
    let mut families = vec![
        Family::gauge("pgtrail_build_info", "pgtrail's version (always 1).")
            .with(vec![("version", env!("CARGO_PKG_VERSION").to_string())], 1.0),
        Family::gauge("process_start_time_seconds", "Start time of the process since the Unix epoch.").value(started),
    ];
    // /proc/self/stat fields after the command name: utime 14, stime 15, vsize 23, rss 24.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, rest)) = stat.rsplit_once(')')
    {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        const CLOCK_TICKS: f64 = 100.0; // USER_HZ on Linux
        const PAGE: f64 = 4096.0;
        families.push(
            Family::counter("process_cpu_seconds", "User and system CPU time spent, in seconds.")
                .value((field(14) + field(15)) / CLOCK_TICKS),
        );
        families.push(Family::gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.").value(field(23)));
        families.push(
            Family::gauge("process_resident_memory_bytes", "Resident memory size in bytes.").value(field(24) * PAGE),
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        families.push(Family::gauge("process_open_fds", "Open file descriptors.").value(dir.count() as f64));
    }
    families
}

const CLASSES: [EventClass; 9] = [
    EventClass::Read,
    EventClass::Write,
    EventClass::Function,
    EventClass::Role,
    EventClass::Ddl,
    EventClass::Misc,
    EventClass::MiscSet,
    EventClass::Connect,
    EventClass::Disconnect,
];

const SOURCES: [(EventSource, &str); 2] = [(EventSource::Proxy, "proxy"), (EventSource::Pgaudit, "pgaudit")];

/// Events counted by class and source.
#[derive(Debug, Default)]
pub struct EventCounts {
    counts: [[AtomicU64; CLASSES.len()]; SOURCES.len()],
}

impl EventCounts {
    /// Counts an activity record (heartbeats, control and loss events are counted elsewhere).
    pub fn count(&self, event: &ActivityEvent) {
        if event.kind != EventKind::Record {
            return;
        }
        let source = match event.source {
            Some(EventSource::Pgaudit) => 1,
            _ => 0,
        };
        let class = CLASSES.iter().position(|c| *c == event.class).unwrap_or(5);
        self.counts[source][class].fetch_add(1, Ordering::Relaxed);
    }

    /// A counter family of every non-zero (class, source) pair.
    pub fn family(&self, name: &'static str, help: &'static str) -> Family {
        let mut family = Family::counter(name, help);
        for (s, (_, source)) in SOURCES.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let n = self.counts[s][c].load(Ordering::Relaxed);
                if n > 0 {
                    family = family
                        .with(vec![("class", class.as_str().to_string()), ("source", source.to_string())], n as f64);
                }
            }
        }
        family
    }
}

/// `[metrics]` in `pgtrail.toml`: where to serve `/metrics`, `/livez` and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address to serve on, e.g. "127.0.0.1:9187"; absent: no endpoint.
    pub listen: Option<SocketAddr>,
}

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on {addr} for metrics")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A readiness check: true when the component can do its job.
pub type ReadyFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves /metrics, /livez and /readyz on `addr` until the returned task is aborted.
/// Returns the bound address (so port 0 picks a free one).
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    ready: ReadyFn,
) -> Result<(SocketAddr, JoinHandle<()>), MetricsError> {
    let bind_error = |source| MetricsError::Listen { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    info!(listen = %bound, "metrics endpoint ready (/metrics, /livez, /readyz)");
    let registry = Arc::new(registry);
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait rather than spin.
                    debug!(%error, "metrics endpoint cannot accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (registry, ready) = (Arc::clone(&registry), Arc::clone(&ready));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let response = answer(&request, &registry, &ready);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(error) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                    debug!(%peer, %error, "metrics connection ended with an error");
                }
            });
        }
    });
    Ok((bound, task))
}

fn answer(request: &Request<hyper::body::Incoming>, registry: &Registry, ready: &ReadyFn) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if request.method() != hyper::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text),
                Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "cannot encode metrics\n".into()),
            }
        }
        "/livez" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if ready() => reply(StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /livez or /readyz\n".into()),
    }
}
