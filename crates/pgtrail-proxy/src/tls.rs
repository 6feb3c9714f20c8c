//! rustls configurations for both sides of the proxy.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::ProxyError;
use crate::config::{ClientTlsConfig, UpstreamConfig, UpstreamTlsMode};

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ProxyError> {
    let file = std::fs::File::open(path).map_err(|e| ProxyError::tls(path, e.to_string()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut BufReader::new(file)).collect();
    let certs = certs.map_err(|e| ProxyError::tls(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(ProxyError::tls(path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ProxyError> {
    let file = std::fs::File::open(path).map_err(|e| ProxyError::tls(path, e.to_string()))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| ProxyError::tls(path, e.to_string()))?
        .ok_or_else(|| ProxyError::tls(path, "no PEM private key found"))
}

/// The server configuration presented to clients.
pub(crate) fn server_config(cfg: &ClientTlsConfig) -> Result<Arc<ServerConfig>, ProxyError> {
    let certs = read_certs(&cfg.cert_file)?;
    let key = read_key(&cfg.key_file)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::tls(&cfg.cert_file, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ProxyError::tls(&cfg.key_file, e.to_string()))?;
    Ok(Arc::new(config))
}

/// The client configuration used toward PostgreSQL, or `None` for plain TCP.
pub(crate) fn upstream_config(cfg: &UpstreamConfig) -> Result<Option<Arc<ClientConfig>>, ProxyError> {
    Ok(upstream_builder(cfg)?.map(|b| Arc::new(b.with_no_client_auth())))
}

/// The same, presenting a client certificate (PostgreSQL `cert` authentication).
pub(crate) fn upstream_config_with_cert(
    cfg: &UpstreamConfig,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, ProxyError> {
    let builder = upstream_builder(cfg)?
        .ok_or_else(|| ProxyError::Config("auth.upstream = \"cert\" needs upstream.tls other than disable".into()))?;
    let config = builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| ProxyError::Config(format!("minted client certificate: {e}")))?;
    Ok(Arc::new(config))
}

fn upstream_builder(
    cfg: &UpstreamConfig,
) -> Result<Option<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>>, ProxyError> {
    let builder = match cfg.tls {
        UpstreamTlsMode::Disable => return Ok(None),
        UpstreamTlsMode::Prefer | UpstreamTlsMode::Require => {
            client_builder()?.dangerous().with_custom_certificate_verifier(Arc::new(EncryptOnly::new()))
        }
        UpstreamTlsMode::VerifyFull => {
            let ca = cfg
                .ca_file
                .as_deref()
                .ok_or_else(|| ProxyError::Config("upstream.tls = \"verify-full\" needs upstream.ca_file".into()))?;
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| ProxyError::tls(ca, e.to_string()))?;
            }
            client_builder()?.with_root_certificates(roots)
        }
    };
    Ok(Some(builder))
}

/// The crypto provider every TLS configuration of the proxy uses: the process default when
/// one is installed, else aws-lc-rs. Named explicitly: when another crate in the binary
/// enables rustls's `ring` feature too (the archive's S3 client does), rustls cannot pick
/// a default by itself and `ClientConfig::builder()` panics (regression).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

fn client_builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, ProxyError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Config(format!("TLS setup: {e}")))
}

/// The server name for SNI and verification.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, ProxyError> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| ProxyError::Config(format!("upstream host {host:?} is not a valid TLS server name")))
}

/// `require` semantics, as libpq: the channel is encrypted, the peer is not authenticated.
/// Handshake signatures are still checked so the session keys are bound to the certificate
/// the server sent.
#[derive(Debug)]
struct EncryptOnly {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl EncryptOnly {
    fn new() -> Self {
        Self { provider: provider() }
    }
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built with the whole workspace (as CI builds it), rustls has both the aws-lc-rs and
    /// the ring provider: `ClientConfig::builder()` could not choose and panicked, so every
    /// session toward a TLS upstream failed once the archive's S3 client was linked in.
    #[test]
    fn upstream_tls_failed_once_rustls_had_two_crypto_providers() {
        let cfg: UpstreamConfig = toml::from_str("host = \"db.example\"\ntls = \"require\"").unwrap();
        assert!(upstream_config(&cfg).unwrap().is_some());
    }
}
