//! CEF over syslog: each event one RFC 5424 message whose MSG is its CEF line, framed as
//! RFC 5425 says (`MSG-LEN SP SYSLOG-MSG`) on a TCP connection with TLS (`tls://HOST:PORT`;
//! plain `tcp://` only to loopback or with --allow-plaintext). Facility 13 (log audit);
//! the severity follows the CEF severity. Syslog has no acknowledgement: a batch counts as
//! delivered once it is written and flushed on the connection; after a failure the
//! connection is made again and the whole batch sent again.

use std::sync::Arc;

use pgtrail_event::ActivityEvent;
use pgtrail_export::Position;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::{Destination, Failure, ForwardError, Settings};

/// RFC 5424 facility 13: log audit.
const FACILITY: u8 = 13;

type Stream = Box<dyn AsyncWrite + Unpin + Send>;

pub(crate) struct Syslog {
    connection: Connection,
    runtime: tokio::runtime::Runtime,
    timeout: std::time::Duration,
    frames: Vec<u8>,
    pending: usize,
}

fn setup(what: String) -> ForwardError {
    ForwardError::Setup(what)
}

impl Syslog {
    pub fn open(settings: &Settings) -> Result<Syslog, ForwardError> {
        let url = url::Url::parse(&settings.url).map_err(|e| setup(format!("{:?} is not a URL: {e}", settings.url)))?;
        let host = url.host_str().ok_or_else(|| setup(format!("{} names no host", settings.url)))?.to_owned();
        let port = url.port().ok_or_else(|| setup(format!("{} names no port", settings.url)))?;
        let tls = match url.scheme() {
            "tls" => Some(connector(settings, &host)?),
            "tcp" if settings.plaintext || crate::http::is_loopback(&url) => None,
            "tcp" => {
                return Err(setup(format!(
                    "{} is plain TCP to another host: events would cross the network unencrypted (use tls://, or --allow-plaintext)",
                    settings.url
                )));
            }
            other => return Err(setup(format!("{}: unsupported scheme {other:?} (tls or tcp)", settings.url))),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| setup(format!("cannot start the syslog runtime: {e}")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let address = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Syslog {
            connection: Connection { address, tls, stream: None },
            runtime,
            timeout: settings.timeout,
            frames: Vec::new(),
            pending: 0,
        })
    }
}

/// The connection to the receiver, made when first needed and again after a failure.
struct Connection {
    address: String,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    stream: Option<Stream>,
}

impl Connection {
    async fn write(&mut self, frames: &[u8]) -> Result<(), Failure> {
        let io = |e: std::io::Error| Failure::retriable(e.to_string());
        if self.stream.is_none() {
            let tcp = tokio::net::TcpStream::connect(&self.address).await.map_err(io)?;
            tcp.set_nodelay(true).map_err(io)?;
            self.stream = Some(match &self.tls {
                Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await.map_err(io)?),
                None => Box::new(tcp),
            });
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(frames).await.map_err(io)?;
        stream.flush().await.map_err(io)
    }
}

fn connector(
    settings: &Settings,
    host: &str,
) -> Result<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>), ForwardError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path).map_err(|e| setup(format!("cannot read {}: {e}", path.display())))?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| setup(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(setup(format!("{} holds no PEM certificate", path.display())));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| setup(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|_| setup(format!("{host:?} is not a server name for TLS")))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// The syslog severity of a CEF severity.
fn severity(cef: u8) -> u8 {
    match cef {
        9.. => 2,
        7..=8 => 3,
        5..=6 => 4,
        3..=4 => 5,
        _ => 6,
    }
}

/// An RFC 5424 HOSTNAME: printable US-ASCII without spaces, at most 255, or `-`.
fn hostname(name: &str) -> String {
    let name: String = name.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    if name.is_empty() { "-".into() } else { name }
}

impl Destination for Syslog {
    fn add(&mut self, event: &ActivityEvent, at: Position<'_>) {
        let (_, cef_severity) = pgtrail_export::cef::class_and_severity(event);
        let message = format!(
            "<{}>1 {} {} pgtrail - - - {}",
            FACILITY * 8 + severity(cef_severity),
            event.log_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            hostname(event.server_host.as_deref().unwrap_or(at.instance)),
            pgtrail_export::cef::line(event, at),
        );
        self.frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
        self.frames.extend_from_slice(message.as_bytes());
        self.pending += 1;
    }

    fn pending(&self) -> usize {
        self.pending
    }

    fn send(&mut self) -> Result<(), Failure> {
        let timeout = self.timeout;
        let connection = &mut self.connection;
        let result = self.runtime.block_on(async {
            match tokio::time::timeout(timeout, connection.write(&self.frames)).await {
                Ok(result) => result,
                Err(_) => Err(Failure::retriable(format!(
                    "no progress writing to {} in {} s",
                    connection.address,
                    timeout.as_secs()
                ))),
            }
        });
        if result.is_err() {
            self.connection.stream = None;
            return result;
        }
        self.frames.clear();
        self.pending = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_printable_ascii_without_spaces() {
        assert_eq!(hostname("db 1\u{e9}"), "db1");
        assert_eq!(hostname(""), "-");
    }

    #[test]
    fn cef_severity_maps_to_syslog_severity() {
        assert_eq!([9, 7, 5, 3, 1].map(severity), [2, 3, 4, 5, 6]);
    }
}
