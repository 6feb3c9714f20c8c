//! OpenID Connect token verification: keys from the issuer's JWKS, found through its
//! discovery document, cached, and fetched again when a token names a key id the cache
//! does not hold (key rotation), at most once per `refresh_interval`.
//!
//! A token is accepted only if all of these hold: it is a JWS (never `alg: none`) signed
//! with an asymmetric algorithm from the allowed list by a key of the issuer's JWKS whose
//! type fits that algorithm (so an HS256 token "signed" with the public key fails); `iss`
//! is the configured issuer; `aud` contains the configured audience; `exp` is in the
//! future and `nbf` (if any) in the past, both within `clock_skew`; `iat` is present, not
//! in the future and at most `max_token_age` old; `sub` is present.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::{Claims, TokenError, check_times};

/// How to verify tokens of one issuer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL exactly as tokens name it in `iss`; discovery is
    /// `<issuer>/.well-known/openid-configuration`. https, or http to a loopback address.
    pub issuer: String,
    /// The audience tokens must be for: the client id for ID tokens, the API's resource
    /// identifier for access tokens.
    pub audience: String,
    /// Which token clients send as their password: `id_token` or `access_token`. It states
    /// the deployment's intent; the checks are the same for both, and `audience` is what
    /// tells them apart (the client id, or the API's identifier).
    #[serde(default)]
    pub token: TokenKind,
    /// Tolerated clock difference with the issuer, in seconds.
    #[serde(default = "default_skew")]
    pub clock_skew_secs: u64,
    /// The oldest token (by `iat`) accepted, in seconds, whatever its `exp` says.
    #[serde(default = "default_max_age")]
    pub max_token_age_secs: u64,
    /// Least time between two JWKS fetches caused by unknown key ids, in seconds.
    #[serde(default = "default_refresh")]
    pub jwks_refresh_secs: u64,
    /// The claim holding the person's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

/// Which OIDC token stands in for the password.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    #[default]
    IdToken,
    AccessToken,
}

fn default_skew() -> u64 {
    30
}
fn default_max_age() -> u64 {
    15 * 60
}
fn default_refresh() -> u64 {
    30
}
pub(crate) fn default_groups_claim() -> String {
    "groups".into()
}

impl OidcConfig {
    /// A configuration with defaults for everything but the issuer and audience.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            token: TokenKind::default(),
            clock_skew_secs: default_skew(),
            max_token_age_secs: default_max_age(),
            jwks_refresh_secs: default_refresh(),
            groups_claim: default_groups_claim(),
        }
    }

    /// Checks what can be checked without the network.
    pub fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.issuer).map_err(|e| format!("oidc.issuer {:?}: {e}", self.issuer))?;
        let host = url.host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(format!("oidc.issuer {:?} must be https (http only to a loopback address)", self.issuer));
        }
        if self.audience.is_empty() {
            return Err("oidc.audience is empty".into());
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Default)]
struct KeyCache {
    jwks_uri: Option<String>,
    keys: HashMap<String, (DecodingKey, Option<Algorithm>)>,
    /// Keys without a `kid`, tried when the token names none.
    anonymous: Vec<(DecodingKey, Option<Algorithm>)>,
    fetched: Option<Instant>,
}

/// Verifies tokens of one issuer.
pub struct OidcVerifier {
    config: OidcConfig,
    http: reqwest::Client,
    cache: Mutex<KeyCache>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier").field("issuer", &self.config.issuer).finish_non_exhaustive()
    }
}

/// The asymmetric algorithms accepted; HMAC is never, since its key would be a secret
/// shared with the provider, and `none` is not a signature.
const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl OidcVerifier {
    pub fn new(config: OidcConfig) -> Result<Self, String> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { config, http, cache: Mutex::new(KeyCache::default()) })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Fetches the discovery document and the JWKS now (at startup, so a wrong issuer is
    /// reported before the first login).
    pub async fn prefetch(&self) -> Result<usize, TokenError> {
        let mut cache = self.cache.lock().await;
        self.refresh(&mut cache).await?;
        Ok(cache.keys.len() + cache.anonymous.len())
    }

    async fn refresh(&self, cache: &mut KeyCache) -> Result<(), TokenError> {
        let jwks_uri = match &cache.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
                let discovery: Discovery = self.get_json(&url).await?;
                if discovery.issuer != self.config.issuer {
                    warn!(configured = %self.config.issuer, discovered = %discovery.issuer, "discovery names another issuer");
                    return Err(TokenError::Provider(format!(
                        "the discovery document names issuer {:?}, not {:?}",
                        discovery.issuer, self.config.issuer
                    )));
                }
                cache.jwks_uri = Some(discovery.jwks_uri.clone());
                discovery.jwks_uri
            }
        };
        let set: JwkSet = self.get_json(&jwks_uri).await?;
        let mut keys = HashMap::new();
        let mut anonymous = Vec::new();
        for jwk in &set.keys {
            if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            let alg = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok());
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.insert(kid.clone(), (key, alg));
                }
                None => anonymous.push((key, alg)),
            }
        }
        info!(issuer = %self.config.issuer, keys = keys.len() + anonymous.len(), "JWKS fetched");
        cache.keys = keys;
        cache.anonymous = anonymous;
        cache.fetched = Some(Instant::now());
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, TokenError> {
        let response = self.http.get(url).send().await.map_err(|e| TokenError::Provider(without_url(&e)))?;
        if !response.status().is_success() {
            return Err(TokenError::Provider(format!("{url} answered {}", response.status())));
        }
        response.json().await.map_err(|e| TokenError::Provider(format!("{url}: {}", without_url(&e))))
    }

    /// Verifies a token and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !ALLOWED.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let candidates = self.keys_for(header.kid.as_deref(), header.alg).await?;
        let skew = self.config.clock_skew_secs;
        let validation = crate::validation(header.alg, skew, &self.config.issuer, &self.config.audience);
        let mut last = TokenError::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) => {
                    check_times(&data.claims, skew, self.config.max_token_age_secs)?;
                    return Ok(data.claims);
                }
                Err(e) => last = TokenError::from_jwt(&e, &self.config.issuer, &self.config.audience),
            }
        }
        Err(last)
    }

    /// The keys that may have signed a token with this `kid` and `alg`, refreshing the
    /// JWKS once when the key id is unknown.
    async fn keys_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<DecodingKey>, TokenError> {
        let mut cache = self.cache.lock().await;
        let refresh_every = Duration::from_secs(self.config.jwks_refresh_secs);
        let known = |cache: &KeyCache| match kid {
            Some(kid) => cache.keys.contains_key(kid),
            None => !cache.anonymous.is_empty() || cache.keys.len() == 1,
        };
        let stale = cache.fetched.is_none_or(|at| at.elapsed() >= refresh_every);
        if !known(&cache) && stale {
            self.refresh(&mut cache).await?;
        }
        let fits = |key_alg: &Option<Algorithm>| key_alg.is_none_or(|a| a == alg);
        let keys: Vec<DecodingKey> = match kid {
            Some(kid) => cache.keys.get(kid).filter(|(_, a)| fits(a)).map(|(k, _)| k.clone()).into_iter().collect(),
            None => cache
                .anonymous
                .iter()
                .chain(cache.keys.values().take(usize::from(cache.keys.len() == 1)))
                .filter(|(_, a)| fits(a))
                .map(|(k, _)| k.clone())
                .collect(),
        };
        if keys.is_empty() {
            return Err(TokenError::UnknownKey(crate::printable(kid.unwrap_or("none"))));
        }
        Ok(keys)
    }
}

/// reqwest's messages name the URL; keep only the cause.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An ES256 key with its JWK.
    struct TestKey {
        encoding: EncodingKey,
        jwk: serde_json::Value,
        kid: String,
    }

    fn key(kid: &str) -> TestKey {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let raw = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
            "kid": kid, "alg": "ES256", "use": "sig",
        });
        let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC key");
        TestKey { encoding, jwk, kid: kid.into() }
    }

    /// A discovery document and a JWKS that the test can change, counting JWKS fetches.
    async fn issuer(jwks: Arc<Mutex<Vec<serde_json::Value>>>, fetches: Arc<AtomicUsize>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let base = issuer.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let mut request = vec![0u8; 4096];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]).to_string();
                let body = if request.starts_with("GET /.well-known/openid-configuration") {
                    serde_json::json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}).to_string()
                } else {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    serde_json::json!({"keys": *jwks.lock().await}).to_string()
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        issuer
    }

    fn token(key: &TestKey, issuer: &str) -> String {
        let now = crate::now_secs();
        let claims = serde_json::json!({"iss": issuer, "aud": "pgtrail", "sub": "alice", "iat": now, "exp": now + 60});
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding).expect("sign")
    }

    #[tokio::test]
    async fn an_unknown_key_id_fetches_the_jwks_again_at_most_once_per_interval() {
        let (k1, k2, k3) = (key("k1"), key("k2"), key("k3"));
        let jwks = Arc::new(Mutex::new(vec![k1.jwk.clone()]));
        let fetches = Arc::new(AtomicUsize::new(0));
        let issuer = issuer(Arc::clone(&jwks), Arc::clone(&fetches)).await;

        let mut config = OidcConfig::new(&issuer, "pgtrail");
        config.jwks_refresh_secs = 0;
        let verifier = OidcVerifier::new(config.clone()).expect("verifier");
        assert_eq!(verifier.prefetch().await.expect("keys"), 1);
        assert_eq!(verifier.verify(&token(&k1, &issuer)).await.expect("k1")["sub"], "alice");
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "a known key needs no fetch");

        // The provider rotates: k2 appears; the first token signed with it fetches again.
        jwks.lock().await.push(k2.jwk.clone());
        assert!(verifier.verify(&token(&k2, &issuer)).await.is_ok());
        assert_eq!(fetches.load(Ordering::SeqCst), 2);

        // With the interval not yet over, unknown key ids do not make the proxy hammer the
        // provider: refused without a fetch.
        config.jwks_refresh_secs = 3600;
        let patient = OidcVerifier::new(config).expect("verifier");
        patient.prefetch().await.expect("keys");
        let before = fetches.load(Ordering::SeqCst);
        for _ in 0..3 {
            assert_eq!(patient.verify(&token(&k3, &issuer)).await, Err(TokenError::UnknownKey("k3".into())));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), before);
    }

    #[test]
    fn issuers_must_be_https_except_on_loopback() {
        assert!(OidcConfig::new("https://idp.example", "a").validate().is_ok());
        assert!(OidcConfig::new("http://127.0.0.1:8080", "a").validate().is_ok());
        assert!(OidcConfig::new("http://[::1]:8080", "a").validate().is_ok());
        assert!(OidcConfig::new("http://idp.example", "a").validate().is_err());
        assert!(OidcConfig::new("https://idp.example", "").validate().is_err());
    }
}
