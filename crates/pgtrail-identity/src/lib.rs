//! Who is behind a session.
//!
//! Owns: token verification, the person-to-database-user mapping, and the upstream login
//! CA. Must not: speak the PostgreSQL protocol (pgtrail-proxy does) or write events.
//!
//! A client logs in to the proxy with a token as its password: an OIDC token from the
//! organisation's identity provider ([`oidc`]) or a pgtrail local token ([`local`]). The
//! [`Authenticator`] verifies it, decides with the [`UserMapping`] whether that person may
//! use the database user they asked for, and returns the [`Identity`] every event of the
//! session then carries. [`ca`] mints the short-lived client certificates the proxy uses
//! to log in to PostgreSQL as that user, so no database password exists.
//!
//! Nothing here logs a token or a claim value beyond the subject.

pub mod ca;
pub mod local;
pub mod mapping;
pub mod oidc;

use std::sync::Arc;

pub use mapping::UserMapping;
pub use oidc::{OidcConfig, OidcVerifier, TokenKind};
pub use pgtrail_event::Identity;

/// A verified token's claims.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// Why a token was refused. The text is safe to show the client: it names the check that
/// failed, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the password is not a token (a signed JWT)")]
    Malformed,
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token is signed with an unknown key (kid {0})")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is older than the maximum token age")]
    TooOld,
    #[error("token issuer is not {0}")]
    Issuer(String),
    #[error("token audience does not include {0}")]
    Audience(String),
    #[error("token lacks the {0} claim")]
    MissingClaim(String),
    #[error("token is not acceptable: {0}")]
    Invalid(String),
    #[error("identity provider unavailable: {0}")]
    Provider(String),
}

impl TokenError {
    pub(crate) fn from_jwt(e: &jsonwebtoken::errors::Error, issuer: &str, audience: &str) -> Self {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidSignature => Self::Signature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::Issuer(issuer.into()),
            ErrorKind::InvalidAudience => Self::Audience(audience.into()),
            ErrorKind::MissingRequiredClaim(c) => Self::MissingClaim(c.clone()),
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Self::Algorithm("mismatch".into()),
            ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => Self::Malformed,
            other => Self::Invalid(format!("{other:?}")),
        }
    }
}

/// A value from an unverified token, fit for an error message and a log line: printable
/// ASCII only, at most 64 characters.
pub(crate) fn printable(text: &str) -> String {
    text.chars().filter(char::is_ascii_graphic).take(64).collect()
}

/// The checks every token gets, whatever its issuer: this algorithm only, `exp` and `nbf`
/// within `skew`, the issuer, the audience, and `exp`, `iss`, `aud`, `sub` present.
pub(crate) fn validation(
    alg: jsonwebtoken::Algorithm,
    skew: u64,
    issuer: &str,
    audience: &str,
) -> jsonwebtoken::Validation {
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.leeway = skew;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation
}

/// Creates `path` (it must not exist) with `mode`, writes `bytes` and syncs them.
pub(crate) fn write_new(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The DER inside a single-object PEM text.
pub(crate) fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body.trim()).ok()
}

/// Seconds since the epoch.
pub(crate) fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `iat` must be present, not in the future, and at most `max_age` old (each within `skew`).
pub(crate) fn check_times(claims: &Claims, skew: u64, max_age: u64) -> Result<(), TokenError> {
    let iat = claims.get("iat").and_then(serde_json::Value::as_i64).ok_or(TokenError::MissingClaim("iat".into()))?;
    let now = now_secs();
    let skew = i64::try_from(skew).unwrap_or(i64::MAX);
    let max_age = i64::try_from(max_age).unwrap_or(i64::MAX);
    if iat > now.saturating_add(skew) {
        return Err(TokenError::NotYetValid);
    }
    if now.saturating_sub(iat) > max_age.saturating_add(skew) {
        return Err(TokenError::TooOld);
    }
    Ok(())
}

/// Why a login was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The token itself failed (SQLSTATE 28P01, like a wrong password).
    #[error("{0}")]
    Token(#[from] TokenError),
    /// A valid token whose person may not use the database user asked for (28000).
    #[error("{} may not log in as database user {user:?}", identity.subject)]
    NotPermitted { identity: Arc<Identity>, user: String },
}

impl LoginError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Token(_) => "28P01",
            Self::NotPermitted { .. } => "28000",
        }
    }
}

/// Verifies login tokens and maps people to database users.
#[derive(Debug)]
pub struct Authenticator {
    oidc: Option<OidcVerifier>,
    local: Option<local::LocalVerifier>,
    mapping: UserMapping,
}

impl Authenticator {
    pub fn new(oidc: Option<OidcVerifier>, local: Option<local::LocalVerifier>, mapping: UserMapping) -> Self {
        Self { oidc, local, mapping }
    }

    pub fn oidc(&self) -> Option<&OidcVerifier> {
        self.oidc.as_ref()
    }

    /// Verifies `token` and checks that its person may log in as `db_user`.
    pub async fn login(&self, token: &str, db_user: &str) -> Result<Arc<Identity>, LoginError> {
        let token = token.trim();
        if let Some(local) = &self.local
            && local::is_local(token)
        {
            let claims = local.verify(token)?;
            let identity = Arc::new(identity_from(&claims, "local-token", "groups"));
            if local::permits(&claims, db_user) {
                return Ok(identity);
            }
            return Err(LoginError::NotPermitted { identity, user: db_user.into() });
        }
        let Some(oidc) = &self.oidc else {
            return Err(TokenError::Malformed.into());
        };
        let claims = oidc.verify(token).await?;
        let identity = Arc::new(identity_from(&claims, "oidc", &oidc.config().groups_claim));
        if self.mapping.permits(&claims, &identity, db_user) {
            Ok(identity)
        } else {
            Err(LoginError::NotPermitted { identity, user: db_user.into() })
        }
    }
}

fn claim_str(claims: &Claims, name: &str) -> Option<String> {
    claims.get(name).and_then(serde_json::Value::as_str).map(str::to_owned)
}

/// The groups claim as a list: an array of strings, or one string.
pub(crate) fn claim_groups(claims: &Claims, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

fn identity_from(claims: &Claims, method: &str, groups_claim: &str) -> Identity {
    Identity {
        issuer: claim_str(claims, "iss").unwrap_or_default(),
        subject: claim_str(claims, "sub").unwrap_or_default(),
        name: claim_str(claims, "name"),
        email: claim_str(claims, "email"),
        groups: claim_groups(claims, groups_claim),
        token_id: claim_str(claims, "jti"),
        auth_method: method.into(),
    }
}
