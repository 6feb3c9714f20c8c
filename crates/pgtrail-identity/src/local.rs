//! pgtrail local tokens, for places without an identity provider.
//!
//! `pgtrail token issue` signs a JWT (EdDSA, Ed25519) with the key pair in the keys
//! directory: `token-signing.key` (PKCS#8, created 0600) and `token-signing.pub` (SPKI),
//! which the proxy is given. Claims: `iss = "pgtrail-local"`, `aud = "pgtrail"`, `sub`
//! (the person), `iat`/`nbf`/`exp`, a random `jti`, optional `name`, `email`, `groups`, and
//! `pgtrail_users`: the database users the token may log in as.

use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Serialize;

use crate::{Claims, TokenError, check_times, now_secs};

pub const ISSUER: &str = "pgtrail-local";
pub const AUDIENCE: &str = "pgtrail";
const KID_PREFIX: &str = "pgtrail-local-";
pub const PRIVATE_FILE: &str = "token-signing.key";
pub const PUBLIC_FILE: &str = "token-signing.pub";
/// The longest lifetime `issue` accepts: local tokens are meant to be short-lived.
pub const MAX_TTL_SECS: u64 = 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum LocalKeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a usable Ed25519 PEM key ({message})")]
    Key { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LocalKeyError + '_ {
    move |source| LocalKeyError::Io { path: path.to_path_buf(), source }
}

/// The signing side, used by `pgtrail token issue`.
pub struct LocalSigner {
    key: EncodingKey,
    kid: String,
}

impl std::fmt::Debug for LocalSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSigner").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// What a token says about its holder.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    pub subject: String,
    pub db_users: Vec<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub ttl_secs: u64,
}

#[derive(Serialize)]
struct LocalClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    groups: &'a [String],
    pgtrail_users: &'a [String],
}

/// A key id derived from the public key, so tokens say which key signed them.
fn kid_of(public_der: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(public_der);
    format!("{KID_PREFIX}{}", hex_prefix(&digest[..8]))
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl LocalSigner {
    /// Loads the key pair from `dir`, creating it first if it does not exist (returns
    /// whether it did).
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), LocalKeyError> {
        let private = dir.join(PRIVATE_FILE);
        let created = if private.exists() {
            false
        } else {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let mut seed = [0u8; 32];
            rand::fill(&mut seed);
            let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
            let pem = signing
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| LocalKeyError::Key { path: private.clone(), message: e.to_string() })?;
            crate::write_new(&private, pem.as_bytes(), 0o600).map_err(io(&private))?;
            let public = signing
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| LocalKeyError::Key { path: private.clone(), message: e.to_string() })?;
            crate::write_new(&dir.join(PUBLIC_FILE), public.as_bytes(), 0o644).map_err(io(&dir.join(PUBLIC_FILE)))?;
            true
        };
        let pem = std::fs::read(&private).map_err(io(&private))?;
        let key = EncodingKey::from_ed_pem(&pem)
            .map_err(|e| LocalKeyError::Key { path: private.clone(), message: e.to_string() })?;
        let public = std::fs::read(dir.join(PUBLIC_FILE)).map_err(io(&dir.join(PUBLIC_FILE)))?;
        let kid = kid_of(&public_der(&public, &dir.join(PUBLIC_FILE))?);
        Ok((Self { key, kid }, created))
    }

    /// A signed token for `request`.
    pub fn issue(&self, request: &TokenRequest) -> Result<String, TokenError> {
        if request.ttl_secs == 0 || request.ttl_secs > MAX_TTL_SECS {
            return Err(TokenError::Invalid(format!("the lifetime must be between 1 s and {MAX_TTL_SECS} s")));
        }
        let now = now_secs();
        let mut jti = [0u8; 16];
        rand::fill(&mut jti);
        let db_users =
            if request.db_users.is_empty() { vec![request.subject.clone()] } else { request.db_users.clone() };
        let claims = LocalClaims {
            iss: ISSUER,
            aud: AUDIENCE,
            sub: &request.subject,
            iat: now,
            nbf: now,
            exp: now + i64::try_from(request.ttl_secs).unwrap_or(0),
            jti: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jti),
            name: request.name.as_deref(),
            email: request.email.as_deref(),
            groups: &request.groups,
            pgtrail_users: &db_users,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| TokenError::Invalid(e.to_string()))
    }
}

fn public_der(pem: &[u8], path: &Path) -> Result<Vec<u8>, LocalKeyError> {
    crate::pem_der(std::str::from_utf8(pem).unwrap_or(""))
        .ok_or_else(|| LocalKeyError::Key { path: path.to_path_buf(), message: "not a PEM public key".into() })
}

/// The verifying side, in the proxy.
pub struct LocalVerifier {
    key: DecodingKey,
    kid: String,
    skew: u64,
}

impl std::fmt::Debug for LocalVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalVerifier").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// Whether a token claims to be a pgtrail local token (by its header's key id; the
/// signature check decides whether it is one).
pub fn is_local(token: &str) -> bool {
    jsonwebtoken::decode_header(token).is_ok_and(|h| h.kid.is_some_and(|k| k.starts_with(KID_PREFIX)))
}

/// Whether the verified claims allow `db_user`.
pub fn permits(claims: &Claims, db_user: &str) -> bool {
    crate::claim_groups(claims, "pgtrail_users").iter().any(|u| u == db_user)
}

impl LocalVerifier {
    /// Loads the public key (`token-signing.pub`).
    pub fn load(path: &Path, clock_skew_secs: u64) -> Result<Self, LocalKeyError> {
        let pem = std::fs::read(path).map_err(io(path))?;
        let key = DecodingKey::from_ed_pem(&pem)
            .map_err(|e| LocalKeyError::Key { path: path.to_path_buf(), message: e.to_string() })?;
        let kid = kid_of(&public_der(&pem, path)?);
        Ok(Self { key, kid, skew: clock_skew_secs })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(TokenError::UnknownKey(crate::printable(&header.kid.unwrap_or_default())));
        }
        let validation = crate::validation(Algorithm::EdDSA, self.skew, ISSUER, AUDIENCE);
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &validation)
            .map_err(|e| TokenError::from_jwt(&e, ISSUER, AUDIENCE))?;
        check_times(&data.claims, self.skew, MAX_TTL_SECS)?;
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_name_their_users() {
        let dir = tempfile::tempdir().expect("dir");
        let (signer, created) = LocalSigner::load_or_create(dir.path()).expect("signer");
        assert!(created);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(PRIVATE_FILE)).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let request = TokenRequest { subject: "alice".into(), ttl_secs: 900, ..TokenRequest::default() };
        let token = signer.issue(&request).expect("token");
        assert!(is_local(&token));
        let verifier = LocalVerifier::load(&dir.path().join(PUBLIC_FILE), 0).expect("verifier");
        let claims = verifier.verify(&token).expect("valid");
        assert!(permits(&claims, "alice"));
        assert!(!permits(&claims, "postgres"));
        // A second load uses the same key.
        let (again, created) = LocalSigner::load_or_create(dir.path()).expect("signer");
        assert!(!created);
        assert!(verifier.verify(&again.issue(&request).expect("token")).is_ok());
        // Another key pair's tokens are refused.
        let other = tempfile::tempdir().expect("dir");
        let (stranger, _) = LocalSigner::load_or_create(other.path()).expect("signer");
        assert!(matches!(verifier.verify(&stranger.issue(&request).expect("token")), Err(TokenError::UnknownKey(_))));
        // A tampered payload fails the signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&parts[1]).expect("b64");
        let forged = String::from_utf8(payload).expect("utf8").replace("\"alice\"", "\"postgres\"");
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
        assert_eq!(verifier.verify(&parts.join(".")), Err(TokenError::Signature));
        assert!(signer.issue(&TokenRequest { ttl_secs: MAX_TTL_SECS + 1, ..request }).is_err());
    }
}
