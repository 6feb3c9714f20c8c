//! Where the archive goes: a local directory, or (later) an S3-compatible bucket.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;

use crate::ArchiveError;

/// Opens the archive target `url`: a directory path (`/var/lib/pgtrail/archive`,
/// `file:///...`), created when missing.
pub fn open(url: &str) -> Result<Arc<dyn ObjectStore>, ArchiveError> {
    let dir = if let Some(rest) = url.strip_prefix("file://") {
        PathBuf::from(rest)
    } else if let Some((scheme, _)) = url.split_once("://") {
        return Err(ArchiveError::Target(format!(
            "{url}: {scheme}:// archive targets are not supported yet; give a directory"
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
