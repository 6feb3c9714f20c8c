//! What the HTTP destinations share: a client (rustls; the system's CAs and an optional
//! private CA), a runtime of their own to run it on the forwarder's thread, the rule that
//! events leave the host only over TLS, and how an answer is judged.

use crate::{Failure, ForwardError, Settings};

pub(crate) struct Http {
    pub client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Http {
    pub fn open(settings: &Settings) -> Result<Http, ForwardError> {
        let setup = |what: String| ForwardError::Setup(what);
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pgtrail/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path).map_err(|e| setup(format!("cannot read {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup(format!("{} holds no PEM certificate: {e}", path.display())))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| setup(format!("cannot make the HTTP client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| setup(format!("cannot start the HTTP runtime: {e}")))?;
        Ok(Http { client, runtime })
    }

    /// Runs `request` to its answer: the status and the body.
    pub fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, String), Failure> {
        self.runtime.block_on(async {
            let response = request.send().await.map_err(|e| Failure::retriable(describe(e)))?;
            let status = response.status().as_u16();
            let body = response.text().await.map_err(|e| Failure::retriable(describe(e)))?;
            Ok((status, body))
        })
    }
}

/// The URL, checked: https, or http to a loopback address (or anywhere with `plaintext`).
pub(crate) fn checked_url(text: &str, plaintext: bool) -> Result<url::Url, ForwardError> {
    let url = url::Url::parse(text).map_err(|e| ForwardError::Setup(format!("{text:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if plaintext || is_loopback(&url) => Ok(url),
        "http" => Err(ForwardError::Setup(format!(
            "{text} is plain HTTP to another host: events would cross the network unencrypted (use https://, or --allow-plaintext)"
        ))),
        other => Err(ForwardError::Setup(format!("{text}: unsupported scheme {other:?} (https or http)"))),
    }
}

pub(crate) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

/// An HTTP answer that is not a success: 408, 429 and 5xx are worth retrying; any other
/// (a bad token, a malformed batch) is not. The body is cut short and stripped of control
/// characters: it is the destination's text, not ours.
pub(crate) fn failed_status(status: u16, body: &str) -> Failure {
    let body: String = body.chars().filter(|c| !c.is_control()).take(200).collect();
    let message = format!("HTTP {status}: {body}");
    if status == 408 || status == 429 || status >= 500 { Failure::retriable(message) } else { Failure::fatal(message) }
}

fn describe(error: reqwest::Error) -> String {
    // The chain of causes, without the URL (a request's details do not belong in the log).
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
