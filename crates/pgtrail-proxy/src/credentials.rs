//! How the proxy logs in to PostgreSQL itself for token logins: the resolved `[auth]`
//! (verifiers, mapping, upstream credentials), short-lived client certificates minted per
//! database user, passwords from the secrets file, and the proxy's answers to PostgreSQL's
//! authentication requests (cleartext, MD5, SCRAM-SHA-256 with the server's proof checked).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use pgtrail_identity::ca::UpstreamCa;
use pgtrail_identity::local::LocalVerifier;
use pgtrail_identity::{Authenticator, OidcVerifier};
use pgtrail_wire::{Authentication, FrontendMessage};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Deserialize;
use tracing::info;

use crate::ProxyError;
use crate::config::{ClientAuth, ProxyConfig, UpstreamConfig, UpstreamLogin};
use crate::error::SessionError;

/// How the proxy proves itself to PostgreSQL for token logins.
pub(crate) enum UpstreamCredentials {
    Cert(CertMinter),
    Secrets(HashMap<String, String>),
}

/// Everything token login needs, resolved at start.
pub(crate) struct TokenLogin {
    pub(crate) authenticator: Authenticator,
    pub(crate) upstream: UpstreamCredentials,
}

impl std::fmt::Debug for TokenLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenLogin").finish_non_exhaustive()
    }
}

impl TokenLogin {
    /// Resolves `[auth]`; `None` for passthrough.
    pub(crate) fn from_config(config: &ProxyConfig) -> Result<Option<Self>, ProxyError> {
        let auth = &config.auth;
        let cfg_err = |m: &str| Err(ProxyError::Config(m.to_owned()));
        if auth.client == ClientAuth::Passthrough {
            if auth.upstream != UpstreamLogin::Passthrough {
                return cfg_err("auth.upstream other than passthrough needs auth.client = \"token\"");
            }
            return Ok(None);
        }
        if config.client_tls.is_none() {
            return cfg_err(
                "auth.client = \"token\" needs [proxy.tls] (cert_file, key_file): tokens are accepted only over TLS",
            );
        }
        if auth.oidc.is_none() && auth.local_token_key.is_none() {
            return cfg_err("auth.client = \"token\" needs [auth.oidc] or auth.local_token_key");
        }
        if auth.oidc.is_some() && auth.mapping.is_empty() {
            return cfg_err(
                "[auth.oidc] needs [auth.mapping]: user_claim, users or groups (otherwise nobody may log in)",
            );
        }
        let oidc = auth.oidc.clone().map(OidcVerifier::new).transpose().map_err(ProxyError::Config)?;
        let skew = auth.oidc.as_ref().map_or(30, |o| o.clock_skew_secs);
        let local = auth
            .local_token_key
            .as_deref()
            .map(|path| LocalVerifier::load(path, skew))
            .transpose()
            .map_err(|e| ProxyError::Config(format!("auth.local_token_key: {e}")))?;
        let upstream = match auth.upstream {
            UpstreamLogin::Passthrough => {
                return cfg_err(
                    "auth.client = \"token\" needs auth.upstream = \"cert\" or \"secrets\": the token is not a database password",
                );
            }
            UpstreamLogin::Cert => {
                let Some(dir) = &auth.ca_dir else { return cfg_err("auth.upstream = \"cert\" needs auth.ca_dir") };
                let ttl = Duration::from_secs(auth.cert_ttl_secs.max(60));
                let (ca, created) = UpstreamCa::load_or_create(dir, ttl)
                    .map_err(|e| ProxyError::Config(format!("auth.ca_dir: {e}")))?;
                if created {
                    info!(ca = %dir.join(pgtrail_identity::ca::CA_CERT_FILE).display(), "created the upstream login CA; give PostgreSQL this file as ssl_ca_file");
                }
                let minter = CertMinter { ca, upstream: config.upstream.clone(), cache: Mutex::new(HashMap::new()) };
                // Fails now, not at the first login, when upstream TLS is off.
                if config.upstream.tls == crate::config::UpstreamTlsMode::Disable {
                    return cfg_err("auth.upstream = \"cert\" needs upstream.tls = \"require\" or \"verify-full\"");
                }
                minter.config_for("pgtrail").map_err(|e| ProxyError::Config(e.to_string()))?;
                UpstreamCredentials::Cert(minter)
            }
            UpstreamLogin::Secrets => {
                let Some(path) = &auth.secrets_file else {
                    return cfg_err("auth.upstream = \"secrets\" needs auth.secrets_file");
                };
                UpstreamCredentials::Secrets(read_secrets(path)?)
            }
        };
        Ok(Some(Self { authenticator: Authenticator::new(oidc, local, auth.mapping.clone()), upstream }))
    }

    /// What the proxy answers PostgreSQL with when logging in as `user`.
    pub(crate) fn credentials_for(&self, user: &str) -> Result<ProxyCredentials, SessionError> {
        match &self.upstream {
            UpstreamCredentials::Cert(minter) => Ok(ProxyCredentials::Cert(minter.config_for(user)?)),
            UpstreamCredentials::Secrets(secrets) => {
                secrets.get(user).map(|p| ProxyCredentials::Password(p.clone())).ok_or(SessionError::NoUpstreamSecret)
            }
        }
    }
}

/// The secrets file: `user = "password"` per line (TOML), readable by its owner only.
fn read_secrets(path: &Path) -> Result<HashMap<String, String>, ProxyError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |m: String| ProxyError::Config(format!("auth.secrets_file {}: {m}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err("must not be readable by group or others (chmod 600)".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    #[derive(Deserialize)]
    #[serde(transparent)]
    struct Secrets(HashMap<String, String>);
    let Secrets(map) = toml::from_str(&text).map_err(|e| err(format!("expected `user = \"password\"` lines: {e}")))?;
    Ok(map)
}

/// Client certificates per database user, re-minted when half their lifetime is gone.
pub(crate) struct CertMinter {
    ca: UpstreamCa,
    upstream: UpstreamConfig,
    cache: Mutex<HashMap<String, (Arc<ClientConfig>, Instant)>>,
}

impl CertMinter {
    fn config_for(&self, user: &str) -> Result<Arc<ClientConfig>, SessionError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((config, minted)) = cache.get(user)
            && minted.elapsed() < self.ca.ttl() / 2
        {
            return Ok(Arc::clone(config));
        }
        let cert = self.ca.mint(user).map_err(|e| SessionError::CertMint(e.to_string()))?;
        let chain = vec![CertificateDer::from(cert.cert_der), CertificateDer::from(self.ca.cert_der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pkcs8_der));
        let config = crate::tls::upstream_config_with_cert(&self.upstream, chain, key)
            .map_err(|e| SessionError::CertMint(e.to_string()))?;
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(user.to_owned(), (Arc::clone(&config), Instant::now()));
        Ok(config)
    }
}

/// How the proxy logs in upstream for one session.
pub(crate) enum ProxyCredentials {
    Cert(Arc<ClientConfig>),
    Password(String),
}

/// The proxy's side of PostgreSQL's authentication exchange, answering with `password`
/// (None with a client certificate: PostgreSQL then asks for nothing).
pub(crate) struct UpstreamAnswer {
    user: String,
    password: Option<String>,
    scram: Option<postgres_protocol::authentication::sasl::ScramSha256>,
}

impl UpstreamAnswer {
    pub(crate) fn new(user: String, password: Option<String>) -> Self {
        Self { user, password, scram: None }
    }

    /// The reply to an authentication request from PostgreSQL (None: nothing to send).
    pub(crate) fn reply(&mut self, request: &Authentication) -> Result<Option<FrontendMessage>, SessionError> {
        use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
        let password = || self.password.clone().ok_or(SessionError::UpstreamWantsPassword);
        let body = match request {
            Authentication::CleartextPassword => cstring(password()?.as_bytes()),
            Authentication::Md5Password { salt } => {
                let hash =
                    postgres_protocol::authentication::md5_hash(self.user.as_bytes(), password()?.as_bytes(), *salt);
                cstring(hash.as_bytes())
            }
            Authentication::Sasl { mechanisms } => {
                if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(SessionError::UnsupportedAuth);
                }
                let scram = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                let mut out = BytesMut::new();
                out.put_slice(SCRAM_SHA_256.as_bytes());
                out.put_u8(0);
                let message = scram.message();
                out.put_i32(i32::try_from(message.len()).unwrap_or(i32::MAX));
                out.put_slice(message);
                self.scram = Some(scram);
                out.freeze()
            }
            Authentication::SaslContinue(data) => {
                let scram = self.scram.as_mut().ok_or(SessionError::UnsupportedAuth)?;
                scram.update(data).map_err(|_| SessionError::UpstreamAuthFailed)?;
                Bytes::copy_from_slice(scram.message())
            }
            Authentication::SaslFinal(data) => {
                let mut scram = self.scram.take().ok_or(SessionError::UnsupportedAuth)?;
                // Checks the server's signature: the server knew the password too.
                scram.finish(data).map_err(|_| SessionError::UpstreamAuthFailed)?;
                return Ok(None);
            }
            Authentication::Ok => return Ok(None),
            _ => return Err(SessionError::UnsupportedAuth),
        };
        Ok(Some(FrontendMessage::AuthResponse(body)))
    }
}

fn cstring(bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(bytes.len() + 1);
    out.put_slice(bytes);
    out.put_u8(0);
    out.freeze()
}
