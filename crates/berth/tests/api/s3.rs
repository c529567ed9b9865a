//! The registry on S3-compatible storage, configured as a registry:2 Deployment configures
//! Distribution (`REGISTRY_STORAGE=s3`, `REGISTRY_STORAGE_S3_*`), against a real S3 server
//! (moto) and, for faults, through a proxy that refuses, stalls, cuts or throttles.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;
use crate::pg::Cluster;
use crate::postgres::{alternate_chunks, blob_bytes, poll, push_through_a_dying_replica};
use crate::s3support::Moto;

/// Distribution's variables for a bucket at `endpoint`, as a Deployment would set them.
fn registry_env(endpoint: &str, bucket: &str) -> Vec<(String, String)> {
    [
        ("REGISTRY_STORAGE", "s3"),
        ("REGISTRY_STORAGE_S3_REGION", "us-east-1"),
        ("REGISTRY_STORAGE_S3_BUCKET", bucket),
        ("REGISTRY_STORAGE_S3_REGIONENDPOINT", endpoint),
        ("REGISTRY_STORAGE_S3_ACCESSKEY", "berth"),
        ("REGISTRY_STORAGE_S3_SECRETKEY", "berth-secret"),
        ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", "/registry"),
        ("REGISTRY_STORAGE_S3_FORCEPATHSTYLE", "true"),
        ("REGISTRY_STORAGE_S3_SECURE", "false"),
        ("REGISTRY_STORAGE_S3_CHUNKSIZE", "5242880"),
        ("REGISTRY_STORAGE_REDIRECT_DISABLE", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn with<'a>(env: &'a [(String, String)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    all
}

/// A chunked push of `data` through `s` (chunks of `chunk` bytes); returns the digest.
async fn push_chunked(s: &Server, repo: &str, data: &[u8], chunk: usize) -> String {
    let digest = sha256(data);
    let location = s.start_upload(repo).await;
    let mut at = 0;
    while at < data.len() {
        let end = (at + chunk).min(data.len());
        let r = s
            .patch_upload(
                &location,
                Some(&format!("{at}-{}", end - 1)),
                &data[at..end],
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "chunk at {at}");
        at = end;
    }
    let r = s
        .req(Method::PUT, &format!("{location}?digest={digest}"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    digest
}

/// A registry:2 Deployment's S3 variables work unchanged: blobs land under Distribution's
/// keys in the bucket, large ones through multipart parts, and nothing of an upload is left
/// behind once it is committed.
#[tokio::test(flavor = "multi_thread")]
async fn registry_env_puts_blobs_in_distributions_layout() {
    let moto = Moto::start();
    moto.create_bucket("layout");
    let env = registry_env(&moto.endpoint(), "layout");
    let s = Server::start_with_env(&with(&env, &[])).await;
    let manifest = s.push_image("team/app", "v1").await;
    let large = random_bytes(12 * 1024 * 1024 + 5);
    let digest = push_chunked(&s, "team/app", &large, 3 * 1024 * 1024).await;
    assert!(blob_bytes(&s, "team/app", &digest).await == large);

    let key = format!("registry/{}", blob_path(&digest));
    let (status, stored) = moto.get(&format!("layout/{key}"));
    assert_eq!(status, 200, "{key}");
    assert!(stored == large);
    let (status, uploads) = moto.get("layout?list-type=2&prefix=registry/berth/uploads/");
    assert_eq!(status, 200);
    let uploads = String::from_utf8_lossy(&uploads);
    assert!(uploads.contains("ListBucketResult"), "{uploads}");
    assert!(!uploads.contains("<Key>"), "uploads left behind: {uploads}");

    let r = s.get(&format!("/v2/team/app/manifests/{manifest}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .req(Method::GET, &format!("/v2/team/app/blobs/{digest}"))
        .header("range", "bytes=5-9")
        .send()
        .await
        .expect("range");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(r.bytes().await.expect("range body") == large[5..10]);
}

/// With redirects on (Distribution's default for S3), a blob GET answers 307 to a presigned
/// URL that serves the bytes, ranges included; HEAD is still answered by the registry.
#[tokio::test(flavor = "multi_thread")]
async fn downloads_redirect_to_presigned_urls() {
    let moto = Moto::start();
    moto.create_bucket("redirects");
    let env = registry_env(&moto.endpoint(), "redirects");
    let s = Server::start_with_env(&with(&env, &[("BERTH_STORAGE_REDIRECT", "true")])).await;
    let data = random_bytes(100_000);
    let digest = s.push_blob("team/app", &data).await;
    let r = s.get(&format!("/v2/team/app/blobs/{digest}")).await;
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = header(&r, "location");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let fetched = reqwest::Client::new()
        .get(&location)
        .header("range", "bytes=10-19")
        .send()
        .await
        .expect("presigned GET");
    assert_eq!(fetched.status(), StatusCode::PARTIAL_CONTENT);
    assert!(fetched.bytes().await.expect("bytes") == data[10..20]);
    let r = s.head(&format!("/v2/team/app/blobs/{digest}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), data.len().to_string());
    let r = s
        .get(&format!("/v2/team/app/blobs/{}", sha256(b"absent")))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "no redirect for unknown blobs"
    );
}

/// What the fault proxy does to the connections it takes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    /// Accepts and closes at once: a crashed or restarting server.
    Refuse,
    /// Holds every request for this long before passing it on.
    Delay(Duration),
    /// Passes the request on and cuts the answer after this many bytes.
    CutAfter(usize),
    /// Answers 503 SlowDown, as S3 does when throttling.
    SlowDown,
}

/// A TCP proxy on a loopback port in front of `upstream`, one fault at a time.
struct FaultProxy {
    port: u16,
    fault: Arc<Mutex<Fault>>,
}

impl FaultProxy {
    async fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let fault = Arc::new(Mutex::new(Fault::None));
        let current = fault.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let fault = *current.lock().expect("fault");
                tokio::spawn(proxy(client, upstream, fault));
            }
        });
        FaultProxy { port, fault }
    }

    fn set(&self, fault: Fault) {
        *self.fault.lock().expect("fault") = fault;
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

async fn proxy(mut client: TcpStream, upstream: u16, fault: Fault) {
    match fault {
        Fault::Refuse => return,
        Fault::SlowDown => {
            let mut head = [0u8; 4096];
            let _ = client.read(&mut head).await;
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                        <Message>Please reduce your request rate.</Message></Error>";
            let answer = format!(
                "HTTP/1.1 503 Slow Down\r\ncontent-type: application/xml\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(answer.as_bytes()).await;
            return;
        }
        Fault::Delay(d) => tokio::time::sleep(d).await,
        Fault::None | Fault::CutAfter(_) => {}
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream_copy = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let limit = match fault {
        Fault::CutAfter(n) => n,
        _ => usize::MAX,
    };
    let mut sent = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while sent < limit {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(limit - sent),
        };
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        sent += n;
    }
    upstream_copy.abort();
}

/// Every fault of the store is answered 503 with `Retry-After` and an OCI body (or survived
/// by object_store's retries), `/readyz` turns false while the store refuses, and whatever
/// the registry acknowledged is intact once the store is back: no manifest without its
/// blobs, no blob whose bytes differ from its digest.
#[tokio::test(flavor = "multi_thread")]
async fn store_faults_are_answered_503_and_lose_nothing() {
    let moto = Moto::start();
    moto.create_bucket("faults");
    let proxy = FaultProxy::start(moto.port).await;
    let env = registry_env(&proxy.endpoint(), "faults");
    let s = Server::start_with_env(&with(
        &env,
        &[
            ("BERTH_STORAGE_S3_MAX_RETRIES", "2"),
            ("BERTH_STORAGE_S3_REQUEST_TIMEOUT_SECONDS", "2"),
            ("BERTH_STORAGE_S3_CONNECT_TIMEOUT_SECONDS", "1"),
        ],
    ))
    .await;
    let mut acknowledged: Vec<(String, Vec<u8>)> = Vec::new();
    let data = random_bytes(300_000);
    acknowledged.push((s.push_blob("team/app", &data).await, data));
    assert_eq!(s.get("/readyz").await.status(), StatusCode::OK);

    for fault in [
        Fault::Refuse,
        Fault::SlowDown,
        // Slower than the request timeout: given up, answered 503.
        Fault::Delay(Duration::from_secs(3)),
        // Slow but within it: served.
        Fault::Delay(Duration::from_millis(300)),
        Fault::CutAfter(200),
    ] {
        proxy.set(fault);
        // A push during the fault: refused cleanly, or (cut connections are retried by
        // object_store, and may succeed) accepted and then intact.
        let data = random_bytes(200_000);
        let digest = sha256(&data);
        let r = s
            .req(
                Method::POST,
                &format!("/v2/team/app/blobs/uploads/?digest={digest}"),
            )
            .body(data.clone())
            .send()
            .await
            .expect("push");
        if fault == Fault::Delay(Duration::from_millis(300)) {
            assert_eq!(r.status(), StatusCode::CREATED, "a slow store still works");
        }
        match r.status() {
            StatusCode::CREATED => acknowledged.push((digest, data)),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(header(&r, "retry-after"), "1", "{fault:?}");
                let body: serde_json::Value = r.json().await.expect("OCI error body");
                assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{fault:?}");
            }
            other => panic!("{fault:?}: {other} {}", r.text().await.unwrap_or_default()),
        }
        if fault == Fault::Refuse {
            assert_eq!(
                s.get("/readyz").await.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready while the store refuses"
            );
            let r = s
                .get(&format!("/v2/team/app/blobs/{}", acknowledged[0].0))
                .await;
            assert_eq!(
                r.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "pull during refusal"
            );
        }
        if let Fault::CutAfter(_) = fault {
            // A download whose store answer is cut: the client must not get a short blob
            // presented as whole.
            let r = s
                .get(&format!("/v2/team/app/blobs/{}", acknowledged[0].0))
                .await;
            if r.status() == StatusCode::OK {
                let full = acknowledged[0].1.len();
                // Cut short, the client sees a broken body, never a short blob as whole.
                if let Ok(body) = r.bytes().await {
                    assert!(body.len() == full && body == acknowledged[0].1);
                }
            } else {
                assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            }
        }
        proxy.set(Fault::None);
    }

    let ready = poll(
        Duration::from_secs(10),
        async || s.get("/readyz").await.status(),
        |status| *status == StatusCode::OK,
    )
    .await;
    assert_eq!(ready, StatusCode::OK, "ready again once the store is back");
    for (digest, data) in &acknowledged {
        assert!(
            blob_bytes(&s, "team/app", digest).await == *data,
            "{digest} intact"
        );
    }
}

/// Two replicas sharing nothing but PostgreSQL and the bucket (each has its own data
/// directory): an upload alternates chunks between them, large chunks crossing over through
/// the saved hash state alone, since S3 cannot read an unfinished upload back; and a push
/// whose replica is killed after its first chunk finishes on the other.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_on_s3_and_postgres_share_uploads() {
    let moto = Moto::start();
    moto.create_bucket("replicas");
    let cluster = Cluster::start();
    let url = cluster.database("s3replicas").await;
    let env = registry_env(&moto.endpoint(), "replicas");
    let env = with(&env, &[("BERTH_METADATA_URL", url.as_str())]);
    let mut a = Server::start_with_env(&env).await;
    let b = Server::start_with_env(&env).await;
    alternate_chunks(&a, &b).await;
    let digest = a.push_image("team/app", "v1").await;
    let r = b.get("/v2/team/app/manifests/v1").await;
    assert_eq!(header(&r, "docker-content-digest"), digest);
    push_through_a_dying_replica(&mut a, &b).await;
}

/// A wrong secret is the operator's mistake: `berth serve` stops at startup and says which
/// bucket refused it, instead of serving errors.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_stops_the_server_with_a_clear_error() {
    let server = crate::s3support::S3sFs::start("berth", "berth-secret", "checked");
    let env = registry_env(&server.endpoint(), "checked");
    let data = tempfile::tempdir().expect("tempdir");
    let run = |secret: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--data"])
            .arg(data.path())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("REGISTRY_STORAGE_S3_SECRETKEY", secret)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let out = run("not-the-secret").output().expect("running berth serve");
    assert!(!out.status.success(), "must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"checked\"")
            && stderr.contains("refused")
            && stderr.contains("SignatureDoesNotMatch"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-secret"),
        "no secret in the log: {stderr}"
    );

    // The right secret starts, pushes and serves through signature checks.
    let s = Server::start_with_env(&with(&env, &[])).await;
    let digest = s.push_image("team/app", "v1").await;
    let r = s.get(&format!("/v2/team/app/manifests/{digest}")).await;
    assert_eq!(r.status(), StatusCode::OK);
}

fn migrate(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["migrate", "--data"])
        .arg(data)
        .args(args)
        .env("BERTH_LOG_LEVEL", "warn")
        .output()
        .expect("run berth migrate")
}

/// `berth migrate --to postgres://… --blobs-to s3.toml` moves a filesystem + SQLite registry
/// to S3 + PostgreSQL, where every image pulls back identical; a second run copies nothing;
/// and `--blobs-to` a directory with `--to sqlite` moves it back, where it serves again.
#[tokio::test(flavor = "multi_thread")]
async fn berth_migrate_moves_blobs_to_s3_and_back() {
    let mut s = Server::start().await;
    let digest = s.push_image("team/app", "v1").await;
    let large = random_bytes(7 * 1024 * 1024 + 3);
    let large_digest = s.push_blob("team/app", &large).await;
    s.terminate();

    let moto = Moto::start();
    moto.create_bucket("moved");
    let cluster = Cluster::start();
    let url = cluster.database("moved").await;
    let target = s.data.join("s3.toml");
    std::fs::write(
        &target,
        format!(
            "[storage]\ndriver = \"s3\"\n[storage.s3]\nbucket = \"moved\"\n\
             region_endpoint = \"{}\"\naccess_key = \"k\"\nsecret_key = \"s\"\n\
             force_path_style = true\n",
            moto.endpoint()
        ),
    )
    .expect("target config");
    let out = migrate(
        &s.data,
        &["--to", &url, "--blobs-to", target.to_str().expect("path")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("blobs\t3 copied"), "{summary}");
    let again = migrate(&s.data, &["--blobs-to", target.to_str().expect("path")]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.contains("0 copied") && again.contains("3 already there"),
        "{again}"
    );

    let env = [
        ("BERTH_STORAGE_DRIVER", "s3"),
        ("BERTH_STORAGE_S3_BUCKET", "moved"),
        ("BERTH_STORAGE_S3_REGION_ENDPOINT", &moto.endpoint()),
        ("BERTH_STORAGE_S3_ACCESS_KEY", "k"),
        ("BERTH_STORAGE_S3_SECRET_KEY", "s"),
        ("BERTH_STORAGE_S3_FORCE_PATH_STYLE", "true"),
        ("BERTH_STORAGE_REDIRECT", "false"),
        ("BERTH_METADATA_URL", &url),
    ];
    let moved = Server::start_with_env(&env).await;
    let r = moved.get(&format!("/v2/team/app/manifests/{digest}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(blob_bytes(&moved, "team/app", &large_digest).await == large);
    drop(moved);

    let back = tempfile::tempdir().expect("tempdir");
    let to_dir = s.data.join("fs.toml");
    std::fs::write(
        &to_dir,
        format!("[storage]\nroot = \"{}\"\n", back.path().display()),
    )
    .expect("fs config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["migrate", "--data"])
        .arg(&s.data)
        .args(["--blobs-to", to_dir.to_str().expect("path")])
        .envs(env.iter().copied())
        .output()
        .expect("migrate back");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = back.path().join(blob_path(&large_digest));
    assert!(std::fs::read(file).expect("blob file back on disk") == large);
}

/// Garbage collection by reachability works on the bucket: after its manifest is deleted,
/// `berth gc` removes the image's blobs from S3 and keeps a blob another image still uses.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_collection_removes_unreferenced_blobs_from_the_bucket() {
    let moto = Moto::start();
    moto.create_bucket("collected");
    let env = registry_env(&moto.endpoint(), "collected");
    let s = Server::start_with_env(&with(&env, &[])).await;
    let kept = s.push_image("team/kept", "v1").await;
    let doomed = s.push_image("team/doomed", "v1").await;
    let manifest = s.manifest_json("team/doomed", &doomed).await;
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer")
        .to_owned();
    let key = |digest: &str| format!("collected/registry/{}", blob_path(digest));
    assert_eq!(moto.get(&key(&layer)).0, 200);
    let r = s
        .delete(&format!("/v2/team/doomed/manifests/{doomed}"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Collection counts whole seconds: let the pushes be at least one second old.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["gc", "--grace-seconds", "0", "--data"])
        .arg(&s.data)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("berth gc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed = String::from_utf8_lossy(&out.stdout);
    assert!(removed.contains(&layer), "{removed}");
    assert_eq!(moto.get(&key(&layer)).0, 404, "gone from the bucket");
    let r = s.get(&format!("/v2/team/kept/manifests/{kept}")).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// `berth check --repair` on a bucket: a blob changed behind Berth's back is found, moved to
/// the quarantine prefix, and its image stops being served.
#[tokio::test(flavor = "multi_thread")]
async fn check_quarantines_a_corrupt_blob_in_the_bucket() {
    let moto = Moto::start();
    moto.create_bucket("checked");
    let env = registry_env(&moto.endpoint(), "checked");
    let s = Server::start_with_env(&with(&env, &[])).await;
    let digest = s.push_image("team/app", "v1").await;
    let manifest = s.manifest_json("team/app", &digest).await;
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer")
        .to_owned();
    let size = manifest["layers"][0]["size"].as_u64().expect("size") as usize;
    let hex = layer.trim_start_matches("sha256:").to_owned();
    let key = format!("checked/registry/{}", blob_path(&layer));
    let check = |repair: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(["check", "--data"]).arg(&s.data);
        if repair {
            cmd.arg("--repair");
        }
        let out = cmd
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("berth check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(check(false).0, "a healthy bucket passes");
    assert_eq!(moto.put(&key, &vec![b'x'; size]), 200);
    assert_eq!(moto.get(&key).1.len(), size, "changed in place");

    let (ok, found) = check(false);
    assert!(
        !ok && found.contains(&format!("corrupt\t{layer}")),
        "{found}"
    );
    let (ok, repaired) = check(true);
    assert!(!ok && repaired.contains("quarantined"), "{repaired}");
    assert_eq!(moto.get(&key).0, 404, "moved out of the digest's place");
    let quarantined = format!("checked/registry/berth/quarantine/sha256-{hex}");
    assert_eq!(moto.get(&quarantined), (200, vec![b'x'; size]));
    assert!(check(false).0, "consistent after the repair");
}
