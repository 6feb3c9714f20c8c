//! Sending one notification to one destination, and retrying it.
//!
//! A send succeeds only on the destination's acknowledgement: a 2xx answer over HTTP, the
//! SMTP server's 250 for the message. Syslog has no acknowledgement in its protocol, so
//! there a send counts once the frame is written and flushed to the TCP/TLS connection.
//! Failures are classed retriable (network, timeout, HTTP 408/429/5xx, SMTP transient) or
//! permanent (any other HTTP 4xx, SMTP 5xx), and only retriable ones are retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use pgtrail_rules::{Alert, AlertStatus};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::warn;

use crate::config::{Destination, Email, Kind, RetryPolicy, SmtpTls, Syslog};
use crate::format;

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String, retry_after: Option<Duration> },
    #[error("{0}")]
    Http(reqwest::Error),
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("cannot build the email: {0}")]
    Message(#[from] lettre::error::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl From<reqwest::Error> for Failure {
    fn from(error: reqwest::Error) -> Self {
        // reqwest names the URL in its errors; a Slack or webhook URL is a secret.
        Failure::Http(error.without_url())
    }
}

impl Failure {
    /// Worth trying again?
    pub fn retriable(&self) -> bool {
        match self {
            Failure::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Failure::Smtp(e) => !e.is_permanent(),
            Failure::Message(_) => false,
            Failure::Http(_) | Failure::Io(_) | Failure::Tls(_) | Failure::Timeout(_) => true,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One notification on its way to one destination.
#[derive(Debug, Clone)]
pub struct Notice {
    pub alert: Arc<Alert>,
    /// Standard Webhooks' `webhook-id`: the same on every retry.
    pub message_id: String,
}

impl Notice {
    pub fn new(alert: Arc<Alert>) -> Notice {
        Notice { alert, message_id: format::webhook_message_id() }
    }
}

/// A connected (or connectable) destination.
pub(crate) struct Channel {
    destination: Destination,
    transport: Transport,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the settings: they hold secrets.
        f.debug_struct("Channel").field("destination", &self.destination.name).finish_non_exhaustive()
    }
}

enum Transport {
    Http(reqwest::Client),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Syslog(SyslogConnection),
}

struct SyslogConnection {
    connector: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    stream: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    facility: u8,
    hostname: String,
}

fn read_pem_certs(path: &std::path::Path) -> std::io::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let pem = std::fs::read(path)?;
    rustls_pemfile::certs(&mut pem.as_slice()).collect()
}

impl Channel {
    pub(crate) fn open(destination: &Destination, policy: &RetryPolicy) -> Result<Channel, crate::NotifyError> {
        let bad = |message: String| crate::NotifyError::Setup { destination: destination.name.clone(), message };
        let transport = match &destination.kind {
            Kind::Webhook(w) => Transport::Http(http_client(w.ca_file.as_deref(), policy).map_err(bad)?),
            Kind::Slack(s) => Transport::Http(http_client(s.ca_file.as_deref(), policy).map_err(bad)?),
            Kind::PagerDuty(p) => Transport::Http(http_client(p.ca_file.as_deref(), policy).map_err(bad)?),
            Kind::Opsgenie(o) => Transport::Http(http_client(o.ca_file.as_deref(), policy).map_err(bad)?),
            Kind::Email(e) => Transport::Smtp(smtp_transport(e, policy).map_err(bad)?),
            Kind::Syslog(s) => Transport::Syslog(syslog_connection(s).map_err(bad)?),
        };
        Ok(Channel { destination: destination.clone(), transport })
    }

    pub(crate) fn name(&self) -> &str {
        &self.destination.name
    }

    /// One attempt.
    async fn attempt(&mut self, notice: &Notice, timeout: Duration) -> Result<(), Failure> {
        match tokio::time::timeout(timeout, self.attempt_inner(notice)).await {
            Ok(result) => result,
            Err(_) => {
                if let Transport::Syslog(connection) = &mut self.transport {
                    connection.stream = None;
                }
                Err(Failure::Timeout(timeout))
            }
        }
    }

    async fn attempt_inner(&mut self, notice: &Notice) -> Result<(), Failure> {
        let alert = &notice.alert;
        let include = self.destination.include_statement;
        match (&self.destination.kind, &mut self.transport) {
            (Kind::Webhook(w), Transport::Http(client)) => {
                let body = format::webhook_body(alert, include);
                let timestamp = chrono::Utc::now().timestamp();
                let signature = format::webhook_signature(&w.key, &notice.message_id, timestamp, &body);
                let request = client
                    .post(&w.url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &notice.message_id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature)
                    .body(body);
                check(request.send().await?).await
            }
            (Kind::Slack(s), Transport::Http(client)) => {
                post_json(client.post(&s.url), &format::slack_body(alert, include)).await
            }
            (Kind::PagerDuty(p), Transport::Http(client)) => {
                post_json(client.post(&p.url), &format::pagerduty_body(alert, &p.routing_key, include)).await
            }
            (Kind::Opsgenie(o), Transport::Http(client)) => {
                let auth = format!("GenieKey {}", o.api_key);
                if alert.status == AlertStatus::Resolved {
                    // The base was checked to be an http(s) URL when the file was loaded.
                    let mut url = reqwest::Url::parse(&format!("{}/v2/alerts", o.url)).expect("checked at load");
                    url.path_segments_mut()
                        .expect("an http(s) URL has a path")
                        .push(&format::incident_key(alert, 512))
                        .push("close");
                    url.query_pairs_mut().append_pair("identifierType", "alias");
                    post_json(client.post(url).header("authorization", auth), &format::opsgenie_close(alert)).await
                } else {
                    let url = format!("{}/v2/alerts", o.url);
                    post_json(client.post(url).header("authorization", auth), &format::opsgenie_create(alert, include))
                        .await
                }
            }
            (Kind::Email(e), Transport::Smtp(transport)) => {
                let (subject, text) = format::email(alert, include);
                let mut builder = lettre::Message::builder()
                    .from(e.from.parse::<Mailbox>().expect("checked at load"))
                    .subject(subject);
                for to in &e.to {
                    builder = builder.to(to.parse::<Mailbox>().expect("checked at load"));
                }
                let message = builder.body(text)?;
                transport.send(message).await?;
                Ok(())
            }
            (Kind::Syslog(s), Transport::Syslog(connection)) => {
                let message =
                    format::syslog_message(alert, connection.facility, &connection.hostname, &s.app_name, include);
                let frame = format::octet_counted(&message);
                let result = connection.write(&s.address, &frame).await;
                if result.is_err() {
                    connection.stream = None;
                }
                result
            }
            _ => unreachable!("a channel's transport is made from its own kind"),
        }
    }
}

impl SyslogConnection {
    async fn write(&mut self, address: &str, frame: &[u8]) -> Result<(), Failure> {
        if self.stream.is_none() {
            let tcp = tokio::net::TcpStream::connect(address).await?;
            tcp.set_nodelay(true)?;
            self.stream = Some(match &self.connector {
                Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
                None => Box::new(tcp),
            });
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(frame).await?;
        stream.flush().await?;
        Ok(())
    }
}

async fn post_json(request: reqwest::RequestBuilder, body: &serde_json::Value) -> Result<(), Failure> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    check(request.header("content-type", "application/json").body(body).send().await?).await
}

async fn check(response: reqwest::Response) -> Result<(), Failure> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().filter(|c| !c.is_control()).take(200).collect();
    Err(Failure::Status { status: status.as_u16(), body, retry_after })
}

fn http_client(ca_file: Option<&std::path::Path>, policy: &RetryPolicy) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(policy.timeout())
        .connect_timeout(policy.timeout())
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pgtrail/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{} holds no PEM certificate: {e}", path.display()))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| format!("cannot make the HTTP client: {e}"))
}

fn smtp_transport(email: &Email, policy: &RetryPolicy) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let mut params = TlsParameters::builder(email.host.clone());
    if let Some(path) = &email.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let cert =
            Certificate::from_pem(&pem).map_err(|e| format!("{} is not a PEM certificate: {e}", path.display()))?;
        params = params.add_root_certificate(cert);
    }
    let params = params.build_rustls().map_err(|e| format!("TLS setup: {e}"))?;
    let tls = match email.tls {
        SmtpTls::Starttls => Tls::Required(params),
        SmtpTls::Tls => Tls::Wrapper(params),
        SmtpTls::None => Tls::None,
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&email.host)
        .port(email.port)
        .tls(tls)
        .timeout(Some(policy.timeout()));
    if let (Some(user), Some(password)) = (&email.username, &email.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(builder.build())
}

fn syslog_connection(syslog: &Syslog) -> Result<SyslogConnection, String> {
    let facility = format::facility_code(&syslog.facility)?;
    let hostname = syslog.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
    });
    let connector = if syslog.tls {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &syslog.ca_file {
            let certs = read_pem_certs(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{} holds no PEM certificate", path.display()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let host = syslog.server_name.clone().unwrap_or_else(|| {
            let (host, _) = syslog.address.rsplit_once(':').unwrap_or((&syslog.address, ""));
            host.trim_start_matches('[').trim_end_matches(']').to_string()
        });
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| format!("{host:?} is not a server name for TLS"))?;
        Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
    } else {
        None
    };
    Ok(SyslogConnection { connector, stream: None, facility, hostname })
}

/// What became of one notification.
#[derive(Debug)]
pub struct Outcome {
    pub attempts: u32,
    pub elapsed: Duration,
    pub result: Result<(), Failure>,
}

/// Sends with retries and backoff; `on_retry` is called before each retry.
pub(crate) async fn deliver(
    channel: &mut Channel,
    notice: &Notice,
    policy: &RetryPolicy,
    on_retry: &(dyn Fn() + Sync),
) -> Outcome {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = channel.attempt(notice, policy.timeout()).await;
        match result {
            Ok(()) => return Outcome { attempts: attempt, elapsed: started.elapsed(), result: Ok(()) },
            Err(failure) if failure.retriable() && attempt < policy.max_attempts => {
                let wait = failure.retry_after().unwrap_or_else(|| policy.backoff(attempt));
                warn!(
                    destination = channel.name(),
                    attempt,
                    error = %failure,
                    retry_in_ms = wait.as_millis() as u64,
                    "notification failed; will retry"
                );
                on_retry();
                tokio::time::sleep(wait).await;
            }
            Err(failure) => {
                return Outcome { attempts: attempt, elapsed: started.elapsed(), result: Err(failure) };
            }
        }
    }
}
