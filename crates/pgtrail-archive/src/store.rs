//! Where the archive goes: a local directory, or a bucket (and prefix) on any
//! S3-compatible store.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ObjectStore};

use crate::ArchiveError;

/// Opens the archive target `url`:
/// - a directory path (`/srv/audit-archive`, `file:///srv/audit-archive`), created when
///   missing;
/// - `s3://BUCKET/PREFIX`, configured by the usual AWS environment variables
///   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
///   `AWS_ENDPOINT_URL` for a store other than AWS). Plain HTTP is used only for an
///   endpoint on this machine, or when `AWS_ALLOW_HTTP=true` says so.
pub fn open(url: &str) -> Result<Arc<dyn ObjectStore>, ArchiveError> {
    if let Some(rest) = url.strip_prefix("s3://") {
        return open_s3(url, rest);
    }
    let dir = if let Some(rest) = url.strip_prefix("file://") {
        PathBuf::from(rest)
    } else if let Some((scheme, _)) = url.split_once("://") {
        return Err(ArchiveError::Target(format!(
            "{url}: {scheme}:// is not an archive target; give a directory or s3://BUCKET/PREFIX"
        )));
    } else {
        PathBuf::from(url)
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| ArchiveError::Target(format!("cannot create the archive directory {}: {e}", dir.display())))?;
    let store = LocalFileSystem::new_with_prefix(&dir)
        .map_err(|e| ArchiveError::Target(format!("cannot open the archive directory {}: {e}", dir.display())))?;
    Ok(Arc::new(store))
}

fn open_s3(url: &str, rest: &str) -> Result<Arc<dyn ObjectStore>, ArchiveError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(ArchiveError::Target(format!("{url}: no bucket (s3://BUCKET/PREFIX)")));
    }
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let allowed = builder
        .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    match builder.get_config_value(&AmazonS3ConfigKey::Endpoint) {
        Some(endpoint) if is_local_http(&endpoint) => builder = builder.with_allow_http(true),
        Some(endpoint) if endpoint.starts_with("http://") && !allowed => {
            return Err(ArchiveError::Target(format!(
                "the S3 endpoint {endpoint} is plain HTTP to another machine: use https://, or set \
                 AWS_ALLOW_HTTP=true to send the archive unencrypted"
            )));
        }
        _ => {}
    }
    if builder.get_config_value(&AmazonS3ConfigKey::Region).is_none() {
        builder = builder.with_region("us-east-1");
    }
    let store = builder.build().map_err(|e| ArchiveError::Target(format!("{url}: {e}")))?;
    let prefix = prefix.trim_matches('/');
    Ok(if prefix.is_empty() { Arc::new(store) } else { Arc::new(PrefixStore::new(store, prefix)) })
}

/// `http://` to a loopback address or localhost: the hop does not leave this machine.
fn is_local_http(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else { return false };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_stays_on_this_machine() {
        assert!(is_local_http("http://127.0.0.1:9000"));
        assert!(is_local_http("http://localhost:9000/"));
        assert!(is_local_http("http://[::1]:9000"));
        assert!(!is_local_http("http://10.0.0.5:9000"));
        assert!(!is_local_http("http://127.0.0.1.example.com:9000"));
        assert!(!is_local_http("https://127.0.0.1:9000"));
    }

    #[test]
    fn targets_that_are_not_a_directory_or_s3_are_refused() {
        let error = open("gs://bucket/x").err().unwrap().to_string();
        assert!(error.contains("gs:// is not an archive target"), "{error}");
        assert!(open("s3:///prefix").err().unwrap().to_string().contains("no bucket"));
    }
}
