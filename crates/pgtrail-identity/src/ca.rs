//! The proxy's own certificate authority for upstream logins.
//!
//! PostgreSQL's `cert` authentication accepts a client whose certificate chains to its
//! `ssl_ca_file` and whose common name is the database user. The proxy keeps a CA
//! (`upstream-ca.key`, created 0600, and `upstream-ca.crt` for PostgreSQL's
//! `ssl_ca_file`) and mints, per database user, a client certificate valid for minutes.
//! No database password exists; a stolen certificate expires soon.
//!
//! ```text
//! # postgresql.conf
//! ssl = on
//! ssl_cert_file = 'server.crt'
//! ssl_key_file = 'server.key'
//! ssl_ca_file = 'upstream-ca.crt'      # the proxy's CA
//! # pg_hba.conf: only certificate logins, only from the proxy's host
//! hostssl all all 10.0.0.5/32 cert
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

pub const CA_KEY_FILE: &str = "upstream-ca.key";
pub const CA_CERT_FILE: &str = "upstream-ca.crt";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Cert {
        what: String,
        #[source]
        source: rcgen::Error,
    },
}

/// A minted client certificate and its key, DER.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert_der: Vec<u8>,
    pub key_pkcs8_der: Vec<u8>,
}

/// The CA.
pub struct UpstreamCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for UpstreamCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCa").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> CaError + '_ {
    move |source| CaError::Cert { what: what.into(), source }
}

impl UpstreamCa {
    /// Loads the CA from `dir`, creating it if absent. `ttl` is the lifetime of minted
    /// certificates.
    pub fn load_or_create(dir: &Path, ttl: Duration) -> Result<(Self, bool), CaError> {
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { path, source }
        };
        let created = !key_path.exists();
        if created {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let key = KeyPair::generate().map_err(cert_err("CA key"))?;
            let cert = ca_params().self_signed(&key).map_err(cert_err("CA certificate"))?;
            crate::write_new(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io(&key_path))?;
            crate::write_new(&cert_path, cert.pem().as_bytes(), 0o644).map_err(io(&cert_path))?;
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(cert_err("CA key"))?;
        // Minted certificates name the CA by its subject and key identifier, both derived
        // from the same parameters and key as the stored certificate.
        let issuer = Issuer::new(ca_params(), key);
        let cert_der = crate::pem_der(&cert_pem).ok_or_else(|| CaError::Io {
            path: cert_path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a PEM certificate"),
        })?;
        Ok((Self { issuer, cert_der, ttl }, created))
    }

    /// The lifetime of minted client certificates.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The CA certificate (DER), for a chain.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// A client certificate for `db_user`, valid from a minute ago for `ttl`.
    pub fn mint(&self, db_user: &str) -> Result<ClientCert, CaError> {
        let key = KeyPair::generate().map_err(cert_err("client key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err("client certificate"))?;
        params.distinguished_name.push(DnType::CommonName, db_user);
        params.distinguished_name.push(DnType::OrganizationName, "pgtrail proxy");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time_now();
        params.not_before = now - time::Duration::minutes(1);
        let ttl = time::Duration::try_from(self.ttl).unwrap_or(time::Duration::minutes(10));
        params.not_after = now + ttl;
        let mut serial = [0u8; 16];
        rand::fill(&mut serial);
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err("client certificate"))?;
        Ok(ClientCert { cert_der: cert.der().to_vec(), key_pkcs8_der: key.serialize_der() })
    }
}

impl UpstreamCa {
    /// A TLS server certificate for `names` (host names or addresses), signed by this CA,
    /// as PEM (certificate, key): for demos where the CA also vouches for the servers.
    pub fn mint_server(&self, names: &[&str]) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(cert_err("server key"))?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).map_err(cert_err("server certificate"))?;
        params.distinguished_name.push(DnType::CommonName, "pgtrail demo server");
        let now = time_now();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(1);
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err("server certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no subject alt names");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, "pgtrail upstream login CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time_now();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    params
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_certificates_name_the_user_and_the_key_is_private() {
        let dir = tempfile::tempdir().expect("dir");
        let (ca, created) = UpstreamCa::load_or_create(dir.path(), Duration::from_secs(600)).expect("CA");
        assert!(created);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(CA_KEY_FILE)).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let cert = ca.mint("alice").expect("cert");
        assert!(!cert.cert_der.is_empty());
        let (again, created) = UpstreamCa::load_or_create(dir.path(), Duration::from_secs(600)).expect("CA");
        assert!(!created);
        assert_eq!(again.cert_der(), ca.cert_der());
    }
}
