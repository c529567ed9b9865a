use reqwest::{Method, StatusCode};

use crate::common::*;

/// A chunked upload survives the server being killed between chunks.
#[tokio::test]
async fn chunked_upload_resumes_after_crash() {
    let mut s = Server::start().await;
    let data = random_bytes(2_000_000);
    let loc = s.start_upload("resume").await;
    let r = s
        .patch_upload(&loc, Some("0-999999"), &data[..1_000_000])
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    s.crash_and_restart().await;

    let r = s.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "session survives");
    assert_eq!(header(&r, "range"), "0-999999");
    let r = s
        .patch_upload(&loc, Some("1000000-1999999"), &data[1_000_000..])
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let d = sha256(&data);
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = s
        .get(&format!("/v2/resume/blobs/{d}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), &data[..]);
}

#[tokio::test]
async fn content_survives_restart() {
    let mut s = Server::start().await;
    let d = s.push_image("durable", "v1").await;
    s.crash_and_restart().await;
    let r = s.get("/v2/durable/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), d);
}

/// Abandoned uploads are discarded with their bytes; finished content is untouched.
#[tokio::test]
async fn abandoned_uploads_are_purged() {
    let mut s = Server::start_with_env(&[("BERTH_STORAGE_UPLOAD_PURGE_HOURS", "0")]).await;
    let kept = s.push_image("purge", "v1").await;
    let r = s
        .req(Method::POST, "/v2/purge/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = header(&r, "location");
    s.req(Method::PATCH, &loc)
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_dir(s.data.join("berth/uploads"))
            .unwrap()
            .count(),
        1
    );
    // Sessions record whole seconds; make this one strictly older than the next start.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    s.crash_and_restart().await;
    let mut gone = false;
    for _ in 0..50 {
        if s.get(&loc).await.status() == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "the abandoned session is discarded at startup");
    assert_eq!(
        std::fs::read_dir(s.data.join("berth/uploads"))
            .unwrap()
            .count(),
        0,
        "and its bytes"
    );
    let r = s.get("/v2/purge/manifests/v1").await;
    assert_eq!(header(&r, "docker-content-digest"), kept);
}
