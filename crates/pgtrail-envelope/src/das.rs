//! The DAS record: `{"type":"DatabaseActivityMonitoringRecords","version":"1.1",
//! "databaseActivityEvents":<base64 ESDK message>,"key":<base64 wrapped data key>}`.
//!
//! The message's plaintext is exactly one gzip member of the inner record JSON
//! (`{"type":"DatabaseActivityMonitoringRecord",...}`): Python's
//! `zlib.decompress(x, MAX_WBITS + 16)` keeps only the first member, so more than one
//! would hide events from AWS's sample consumers. Readers refuse anything else.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::EnvelopeError;
use crate::keys::{DataKey, KeyProvider, KeyRing};
use crate::message::{self, RawAesKey, Suite};

pub const RECORDS_TYPE: &str = "DatabaseActivityMonitoringRecords";
pub const RECORD_VERSION: &str = "1.1";
/// Readers refuse to inflate a record beyond this (a gzip bomb is not an audit record).
pub const MAX_INNER_RECORD: usize = 256 << 20;

/// The outer DAS record, field order as Aurora writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DasEnvelope {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: String,
    #[serde(rename = "databaseActivityEvents")]
    pub database_activity_events: String,
    pub key: String,
}

impl DasEnvelope {
    pub fn parse(json: &[u8]) -> Result<DasEnvelope, EnvelopeError> {
        let envelope: DasEnvelope = serde_json::from_slice(json).map_err(EnvelopeError::Json)?;
        if envelope.kind != RECORDS_TYPE {
            return Err(EnvelopeError::NotDas("type is not DatabaseActivityMonitoringRecords"));
        }
        Ok(envelope)
    }

    /// The ESDK message bytes.
    pub fn message(&self) -> Result<Vec<u8>, EnvelopeError> {
        BASE64.decode(&self.database_activity_events).map_err(|_| EnvelopeError::Base64("databaseActivityEvents"))
    }

    /// The wrapped data key bytes.
    pub fn wrapped_key(&self) -> Result<Vec<u8>, EnvelopeError> {
        BASE64.decode(&self.key).map_err(|_| EnvelopeError::Base64("key"))
    }
}

/// Compresses into exactly one gzip member.
pub fn gzip(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4 + 64), flate2::Compression::new(level));
    encoder.write_all(bytes).expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// Inflates exactly one gzip member; trailing bytes (a second member, garbage) are an error.
pub fn gunzip_one_member(bytes: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let mut decoder = flate2::bufread::GzDecoder::new(bytes);
    let mut out = Vec::with_capacity(bytes.len() * 4);
    (&mut decoder).take(MAX_INNER_RECORD as u64 + 1).read_to_end(&mut out).map_err(EnvelopeError::Gzip)?;
    if out.len() > MAX_INNER_RECORD {
        return Err(EnvelopeError::NotDas("inner record larger than 256 MiB"));
    }
    if !decoder.into_inner().is_empty() {
        return Err(EnvelopeError::GzipMembers);
    }
    Ok(out)
}

/// Encrypts `inner_json` into a DAS record with the given data key and its wrapped form.
pub fn seal_record(inner_json: &[u8], data_key: &RawAesKey, wrapped_key_b64: &str, suite: Suite, level: u32) -> String {
    let message = message::encrypt(data_key, suite, &gzip(inner_json, level));
    envelope_json(&message, wrapped_key_b64)
}

/// The outer JSON for an ESDK message and a wrapped key.
pub fn envelope_json(message: &[u8], wrapped_key_b64: &str) -> String {
    let envelope = DasEnvelope {
        kind: RECORDS_TYPE.to_owned(),
        version: RECORD_VERSION.to_owned(),
        database_activity_events: BASE64.encode(message),
        key: wrapped_key_b64.to_owned(),
    };
    serde_json::to_string(&envelope).expect("strings serialize")
}

/// When the sealing side makes a new data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealerConfig {
    pub suite: Suite,
    /// A new data key after this many records.
    pub rotate_after_records: u64,
    /// A new data key after this much time.
    pub rotate_after: Duration,
    /// gzip level, 0 to 9.
    pub gzip_level: u32,
}

impl Default for SealerConfig {
    fn default() -> SealerConfig {
        SealerConfig {
            suite: Suite::Aes256GcmHkdfSha256,
            rotate_after_records: 10_000,
            rotate_after: Duration::from_secs(15 * 60),
            gzip_level: 1,
        }
    }
}

struct CurrentKey {
    raw: RawAesKey,
    wrapped_b64: String,
    records: u64,
    since: Instant,
}

/// The capture side: seals inner records, rotating data keys as configured. Holds only
/// a [`KeyProvider`] (a public key): it can never open what it sealed once the data key
/// has rotated away.
pub struct Sealer {
    provider: Arc<dyn KeyProvider>,
    config: SealerConfig,
    current: Option<CurrentKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("key_id", &self.provider.key_id()).field("config", &self.config).finish()
    }
}

/// One sealed record.
#[derive(Debug)]
pub struct Sealed {
    pub json: String,
    /// True when this record is the first under a new data key.
    pub new_data_key: bool,
}

impl Sealer {
    pub fn new(provider: Arc<dyn KeyProvider>, config: SealerConfig) -> Sealer {
        Sealer { provider, config, current: None }
    }

    pub fn key_id(&self) -> &str {
        self.provider.key_id()
    }

    /// Forgets the current data key: the next record gets a new one.
    pub fn rotate(&mut self) {
        self.current = None;
    }

    /// True once a data key has been made (the next new one is a rotation).
    pub fn has_data_key(&self) -> bool {
        self.current.is_some()
    }

    /// True when the next [`Sealer::seal`] will make a new data key.
    pub fn rotation_due(&self) -> bool {
        match &self.current {
            None => true,
            Some(k) => k.records >= self.config.rotate_after_records || k.since.elapsed() >= self.config.rotate_after,
        }
    }

    pub fn seal(&mut self, inner_json: &[u8]) -> Result<Sealed, EnvelopeError> {
        let new_data_key = self.rotation_due();
        if new_data_key {
            let data_key = DataKey::random();
            let wrapped = self.provider.wrap(&data_key)?;
            self.current = Some(CurrentKey {
                raw: data_key.raw_aes(),
                wrapped_b64: BASE64.encode(wrapped),
                records: 0,
                since: Instant::now(),
            });
        }
        let current = self.current.as_mut().expect("set above");
        current.records += 1;
        let json =
            seal_record(inner_json, &current.raw, &current.wrapped_b64, self.config.suite, self.config.gzip_level);
        Ok(Sealed { json, new_data_key })
    }
}

/// The reading side: opens records with a key ring, caching unwrapped data keys.
#[derive(Debug)]
pub struct Opener {
    ring: KeyRing,
    cache: HashMap<String, RawAesKey>,
}

const OPENER_CACHE: usize = 4096;

impl Opener {
    pub fn new(ring: KeyRing) -> Opener {
        Opener { ring, cache: HashMap::new() }
    }

    /// The data key of a record (for `pgtrail keys unwrap`).
    pub fn data_key(&mut self, envelope: &DasEnvelope) -> Result<&RawAesKey, EnvelopeError> {
        if !self.cache.contains_key(&envelope.key) {
            if self.cache.len() >= OPENER_CACHE {
                self.cache.clear();
            }
            let data_key = self.ring.unwrap(&envelope.wrapped_key()?)?;
            self.cache.insert(envelope.key.clone(), data_key.raw_aes());
        }
        Ok(&self.cache[&envelope.key])
    }

    /// Decrypts and inflates a record: the inner record JSON.
    pub fn open(&mut self, envelope_json: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let envelope = DasEnvelope::parse(envelope_json)?;
        let message = envelope.message()?;
        let key = self.data_key(&envelope)?;
        gunzip_one_member(&message::decrypt(key, &message)?)
    }
}
