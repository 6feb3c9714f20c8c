//! The destinations file: strict TOML, resolved once (secrets read, URLs parsed) before any
//! notifier starts.
//!
//! ```toml
//! [retry]                       # optional; these are the defaults
//! max_attempts = 6              # first try included
//! first_backoff_ms = 1000       # doubles each retry, with jitter...
//! max_backoff_secs = 60         # ...up to this
//! timeout_secs = 10             # one attempt
//! queue = 10000                 # alerts waiting per destination; beyond that they are dropped (counted)
//!
//! [[destination]]
//! name = "soc"                  # shows in counters, metrics and `alerts test`
//! kind = "webhook"              # webhook, slack, pagerduty, opsgenie, email, syslog
//! min_severity = "medium"       # skip alerts below this (default: info, i.e. everything)
//! rules = ["DDL"]               # only these rules (default: all)
//! send_resolved = true          # also send "resolved" (default true)
//! include_statement = true      # put the SQL text in the message (default true)
//! url = "https://hooks.example.com/pgtrail"
//! secret = "env:PGTRAIL_WEBHOOK_SECRET"   # whsec_...
//! ```
//!
//! Any secret-bearing value (`url`, `secret`, `routing_key`, `api_key`, `password`) may be
//! written `env:NAME` (read from the environment) or `file:PATH` (read from a file, trimmed),
//! so the file itself can be shared without its secrets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgtrail_rules::Severity;
use serde::Deserialize;

use crate::NotifyError;

/// How each destination retries a failed send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub first_backoff_ms: u64,
    pub max_backoff_secs: u64,
    pub timeout_secs: u64,
    pub queue: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 6, first_backoff_ms: 1000, max_backoff_secs: 60, timeout_secs: 10, queue: 10_000 }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based): exponential, capped, with up to 20%
    /// jitter so that many senders do not retry in step.
    pub fn backoff(&self, retry: u32) -> Duration {
        let base = self.first_backoff_ms.saturating_mul(1u64 << retry.saturating_sub(1).min(20));
        let capped = base.min(self.max_backoff_secs.saturating_mul(1000));
        let jitter = rand::random_range(0..=capped / 5);
        Duration::from_millis(capped - jitter)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }
}

/// One place alerts go.
#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub min_severity: Severity,
    /// Only alerts of these rules; empty means all.
    pub rules: Vec<String>,
    pub send_resolved: bool,
    pub include_statement: bool,
    pub kind: Kind,
}

/// What kind of destination, with its settings.
#[derive(Debug, Clone)]
pub enum Kind {
    Webhook(Webhook),
    Slack(Slack),
    PagerDuty(PagerDuty),
    Opsgenie(Opsgenie),
    Email(Email),
    Syslog(Syslog),
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Webhook(_) => "webhook",
            Kind::Slack(_) => "slack",
            Kind::PagerDuty(_) => "pagerduty",
            Kind::Opsgenie(_) => "opsgenie",
            Kind::Email(_) => "email",
            Kind::Syslog(_) => "syslog",
        }
    }
}

/// A generic HTTP endpoint, signed per the Standard Webhooks specification.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    /// `whsec_` followed by the base64 of the key (24 to 64 bytes).
    pub secret: String,
    /// The signing key decoded from `secret` (when the file is loaded).
    #[serde(skip)]
    pub key: Vec<u8>,
    /// Extra CA certificates (PEM) to trust for this URL.
    pub ca_file: Option<PathBuf>,
}

/// A Slack incoming webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slack {
    pub url: String,
    pub ca_file: Option<PathBuf>,
}

/// PagerDuty Events API v2.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDuty {
    /// The integration's routing key (32 characters).
    pub routing_key: String,
    #[serde(default = "default_pagerduty_url")]
    pub url: String,
    pub ca_file: Option<PathBuf>,
}

fn default_pagerduty_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}

/// Opsgenie (or Jira Service Management's Opsgenie-compatible) alert API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opsgenie {
    pub api_key: String,
    /// API base (`/v2/alerts` is appended): `https://api.eu.opsgenie.com` for Opsgenie's EU
    /// instance, `https://api.atlassian.com/jsm/ops/integration` for Jira Service
    /// Management's integration API (same payloads and GenieKey authentication).
    #[serde(default = "default_opsgenie_url")]
    pub url: String,
    pub ca_file: Option<PathBuf>,
}

fn default_opsgenie_url() -> String {
    "https://api.opsgenie.com".into()
}

/// How an SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS at all: only for a relay on the same host.
    None,
}

/// Email over SMTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Email {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    #[serde(default = "default_smtp_tls")]
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    pub ca_file: Option<PathBuf>,
}

fn default_smtp_port() -> u16 {
    587
}

fn default_smtp_tls() -> SmtpTls {
    SmtpTls::Starttls
}

/// Syslog (RFC 5424) over TCP, TLS by default (RFC 5425 framing: octet counting).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Syslog {
    /// host:port
    pub address: String,
    #[serde(default = "yes")]
    pub tls: bool,
    /// Name to verify in the server's certificate (default: the host of `address`).
    pub server_name: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// Facility name (auth, authpriv, daemon, local0..local7, ...); default authpriv.
    #[serde(default = "default_facility")]
    pub facility: String,
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// HOSTNAME field (default: this machine's host name).
    pub hostname: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_facility() -> String {
    "authpriv".into()
}

fn default_app_name() -> String {
    "pgtrail".into()
}

/// A loaded, checked destinations file.
#[derive(Debug, Clone, Default)]
pub struct NotifyConfig {
    pub retry: RetryPolicy,
    pub destinations: Vec<Destination>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    retry: RetryPolicy,
    #[serde(default)]
    destination: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    name: String,
    kind: String,
    #[serde(default = "default_min_severity")]
    min_severity: Severity,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default = "yes")]
    send_resolved: bool,
    #[serde(default = "yes")]
    include_statement: bool,
}

fn default_min_severity() -> Severity {
    Severity::Info
}

const COMMON_KEYS: [&str; 6] = ["name", "kind", "min_severity", "rules", "send_resolved", "include_statement"];

impl NotifyConfig {
    /// Reads and checks a destinations file.
    pub fn load(path: &Path) -> Result<NotifyConfig, NotifyError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| NotifyError::Read { path: path.to_path_buf(), source })?;
        NotifyConfig::parse(&text, &path.display().to_string())
    }

    /// Parses a destinations file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<NotifyConfig, NotifyError> {
        let bad = |message: String| NotifyError::Config { file: origin.to_string(), message };
        let raw: RawFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if raw.retry.max_attempts == 0 {
            return Err(bad("retry.max_attempts must be at least 1".into()));
        }
        let mut destinations: Vec<Destination> = Vec::new();
        for (index, table) in raw.destination.into_iter().enumerate() {
            let (common, specific): (toml::Table, toml::Table) =
                table.into_iter().partition(|(key, _)| COMMON_KEYS.contains(&key.as_str()));
            let common: Common =
                toml::Value::Table(common).try_into().map_err(|e| bad(format!("destination #{}: {e}", index + 1)))?;
            let name = common.name.clone();
            if destinations.iter().any(|d| d.name == name) {
                return Err(bad(format!("destination {name:?} is defined twice")));
            }
            let within = |e: toml::de::Error| bad(format!("destination {name:?}: {e}"));
            let specific = toml::Value::Table(specific);
            let kind = match common.kind.as_str() {
                "webhook" => Kind::Webhook(specific.try_into().map_err(within)?),
                "slack" => Kind::Slack(specific.try_into().map_err(within)?),
                "pagerduty" => Kind::PagerDuty(specific.try_into().map_err(within)?),
                "opsgenie" => Kind::Opsgenie(specific.try_into().map_err(within)?),
                "email" => Kind::Email(specific.try_into().map_err(within)?),
                "syslog" => Kind::Syslog(specific.try_into().map_err(within)?),
                other => {
                    return Err(bad(format!(
                        "destination {name:?}: unknown kind {other:?} (webhook, slack, pagerduty, opsgenie, email, syslog)"
                    )));
                }
            };
            let kind = resolve(kind).map_err(|message| bad(format!("destination {name:?}: {message}")))?;
            destinations.push(Destination {
                name,
                min_severity: common.min_severity,
                rules: common.rules,
                send_resolved: common.send_resolved,
                include_statement: common.include_statement,
                kind,
            });
        }
        Ok(NotifyConfig { retry: raw.retry, destinations })
    }
}

/// Reads `env:` and `file:` references and checks each kind's values.
fn resolve(kind: Kind) -> Result<Kind, String> {
    Ok(match kind {
        Kind::Webhook(mut w) => {
            w.url = check_url(&secret_value(&w.url, "url")?)?;
            w.secret = secret_value(&w.secret, "secret")?;
            w.key = crate::format::webhook_key(&w.secret)?;
            Kind::Webhook(w)
        }
        Kind::Slack(mut s) => {
            s.url = check_url(&secret_value(&s.url, "url")?)?;
            Kind::Slack(s)
        }
        Kind::PagerDuty(mut p) => {
            p.routing_key = secret_value(&p.routing_key, "routing_key")?;
            if p.routing_key.is_empty() {
                return Err("routing_key is empty".into());
            }
            p.url = check_url(&p.url)?;
            Kind::PagerDuty(p)
        }
        Kind::Opsgenie(mut o) => {
            o.api_key = secret_value(&o.api_key, "api_key")?;
            if o.api_key.is_empty() {
                return Err("api_key is empty".into());
            }
            o.url = check_url(&o.url)?.trim_end_matches('/').to_string();
            Kind::Opsgenie(o)
        }
        Kind::Email(mut e) => {
            if let Some(password) = &e.password {
                e.password = Some(secret_value(password, "password")?);
            }
            if e.username.is_some() != e.password.is_some() {
                return Err("username and password go together".into());
            }
            if e.to.is_empty() {
                return Err("`to` names no recipient".into());
            }
            for address in e.to.iter().chain(std::iter::once(&e.from)) {
                address
                    .parse::<lettre::message::Mailbox>()
                    .map_err(|err| format!("{address:?} is not an email address: {err}"))?;
            }
            Kind::Email(e)
        }
        Kind::Syslog(s) => {
            crate::format::facility_code(&s.facility)?;
            if s.address.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
                return Err(format!("address {:?} is not host:port", s.address));
            }
            if s.app_name.is_empty() || s.app_name.len() > 48 || !s.app_name.bytes().all(|b| (33..=126).contains(&b)) {
                return Err("app_name must be 1 to 48 printable ASCII characters".into());
            }
            Kind::Syslog(s)
        }
    })
}

fn secret_value(value: &str, what: &str) -> Result<String, String> {
    if let Some(name) = value.strip_prefix("env:") {
        std::env::var(name).map_err(|_| format!("{what}: environment variable {name} is not set"))
    } else if let Some(path) = value.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_string())
            .map_err(|e| format!("{what}: cannot read {path}: {e}"))
    } else {
        Ok(value.to_string())
    }
}

fn check_url(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("url is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(url.to_string()),
        "http" if is_loopback(&parsed) => Ok(url.to_string()),
        "http" => Err("url must be https (plain http only to this host)".into()),
        other => Err(format!("url scheme {other:?} is not http or https")),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn strict_and_resolved() {
        let text = format!(
            "[[destination]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\nsecret = \"{SECRET}\"\n"
        );
        let config = NotifyConfig::parse(&text, "d.toml").unwrap();
        assert_eq!(config.destinations.len(), 1);
        assert_eq!(config.destinations[0].min_severity, Severity::Info);

        let cases = [
            (format!("{text}colour = \"red\"\n"), "unknown field `colour`"),
            (text.replace("webhook", "pager"), "unknown kind \"pager\""),
            (text.replace("http://127.0.0.1:9", "http://example.com"), "must be https"),
            (text.replace(SECRET, "hunter2"), "whsec_"),
            (text.replace(SECRET, "env:PGTRAIL_TEST_SURELY_UNSET"), "PGTRAIL_TEST_SURELY_UNSET is not set"),
            (format!("{text}{text}"), "defined twice"),
            ("[retry]\nmax_attempts = 0\n".to_string(), "at least 1"),
        ];
        for (text, expected) in cases {
            let err = NotifyConfig::parse(&text, "d.toml").unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
            assert!(err.starts_with("d.toml"), "{err}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        let policy = RetryPolicy { first_backoff_ms: 1000, max_backoff_secs: 5, ..RetryPolicy::default() };
        for _ in 0..50 {
            let first = policy.backoff(1).as_millis();
            let third = policy.backoff(3).as_millis();
            let tenth = policy.backoff(10).as_millis();
            assert!((800..=1000).contains(&first), "{first}");
            assert!((3200..=4000).contains(&third), "{third}");
            assert!((4000..=5000).contains(&tenth), "{tenth}");
        }
    }
}
