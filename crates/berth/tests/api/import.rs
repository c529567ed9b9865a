//! `berth import` on a registry:2 tree written by hand with what real registries accumulate
//! and Berth cannot serve: a schema 1 manifest, a tag whose manifest is gone, a layer link to
//! a missing blob, an upload in progress. (tests/interop/test_import.py imports what the real
//! Distribution wrote.)

use std::path::Path;
use std::process::Command;

use crate::common::{sha256, Server};

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Stores `content` as a blob of Distribution's layout; returns its digest.
fn blob(root: &Path, content: &[u8]) -> String {
    let digest = sha256(content);
    let hex = &digest["sha256:".len()..];
    write(
        &root.join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        )),
        content,
    );
    digest
}

fn link(root: &Path, repository: &str, relative: &str, digest: &str) {
    write(
        &root.join(format!(
            "docker/registry/v2/repositories/{repository}/{relative}"
        )),
        digest.as_bytes(),
    );
}

fn hex(digest: &str) -> &str {
    &digest["sha256:".len()..]
}

#[tokio::test]
async fn import_skips_what_it_cannot_serve_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config_bytes = br#"{"architecture":"amd64","os":"linux"}"#;
    let config = blob(root, config_bytes);
    let layer = blob(root, b"layer bytes");
    let image = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":11}}]}}"#,
        config_bytes.len()
    );
    let image_digest = blob(root, image.as_bytes());
    let schema1 = blob(
        root,
        br#"{"schemaVersion":1,"name":"app","tag":"old","fsLayers":[],"history":[]}"#,
    );
    let missing = sha256(b"never stored");
    for d in [&config, &layer, &missing] {
        link(root, "app", &format!("_layers/sha256/{}/link", hex(d)), d);
    }
    for d in [&image_digest, &schema1] {
        link(
            root,
            "app",
            &format!("_manifests/revisions/sha256/{}/link", hex(d)),
            d,
        );
    }
    link(
        root,
        "app",
        "_manifests/tags/v1/current/link",
        &image_digest,
    );
    link(root, "app", "_manifests/tags/old/current/link", &schema1);
    link(root, "app", "_manifests/tags/ghost/current/link", &missing);
    write(
        &root.join("docker/registry/v2/repositories/app/_uploads/0b9f/data"),
        b"half an upload",
    );

    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["import", "--data", root.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let skipped: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("skipped"))
        .collect();
    let has = |item: &str, reason: &str| {
        skipped
            .iter()
            .any(|l| l.contains(&format!("\t{item}\t")) && l.contains(reason))
    };
    assert!(has(&format!("app@{missing}"), "not stored"), "{stdout}");
    assert!(has(&format!("app@{schema1}"), "schema 1"), "{stdout}");
    assert!(has("app:old", "was not imported"), "{stdout}");
    assert!(has("app:ghost", "was not imported"), "{stdout}");
    assert_eq!(skipped.len(), 4, "{stdout}");
    assert!(
        stdout.contains("1 repositories, 1 manifests, 1 tags, 2 blob links"),
        "{stdout}"
    );

    let server = Server::start_on(root, &[]).await;
    let r = server.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), image_digest);
    assert_eq!(
        server.get(&format!("/v2/app/blobs/{layer}")).await.status(),
        200
    );
    assert_eq!(server.get("/v2/app/manifests/old").await.status(), 404);
    assert_eq!(
        server
            .get(&format!("/v2/app/blobs/{missing}"))
            .await
            .status(),
        404
    );
}

/// The seed's switch: a server started on registry:2's data says it is importing (`/readyz`
/// 503) until every repository is in, then serves them.
#[tokio::test]
async fn first_start_import_holds_readiness_until_done() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config_bytes = br#"{"architecture":"amd64","os":"linux"}"#;
    let config = blob(root, config_bytes);
    let image = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{}}},"layers":[]}}"#,
        config_bytes.len()
    );
    let image_digest = blob(root, image.as_bytes());
    // Enough repositories that the import outlasts the first probe.
    let count = 1500;
    for i in 0..count {
        let repository = format!("team/app{i:04}");
        link(
            root,
            &repository,
            &format!("_layers/sha256/{}/link", hex(&config)),
            &config,
        );
        link(
            root,
            &repository,
            &format!("_manifests/revisions/sha256/{}/link", hex(&image_digest)),
            &image_digest,
        );
        link(
            root,
            &repository,
            "_manifests/tags/latest/current/link",
            &image_digest,
        );
    }

    let server = Server::start_on(root, &[]).await;
    let r = server.get("/readyz").await;
    assert_eq!(r.status(), 503, "ready before the import finished");
    assert!(r.text().await.unwrap().contains("importing registry:2"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while server.get("/readyz").await.status() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the import did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for i in [0, count / 2, count - 1] {
        let r = server
            .get(&format!("/v2/team/app{i:04}/manifests/latest"))
            .await;
        assert_eq!(r.status(), 200, "team/app{i:04}");
    }
}
