use reqwest::{Method, StatusCode};

use crate::common::*;

#[tokio::test]
async fn base_endpoint_and_unknown_routes() {
    let s = Server::start().await;
    let r = s.get("/v2/").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(r.text().await.unwrap(), "{}");
    assert_eq!(s.get("/v2").await.status(), StatusCode::OK);
    // Unknown endpoints answer a code from the spec's list.
    assert_error(s.get("/v2/repo/nothing/here").await, 404, "UNSUPPORTED").await;
    assert_error(s.get("/elsewhere").await, 404, "UNSUPPORTED").await;
    let r = s.req(Method::POST, "/v2/x/tags/list").send().await.unwrap();
    assert_eq!(header(&r, "allow"), "GET");
    assert_error(r, 405, "UNSUPPORTED").await;
}

#[tokio::test]
async fn get_head_and_conditional() {
    let s = Server::start().await;
    let data = random_bytes(10_000);
    let d = s.push_blob("a/b", &data).await;
    let r = s.get(&format!("/v2/a/b/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), d);
    assert_eq!(header(&r, "content-length"), "10000");
    assert_eq!(header(&r, "etag"), format!("\"{d}\""));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);

    let r = s.head(&format!("/v2/a/b/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), "10000");
    assert_eq!(header(&r, "docker-content-digest"), d);

    let r = s
        .req(Method::GET, &format!("/v2/a/b/blobs/{d}"))
        .header("if-none-match", format!("\"{d}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn ranges() {
    let s = Server::start().await;
    let data = random_bytes(1000);
    let d = s.push_blob("r", &data).await;
    let get = |range: &'static str| {
        s.req(Method::GET, &format!("/v2/r/blobs/{d}"))
            .header("range", range)
            .send()
    };
    let r = get("bytes=10-19").await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "content-range"), "bytes 10-19/1000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);

    let r = get("bytes=-100").await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[900..]);

    let r = get("bytes=500-5000").await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::PARTIAL_CONTENT,
        "past the end is clamped"
    );
    assert_eq!(header(&r, "content-range"), "bytes 500-999/1000");
    assert_eq!(r.bytes().await.unwrap().len(), 500);

    for bad in [
        "bytes=500-0",
        "bytes=1000-",
        "bytes=x-y",
        "bytes=0-1,2000-3000",
    ] {
        let r = get(bad).await.unwrap();
        assert_eq!(header(&r, "content-range"), "bytes */1000", "{bad}");
        assert_error(r, 416, "RANGE_INVALID").await;
    }
    // RFC 9110: an unknown unit is ignored; several ranges may be answered with everything.
    for whole in ["items=0-5", "bytes=0-1,4-5"] {
        let r = get(whole).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{whole}");
        assert_eq!(header(&r, "content-range"), "", "{whole}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..], "{whole}");
    }
}

#[tokio::test]
async fn blobs_are_visible_only_where_pushed() {
    let s = Server::start().await;
    let d = s.push_blob("team/one", b"private layer").await;
    assert_error(
        s.get(&format!("/v2/team/two/blobs/{d}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    let other = sha256(b"other");
    assert_error(
        s.get(&format!("/v2/team/one/blobs/{other}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    assert_eq!(
        s.head(&format!("/v2/team/one/blobs/{other}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_digests_and_names() {
    let s = Server::start().await;
    assert_error(s.get("/v2/x/blobs/sha256:123").await, 400, "DIGEST_INVALID").await;
    assert_error(
        s.get("/v2/x/blobs/md5:d41d8cd98f00b204e9800998ecf8427e")
            .await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_error(
        s.get(&format!("/v2/Bad_Name/blobs/{}", sha256(b""))).await,
        400,
        "NAME_INVALID",
    )
    .await;
    assert_error(
        s.get(&format!("/v2/a//b/blobs/{}", sha256(b""))).await,
        400,
        "NAME_INVALID",
    )
    .await;
}

#[tokio::test]
async fn delete_unlinks_from_the_repository() {
    let s = Server::start().await;
    let d = s.push_blob("del", b"to be deleted").await;
    let r = s.delete(&format!("/v2/del/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_error(
        s.get(&format!("/v2/del/blobs/{d}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    assert_error(
        s.delete(&format!("/v2/del/blobs/{d}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn deletes_can_be_disabled() {
    let s = Server::start_with_env(&[("BERTH_STORAGE_DELETE_ENABLED", "false")]).await;
    let d = s.push_blob("keep", b"kept").await;
    let m = s.push_image("keep", "v1").await;
    assert_error(
        s.delete(&format!("/v2/keep/blobs/{d}")).await,
        405,
        "UNSUPPORTED",
    )
    .await;
    let r = s.delete(&format!("/v2/keep/manifests/{m}")).await;
    assert_eq!(header(&r, "allow"), "GET, HEAD, PUT");
    assert_error(r, 405, "UNSUPPORTED").await;
    assert_error(s.delete("/v2/keep/manifests/v1").await, 405, "UNSUPPORTED").await;
    assert_eq!(
        s.get(&format!("/v2/keep/blobs/{d}")).await.status(),
        StatusCode::OK
    );
}
