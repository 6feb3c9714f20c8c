//! AWS Encryption SDK messages: the binary format inside a DAS record's
//! `databaseActivityEvents`.
//!
//! Only what Database Activity Streams needs is supported, and all of it both ways:
//!
//! - suites 0x0178 (AES-256-GCM, HKDF-SHA256, message format v1: what Aurora emits) and
//!   0x0478 (AES-256-GCM, HKDF-SHA512, key commitment, message format v2, unsigned);
//! - framed content, any frame length on decode (4096 when we encode);
//! - raw AES keyrings (one AES-256-GCM wrapping key, a provider id and a key name: DAS uses
//!   provider "BC" and key name "DataKey");
//! - the empty encryption context on encode, any on decode.
//!
//! Signed suites (0x0378, 0x0578...) and non-framed content are rejected with their own
//! error, never half-decoded.
//!
//! Layout, big-endian throughout (v1 | v2 where they differ):
//!
//! ```text
//! header body: version(1) [type 0x80 (1) | -] suite(2) message_id(16 | 32)
//!              aad_len(2) aad(aad_len) edk_count(2) {len(2) provider_id, len(2) info,
//!              len(2) ciphertext}* content_type(1) [reserved 0(4) iv_len(1) | -]
//!              frame_length(4) [- | commitment key(32)]
//! header auth: [iv(12) | -] tag(16)        (AES-GCM of nothing, AAD = header body)
//! frame:       seq(4) iv(12) ciphertext(frame_length) tag(16)
//! final frame: 0xFFFFFFFF seq(4) iv(12) len(4) ciphertext(len) tag(16)
//! frame AAD:   message_id || "AWSKMSEncryptionClient Frame" (or "... Final Frame")
//!              || seq(4) || content length(8)
//! ```
//!
//! The message key (a fresh random 32 bytes per message) is encrypted under the wrapping
//! key with AES-256-GCM and a random IV, AAD = the serialized encryption context; the
//! provider info is key name || tag bits(4) || iv length(4) || iv. The content key is
//! HKDF(message key): v1 with no salt and info = suite || message id; v2 with salt =
//! message id, info = suite || "DERIVEKEY", and the commitment key with info "COMMITKEY".

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::EnvelopeError;

/// The frame length Aurora uses, and so do we.
pub const FRAME_LENGTH: u32 = 4096;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const FINAL_FRAME_MARK: u32 = 0xFFFF_FFFF;
const FRAME_AAD: &[u8] = b"AWSKMSEncryptionClient Frame";
const FINAL_FRAME_AAD: &[u8] = b"AWSKMSEncryptionClient Final Frame";
const CONTENT_TYPE_FRAMED: u8 = 2;
const V1_MESSAGE_TYPE: u8 = 0x80;

/// The algorithm suites we encode and decode. In configuration files they are named by
/// their ids, `"0x0178"` and `"0x0478"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
pub enum Suite {
    /// 0x0178: AES-256-GCM with an HKDF-SHA256 derived key, message format v1. Aurora's.
    #[serde(rename = "0x0178")]
    Aes256GcmHkdfSha256,
    /// 0x0478: AES-256-GCM with HKDF-SHA512 and key commitment, message format v2.
    #[serde(rename = "0x0478")]
    Aes256GcmHkdfSha512Commit,
}

impl Suite {
    pub fn id(self) -> u16 {
        match self {
            Suite::Aes256GcmHkdfSha256 => 0x0178,
            Suite::Aes256GcmHkdfSha512Commit => 0x0478,
        }
    }

    pub fn from_id(id: u16) -> Result<Suite, EnvelopeError> {
        match id {
            0x0178 => Ok(Suite::Aes256GcmHkdfSha256),
            0x0478 => Ok(Suite::Aes256GcmHkdfSha512Commit),
            0x0214 | 0x0346 | 0x0378 | 0x0578 => Err(EnvelopeError::SignedSuite(id)),
            other => Err(EnvelopeError::UnsupportedSuite(other)),
        }
    }

    fn message_format(self) -> u8 {
        match self {
            Suite::Aes256GcmHkdfSha256 => 1,
            Suite::Aes256GcmHkdfSha512Commit => 2,
        }
    }

    fn message_id_len(self) -> usize {
        match self {
            Suite::Aes256GcmHkdfSha256 => 16,
            Suite::Aes256GcmHkdfSha512Commit => 32,
        }
    }
}

/// An AES-256 key of a raw AES keyring, with the names the message records for it.
/// In DAS terms this is the record's data key.
pub struct RawAesKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    provider_id: String,
    key_name: String,
}

impl std::fmt::Debug for RawAesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAesKey")
            .field("provider_id", &self.provider_id)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl RawAesKey {
    /// The key as DAS uses it: provider "BC", key name "DataKey".
    pub fn das(key: [u8; KEY_LEN]) -> RawAesKey {
        RawAesKey::new(key, "BC", "DataKey")
    }

    pub fn new(key: [u8; KEY_LEN], provider_id: &str, key_name: &str) -> RawAesKey {
        RawAesKey { key: Zeroizing::new(key), provider_id: provider_id.to_owned(), key_name: key_name.to_owned() }
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }
}

/// The random parts of one message. Fresh for every message; fixed only to reproduce
/// reference vectors.
pub struct MessageNonces {
    pub message_id: Vec<u8>,
    pub message_key: Zeroizing<[u8; KEY_LEN]>,
    pub edk_iv: [u8; IV_LEN],
}

impl std::fmt::Debug for MessageNonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageNonces").field("message_id", &self.message_id).finish_non_exhaustive()
    }
}

impl MessageNonces {
    pub fn random(suite: Suite) -> MessageNonces {
        use rand::RngCore;
        let mut rng = rand::rng();
        let mut message_id = vec![0u8; suite.message_id_len()];
        rng.fill_bytes(&mut message_id);
        let mut message_key = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(message_key.as_mut());
        let mut edk_iv = [0u8; IV_LEN];
        rng.fill_bytes(&mut edk_iv);
        MessageNonces { message_id, message_key, edk_iv }
    }
}

/// One encrypted data key of a message header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedDataKey {
    pub provider_id: Vec<u8>,
    pub provider_info: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// A parsed message header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Message format version: 1 or 2.
    pub version: u8,
    /// The suite id as written (parsing does not require us to support it).
    pub suite_id: u16,
    pub message_id: Vec<u8>,
    /// The serialized encryption context (empty for DAS).
    pub encryption_context: Vec<u8>,
    pub encrypted_data_keys: Vec<EncryptedDataKey>,
    pub content_type: u8,
    pub frame_length: u32,
    /// v2 only: the key commitment.
    pub commitment: Option<[u8; KEY_LEN]>,
    /// Length of the header body (the AAD of the header auth tag).
    pub body_len: usize,
    /// v1: the header auth IV; v2: zeros.
    pub auth_iv: [u8; IV_LEN],
    pub auth_tag: [u8; TAG_LEN],
    /// Total header length, auth included: where the frames start.
    pub len: usize,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], EnvelopeError> {
        let end =
            self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or(EnvelopeError::Truncated(field))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, EnvelopeError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, EnvelopeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, EnvelopeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn short_field(&mut self, field: &'static str) -> Result<&'a [u8], EnvelopeError> {
        let len = self.u16(field)? as usize;
        self.take(len, field)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], EnvelopeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }
}

/// Parses a message header without decrypting anything.
pub fn parse_header(message: &[u8]) -> Result<Header, EnvelopeError> {
    let mut c = Cursor { bytes: message, pos: 0 };
    let version = c.u8("version")?;
    if version == 1 {
        let message_type = c.u8("message type")?;
        if message_type != V1_MESSAGE_TYPE {
            return Err(EnvelopeError::Malformed { field: "message type", problem: "is not 0x80" });
        }
    } else if version != 2 {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let suite_id = c.u16("suite id")?;
    let id_len = if version == 1 { 16 } else { 32 };
    let message_id = c.take(id_len, "message id")?.to_vec();
    let encryption_context = c.short_field("encryption context")?.to_vec();
    let edk_count = c.u16("encrypted data key count")?;
    if edk_count == 0 {
        return Err(EnvelopeError::Malformed { field: "encrypted data key count", problem: "is zero" });
    }
    let mut encrypted_data_keys = Vec::with_capacity(usize::from(edk_count).min(16));
    for _ in 0..edk_count {
        encrypted_data_keys.push(EncryptedDataKey {
            provider_id: c.short_field("provider id")?.to_vec(),
            provider_info: c.short_field("provider info")?.to_vec(),
            ciphertext: c.short_field("encrypted data key")?.to_vec(),
        });
    }
    let content_type = c.u8("content type")?;
    let commitment;
    let frame_length;
    if version == 1 {
        if c.u32("reserved")? != 0 {
            return Err(EnvelopeError::Malformed { field: "reserved", problem: "is not zero" });
        }
        if usize::from(c.u8("iv length")?) != IV_LEN {
            return Err(EnvelopeError::Malformed { field: "iv length", problem: "is not 12" });
        }
        frame_length = c.u32("frame length")?;
        commitment = None;
    } else {
        frame_length = c.u32("frame length")?;
        // Every v2 suite carries a 32-byte commitment key.
        commitment = Some(c.array::<KEY_LEN>("commitment key")?);
    }
    let body_len = c.pos;
    let auth_iv = if version == 1 { c.array::<IV_LEN>("header auth iv")? } else { [0u8; IV_LEN] };
    let auth_tag = c.array::<TAG_LEN>("header auth tag")?;
    Ok(Header {
        version,
        suite_id,
        message_id,
        encryption_context,
        encrypted_data_keys,
        content_type,
        frame_length,
        commitment,
        body_len,
        auth_iv,
        auth_tag,
        len: c.pos,
    })
}

fn derive_keys(
    suite: Suite,
    message_key: &[u8; KEY_LEN],
    message_id: &[u8],
) -> (Zeroizing<[u8; KEY_LEN]>, Option<Zeroizing<[u8; KEY_LEN]>>) {
    let mut content_key = Zeroizing::new([0u8; KEY_LEN]);
    let suite_id = suite.id().to_be_bytes();
    match suite {
        Suite::Aes256GcmHkdfSha256 => {
            let hk = Hkdf::<Sha256>::new(None, message_key);
            hk.expand_multi_info(&[&suite_id, message_id], content_key.as_mut())
                .expect("32 bytes is a valid HKDF length");
            (content_key, None)
        }
        Suite::Aes256GcmHkdfSha512Commit => {
            let hk = Hkdf::<Sha512>::new(Some(message_id), message_key);
            hk.expand_multi_info(&[&suite_id, b"DERIVEKEY"], content_key.as_mut())
                .expect("32 bytes is a valid HKDF length");
            let mut commit = Zeroizing::new([0u8; KEY_LEN]);
            hk.expand(b"COMMITKEY", commit.as_mut()).expect("32 bytes is a valid HKDF length");
            (content_key, Some(commit))
        }
    }
}

fn frame_iv(seq: u32) -> [u8; IV_LEN] {
    let mut iv = [0u8; IV_LEN];
    iv[IV_LEN - 4..].copy_from_slice(&seq.to_be_bytes());
    iv
}

fn frame_aad(message_id: &[u8], final_frame: bool, seq: u32, len: usize) -> Vec<u8> {
    let label = if final_frame { FINAL_FRAME_AAD } else { FRAME_AAD };
    let mut aad = Vec::with_capacity(message_id.len() + label.len() + 12);
    aad.extend_from_slice(message_id);
    aad.extend_from_slice(label);
    aad.extend_from_slice(&seq.to_be_bytes());
    aad.extend_from_slice(&(len as u64).to_be_bytes());
    aad
}

fn push_short_field(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("header fields we write are short");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Encrypts `plaintext` into one framed message with random nonces.
pub fn encrypt(key: &RawAesKey, suite: Suite, plaintext: &[u8]) -> Vec<u8> {
    encrypt_with(key, suite, plaintext, &MessageNonces::random(suite), FRAME_LENGTH)
}

/// Encrypts with the given nonces: deterministic, for reference vectors. Never reuse
/// nonces for real data.
pub fn encrypt_with(
    key: &RawAesKey,
    suite: Suite,
    plaintext: &[u8],
    nonces: &MessageNonces,
    frame_length: u32,
) -> Vec<u8> {
    assert_eq!(nonces.message_id.len(), suite.message_id_len(), "message id length of the suite");
    assert!(frame_length > 0, "frame length must be positive");
    let frame_len = frame_length as usize;
    let frames = plaintext.len().div_ceil(frame_len).max(1);
    let mut out = Vec::with_capacity(200 + plaintext.len() + frames * (IV_LEN + TAG_LEN + 8));

    // The message key, wrapped by the raw AES key.
    let wrapper = Aes256Gcm::new(key.key.as_ref().into());
    let mut edk = nonces.message_key.to_vec();
    let edk_tag = wrapper
        .encrypt_in_place_detached(Nonce::from_slice(&nonces.edk_iv), &[], &mut edk)
        .expect("AES-GCM encrypts 32 bytes");
    edk.extend_from_slice(&edk_tag);
    let mut provider_info = Vec::with_capacity(key.key_name.len() + 8 + IV_LEN);
    provider_info.extend_from_slice(key.key_name.as_bytes());
    provider_info.extend_from_slice(&((TAG_LEN * 8) as u32).to_be_bytes());
    provider_info.extend_from_slice(&(IV_LEN as u32).to_be_bytes());
    provider_info.extend_from_slice(&nonces.edk_iv);

    let (content_key, commitment) = derive_keys(suite, &nonces.message_key, &nonces.message_id);

    // Header body.
    out.push(suite.message_format());
    if suite.message_format() == 1 {
        out.push(V1_MESSAGE_TYPE);
    }
    out.extend_from_slice(&suite.id().to_be_bytes());
    out.extend_from_slice(&nonces.message_id);
    out.extend_from_slice(&0u16.to_be_bytes()); // empty encryption context
    out.extend_from_slice(&1u16.to_be_bytes());
    push_short_field(&mut out, key.provider_id.as_bytes());
    push_short_field(&mut out, &provider_info);
    push_short_field(&mut out, &edk);
    out.push(CONTENT_TYPE_FRAMED);
    if suite.message_format() == 1 {
        out.extend_from_slice(&0u32.to_be_bytes());
        out.push(IV_LEN as u8);
        out.extend_from_slice(&frame_length.to_be_bytes());
    } else {
        out.extend_from_slice(&frame_length.to_be_bytes());
        out.extend_from_slice(commitment.as_ref().expect("v2 suites commit").as_ref());
    }

    // Header auth: a tag over the header body, with a zero IV.
    let cipher = Aes256Gcm::new(content_key.as_ref().into());
    let header_tag =
        cipher.encrypt_in_place_detached(Nonce::from_slice(&[0u8; IV_LEN]), &out, &mut []).expect("AES-GCM tag");
    if suite.message_format() == 1 {
        out.extend_from_slice(&[0u8; IV_LEN]);
    }
    out.extend_from_slice(&header_tag);

    // Frames: all full but the last, which holds the rest (a full frame when the
    // plaintext is an exact multiple, an empty one only for an empty plaintext).
    for (index, chunk) in chunks_with_final(plaintext, frame_len).enumerate() {
        let seq = u32::try_from(index + 1).expect("fewer than 2^32 frames");
        let final_frame = (index + 1) == frames;
        let iv = frame_iv(seq);
        if final_frame {
            out.extend_from_slice(&FINAL_FRAME_MARK.to_be_bytes());
        }
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&iv);
        if final_frame {
            out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        }
        let start = out.len();
        out.extend_from_slice(chunk);
        let aad = frame_aad(&nonces.message_id, final_frame, seq, chunk.len());
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&iv), &aad, &mut out[start..])
            .expect("AES-GCM encrypts a frame");
        out.extend_from_slice(&tag);
    }
    out
}

fn chunks_with_final(plaintext: &[u8], frame_len: usize) -> impl Iterator<Item = &[u8]> {
    let empty: &[u8] = &[];
    let only_empty = plaintext.is_empty().then_some(empty);
    plaintext.chunks(frame_len).chain(only_empty)
}

/// Decrypts a message with a raw AES key; returns the plaintext.
///
/// Checks, in order: the header parses; the suite is one we support; an encrypted data
/// key names this key's provider and key name and decrypts; (v2) the commitment matches;
/// the header auth tag; every frame's sequence number and tag; nothing follows the final
/// frame.
pub fn decrypt(key: &RawAesKey, message: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let header = parse_header(message)?;
    let suite = Suite::from_id(header.suite_id)?;
    if suite.message_format() != header.version {
        return Err(EnvelopeError::Malformed { field: "suite id", problem: "does not match the message format" });
    }
    if header.content_type != CONTENT_TYPE_FRAMED {
        return Err(EnvelopeError::UnsupportedContentType(header.content_type));
    }
    if header.frame_length == 0 {
        return Err(EnvelopeError::Malformed { field: "frame length", problem: "is zero" });
    }
    let message_key = unwrap_message_key(key, &header)?;
    let (content_key, commitment) = derive_keys(suite, &message_key, &header.message_id);
    if let (Some(expected), Some(stored)) = (&commitment, &header.commitment)
        && !bool::from(expected.as_ref().ct_eq(stored.as_ref()))
    {
        return Err(EnvelopeError::CommitmentMismatch);
    }
    let cipher = Aes256Gcm::new(content_key.as_ref().into());
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(&header.auth_iv),
            &message[..header.body_len],
            &mut [],
            Tag::from_slice(&header.auth_tag),
        )
        .map_err(|_| EnvelopeError::Authentication("header"))?;

    let frame_len = header.frame_length as usize;
    let mut c = Cursor { bytes: message, pos: header.len };
    let mut plaintext = Vec::with_capacity(message.len().saturating_sub(header.len));
    let mut expected_seq: u32 = 1;
    loop {
        let first = c.u32("frame sequence number")?;
        let final_frame = first == FINAL_FRAME_MARK;
        let seq = if final_frame { c.u32("final frame sequence number")? } else { first };
        if seq != expected_seq {
            return Err(EnvelopeError::Malformed { field: "frame sequence number", problem: "is out of order" });
        }
        let iv = c.array::<IV_LEN>("frame iv")?;
        let len = if final_frame { c.u32("final frame length")? as usize } else { frame_len };
        if len > frame_len {
            return Err(EnvelopeError::Malformed { field: "final frame length", problem: "exceeds the frame length" });
        }
        let start = plaintext.len();
        plaintext.extend_from_slice(c.take(len, "frame content")?);
        let tag = c.array::<TAG_LEN>("frame tag")?;
        let aad = frame_aad(&header.message_id, final_frame, seq, len);
        cipher
            .decrypt_in_place_detached(Nonce::from_slice(&iv), &aad, &mut plaintext[start..], Tag::from_slice(&tag))
            .map_err(|_| EnvelopeError::Authentication("frame"))?;
        if final_frame {
            break;
        }
        expected_seq = expected_seq
            .checked_add(1)
            .ok_or(EnvelopeError::Malformed { field: "frame sequence number", problem: "overflows" })?;
    }
    if c.pos != message.len() {
        return Err(EnvelopeError::TrailingBytes(message.len() - c.pos));
    }
    Ok(plaintext)
}

fn unwrap_message_key(key: &RawAesKey, header: &Header) -> Result<Zeroizing<[u8; KEY_LEN]>, EnvelopeError> {
    let wrapper = Aes256Gcm::new(key.key.as_ref().into());
    let name = key.key_name.as_bytes();
    for edk in &header.encrypted_data_keys {
        if edk.provider_id != key.provider_id.as_bytes() || !edk.provider_info.starts_with(name) {
            continue;
        }
        let rest = &edk.provider_info[name.len()..];
        if rest.len() != 8 + IV_LEN
            || rest[..4] != ((TAG_LEN * 8) as u32).to_be_bytes()
            || rest[4..8] != (IV_LEN as u32).to_be_bytes()
        {
            continue;
        }
        let iv = &rest[8..];
        if edk.ciphertext.len() != KEY_LEN + TAG_LEN {
            continue;
        }
        let mut buf = Zeroizing::new([0u8; KEY_LEN]);
        buf.copy_from_slice(&edk.ciphertext[..KEY_LEN]);
        let tag = Tag::from_slice(&edk.ciphertext[KEY_LEN..]);
        if wrapper
            .decrypt_in_place_detached(Nonce::from_slice(iv), &header.encryption_context, buf.as_mut(), tag)
            .is_ok()
        {
            return Ok(buf);
        }
    }
    Err(EnvelopeError::NoMatchingDataKey)
}
