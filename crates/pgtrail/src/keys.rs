//! Key files and `pgtrail keys`.
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

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use pgtrail_envelope::{KeyProvider, KeyRing, WrappingPrivateKey, WrappingPublicKey};
use pgtrail_journal::{CheckpointSigner, CheckpointVerifier, VerifierSet};
use serde::{Deserialize, Serialize};

pub const WRAPPING_PUBLIC: &str = "wrapping.pub";
pub const WRAPPING_PRIVATE: &str = "wrapping.key";
pub const SIGNING_PRIVATE: &str = "signing.key";
pub const VERIFY_PUBLIC: &str = "verify.pub";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    pgtrail_key: String,
    id: String,
    key: String,
}

fn write_key_file(path: &Path, kind: &str, id: &str, key: &[u8], force: bool) -> anyhow::Result<()> {
    let line = serde_json::to_string(&KeyFile { pgtrail_key: kind.into(), id: id.into(), key: BASE64.encode(key) })?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).with_context(|| {
        if path.exists() && !force {
            format!("{} already exists (pass --force to replace it)", path.display())
        } else {
            format!("cannot create {}", path.display())
        }
    })?;
    file.write_all(format!("{line}\n").as_bytes()).and_then(|_| file.sync_all())?;
    Ok(())
}

fn read_key_file(path: &Path, kind: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    let file: KeyFile =
        serde_json::from_str(text.trim()).with_context(|| format!("{} is not a pgtrail key file", path.display()))?;
    if file.pgtrail_key != kind {
        bail!("{} holds a {} key, but a {kind} key is needed here", path.display(), file.pgtrail_key);
    }
    let key = BASE64.decode(&file.key).with_context(|| format!("{}: key is not base64", path.display()))?;
    Ok((file.id, key))
}

fn check_id(path: &Path, stored: &str, derived: &str) -> anyhow::Result<()> {
    if stored != derived {
        bail!("{}: the key id {stored} does not match the key (expected {derived})", path.display());
    }
    Ok(())
}

/// The ids of a freshly made key set.
#[derive(Debug)]
pub struct KeySet {
    pub wrapping_id: String,
    pub signing_id: String,
}

/// Makes a wrapping key pair and a signing key pair in `dir` (created 0700 if missing).
pub fn init(dir: &Path, force: bool) -> anyhow::Result<KeySet> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
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
    write_key_file(&dir.join(SIGNING_PRIVATE), "signing-private", signing.id(), signing.to_bytes().as_ref(), force)?;
    write_key_file(
        &dir.join(VERIFY_PUBLIC),
        "verify-public",
        signing.id(),
        &signing.verifying_key().to_bytes(),
        force,
    )?;
    Ok(KeySet { wrapping_id: wrapping.id().to_owned(), signing_id: signing.id().to_owned() })
}

pub fn load_wrapping_public(path: &Path) -> anyhow::Result<WrappingPublicKey> {
    let (id, bytes) = read_key_file(path, "wrapping-public")?;
    let key = WrappingPublicKey::from_bytes(&bytes).with_context(|| path.display().to_string())?;
    check_id(path, &id, key.id())?;
    // A key HPKE cannot encapsulate to fails here, not on the first record.
    key.wrap(&pgtrail_envelope::DataKey::random()).with_context(|| format!("{}: unusable key", path.display()))?;
    Ok(key)
}

pub fn load_wrapping_private(path: &Path) -> anyhow::Result<WrappingPrivateKey> {
    let (id, bytes) = read_key_file(path, "wrapping-private")?;
    let key = WrappingPrivateKey::from_bytes(&bytes).with_context(|| path.display().to_string())?;
    check_id(path, &id, key.id())?;
    Ok(key)
}

pub fn load_signer(path: &Path) -> anyhow::Result<CheckpointSigner> {
    let (id, bytes) = read_key_file(path, "signing-private")?;
    let key = CheckpointSigner::from_bytes(&bytes).with_context(|| path.display().to_string())?;
    check_id(path, &id, key.id())?;
    Ok(key)
}

pub fn load_verifier(path: &Path) -> anyhow::Result<CheckpointVerifier> {
    let (id, bytes) = read_key_file(path, "verify-public")?;
    let key = CheckpointVerifier::from_bytes(&bytes).with_context(|| path.display().to_string())?;
    check_id(path, &id, key.id())?;
    Ok(key)
}

/// A key ring from `--key` files: each a wrapping private key file, or a directory whose
/// `wrapping*.key` files are all loaded (so old keys stay readable after a new one).
pub fn load_key_ring(paths: &[PathBuf]) -> anyhow::Result<KeyRing> {
    if paths.is_empty() {
        bail!("no key given: pass --key with the wrapping private key (wrapping.key from `pgtrail keys init`)");
    }
    let mut ring = KeyRing::new();
    for path in paths {
        if path.is_dir() {
            let mut found = false;
            for entry in std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))? {
                let file = entry?.path();
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if name.starts_with("wrapping") && name.ends_with(".key") {
                    ring.add(load_wrapping_private(&file)?);
                    found = true;
                }
            }
            if !found {
                bail!("{} holds no wrapping*.key file", path.display());
            }
        } else {
            ring.add(load_wrapping_private(path)?);
        }
    }
    Ok(ring)
}

pub fn load_verifiers(paths: &[PathBuf]) -> anyhow::Result<VerifierSet> {
    if paths.is_empty() {
        bail!("no verification key given: pass --verify-key verify.pub (from `pgtrail keys init`)");
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
        for name in [WRAPPING_PUBLIC, WRAPPING_PRIVATE, SIGNING_PRIVATE, VERIFY_PUBLIC] {
            let mode = std::fs::metadata(keys.join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        assert_eq!(load_wrapping_public(&keys.join(WRAPPING_PUBLIC)).unwrap().id(), ids.wrapping_id);
        assert_eq!(load_signer(&keys.join(SIGNING_PRIVATE)).unwrap().id(), ids.signing_id);
        assert_eq!(load_verifier(&keys.join(VERIFY_PUBLIC)).unwrap().id(), ids.signing_id);
        assert_eq!(load_key_ring(std::slice::from_ref(&keys)).unwrap().len(), 1);
        // A second init does not overwrite keys by accident.
        let err = init(&keys, false).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        // The wrong kind of key is named in the error.
        let err = load_signer(&keys.join(WRAPPING_PRIVATE)).unwrap_err().to_string();
        assert!(err.contains("wrapping-private"), "{err}");
    }
}
