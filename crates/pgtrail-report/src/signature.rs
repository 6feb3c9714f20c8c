//! A report's detached signature: `FILE.sig` next to `FILE`, a JSON object holding the
//! file's SHA-256, the signing key's id and an ed25519 signature (the checkpoint signing
//! scheme, with its own context) over the domain `pgtrail report v1\0` and the digest.
//! Any change to the report, to its signature file or a key not among the verification
//! keys makes `verify_file` fail.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pgtrail_journal::{CheckpointSigner, VerifierSet};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ReportError;

/// What a signature file name adds to the report's.
pub const SIGNATURE_SUFFIX: &str = ".sig";
const CONTEXT: &[u8] = b"pgtrail report v1\0";
const FORMAT: &str = "pgtrail report signature v1";

/// The content of a signature file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub format: String,
    /// The report's file name when it was signed (informative: renaming it is fine).
    pub file: String,
    pub sha256: String,
    pub key_id: String,
    /// Base64.
    pub signature: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io { path: path.to_path_buf(), source }
}

fn digest(path: &Path) -> Result<[u8; 32], ReportError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// The signature file of `report`.
pub fn signature_path(report: &Path) -> PathBuf {
    let mut name = report.as_os_str().to_owned();
    name.push(SIGNATURE_SUFFIX);
    PathBuf::from(name)
}

/// Signs the report file at `report` with `signer`; writes and returns its signature file.
pub fn sign_file(report: &Path, signer: &CheckpointSigner) -> Result<PathBuf, ReportError> {
    let sha256 = digest(report)?;
    let signature = Signature {
        format: FORMAT.into(),
        file: report.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        sha256: hex::encode(sha256),
        key_id: signer.id().to_owned(),
        signature: STANDARD.encode(signer.sign_detached(CONTEXT, &sha256)),
    };
    let path = signature_path(report);
    let text = serde_json::to_string_pretty(&signature).expect("a signature serializes");
    std::fs::write(&path, text + "\n").map_err(io(&path))?;
    Ok(path)
}

/// Checks the report file at `report` against its signature file with `keys`; returns the
/// signature, or why it does not hold.
pub fn verify_file(report: &Path, keys: &VerifierSet) -> Result<Result<Signature, String>, ReportError> {
    let path = signature_path(report);
    let text = std::fs::read(&path).map_err(io(&path))?;
    let signature: Signature = match serde_json::from_slice(&text) {
        Ok(s) => s,
        Err(e) => return Ok(Err(format!("{} is not a report signature: {e}", path.display()))),
    };
    if signature.format != FORMAT {
        return Ok(Err(format!("{}: unknown signature format {:?}", path.display(), signature.format)));
    }
    let sha256 = digest(report)?;
    if hex::encode(sha256) != signature.sha256 {
        return Ok(Err("the report's SHA-256 is not the one signed: the file was changed".into()));
    }
    let Ok(bytes) = STANDARD.decode(&signature.signature) else {
        return Ok(Err("the signature is not base64".into()));
    };
    Ok(keys.verify_detached(&signature.key_id, CONTEXT, &sha256, &bytes).map(|()| signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(signer: &CheckpointSigner) -> VerifierSet {
        let mut keys = VerifierSet::new();
        keys.add(signer.verifying_key());
        keys
    }

    #[test]
    fn a_signed_report_verifies_and_any_change_to_it_or_its_signature_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("report.html");
        std::fs::write(&report, "<p>12 events</p>").unwrap();
        let signer = CheckpointSigner::generate();
        let sig = sign_file(&report, &signer).unwrap();
        assert_eq!(sig, dir.path().join("report.html.sig"));
        assert!(verify_file(&report, &keys(&signer)).unwrap().is_ok());

        // Another key: refused.
        assert!(verify_file(&report, &keys(&CheckpointSigner::generate())).unwrap().is_err());
        // A changed report: refused.
        std::fs::write(&report, "<p>13 events</p>").unwrap();
        let said = verify_file(&report, &keys(&signer)).unwrap().unwrap_err();
        assert!(said.contains("changed"), "{said}");
        // The report changed and the digest in the signature file updated to match: refused.
        let mut forged: Signature = serde_json::from_slice(&std::fs::read(&sig).unwrap()).unwrap();
        forged.sha256 = hex::encode(digest(&report).unwrap());
        std::fs::write(&sig, serde_json::to_vec(&forged).unwrap()).unwrap();
        assert!(verify_file(&report, &keys(&signer)).unwrap().is_err());
    }
}
