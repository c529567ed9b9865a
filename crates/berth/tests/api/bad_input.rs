//! Bad input found by a corpus of malformed requests and by the conformance suites: each is
//! refused with the right status and a spec error code, and leaves nothing behind.

use std::io::{Read, Write};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

/// Sends raw bytes on a fresh connection; returns the status line and headers.
fn raw(s: &Server, request: &str) -> String {
    let addr = s.base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A manifest naming the layer `layer` with the descriptor `descriptor` (merged in).
async fn image_with_layer(s: &Server, repo: &str, layer: &[u8], descriptor: Value) -> Vec<u8> {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = s.push_blob(repo, config).await;
    let ld = s.push_blob(repo, layer).await;
    let mut layer_desc = json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": ld, "size": layer.len()});
    for (k, v) in descriptor.as_object().unwrap() {
        if v.is_null() {
            layer_desc.as_object_mut().unwrap().remove(k);
        } else {
            layer_desc[k] = v.clone();
        }
    }
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [layer_desc],
    }))
    .unwrap()
}

async fn detail_of(r: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status().as_u16(), status);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    body["errors"][0]["detail"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn descriptors_must_match_the_stored_blobs() {
    let s = Server::start().await;
    let layer = random_bytes(4096);
    let wrong = image_with_layer(&s, "d/app", &layer, json!({"size": 1})).await;
    let r = s.put_manifest("d/app", "v1", OCI_MANIFEST, &wrong).await;
    let detail = detail_of(r, 400, "MANIFEST_INVALID").await;
    assert!(
        detail.contains(&sha256(&layer)) && detail.contains("4096"),
        "{detail}"
    );
    let no_type = image_with_layer(&s, "d/app", &layer, json!({"mediaType": null})).await;
    let detail = detail_of(
        s.put_manifest("d/app", "v1", OCI_MANIFEST, &no_type).await,
        400,
        "MANIFEST_INVALID",
    )
    .await;
    assert!(
        detail.contains("layers[0]") && detail.contains("mediaType"),
        "{detail}"
    );
    let no_size = image_with_layer(&s, "d/app", &layer, json!({"size": null})).await;
    let r = s.put_manifest("d/app", "v1", OCI_MANIFEST, &no_size).await;
    assert_error(r, 400, "MANIFEST_INVALID").await;
    let mut no_config_type: Value = serde_json::from_slice(&no_size).unwrap();
    no_config_type["layers"][0]["size"] = json!(layer.len());
    no_config_type["config"]
        .as_object_mut()
        .unwrap()
        .remove("mediaType");
    let r = s
        .put_manifest(
            "d/app",
            "v1",
            OCI_MANIFEST,
            &serde_json::to_vec(&no_config_type).unwrap(),
        )
        .await;
    let detail = detail_of(r, 400, "MANIFEST_INVALID").await;
    assert!(detail.contains("config"), "{detail}");
    assert_error(
        s.get("/v2/d/app/manifests/v1").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;

    // An index whose child descriptor declares a wrong size.
    let right = image_with_layer(&s, "d/app", &layer, json!({})).await;
    let r = s.put_manifest("d/app", "v1", OCI_MANIFEST, &right).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(&right), "size": right.len() + 1}]}))
    .unwrap();
    let r = s.put_manifest("d/app", "multi", OCI_INDEX, &index).await;
    assert_error(r, 400, "MANIFEST_INVALID").await;
}

#[tokio::test]
async fn protocol_errors_get_spec_codes_and_headers() {
    let s = Server::start().await;
    // 405 names what is allowed.
    let r = s
        .req(Method::POST, "/v2/x/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "allow"), "GET, HEAD, PUT, DELETE");
    assert_error(r, 405, "UNSUPPORTED").await;
    let r = s.delete("/v2/_catalog").await;
    assert_eq!(header(&r, "allow"), "GET");
    assert_error(r, 405, "UNSUPPORTED").await;
    let r = s.req(Method::GET, "/v2/x/base/nope").send().await.unwrap();
    assert_error(r, 404, "UNSUPPORTED").await;
    let star = raw(&s, "GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(star.starts_with("HTTP/1.1 4"), "{star}");
    assert!(!star.contains("NOT_FOUND"), "{star}");

    // RFC 9112: exactly one Host on HTTP/1.1.
    let none = raw(&s, "GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    let two = raw(
        &s,
        "GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    );
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    let one = raw(
        &s,
        "GET /v2/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(one.starts_with("HTTP/1.1 200"), "{one}");
}

#[tokio::test]
async fn upload_parameters_are_strict() {
    let s = Server::start().await;
    let loc = s.start_upload("strict").await;
    let r = s.patch_upload(&loc, Some("0 - 9"), b"0123456789").await;
    assert_error(r, 416, "RANGE_INVALID").await;
    let r = s
        .patch_upload(&loc, Some("bytes 0-9/10"), b"0123456789")
        .await;
    assert_error(r, 416, "RANGE_INVALID").await;
    let r = s.patch_upload(&loc, Some("0-9"), b"0123456789").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = header(&r, "location");

    // Two digests are ambiguous, even when the first is right.
    let right = sha256(b"0123456789");
    let other = sha256(b"other");
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={right}&digest={other}"))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "DIGEST_INVALID").await;
    assert_error(
        s.get(&format!("/v2/strict/blobs/{right}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    let r = s
        .req(
            Method::POST,
            &format!("/v2/strict/blobs/uploads/?digest={right}&digest={right}"),
        )
        .body(&b"0123456789"[..])
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "DIGEST_INVALID").await;
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={right}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "the session still completes"
    );
}

/// The v1.1.1 conformance suite: nothing can exist under an invalid tag, so reads get 404; a
/// push to one stays 400.
#[tokio::test]
async fn invalid_tags_are_unknown_to_reads() {
    let s = Server::start().await;
    s.push_image("conf", "v1").await;
    let path = "/v2/conf/manifests/.INVALID_MANIFEST_NAME";
    assert_error(s.get(path).await, 404, "MANIFEST_UNKNOWN").await;
    let r = s.head(path).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body = s.image_manifest("conf", json!({})).await;
    let r = s
        .put_manifest("conf", ".INVALID_MANIFEST_NAME", OCI_MANIFEST, &body)
        .await;
    assert_error(r, 400, "TAG_INVALID").await;
}

/// A manifest pushed by its sha512 digest and tagged keeps that digest when fetched by tag.
#[tokio::test]
async fn a_sha512_push_is_served_with_its_sha512_digest() {
    let s = Server::start().await;
    let body = s.image_manifest("sha", json!({})).await;
    let d512 = sha512(&body);
    // The same bytes under t1 by sha256 first, read once so a cache holds them.
    let r = s.put_manifest("sha", "t1", OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(
            &s.get("/v2/sha/manifests/t1").await,
            "docker-content-digest"
        ),
        sha256(&body)
    );
    let r = s
        .put_manifest("sha", &format!("{d512}?tag=t1&tag=t2"), OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "docker-content-digest"), d512);
    for tag in ["t1", "t2"] {
        let r = s.get(&format!("/v2/sha/manifests/{tag}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "docker-content-digest"), d512, "{tag}");
        let r = s.head(&format!("/v2/sha/manifests/{tag}")).await;
        assert_eq!(header(&r, "docker-content-digest"), d512, "HEAD {tag}");
    }
}

/// Sparse manifests, opt in: absent layers and children are accepted and answer 404.
#[tokio::test]
async fn sparse_manifests_are_opt_in() {
    let s = Server::start_with_env(&[("BERTH_MANIFESTS_ALLOW_SPARSE", "true")]).await;
    let config = br#"{"architecture":"arm64","os":"linux"}"#;
    let cd = s.push_blob("mirror/app", config).await;
    let absent = sha256(b"a layer this mirror did not copy");
    let image = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": absent, "size": 31}],
    }))
    .unwrap();
    let r = s
        .put_manifest("mirror/app", "arm64", OCI_MANIFEST, &image)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s.get("/v2/mirror/app/manifests/arm64").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &image[..]);
    assert_error(
        s.get(&format!("/v2/mirror/app/blobs/{absent}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha256(&image), "size": image.len()},
        {"mediaType": OCI_MANIFEST, "digest": sha256(b"amd64 manifest, not copied"), "size": 500},
    ]}))
    .unwrap();
    let r = s
        .put_manifest("mirror/app", "latest", OCI_INDEX, &index)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        s.head("/v2/mirror/app/manifests/latest").await.status(),
        StatusCode::OK
    );

    // Off by default.
    let strict = Server::start().await;
    strict.push_blob("mirror/app", config).await;
    let r = strict
        .put_manifest("mirror/app", "arm64", OCI_MANIFEST, &image)
        .await;
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
}
