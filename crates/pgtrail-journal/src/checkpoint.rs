//! Signed checkpoints: an ed25519 signature over (instance, sequence, hash, time) of the
//! record just before the checkpoint. A checkpoint is itself a record in the chain, and a
//! copy of each is appended to the witness file when a witness directory is configured.
//!
//! # Checkpoint payload, version 1
//!
//! | field | bytes |
//! |---|---|
//! | version | 1, `1` |
//! | signing key id | 1 length + ASCII (`pgts-` and 16 hex digits) |
//! | instance | 1 length + UTF-8 |
//! | sequence of the covered record | 8, u64 LE |
//! | hash of the covered record | 32 |
//! | time, µs since the Unix epoch | 8, i64 LE |
//! | ed25519 signature | 64, over `pgtrail checkpoint v1\0` and every byte above |
//!
//! # Witness file
//!
//! `<witness dir>/<instance>.checkpoints`: one line per checkpoint, the payload above in
//! lowercase hex. Appended and fsync'd; the journal's writer never reads or rewrites it.
//! `pgtrail verify --witness` checks that every witnessed checkpoint is in the journal
//! with the same hash: a journal cut short loses checkpoints the witness still has.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::format::Hash;
use crate::{JournalError, io_err};

const VERSION: u8 = 1;
const CONTEXT: &[u8] = b"pgtrail checkpoint v1\0";

fn key_id_of(public: &VerifyingKey) -> String {
    let digest = Sha256::digest(public.as_bytes());
    let mut id = String::from("pgts-");
    for b in &digest[..8] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// The capture side's signing key.
#[derive(Clone)]
pub struct CheckpointSigner {
    id: String,
    key: SigningKey,
}

/// Two signers are the same when they hold the same key.
impl PartialEq for CheckpointSigner {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.key.to_bytes() == other.key.to_bytes()
    }
}

impl Eq for CheckpointSigner {}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner").field("id", &self.id).finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    pub fn generate() -> CheckpointSigner {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        CheckpointSigner::from_bytes(&secret).expect("32 bytes")
    }

    pub fn from_bytes(secret: &[u8]) -> Result<CheckpointSigner, JournalError> {
        let secret: [u8; 32] = secret.try_into().map_err(|_| JournalError::BadKey("a signing key is 32 bytes"))?;
        let key = SigningKey::from_bytes(&secret);
        Ok(CheckpointSigner { id: key_id_of(&key.verifying_key()), key })
    }

    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.key.to_bytes())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn verifying_key(&self) -> CheckpointVerifier {
        CheckpointVerifier { id: self.id.clone(), key: self.key.verifying_key() }
    }

    /// An ed25519 signature over `context` and `message`: for statements other than
    /// checkpoints (a prune anchor, an archive manifest entry), each with its own context
    /// so that one can never be taken for another.
    pub fn sign_detached(&self, context: &[u8], message: &[u8]) -> [u8; 64] {
        let mut signed = context.to_vec();
        signed.extend_from_slice(message);
        self.key.sign(&signed).to_bytes()
    }

    /// The checkpoint payload for the record `seq` with chain hash `hash`.
    pub fn sign(&self, instance: &str, seq: u64, hash: &Hash, time_micros: i64) -> Vec<u8> {
        let mut payload = Vec::with_capacity(160);
        payload.push(VERSION);
        payload.push(self.id.len() as u8);
        payload.extend_from_slice(self.id.as_bytes());
        payload.push(instance.len() as u8);
        payload.extend_from_slice(instance.as_bytes());
        payload.extend_from_slice(&seq.to_le_bytes());
        payload.extend_from_slice(hash);
        payload.extend_from_slice(&time_micros.to_le_bytes());
        let mut message = CONTEXT.to_vec();
        message.extend_from_slice(&payload);
        payload.extend_from_slice(&self.key.sign(&message).to_bytes());
        payload
    }
}

/// A public verification key: all `pgtrail verify` needs.
#[derive(Debug, Clone)]
pub struct CheckpointVerifier {
    id: String,
    key: VerifyingKey,
}

impl CheckpointVerifier {
    pub fn from_bytes(bytes: &[u8]) -> Result<CheckpointVerifier, JournalError> {
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| JournalError::BadKey("a verification key is 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| JournalError::BadKey("not an ed25519 public key"))?;
        Ok(CheckpointVerifier { id: key_id_of(&key), key })
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A checkpoint as read back (its signature not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub key_id: String,
    pub instance: String,
    pub seq: u64,
    pub hash: Hash,
    pub time_micros: i64,
    signed: Vec<u8>,
    signature: [u8; 64],
}

impl Checkpoint {
    pub fn parse(payload: &[u8]) -> Result<Checkpoint, &'static str> {
        let split = payload.len().checked_sub(64).ok_or("checkpoint is truncated")?;
        let (signed, signature) = payload.split_at(split);
        let mut rest = signed;
        let mut take = |n: usize| -> Result<&[u8], &'static str> {
            if rest.len() < n {
                return Err("checkpoint is truncated");
            }
            let (out, tail) = rest.split_at(n);
            rest = tail;
            Ok(out)
        };
        if take(1)?[0] != VERSION {
            return Err("unsupported checkpoint version");
        }
        let n = usize::from(take(1)?[0]);
        let key_id = std::str::from_utf8(take(n)?).map_err(|_| "checkpoint key id is not text")?.to_owned();
        let n = usize::from(take(1)?[0]);
        let instance = std::str::from_utf8(take(n)?).map_err(|_| "checkpoint instance is not text")?.to_owned();
        let seq = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let hash: Hash = take(32)?.try_into().expect("32 bytes");
        let time_micros = i64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        if !rest.is_empty() {
            return Err("checkpoint has trailing bytes");
        }
        Ok(Checkpoint {
            key_id,
            instance,
            seq,
            hash,
            time_micros,
            signed: signed.to_vec(),
            signature: signature.try_into().expect("64 bytes"),
        })
    }

    /// Checks the signature with the key the checkpoint names, from `keys`.
    pub fn verify(&self, keys: &VerifierSet) -> Result<(), String> {
        let key = keys.keys.get(&self.key_id).ok_or_else(|| {
            format!("checkpoint signed by key {} which is not among the verification keys", self.key_id)
        })?;
        let mut message = CONTEXT.to_vec();
        message.extend_from_slice(&self.signed);
        key.key
            .verify(&message, &Signature::from_bytes(&self.signature))
            .map_err(|_| "checkpoint signature is invalid".to_owned())
    }
}

/// The verification keys a verifier accepts, by id.
#[derive(Debug, Default, Clone)]
pub struct VerifierSet {
    keys: HashMap<String, CheckpointVerifier>,
}

impl VerifierSet {
    pub fn new() -> VerifierSet {
        VerifierSet::default()
    }

    pub fn add(&mut self, key: CheckpointVerifier) {
        self.keys.insert(key.id.clone(), key);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a signature made by [`CheckpointSigner::sign_detached`] with the key `key_id`.
    pub fn verify_detached(
        &self,
        key_id: &str,
        context: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), String> {
        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| format!("signed by key {key_id} which is not among the verification keys"))?;
        let signature: [u8; 64] = signature.try_into().map_err(|_| "a signature is 64 bytes".to_owned())?;
        let mut signed = context.to_vec();
        signed.extend_from_slice(message);
        key.key.verify(&signed, &Signature::from_bytes(&signature)).map_err(|_| "the signature is invalid".to_owned())
    }
}

/// The witness file of an instance in a witness directory.
pub fn witness_path(dir: &Path, instance: &str) -> PathBuf {
    dir.join(format!("{instance}.checkpoints"))
}

pub(crate) fn append_witness(dir: &Path, instance: &str, payload: &[u8]) -> Result<(), JournalError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = witness_path(dir, instance);
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
    let mut line = hex::encode(payload);
    line.push('\n');
    file.write_all(line.as_bytes()).and_then(|_| file.sync_data()).map_err(io_err(&path))
}

/// Reads a witness file: every complete line, parsed. A torn last line (a crash while
/// appending) is ignored; any other bad line is an error naming its line number.
pub fn read_witness(dir: &Path, instance: &str) -> Result<Vec<Checkpoint>, JournalError> {
    let path = witness_path(dir, instance);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    let mut out = Vec::new();
    for (index, line) in complete.lines().enumerate() {
        let bytes = hex::decode(line.trim()).map_err(|_| JournalError::Corrupt {
            path: path.clone(),
            offset: index as u64 + 1,
            what: "witness line is not hex".into(),
        })?;
        let checkpoint = Checkpoint::parse(&bytes).map_err(|what| JournalError::Corrupt {
            path: path.clone(),
            offset: index as u64 + 1,
            what: what.into(),
        })?;
        out.push(checkpoint);
    }
    Ok(out)
}
