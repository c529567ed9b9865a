use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::*;

fn with_digest(location: &str, digest: &str) -> String {
    format!("{location}?digest={digest}")
}

#[tokio::test]
async fn chunked_upload_in_order() {
    let s = Server::start().await;
    let data = random_bytes(300_000);
    let loc = s.start_upload("chunked").await;
    let r = s
        .patch_upload(&loc, Some("0-99999"), &data[..100_000])
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-99999");
    let loc = header(&r, "location");

    let r = s.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-99999");
    assert_eq!(header(&r, "location"), loc);

    // Out of order and overlapping (re-sent) chunks are refused and change nothing.
    assert_error(
        s.patch_upload(&loc, Some("200000-299999"), &data[200_000..])
            .await,
        416,
        "RANGE_INVALID",
    )
    .await;
    assert_error(
        s.patch_upload(&loc, Some("0-99999"), &data[..100_000])
            .await,
        416,
        "RANGE_INVALID",
    )
    .await;
    assert_error(
        s.patch_upload(&loc, Some("100000-100009"), &data[100_000..100_005])
            .await,
        416,
        "RANGE_INVALID",
    )
    .await;
    assert_eq!(header(&s.get(&loc).await, "range"), "0-99999");

    // A chunk without Content-Range is appended (streamed PATCH).
    let r = s.patch_upload(&loc, None, &data[100_000..200_000]).await;
    assert_eq!(header(&r, "range"), "0-199999");

    // The last chunk rides on the PUT.
    let d = sha256(&data);
    let r = s
        .req(Method::PUT, &with_digest(&loc, &d))
        .body(data[200_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/chunked/blobs/{d}"));
    assert_eq!(header(&r, "docker-content-digest"), d);
    let got = s
        .get(&format!("/v2/chunked/blobs/{d}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), &data[..]);
    assert_error(s.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn monolithic_post_then_put() {
    let s = Server::start().await;
    let data = random_bytes(5000);
    let d = sha256(&data);
    let loc = s.start_upload("mono").await;
    let r = s
        .req(Method::PUT, &with_digest(&loc, &d))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        s.get(&format!("/v2/mono/blobs/{d}"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &data[..]
    );
}

#[tokio::test]
async fn empty_blob() {
    let s = Server::start().await;
    let d = s.push_blob("empty", b"").await;
    let r = s.get(&format!("/v2/empty/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), "0");
}

#[tokio::test]
async fn wrong_digest_keeps_nothing() {
    let s = Server::start().await;
    let data = b"some bytes".to_vec();
    let claimed = sha256(b"other bytes");
    let r = s
        .req(
            Method::POST,
            &format!("/v2/wrong/blobs/uploads/?digest={claimed}"),
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "DIGEST_INVALID").await;
    assert_error(
        s.get(&format!("/v2/wrong/blobs/{claimed}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;

    let loc = s.start_upload("wrong").await;
    s.patch_upload(&loc, None, &data).await;
    let r = s
        .req(Method::PUT, &with_digest(&loc, &claimed))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "DIGEST_INVALID").await;
    assert_error(s.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(
        s.get(&format!("/v2/wrong/blobs/{}", sha256(&data))).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    let uploads = std::fs::read_dir(s.data.join("berth/uploads"))
        .unwrap()
        .count();
    assert_eq!(uploads, 0, "no staging file left behind");
    let blobs = walk_files(&s.data.join("docker/registry/v2/blobs"));
    assert!(blobs.is_empty(), "no blob stored: {blobs:?}");
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn bad_finish_requests() {
    let s = Server::start().await;
    let loc = s.start_upload("fin").await;
    assert_error(
        s.req(Method::PUT, &loc).send().await.unwrap(),
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_error(
        s.req(Method::PUT, &with_digest(&loc, "sha256:nothex"))
            .send()
            .await
            .unwrap(),
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_error(
        s.req(Method::POST, "/v2/fin/blobs/uploads/?digest-algorithm=md5")
            .send()
            .await
            .unwrap(),
        400,
        "DIGEST_INVALID",
    )
    .await;
}

#[tokio::test]
async fn unknown_and_foreign_upload_ids() {
    let s = Server::start().await;
    let d = sha256(b"x");
    for path in [
        "/v2/u/blobs/uploads/0123456789abcdef",
        "/v2/u/blobs/uploads/..%2F..%2Fetc",
    ] {
        assert_error(s.get(path).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
        // 4 MiB: the refusal comes while the client is still sending, and it must still
        // read the error, not a broken pipe.
        assert_error(
            s.patch_upload(path, None, &vec![7u8; 4 << 20]).await,
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
        assert_error(
            s.req(Method::PUT, &with_digest(path, &d))
                .send()
                .await
                .unwrap(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
        assert_error(s.delete(path).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    }
    // A session belongs to the repository it was opened in.
    let loc = s.start_upload("owner").await;
    let id = loc.rsplit('/').next().unwrap();
    assert_error(
        s.get(&format!("/v2/intruder/blobs/uploads/{id}")).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn session_ids_are_unguessable() {
    let s = Server::start().await;
    let a = s.start_upload("ids").await;
    let b = s.start_upload("ids").await;
    let id = |l: &str| l.rsplit('/').next().unwrap().to_owned();
    assert_ne!(id(&a), id(&b));
    assert!(id(&a).len() >= 32, "at least 128 bits: {}", id(&a));
}

#[tokio::test]
async fn cancel() {
    let s = Server::start().await;
    let loc = s.start_upload("cancel").await;
    s.patch_upload(&loc, None, b"abc").await;
    assert_eq!(s.delete(&loc).await.status(), StatusCode::NO_CONTENT);
    assert_error(s.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn sha512_uploads() {
    let s = Server::start().await;
    let data = random_bytes(70_000);
    let d = sha512(&data);
    // Single POST with a sha512 digest.
    let r = s
        .req(Method::POST, &format!("/v2/s512/blobs/uploads/?digest={d}"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s.get(&format!("/v2/s512/blobs/{d}")).await;
    assert_eq!(header(&r, "docker-content-digest"), d);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);

    // A session opened with digest-algorithm=sha512.
    let r = s
        .req(
            Method::POST,
            "/v2/s512/blobs/uploads/?digest-algorithm=sha512",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = header(&r, "location");
    s.patch_upload(&loc, Some("0-69999"), &data).await;
    let r = s
        .req(Method::PUT, &with_digest(&loc, &d))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // A sha256 session finished with a sha512 digest is re-hashed, not refused.
    let other = random_bytes(1000);
    let loc = s.start_upload("s512").await;
    s.patch_upload(&loc, None, &other).await;
    let r = s
        .req(Method::PUT, &with_digest(&loc, &sha512(&other)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn cross_repository_mount() {
    let s = Server::start().await;
    let d = s.push_blob("source/repo", b"shared layer").await;
    let r = s
        .req(
            Method::POST,
            &format!("/v2/target/repo/blobs/uploads/?mount={d}&from=source/repo"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/target/repo/blobs/{d}"));
    assert_eq!(header(&r, "docker-content-digest"), d);
    assert_eq!(
        s.get(&format!("/v2/target/repo/blobs/{d}")).await.status(),
        StatusCode::OK
    );

    // Source without the blob, or no such source: a plain upload session instead.
    let missing = sha256(b"not there");
    for from in ["source/repo", "nowhere", "BAD//NAME"] {
        let r = s
            .req(
                Method::POST,
                &format!("/v2/target/repo/blobs/uploads/?mount={missing}&from={from}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "from={from}");
        assert!(header(&r, "location").contains("/blobs/uploads/"));
    }
    assert_error(
        s.req(
            Method::POST,
            "/v2/target/repo/blobs/uploads/?mount=sha256:zz&from=source/repo",
        )
        .send()
        .await
        .unwrap(),
        400,
        "DIGEST_INVALID",
    )
    .await;
}

/// Upload sessions in progress are capped per user and per repository, also when they are
/// opened all at once; a finished or cancelled one frees its place.
#[tokio::test]
async fn sessions_in_progress_are_limited() {
    let s = Server::start_with_env(&[
        ("BERTH_LIMITS_MAX_UPLOADS_PER_USER", "6"),
        ("BERTH_LIMITS_MAX_UPLOADS_PER_REPOSITORY", "4"),
    ])
    .await;
    let opens = (0..20).map(|_| s.req(Method::POST, "/v2/team/a/blobs/uploads/").send());
    let statuses: Vec<StatusCode> = futures_util::future::join_all(opens)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    let opened = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    assert_eq!(opened, 4, "{statuses:?}");
    let r = s
        .req(Method::POST, "/v2/team/a/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    let detail = body["errors"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("repository team/a") && detail.contains("limit is 4"),
        "{detail}"
    );

    let b1 = s.start_upload("team/b").await;
    s.start_upload("team/b").await;
    // Without authentication every client is the same user: six sessions in all.
    let r = s
        .req(Method::POST, "/v2/team/c/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_error(r, 429, "TOOMANYREQUESTS").await;
    assert_eq!(s.delete(&b1).await.status(), StatusCode::NO_CONTENT);
    s.start_upload("team/c").await;
    // Single-request pushes hold no session and are not limited.
    s.push_blob("team/a", b"monolithic").await;
}
