use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn push_and_pull_byte_exact() {
    let s = Server::start().await;
    // Odd formatting on purpose: the registry must not re-serialize.
    let mut body = s.image_manifest("img", json!({})).await;
    body.splice(1..1, b"  \n".iter().copied());
    let d = sha256(&body);
    let r = s.put_manifest("img", "v1", OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/img/manifests/{d}"));
    assert_eq!(header(&r, "docker-content-digest"), d);
    assert!(r.headers().get("oci-subject").is_none());

    for reference in ["v1", d.as_str()] {
        let r = s.get(&format!("/v2/img/manifests/{reference}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&r, "docker-content-digest"), d);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..]);
        let r = s.head(&format!("/v2/img/manifests/{reference}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-length"), body.len().to_string());
        assert_eq!(header(&r, "docker-content-digest"), d);
    }
    // The manifest is also readable through the blob endpoint by digest.
    let r = s.get(&format!("/v2/img/blobs/{d}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..]);
}

#[tokio::test]
async fn put_by_digest_is_verified() {
    let s = Server::start().await;
    let body = s.image_manifest("dig", json!({})).await;
    let d = sha256(&body);
    let r = s.put_manifest("dig", &d, OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let wrong = sha256(b"something else");
    assert_error(
        s.put_manifest("dig", &wrong, OCI_MANIFEST, &body).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_error(
        s.get(&format!("/v2/dig/manifests/{wrong}")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;

    let d512 = sha512(&body);
    assert_eq!(
        s.put_manifest("dig", &d512, OCI_MANIFEST, &body)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = s.get(&format!("/v2/dig/manifests/{d512}")).await;
    assert_eq!(header(&r, "docker-content-digest"), d512);
}

#[tokio::test]
async fn multiple_tags_in_one_put() {
    let s = Server::start().await;
    let body = s.image_manifest("multi", json!({})).await;
    let d = sha256(&body);
    let r = s
        .req(
            Method::PUT,
            &format!("/v2/multi/manifests/{d}?tag=a&tag=b&tag=c"),
        )
        .header("content-type", OCI_MANIFEST)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let tags: serde_json::Value = s.get("/v2/multi/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], json!(["a", "b", "c"]));
    let r = s
        .req(
            Method::PUT,
            &format!("/v2/multi/manifests/{d}?tag=ok&tag=-bad"),
        )
        .header("content-type", OCI_MANIFEST)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "TAG_INVALID").await;
    let tags: serde_json::Value = s.get("/v2/multi/tags/list").await.json().await.unwrap();
    assert_eq!(
        tags["tags"],
        json!(["a", "b", "c"]),
        "a refused push tags nothing"
    );
}

#[tokio::test]
async fn missing_references_are_refused_atomically() {
    let s = Server::start().await;
    let cd = s.push_blob("miss", b"{}").await;
    let absent = sha256(b"never pushed");
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": absent, "size": 12}],
    }))
    .unwrap();
    assert_error(
        s.put_manifest("miss", "v1", OCI_MANIFEST, &body).await,
        400,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;
    assert_error(
        s.get("/v2/miss/manifests/v1").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;

    // A blob pushed to another repository does not count.
    s.push_blob("elsewhere", b"never pushed").await;
    assert_error(
        s.put_manifest("miss", "v1", OCI_MANIFEST, &body).await,
        400,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;

    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": absent, "size": 10}],
    }))
    .unwrap();
    assert_error(
        s.put_manifest("miss", "idx", OCI_INDEX, &index).await,
        400,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn index_and_docker_types() {
    let s = Server::start().await;
    let m1 = s.image_manifest("types", json!({})).await;
    let m2 = s.image_manifest("types", json!({})).await;
    for m in [&m1, &m2] {
        assert_eq!(
            s.put_manifest("types", &sha256(m), OCI_MANIFEST, m)
                .await
                .status(),
            StatusCode::CREATED
        );
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha256(&m1), "size": m1.len(), "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": sha256(&m2), "size": m2.len(), "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }))
    .unwrap();
    assert_eq!(
        s.put_manifest("types", "multi", OCI_INDEX, &index)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = s.get("/v2/types/manifests/multi").await;
    assert_eq!(header(&r, "content-type"), OCI_INDEX);

    // Docker schema 2 and manifest list, served with the pushed type.
    let config = b"{\"os\":\"linux\"}";
    let cfg = s.push_blob("types", config).await;
    let docker = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cfg, "size": config.len()},
        "layers": [],
    }))
    .unwrap();
    assert_eq!(
        s.put_manifest("types", "docker", DOCKER_MANIFEST, &docker)
            .await
            .status(),
        StatusCode::CREATED
    );
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": sha256(&docker), "size": docker.len(), "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    assert_eq!(
        s.put_manifest("types", "dlist", DOCKER_LIST, &list)
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        header(&s.get("/v2/types/manifests/docker").await, "content-type"),
        DOCKER_MANIFEST
    );
    assert_eq!(
        header(&s.get("/v2/types/manifests/dlist").await, "content-type"),
        DOCKER_LIST
    );

    // Empty index and a layer that lives elsewhere (non-distributable) are fine.
    let empty = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    assert_eq!(
        s.put_manifest("types", "empty", OCI_INDEX, empty)
            .await
            .status(),
        StatusCode::CREATED
    );
    let foreign = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "digest": sha256(b"far away"), "size": 8, "urls": ["https://example.com/layer"]}],
    }))
    .unwrap();
    assert_eq!(
        s.put_manifest("types", "foreign", OCI_MANIFEST, &foreign)
            .await
            .status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn invalid_manifests() {
    let s = Server::start().await;
    let good = s.image_manifest("bad", json!({})).await;
    assert_error(
        s.put_manifest("bad", "v1", OCI_MANIFEST, b"{not json")
            .await,
        400,
        "MANIFEST_INVALID",
    )
    .await;
    assert_error(
        s.put_manifest("bad", "v1", OCI_MANIFEST, br#"{"schemaVersion":1}"#)
            .await,
        400,
        "MANIFEST_INVALID",
    )
    .await;
    assert_error(
        s.put_manifest("bad", "v1", OCI_INDEX, &good).await,
        400,
        "MANIFEST_INVALID",
    )
    .await;
    assert_error(
        s.put_manifest("bad", "v1", "text/plain", &good).await,
        400,
        "MANIFEST_INVALID",
    )
    .await;
    let bad_desc = String::from_utf8(good.clone())
        .unwrap()
        .replacen("sha256:", "sha256:zz", 1);
    assert_error(
        s.put_manifest("bad", "v1", OCI_MANIFEST, bad_desc.as_bytes())
            .await,
        400,
        "MANIFEST_INVALID",
    )
    .await;
    assert_error(
        s.put_manifest("bad", "-v1", OCI_MANIFEST, &good).await,
        400,
        "TAG_INVALID",
    )
    .await;
    assert_error(
        s.put_manifest("BAD", "v1", OCI_MANIFEST, &good).await,
        400,
        "NAME_INVALID",
    )
    .await;
    assert_error(s.get("/v2/bad/manifests/v1").await, 404, "MANIFEST_UNKNOWN").await;
}

/// An image manifest in `repo` whose `pad` annotation makes it about `pad` bytes longer.
async fn padded_manifest(s: &Server, repo: &str, pad: usize) -> Vec<u8> {
    s.image_manifest(repo, json!({"annotations": {"pad": "x".repeat(pad)}}))
        .await
}

#[tokio::test]
async fn size_limit() {
    let s = Server::start().await;
    let fits = padded_manifest(&s, "big", 4 * 1024 * 1024 - 2000).await;
    assert!(fits.len() < 4 * 1024 * 1024);
    assert_eq!(
        s.put_manifest("big", "fits", OCI_MANIFEST, &fits)
            .await
            .status(),
        StatusCode::CREATED,
        "4 MiB accepted"
    );
    // Just past the limit; then far past it, so the refusal comes while the client is still
    // sending: it must still read the error, not a broken pipe. Neither is stored.
    for (tag, pad) in [("toobig", 4 * 1024 * 1024 + 10), ("huge", 16 * 1024 * 1024)] {
        let body = padded_manifest(&s, "big", pad).await;
        assert_error(
            s.put_manifest("big", tag, OCI_MANIFEST, &body).await,
            413,
            "SIZE_INVALID",
        )
        .await;
        assert_error(
            s.get(&format!("/v2/big/manifests/{tag}")).await,
            404,
            "MANIFEST_UNKNOWN",
        )
        .await;
    }
}

#[tokio::test]
async fn subject_may_be_missing_and_is_echoed() {
    let s = Server::start().await;
    let absent = sha256(b"subject to come");
    let body = s
        .image_manifest("subj", json!({"artifactType": "application/x-sig", "subject": {"mediaType": OCI_MANIFEST, "digest": absent, "size": 100}}))
        .await;
    let r = s
        .put_manifest("subj", &sha256(&body), OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "oci-subject"), absent);
}

#[tokio::test]
async fn delete_tag_untags_and_delete_digest_removes() {
    let s = Server::start().await;
    let d = s.push_image("del", "v1").await;
    let body = s
        .get(&format!("/v2/del/manifests/{d}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        s.put_manifest("del", "v2", OCI_MANIFEST, &body)
            .await
            .status(),
        StatusCode::CREATED
    );

    assert_eq!(
        s.delete("/v2/del/manifests/v1").await.status(),
        StatusCode::ACCEPTED
    );
    assert_error(s.get("/v2/del/manifests/v1").await, 404, "MANIFEST_UNKNOWN").await;
    assert_eq!(
        s.get(&format!("/v2/del/manifests/{d}")).await.status(),
        StatusCode::OK,
        "untag keeps the manifest"
    );
    assert_error(
        s.delete("/v2/del/manifests/v1").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;

    assert_eq!(
        s.delete(&format!("/v2/del/manifests/{d}")).await.status(),
        StatusCode::ACCEPTED
    );
    assert_error(
        s.get(&format!("/v2/del/manifests/{d}")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_error(s.get("/v2/del/manifests/v2").await, 404, "MANIFEST_UNKNOWN").await;
    assert_error(
        s.delete(&format!("/v2/del/manifests/{d}")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}
