//! Operations: health and readiness probes, Prometheus metrics, access logs, and a graceful
//! shutdown that leaves uploads resumable.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::*;

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn health_and_readiness() {
    let s = Server::start().await;
    let r = s.get("/healthz").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.get("/readyz").await.status(), StatusCode::OK);
    // Break the blob store under the running server: ready turns false, alive stays true.
    std::fs::remove_dir_all(s.data.join("berth/uploads")).unwrap();
    let r = s.get("/readyz").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().await.unwrap().contains("blobs:"));
    assert_eq!(s.get("/healthz").await.status(), StatusCode::OK);
}

/// Store metrics are the backend's own: ten pulls of one manifest read the metadata backend
/// once (the manifest cache answers the rest), and the figures say so.
#[tokio::test]
async fn metadata_metrics_measure_the_backend_not_the_cache() {
    let s = Server::start().await;
    s.push_image("metrics/cached", "v1").await;
    let reads =
        "berth_store_operation_duration_seconds_count{store=\"metadata\",op=\"get_manifest\"}";
    let before = metric(&s.get("/metrics").await.text().await.unwrap(), reads);
    for _ in 0..10 {
        let r = s
            .req(Method::GET, "/v2/metrics/cached/manifests/v1")
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let text = s.get("/metrics").await.text().await.unwrap();
    assert_eq!(metric(&text, reads) - before, 1.0, "{text}");
    let pushes =
        "berth_store_operation_duration_seconds_count{store=\"metadata\",op=\"put_manifest\"}";
    assert_eq!(metric(&text, pushes), 1.0, "{text}");
}

#[tokio::test]
async fn a_push_shows_up_in_the_metrics() {
    let s = Server::start().await;
    let before = s.get("/metrics").await.text().await.unwrap();
    let data = random_bytes(12_345);
    s.push_blob("metrics/repo", &data).await;
    s.get("/v2/metrics/repo/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000").await;
    let r = s.get("/metrics").await;
    assert!(header(&r, "content-type").starts_with("text/plain"));
    let text = r.text().await.unwrap();
    let count = "berth_http_request_duration_seconds_count{route=\"upload\",method=\"POST\",status=\"201\"}";
    assert_eq!(metric(&before, count), 0.0);
    assert_eq!(metric(&text, count), 1.0, "{text}");
    assert_eq!(metric(&text, "berth_http_request_duration_seconds_count{route=\"blob\",method=\"GET\",status=\"404\"}"), 1.0);
    assert!(metric(&text, "berth_http_request_bytes_total") >= 12_345.0);
    assert_eq!(
        metric(
            &text,
            "berth_store_operation_duration_seconds_count{store=\"blob\",op=\"commit_upload\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "berth_store_operation_errors_total{store=\"blob\",op=\"commit_upload\"}"
        ),
        0.0
    );
    assert!(metric(&text, "process_resident_memory_bytes") > 1e6);
    // Room where the blobs live, from the filesystem holding the data directory.
    let (free, total) = (
        metric(&text, "berth_storage_free_bytes"),
        metric(&text, "berth_storage_total_bytes"),
    );
    assert!(free > 0.0 && total >= free, "free {free}, total {total}");
    assert_eq!(metric(&text, "berth_storage_full"), 0.0);
    // Background work reports under one runner: the upload purge ran at startup.
    let mut purges = 0.0;
    for _ in 0..50 {
        let text = s.get("/metrics").await.text().await.unwrap();
        purges = metric(&text, "berth_worker_runs_total{worker=\"upload_purge\"}");
        if purges >= 1.0 {
            assert!(text.contains("berth_worker_failures_total{worker=\"gc\"} 0"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(purges >= 1.0, "the upload purge ran at startup");
}

#[tokio::test]
async fn access_log_lines_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let s = Server::start_with_env(&[
        ("BERTH_TEST_LOG", log.to_str().unwrap()),
        ("BERTH_LOG_FORMAT", "json"),
        ("BERTH_LOG_LEVEL", "info"),
    ])
    .await;
    let r = s
        .req(Method::POST, "/v2/logged/app/blobs/uploads/")
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-request-id"), "req-123");
    let location = header(&r, "location");
    let id = location.rsplit('/').next().unwrap().to_owned();
    s.get(&location).await;
    let mut lines = Vec::new();
    for _ in 0..50 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "berth::access")
            .collect();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = &lines[0]["fields"];
    assert_eq!(first["request_id"], "req-123");
    assert_eq!(first["status"], 202);
    assert_eq!(first["repository"], "logged/app");
    assert_eq!(first["user"], "anonymous");
    assert!(first["duration_ms"].as_f64().is_some());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains(&id),
        "upload ids are capabilities and stay out of logs"
    );
}

/// SIGTERM in the middle of a chunked upload: the server exits within the drain time, and
/// the upload completes after a restart from the offset the server reports.
#[tokio::test]
async fn sigterm_during_a_chunked_upload() {
    let mut s = Server::start_with_env(&[("BERTH_SERVER_DRAIN_SECONDS", "2")]).await;
    let data = random_bytes(3_000_000);
    let loc = s.start_upload("drain/app").await;
    let r = s
        .patch_upload(&loc, Some("0-999999"), &data[..1_000_000])
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // A second chunk that trickles in and never finishes by itself.
    let part = data[1_000_000..1_500_000].to_vec();
    let stream = futures_util::stream::unfold(0, move |i| {
        let part = part.clone();
        async move {
            if i == 0 {
                Some((Ok::<_, std::io::Error>(part), 1))
            } else {
                tokio::time::sleep(Duration::from_secs(60)).await;
                None
            }
        }
    });
    let slow = s
        .req(Method::PATCH, &loc)
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let slow = tokio::spawn(slow);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let took = s.terminate();
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM with a 2 s drain"
    );
    slow.abort();

    s.start_again();
    let r = s.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "session survives");
    let range = header(&r, "range");
    let end: usize = range.split('-').nth(1).unwrap().parse().unwrap();
    let offset = end + 1;
    assert!(offset >= 1_000_000, "the first chunk is kept: {range}");
    let r = s
        .req(Method::PATCH, &loc)
        .header("content-range", format!("{offset}-{}", data.len() - 1))
        .body(data[offset..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let d = sha256(&data);
    let r = s
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        s.get(&format!("/v2/drain/app/blobs/{d}"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &data[..]
    );
}

/// Reads HTTP/1.1 requests from one connection and forwards their bodies.
async fn serve_collector(
    mut sock: tokio::net::TcpStream,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 65536];
        let n = match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            buf.drain(..end + 4 + len);
            let _ = tx.send(body);
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    }
}

/// With an OTLP endpoint configured, every request becomes a span sent to the collector, a
/// child of the caller's trace when it sends `traceparent`.
#[tokio::test]
async fn request_spans_reach_an_otlp_collector() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve_collector(sock, tx.clone()));
        }
    });
    let s = Server::start_with_env(&[("BERTH_TRACING_OTLP_ENDPOINT", &endpoint)]).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    s.req(Method::GET, "/v2/")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    let mut found = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while found.is_none() {
        let body = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("spans exported")
            .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        let spans = v["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        found = spans.into_iter().find(|sp| sp["traceId"] == trace);
    }
    let span = found.unwrap();
    assert_eq!(span["name"], "GET base");
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(span["kind"], 2);
}

/// Online GC deletes the bytes of blobs nothing references any more, keeps everything else,
/// and reports in /metrics; the registry keeps serving meanwhile.
#[tokio::test]
async fn online_gc_frees_unreferenced_blobs() {
    let s = Server::start_with_env(&[
        ("BERTH_GC_INTERVAL_SECONDS", "1"),
        ("BERTH_GC_GRACE_SECONDS", "1"),
    ])
    .await;
    let image = s.push_image("gc/app", "v1").await;
    let orphan_bytes = random_bytes(5000);
    let orphan = s.push_blob("gc/app", &orphan_bytes).await;
    let shared_bytes = random_bytes(3000);
    let shared = s.push_blob("gc/app", &shared_bytes).await;
    let r = s
        .req(
            Method::POST,
            &format!("/v2/gc/other/blobs/uploads/?mount={shared}&from=gc/app"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // The mounted blob is a layer of an image in the other repository: that keeps it.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = s.push_blob("gc/other", config).await;
    let user = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": shared, "size": shared_bytes.len()}]}))
    .unwrap();
    let r = s.put_manifest("gc/other", "v1", OCI_MANIFEST, &user).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    for d in [&orphan, &shared] {
        assert_eq!(
            s.delete(&format!("/v2/gc/app/blobs/{d}")).await.status(),
            StatusCode::ACCEPTED
        );
    }
    let path = |d: &str| s.data.join(blob_path(d));
    assert!(path(&orphan).exists());
    let mut freed = false;
    for _ in 0..60 {
        if !path(&orphan).exists() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the unreferenced blob's bytes are deleted");
    assert!(
        path(&shared).exists(),
        "a blob an image of another repository uses stays"
    );
    assert_eq!(
        s.get(&format!("/v2/gc/other/blobs/{shared}"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        s.get("/v2/gc/app/manifests/v1").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        header(
            &s.get("/v2/gc/app/manifests/v1").await,
            "docker-content-digest"
        ),
        image
    );
    // The image's layers are referenced by its manifest: still readable.
    let m: Value = s.get("/v2/gc/app/manifests/v1").await.json().await.unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(
        s.get(&format!("/v2/gc/app/blobs/{layer}")).await.status(),
        StatusCode::OK
    );
    let text = s.get("/metrics").await.text().await.unwrap();
    assert!(
        metric(&text, "berth_gc_blobs_deleted_total") >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "berth_gc_bytes_freed_total") >= 5000.0);
    // Pushing the collected blob again stores it anew.
    assert_eq!(s.push_blob("gc/app", &orphan_bytes).await, orphan);
    let back = s
        .get(&format!("/v2/gc/app/blobs/{orphan}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(back.as_ref(), &orphan_bytes[..]);
}

/// Text logs written to a file or pipe (what `kubectl logs` shows) carry no colour codes.
#[tokio::test]
async fn text_logs_off_a_terminal_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let s = Server::start_with_env(&[
        ("BERTH_TEST_LOG", log.to_str().unwrap()),
        ("BERTH_LOG_LEVEL", "info"),
    ])
    .await;
    s.get("/v2/").await;
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("berth::access") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains("berth::access"), "{text}");
    assert!(!text.contains('\u{1b}'), "escape codes in {text:?}");
}

/// The access log counts the bytes that really moved: a chunked upload without
/// `Content-Length`, a JSON listing, and nothing for a HEAD.
#[tokio::test]
async fn access_log_bytes_are_the_bytes_moved() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let s = Server::start_with_env(&[
        ("BERTH_TEST_LOG", log.to_str().unwrap()),
        ("BERTH_LOG_FORMAT", "json"),
        ("BERTH_LOG_LEVEL", "info"),
    ])
    .await;
    let location = s.start_upload("counted/app").await;
    let data = random_bytes(100_000);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(10_000).map(|c| Ok(c.to_vec())).collect();
    let r = s
        .req(Method::PATCH, &location)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let digest = s.push_blob("counted/app", b"0123456789").await;
    s.head(&format!("/v2/counted/app/blobs/{digest}")).await;
    s.get("/v2/_catalog").await;
    let mut lines = Vec::new();
    for _ in 0..50 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "berth::access")
            .map(|v| v["fields"].clone())
            .collect();
        if lines.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let find = |method: &str, route: &str| {
        lines
            .iter()
            .find(|l| l["method"] == method && l["route"] == route)
            .unwrap_or_else(|| panic!("no {method} {route} in {lines:?}"))
            .clone()
    };
    assert_eq!(find("PATCH", "upload")["bytes_in"], 100_000);
    assert_eq!(find("HEAD", "blob")["bytes_out"], 0);
    assert!(find("GET", "catalog")["bytes_out"].as_u64().unwrap() > 10);
}
