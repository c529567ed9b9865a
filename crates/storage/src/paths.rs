//! The on-disk layout, defined in one place.
//!
//! Blobs sit exactly where CNCF Distribution (`registry:2`) keeps them, so an existing data
//! directory can be served in place:
//!
//! ```text
//! <root>/docker/registry/v2/blobs/<algorithm>/<first two hex>/<hex>/data
//! ```
//!
//! Berth's own state lives beside it and never inside Distribution's tree:
//!
//! ```text
//! <root>/berth/uploads/<upload id>        bytes of an upload in progress
//! <root>/berth/quarantine/<alg>-<hex>     a blob `berth check --repair` found corrupt
//! ```

use std::path::{Path, PathBuf};

use berth_oci::Digest;

pub fn blob_data(root: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    root.join("docker/registry/v2/blobs")
        .join(digest.algorithm().as_str())
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// Where `berth check --repair` moves a corrupt blob.
pub fn quarantined(root: &Path, digest: &Digest) -> PathBuf {
    root.join("berth/quarantine")
        .join(format!("{}-{}", digest.algorithm().as_str(), digest.hex()))
}

pub fn uploads_dir(root: &Path) -> PathBuf {
    root.join("berth/uploads")
}

pub fn upload_data(root: &Path, id: &str) -> PathBuf {
    uploads_dir(root).join(id)
}

/// Every blob file under Distribution's tree, as digests; directories that are not blobs
/// (other algorithms, stray files) are skipped.
pub fn all_blobs(root: &Path) -> std::io::Result<Vec<Digest>> {
    let mut found = Vec::new();
    let blobs = root.join("docker/registry/v2/blobs");
    for algorithm in read_dir_or_empty(&blobs)? {
        let algorithm = algorithm?;
        for prefix in read_dir_or_empty(&algorithm.path())? {
            for blob in read_dir_or_empty(&prefix?.path())? {
                let blob = blob?;
                if !blob.path().join("data").is_file() {
                    continue;
                }
                let text = format!(
                    "{}:{}",
                    algorithm.file_name().to_string_lossy(),
                    blob.file_name().to_string_lossy()
                );
                if let Ok(digest) = text.parse::<Digest>() {
                    found.push(digest);
                }
            }
        }
    }
    Ok(found)
}

/// Distribution's repository index: links from repositories to their manifests, tags and
/// layers. Berth reads it (`berth import`) and never writes it.
pub fn distribution_index(root: &Path) -> PathBuf {
    root.join("docker/registry/v2/repositories")
}

/// Every file under Distribution's repository index, relative to it, in no set order; the
/// `_uploads` directories (registry:2's uploads in progress) are not entered.
pub fn index_files(root: &Path) -> std::io::Result<Vec<String>> {
    let base = distribution_index(root);
    let mut found = Vec::new();
    let mut pending = vec![base.clone()];
    while let Some(dir) = pending.pop() {
        for entry in read_dir_or_empty(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                if entry.file_name() != "_uploads" {
                    pending.push(path);
                }
            } else if kind.is_file() {
                if let Some(relative) = path.strip_prefix(&base).ok().and_then(Path::to_str) {
                    found.push(relative.to_owned());
                }
            }
        }
    }
    Ok(found)
}

fn read_dir_or_empty(
    dir: &Path,
) -> std::io::Result<Box<dyn Iterator<Item = std::io::Result<std::fs::DirEntry>>>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(Box::new(entries)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_path_matches_distribution() {
        let d: Digest = format!("sha256:ab{}", "0".repeat(62)).parse().unwrap();
        let p = blob_data(Path::new("/var/lib/registry"), &d);
        assert_eq!(
            p,
            Path::new(&format!(
                "/var/lib/registry/docker/registry/v2/blobs/sha256/ab/ab{}/data",
                "0".repeat(62)
            ))
        );
    }
}
