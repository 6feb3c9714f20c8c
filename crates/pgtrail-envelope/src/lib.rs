//! Envelopes: how pgtrail encrypts a batch of activity events so that only a holder of
//! the private wrapping key can read it, in the exact shape of an Aurora Database
//! Activity Streams record.
//!
//! Owns: the envelope format and its cryptography (data keys, wrapping, sealing and
//! opening). Must not: read or write files or the journal, or know what an event is beyond
//! the bytes it seals.
//!
//! - [`message`]: AWS Encryption SDK messages (suites 0x0178 and 0x0478).
//! - [`das`]: the DAS record (gzip'd inner JSON inside a message, base64'd into JSON).
//! - [`keys`]: data keys, their wrapping for the record's `key` field, key providers.

#![forbid(unsafe_code)]

pub mod config;
pub mod das;
pub mod keys;
pub mod message;

pub use config::{EnvelopeConfigError, EnvelopeSection};
pub use das::{DasEnvelope, Opener, Sealer, SealerConfig};
pub use keys::{DataKey, KeyProvider, KeyRing, WrappingPrivateKey, WrappingPublicKey};
pub use message::{RawAesKey, Suite};

/// Errors of the envelope layer.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message truncated in {0}")]
    Truncated(&'static str),
    #[error("message malformed: {field} {problem}")]
    Malformed { field: &'static str, problem: &'static str },
    #[error("unsupported message format version {0}")]
    UnsupportedVersion(u8),
    #[error("unsupported algorithm suite 0x{0:04x}")]
    UnsupportedSuite(u16),
    #[error("algorithm suite 0x{0:04x} is signed; pgtrail reads only unsigned suites (0x0178, 0x0478)")]
    SignedSuite(u16),
    #[error("unsupported content type {0} (only framed content is supported)")]
    UnsupportedContentType(u8),
    #[error("no encrypted data key in the message opens with this key")]
    NoMatchingDataKey,
    #[error("key commitment does not match: the message was not made with this data key")]
    CommitmentMismatch,
    #[error("authentication failed for the {0}: the message was modified or the key is wrong")]
    Authentication(&'static str),
    #[error("{0} bytes follow the final frame")]
    TrailingBytes(usize),
    #[error("record payload is not valid gzip")]
    Gzip(#[source] std::io::Error),
    #[error("record plaintext is not exactly one gzip member")]
    GzipMembers,
    #[error("record JSON is invalid")]
    Json(#[source] serde_json::Error),
    #[error("record field {0} is not valid base64")]
    Base64(&'static str),
    #[error("record is not a DAS record: {0}")]
    NotDas(&'static str),
    #[error("wrapped data key: {0}")]
    WrappedKey(&'static str),
    #[error("no key in the key ring has id {0}")]
    UnknownKeyId(String),
    #[error("the data key does not unwrap with key {0}: wrong key or modified record")]
    Unwrap(String),
    #[error("invalid key material: {0}")]
    BadKey(&'static str),
}
