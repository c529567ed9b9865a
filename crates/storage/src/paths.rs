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

pub fn uploads_dir(root: &Path) -> PathBuf {
    root.join("berth/uploads")
}

pub fn upload_data(root: &Path, id: &str) -> PathBuf {
    uploads_dir(root).join(id)
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
