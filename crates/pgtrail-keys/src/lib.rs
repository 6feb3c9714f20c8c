//! pgtrail's key files: making them and loading them.
//!
//! Owns the key file format and where each key lives. It does not encrypt, sign or
//! verify anything itself (pgtrail-envelope and pgtrail-journal do), and never logs a key.
//!
//! `pgtrail keys init --dir DIR` writes four files, each mode 0600, each one line of JSON
//! `{"pgtrail_key": KIND, "id": ID, "key": BASE64}`:
//!
//! | file | kind | who holds it |
//! |---|---|---|
//! | `wrapping.pub` | `wrapping-public` | the proxy: wraps each new data key (HPKE X25519) |
//! | `signing.key` | `signing-private` | the proxy: signs journal checkpoints (ed25519) |
//! | `wrapping.key` | `wrapping-private` | readers only (tail, export, keys unwrap) |
//! | `verify.pub` | `verify-public` | anyone who runs `pgtrail verify` |
//!
//! Separation of duties: the proxy host gets `wrapping.pub` and `signing.key` and can
//! write records but read none; auditors keep `wrapping.key` elsewhere.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use pgtrail_envelope::{KeyProvider, KeyRing, WrappingPrivateKey, WrappingPublicKey};
use pgtrail_journal::{CheckpointSigner, CheckpointVerifier, VerifierSet};
use serde::{Deserialize, Serialize};

/// Errors making or loading key files; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} already exists (pass --force to replace it)")]
    Exists(PathBuf),
    #[error("{path} is not a pgtrail key file")]
    NotAKeyFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} holds a {found} key, but a {needed} key is needed here")]
    WrongKind { path: PathBuf, found: String, needed: &'static str },
    #[error("{0}: key is not base64")]
    NotBase64(PathBuf),
    #[error("{path}: {what}")]
    Unusable {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{path}: the key id {stored} does not match the key (expected {derived})")]
    IdMismatch { path: PathBuf, stored: String, derived: String },
    #[error("no key given: pass --key with the wrapping private key (wrapping.key from `pgtrail keys init`)")]
    NoWrappingKey,
    #[error("no verification key given: pass --verify-key verify.pub (from `pgtrail keys init`)")]
    NoVerifyKey,
    #[error("{0} holds no wrapping*.key file")]
    NoKeyInDir(PathBuf),
    #[error(
        "no {0} key: pass --keys DIR (made by `pgtrail keys init --dir DIR`) or set [keys] dir or keys.{0} in the configuration file"
    )]
    NotConfigured(&'static str),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> KeyError + 'a {
    move |source| KeyError::Io { action, path: path.to_path_buf(), source }
}

fn unusable<'a, E: std::error::Error + Send + Sync + 'static>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(E) -> KeyError + 'a {
    move |e| KeyError::Unusable { path: path.to_path_buf(), what, source: Box::new(e) }
}

/// `[keys]` in `pgtrail.toml`: where the capture side's two keys are. By default
/// `wrapping.pub` and `signing.key` in `dir` (as `pgtrail keys init` writes them); each
/// path can be set on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    pub dir: Option<PathBuf>,
    pub wrapping_public: Option<PathBuf>,
    pub signing: Option<PathBuf>,
}

/// The capture side's key files, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureKeys {
    /// Data keys are wrapped to it.
    pub wrapping_public: PathBuf,
    /// Signs the journal's checkpoints.
    pub signing: PathBuf,
}

impl KeysSection {
    /// The two key files; `dir` (from `--keys`) replaces the section's directory.
    pub fn resolve(&self, dir: Option<&Path>) -> Result<CaptureKeys, KeyError> {
        let dir = dir.map(Path::to_path_buf).or_else(|| self.dir.clone());
        let file = |explicit: &Option<PathBuf>, name: &str, key: &'static str| {
            explicit.clone().or_else(|| dir.as_ref().map(|d| d.join(name))).ok_or(KeyError::NotConfigured(key))
        };
        Ok(CaptureKeys {
            wrapping_public: file(&self.wrapping_public, WRAPPING_PUBLIC, "wrapping_public")?,
            signing: file(&self.signing, SIGNING_PRIVATE, "signing")?,
        })
    }
}

pub const WRAPPING_PUBLIC: &str = "wrapping.pub";
pub const WRAPPING_PRIVATE: &str = "wrapping.key";
pub const SIGNING_PRIVATE: &str = "signing.key";
pub const VERIFY_PUBLIC: &str = "verify.pub";
/// The archive key: seals `pgtrail archive`'s manifest entries (a signing key of its own,
/// so that the archiver's host cannot sign journal checkpoints).
pub const ARCHIVE_PRIVATE: &str = "archive.key";
pub const ARCHIVE_PUBLIC: &str = "archive.pub";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    pgtrail_key: String,
    id: String,
    key: String,
}

fn write_key_file(path: &Path, kind: &str, id: &str, key: &[u8], force: bool) -> Result<(), KeyError> {
    let line = serde_json::to_string(&KeyFile { pgtrail_key: kind.into(), id: id.into(), key: BASE64.encode(key) })
        .expect("a key file always serializes");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_path_buf())
        } else {
            KeyError::Io { action: "create", path: path.to_path_buf(), source }
        }
    })?;
    file.write_all(format!("{line}\n").as_bytes()).and_then(|_| file.sync_all()).map_err(io("write", path))
}

fn read_key_file(path: &Path, kind: &'static str) -> Result<(String, Vec<u8>), KeyError> {
    let text = std::fs::read_to_string(path).map_err(io("read key file", path))?;
    let file: KeyFile = serde_json::from_str(text.trim())
        .map_err(|source| KeyError::NotAKeyFile { path: path.to_path_buf(), source })?;
    if file.pgtrail_key != kind {
        return Err(KeyError::WrongKind { path: path.to_path_buf(), found: file.pgtrail_key, needed: kind });
    }
    let key = BASE64.decode(&file.key).map_err(|_| KeyError::NotBase64(path.to_path_buf()))?;
    Ok((file.id, key))
}

fn check_id(path: &Path, stored: &str, derived: &str) -> Result<(), KeyError> {
    if stored != derived {
        return Err(KeyError::IdMismatch { path: path.to_path_buf(), stored: stored.into(), derived: derived.into() });
    }
    Ok(())
}

/// The ids of a freshly made key set.
#[derive(Debug)]
pub struct KeySet {
    pub wrapping_id: String,
    pub signing_id: String,
    pub archive_id: String,
}

/// Makes a wrapping key pair, a checkpoint signing key pair and an archive key pair in
/// `dir` (created 0700 if missing).
pub fn init(dir: &Path, force: bool) -> Result<KeySet, KeyError> {
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io("create", dir))?;
    }
    let wrapping = WrappingPrivateKey::generate();
    let signing = CheckpointSigner::generate();
    write_key_file(&dir.join(WRAPPING_PRIVATE), "wrapping-private", wrapping.id(), &wrapping.to_bytes(), force)?;
    write_key_file(
        &dir.join(WRAPPING_PUBLIC),
        "wrapping-public",
        wrapping.id(),
        &wrapping.public_key().to_bytes(),
        force,
    )?;
    write_signing_pair(&dir.join(SIGNING_PRIVATE), &dir.join(VERIFY_PUBLIC), &signing, force)?;
    let archive = CheckpointSigner::generate();
    write_signing_pair(&dir.join(ARCHIVE_PRIVATE), &dir.join(ARCHIVE_PUBLIC), &archive, force)?;
    Ok(KeySet {
        wrapping_id: wrapping.id().to_owned(),
        signing_id: signing.id().to_owned(),
        archive_id: archive.id().to_owned(),
    })
}

/// An ed25519 key pair: the private key file and the public one.
fn write_signing_pair(private: &Path, public: &Path, key: &CheckpointSigner, force: bool) -> Result<(), KeyError> {
    write_key_file(private, "signing-private", key.id(), key.to_bytes().as_ref(), force)?;
    write_key_file(public, "verify-public", key.id(), &key.verifying_key().to_bytes(), force)
}

pub fn load_wrapping_public(path: &Path) -> Result<WrappingPublicKey, KeyError> {
    let (id, bytes) = read_key_file(path, "wrapping-public")?;
    let key = WrappingPublicKey::from_bytes(&bytes).map_err(unusable(path, "not a wrapping public key"))?;
    check_id(path, &id, key.id())?;
    // A key HPKE cannot encapsulate to fails here, not on the first record.
    key.wrap(&pgtrail_envelope::DataKey::random()).map_err(unusable(path, "unusable key"))?;
    Ok(key)
}

pub fn load_wrapping_private(path: &Path) -> Result<WrappingPrivateKey, KeyError> {
    let (id, bytes) = read_key_file(path, "wrapping-private")?;
    let key = WrappingPrivateKey::from_bytes(&bytes).map_err(unusable(path, "not a wrapping private key"))?;
    check_id(path, &id, key.id())?;
    Ok(key)
}

pub fn load_signer(path: &Path) -> Result<CheckpointSigner, KeyError> {
    let (id, bytes) = read_key_file(path, "signing-private")?;
    let key = CheckpointSigner::from_bytes(&bytes).map_err(unusable(path, "not a signing key"))?;
    check_id(path, &id, key.id())?;
    Ok(key)
}

pub fn load_verifier(path: &Path) -> Result<CheckpointVerifier, KeyError> {
    let (id, bytes) = read_key_file(path, "verify-public")?;
    let key = CheckpointVerifier::from_bytes(&bytes).map_err(unusable(path, "not a verification key"))?;
    check_id(path, &id, key.id())?;
    Ok(key)
}

/// A key ring from `--key` files: each a wrapping private key file, or a directory whose
/// `wrapping*.key` files are all loaded (so old keys stay readable after a new one).
pub fn load_key_ring(paths: &[PathBuf]) -> Result<KeyRing, KeyError> {
    if paths.is_empty() {
        return Err(KeyError::NoWrappingKey);
    }
    let mut ring = KeyRing::new();
    for path in paths {
        if path.is_dir() {
            let mut found = false;
            for entry in std::fs::read_dir(path).map_err(io("read", path))? {
                let file = entry.map_err(io("read", path))?.path();
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if name.starts_with("wrapping") && name.ends_with(".key") {
                    ring.add(load_wrapping_private(&file)?);
                    found = true;
                }
            }
            if !found {
                return Err(KeyError::NoKeyInDir(path.clone()));
            }
        } else {
            ring.add(load_wrapping_private(path)?);
        }
    }
    Ok(ring)
}

pub fn load_verifiers(paths: &[PathBuf]) -> Result<VerifierSet, KeyError> {
    if paths.is_empty() {
        return Err(KeyError::NoVerifyKey);
    }
    let mut set = VerifierSet::new();
    for path in paths {
        set.add(load_verifier(path)?);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn init_writes_0600_files_that_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let ids = init(&keys, false).unwrap();
        for name in [WRAPPING_PUBLIC, WRAPPING_PRIVATE, SIGNING_PRIVATE, VERIFY_PUBLIC, ARCHIVE_PRIVATE, ARCHIVE_PUBLIC]
        {
            let mode = std::fs::metadata(keys.join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        assert_eq!(load_wrapping_public(&keys.join(WRAPPING_PUBLIC)).unwrap().id(), ids.wrapping_id);
        assert_eq!(load_signer(&keys.join(SIGNING_PRIVATE)).unwrap().id(), ids.signing_id);
        assert_eq!(load_verifier(&keys.join(VERIFY_PUBLIC)).unwrap().id(), ids.signing_id);
        assert_eq!(load_signer(&keys.join(ARCHIVE_PRIVATE)).unwrap().id(), ids.archive_id);
        assert_eq!(load_verifier(&keys.join(ARCHIVE_PUBLIC)).unwrap().id(), ids.archive_id);
        assert_ne!(ids.archive_id, ids.signing_id, "the archive key is a key of its own");
        assert_eq!(load_key_ring(std::slice::from_ref(&keys)).unwrap().len(), 1);
        // A second init does not overwrite keys by accident.
        let err = init(&keys, false).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        // The wrong kind of key is named in the error.
        let err = load_signer(&keys.join(WRAPPING_PRIVATE)).unwrap_err().to_string();
        assert!(err.contains("wrapping-private"), "{err}");
    }
}
