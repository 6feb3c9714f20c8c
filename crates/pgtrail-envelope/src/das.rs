//! The DAS record: `{"type":"DatabaseActivityMonitoringRecords","version":"1.1",
//! "databaseActivityEvents":<base64 ESDK message>,"key":<base64 wrapped data key>}`.
//!
//! The message's plaintext is exactly one gzip member of the inner record JSON
//! (`{"type":"DatabaseActivityMonitoringRecord",...}`): Python's
//! `zlib.decompress(x, MAX_WBITS + 16)` keeps only the first member, so more than one
//! would hide events from AWS's sample consumers. Readers refuse anything else.

use std::collections::HashMap;
use std::io::Read;
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
    Gzipper::new(level).gzip(bytes)
}

/// A gzip compressor kept from one record to the next. Making one allocates and clears a
/// few hundred KiB of tables, which took longer than compressing a small sync record;
/// resetting keeps the allocation.
pub struct Gzipper {
    compress: flate2::Compress,
}

impl std::fmt::Debug for Gzipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gzipper").finish_non_exhaustive()
    }
}

impl Gzipper {
    /// `level`: 0 (store) to 9.
    pub fn new(level: u32) -> Gzipper {
        Gzipper { compress: flate2::Compress::new_gzip(flate2::Compression::new(level.min(9)), 15) }
    }

    /// Compresses into exactly one gzip member.
    pub fn gzip(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.compress.reset();
        let mut out = Vec::with_capacity(bytes.len() / 2 + 64);
        loop {
            let consumed = usize::try_from(self.compress.total_in()).expect("a slice length fits usize");
            let status = self
                .compress
                .compress_vec(&bytes[consumed..], &mut out, flate2::FlushCompress::Finish)
                .expect("deflate into a Vec cannot fail");
            if status == flate2::Status::StreamEnd {
                return out;
            }
            out.reserve(out.capacity().max(64));
        }
    }
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

/// The outer JSON for an ESDK message and a wrapped key (base64), in Aurora's field order.
/// Base64 needs no JSON escaping, so the record is written directly.
pub fn envelope_json(message: &[u8], wrapped_key_b64: &str) -> String {
    let mut json = String::with_capacity(120 + message.len().div_ceil(3) * 4 + wrapped_key_b64.len());
    for part in ["{\"type\":\"", RECORDS_TYPE, "\",\"version\":\"", RECORD_VERSION, "\",\"databaseActivityEvents\":\""]
    {
        json.push_str(part);
    }
    BASE64.encode_string(message, &mut json);
    for part in ["\",\"key\":\"", wrapped_key_b64, "\"}"] {
        json.push_str(part);
    }
    json
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
    gzipper: Gzipper,
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
        let gzipper = Gzipper::new(config.gzip_level);
        Sealer { provider, config, current: None, gzipper }
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
        let message = message::encrypt(&current.raw, self.config.suite, &self.gzipper.gzip(inner_json));
        let json = envelope_json(&message, &current.wrapped_b64);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_json_is_what_serde_writes_for_the_record() {
        let message = [0u8, 1, 2, 250, 251, 252, 253];
        let written = envelope_json(&message, "a2V5");
        let by_serde = serde_json::to_string(&DasEnvelope {
            kind: RECORDS_TYPE.to_owned(),
            version: RECORD_VERSION.to_owned(),
            database_activity_events: BASE64.encode(message),
            key: "a2V5".to_owned(),
        })
        .unwrap();
        assert_eq!(written, by_serde);
        assert_eq!(DasEnvelope::parse(written.as_bytes()).unwrap().message().unwrap(), message);
    }

    #[test]
    fn a_reused_gzipper_makes_one_whole_member_per_record() {
        let mut gzipper = Gzipper::new(1);
        let large: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for input in [&b"{\"a\":1}"[..], &large, b"", b"{\"b\":2}"] {
            let member = gzipper.gzip(input);
            assert_eq!(gunzip_one_member(&member).unwrap(), input);
        }
    }
}
