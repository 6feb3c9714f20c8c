//! Data keys and how they are wrapped for the record's `key` field.
//!
//! A *data key* is the 32-byte AES key DAS calls "the data key": the raw AES wrapping key
//! of the "BC"/"DataKey" keyring inside every ESDK message of a record. Aurora stores it
//! KMS-encrypted in `key`; pgtrail stores it wrapped to a *wrapping key pair* with HPKE
//! (RFC 9180), so the capture side needs only the public half: it can write records and
//! read none.
//!
//! # Wrapped data key format, version 1 (the bytes of `key` after base64)
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `PGTK` |
//! | 4 | format version, `1` |
//! | 5 | key id length `n` (1..=64) |
//! | 6..6+n | key id of the wrapping key, ASCII (`pgtw-` and 16 hex digits) |
//! | +32 | HPKE encapsulated key (DHKEM(X25519, HKDF-SHA256)) |
//! | +48 | HPKE ciphertext of the data key: AES-256-GCM, 32 bytes and a 16-byte tag |
//!
//! HPKE runs in base mode with KDF HKDF-SHA256 and AEAD AES-256-GCM, `info` =
//! `pgtrail data key v1` and AAD = bytes `0..6+n` (so the key id cannot be swapped).
//!
//! A key id is `pgtw-` followed by the first 8 bytes of SHA-256 of the public key, in
//! hex: derived from the key, so a reader can never attach the wrong name to a key.

use std::collections::HashMap;

use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::EnvelopeError;
use crate::message::RawAesKey;

type HpkeAead = hpke::aead::AesGcm256;
type HpkeKdf = hpke::kdf::HkdfSha256;

const MAGIC: &[u8; 4] = b"PGTK";
const WRAP_VERSION: u8 = 1;
const HPKE_INFO: &[u8] = b"pgtrail data key v1";
const ENCAPPED_LEN: usize = 32;
const WRAPPED_KEY_LEN: usize = 32 + 16;

/// A record data key (see the module docs).
pub struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub fn random() -> DataKey {
        use rand::RngCore;
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(key.as_mut());
        DataKey(key)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        DataKey(Zeroizing::new(bytes))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The raw AES keyring DAS messages are made with: provider "BC", key name "DataKey".
    pub fn raw_aes(&self) -> RawAesKey {
        RawAesKey::das(*self.0)
    }
}

/// Something that can wrap a data key for the record's `key` field. The HPKE wrapping
/// public key is one; KMS or Vault transit keys can be others.
pub trait KeyProvider: Send + Sync {
    /// The id of the key that wraps, recorded so readers find the right one.
    fn key_id(&self) -> &str;
    /// Wraps a data key; the result is stored base64'd in `key`.
    fn wrap(&self, data_key: &DataKey) -> Result<Vec<u8>, EnvelopeError>;
}

/// The public half of a wrapping key pair: what the capture side holds.
#[derive(Clone)]
pub struct WrappingPublicKey {
    id: String,
    key: <X25519HkdfSha256 as Kem>::PublicKey,
}

impl std::fmt::Debug for WrappingPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappingPublicKey").field("id", &self.id).finish()
    }
}

/// The private half: what readers hold.
pub struct WrappingPrivateKey {
    id: String,
    key: <X25519HkdfSha256 as Kem>::PrivateKey,
}

impl std::fmt::Debug for WrappingPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappingPrivateKey").field("id", &self.id).finish_non_exhaustive()
    }
}

fn key_id_of(public: &[u8]) -> String {
    let digest = Sha256::digest(public);
    let mut id = String::from("pgtw-");
    for b in &digest[..8] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

impl WrappingPrivateKey {
    /// A fresh key pair from the operating system's randomness.
    pub fn generate() -> WrappingPrivateKey {
        let (key, public) = X25519HkdfSha256::gen_keypair(&mut rand::rng());
        WrappingPrivateKey { id: key_id_of(&public.to_bytes()), key }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<WrappingPrivateKey, EnvelopeError> {
        let key = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(bytes)
            .map_err(|_| EnvelopeError::BadKey("a wrapping private key is 32 bytes"))?;
        let public = X25519HkdfSha256::sk_to_pk(&key);
        Ok(WrappingPrivateKey { id: key_id_of(&public.to_bytes()), key })
    }

    /// The secret bytes, for writing the key file.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key.to_bytes().to_vec())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn public_key(&self) -> WrappingPublicKey {
        WrappingPublicKey { id: self.id.clone(), key: X25519HkdfSha256::sk_to_pk(&self.key) }
    }
}

impl WrappingPublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<WrappingPublicKey, EnvelopeError> {
        let key = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(bytes)
            .map_err(|_| EnvelopeError::BadKey("a wrapping public key is 32 bytes"))?;
        Ok(WrappingPublicKey { id: key_id_of(bytes), key })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.key.to_bytes().to_vec()
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

fn wrapped_prefix(key_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + key_id.len() + ENCAPPED_LEN + WRAPPED_KEY_LEN);
    out.extend_from_slice(MAGIC);
    out.push(WRAP_VERSION);
    out.push(u8::try_from(key_id.len()).expect("key ids are short"));
    out.extend_from_slice(key_id.as_bytes());
    out
}

impl KeyProvider for WrappingPublicKey {
    fn key_id(&self) -> &str {
        &self.id
    }

    fn wrap(&self, data_key: &DataKey) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = wrapped_prefix(&self.id);
        let (encapped, ciphertext) = hpke::single_shot_seal::<HpkeAead, HpkeKdf, X25519HkdfSha256, _>(
            &OpModeS::Base,
            &self.key,
            HPKE_INFO,
            data_key.bytes(),
            &out,
            &mut rand::rng(),
        )
        .map_err(|_| EnvelopeError::BadKey("HPKE could not encapsulate to this public key"))?;
        out.extend_from_slice(&encapped.to_bytes());
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }
}

/// The key id a wrapped data key names, without unwrapping it.
pub fn wrapped_key_id(wrapped: &[u8]) -> Result<&str, EnvelopeError> {
    if wrapped.len() < 6 || &wrapped[..4] != MAGIC {
        return Err(EnvelopeError::WrappedKey("not a pgtrail wrapped key (bad magic)"));
    }
    if wrapped[4] != WRAP_VERSION {
        return Err(EnvelopeError::WrappedKey("unsupported wrapped key version"));
    }
    let n = usize::from(wrapped[5]);
    if n == 0 || wrapped.len() != 6 + n + ENCAPPED_LEN + WRAPPED_KEY_LEN {
        return Err(EnvelopeError::WrappedKey("wrong length"));
    }
    std::str::from_utf8(&wrapped[6..6 + n]).map_err(|_| EnvelopeError::WrappedKey("key id is not text"))
}

/// Private wrapping keys by id: readers accept records wrapped to any key they hold, so
/// a new wrapping key never requires rewriting old records.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: HashMap<String, WrappingPrivateKey>,
}

impl KeyRing {
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    pub fn add(&mut self, key: WrappingPrivateKey) {
        self.keys.insert(key.id.clone(), key);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Unwraps a data key wrapped by [`KeyProvider::wrap`] of one of our keys.
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, EnvelopeError> {
        let id = wrapped_key_id(wrapped)?;
        let key = self.keys.get(id).ok_or_else(|| EnvelopeError::UnknownKeyId(id.to_owned()))?;
        let prefix_len = 6 + id.len();
        let encapped =
            <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&wrapped[prefix_len..prefix_len + ENCAPPED_LEN])
                .map_err(|_| EnvelopeError::WrappedKey("bad encapsulated key"))?;
        let plaintext = hpke::single_shot_open::<HpkeAead, HpkeKdf, X25519HkdfSha256>(
            &OpModeR::Base,
            &key.key,
            &encapped,
            HPKE_INFO,
            &wrapped[prefix_len + ENCAPPED_LEN..],
            &wrapped[..prefix_len],
        )
        .map_err(|_| EnvelopeError::Unwrap(id.to_owned()))?;
        let plaintext = Zeroizing::new(plaintext);
        let bytes: [u8; 32] =
            plaintext.as_slice().try_into().map_err(|_| EnvelopeError::WrappedKey("data key is not 32 bytes"))?;
        Ok(DataKey::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_key_ids() {
        let private = WrappingPrivateKey::generate();
        let public = private.public_key();
        assert_eq!(public.id(), private.id());
        assert!(public.id().starts_with("pgtw-") && public.id().len() == 21);
        let reloaded = WrappingPrivateKey::from_bytes(&private.to_bytes()).unwrap();
        assert_eq!(reloaded.id(), private.id());
        assert_eq!(WrappingPublicKey::from_bytes(&public.to_bytes()).unwrap().id(), public.id());

        let data_key = DataKey::random();
        let wrapped = public.wrap(&data_key).unwrap();
        assert_eq!(wrapped_key_id(&wrapped).unwrap(), public.id());
        let mut ring = KeyRing::new();
        ring.add(WrappingPrivateKey::generate());
        assert!(matches!(ring.unwrap(&wrapped), Err(EnvelopeError::UnknownKeyId(_))));
        ring.add(private);
        assert_eq!(ring.unwrap(&wrapped).unwrap().bytes(), data_key.bytes());

        // Any changed byte is refused, never unwrapped to a different key.
        for i in 0..wrapped.len() {
            let mut bad = wrapped.clone();
            bad[i] ^= 0x01;
            assert!(ring.unwrap(&bad).is_err(), "byte {i}");
        }
    }
}
