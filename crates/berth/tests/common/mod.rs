//! Test harness: starts the real `berth` binary on an ephemeral loopback port with its own data
//! directory, and offers small helpers to push content with plain HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
    pub client: Client,
}

fn spawn(data: &Path, env: &[(String, String)]) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    // BERTH_TEST_LOG=<file> sends the server's log there (to inspect access lines).
    let stderr = match env.iter().find(|(k, _)| k == "BERTH_TEST_LOG") {
        Some((_, file)) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .expect("log file"),
        ),
        None => Stdio::inherit(),
    };
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("BERTH_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // BERTH_TEST_NOFILE=<n> starts the server with that file descriptor limit.
    if let Some(n) = env
        .iter()
        .find(|(k, _)| k == "BERTH_TEST_NOFILE")
        .and_then(|(_, v)| v.parse::<u64>().ok())
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = cmd.spawn().expect("spawn berth");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(url) = line.strip_prefix("berth listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("berth did not report its address");
    (child, base)
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with_env(&[]).await
    }

    pub async fn start_with_env(env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, base) = spawn(tmp.path(), &env);
        Server {
            child: Some(child),
            base,
            data: tmp.path().to_owned(),
            _tmp: Some(tmp),
            env,
            client: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
        }
    }

    /// Starts another server on `other`'s data directory, as a replica sharing its volume.
    pub async fn start_beside(other: &Server, env: &[(&str, &str)]) -> Server {
        Server::start_on(&other.data, env).await
    }

    /// Starts a server on a data directory the caller owns.
    pub async fn start_on(data: &Path, env: &[(&str, &str)]) -> Server {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, base) = spawn(data, &env);
        Server {
            child: Some(child),
            base,
            data: data.to_owned(),
            _tmp: None,
            env,
            client: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
        }
    }

    /// Kills the process without warning (SIGKILL), as a crashed replica.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process without warning (SIGKILL) and starts it again on the same data.
    pub async fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let (child, base) = spawn(&self.data, &self.env);
        self.child = Some(child);
        self.base = base;
    }

    /// Sends SIGTERM and waits for the process to exit; returns how long that took.
    pub fn terminate(&mut self) -> Duration {
        let started = std::time::Instant::now();
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        started.elapsed()
    }

    /// Starts the server again on the same data (after `terminate`).
    pub fn start_again(&mut self) {
        let (child, base) = spawn(&self.data, &self.env);
        self.child = Some(child);
        self.base = base;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.expect("request")
    }

    /// `GET /v2/` with Basic credentials: the login check, nothing else.
    pub async fn login(&self, user: &str, password: &str) -> Response {
        self.req(Method::GET, "/v2/")
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("request")
    }

    pub async fn head(&self, path: &str) -> Response {
        self.req(Method::HEAD, path).send().await.expect("request")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.req(Method::DELETE, path)
            .send()
            .await
            .expect("request")
    }

    /// Single-request monolithic blob push; returns the digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let r = self
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            )
            .body(data.to_vec())
            .send()
            .await
            .expect("push blob");
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "push blob: {}",
            r.text().await.unwrap_or_default()
        );
        digest
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("put manifest")
    }

    /// Opens an upload session (checking the 202 and its headers); returns its Location.
    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .expect("start upload");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let location = header(&r, "location");
        assert!(
            location.starts_with(&format!("/v2/{repo}/blobs/uploads/")),
            "relative Location: {location}"
        );
        assert_eq!(header(&r, "range"), "0-0");
        assert!(!header(&r, "docker-upload-uuid").is_empty());
        location
    }

    /// Sends one chunk, with a `Content-Range` when given.
    pub async fn patch_upload(&self, location: &str, range: Option<&str>, data: &[u8]) -> Response {
        let mut req = self
            .req(Method::PATCH, location)
            .header("content-type", "application/octet-stream");
        if let Some(range) = range {
            req = req.header("content-range", range);
        }
        req.body(data.to_vec()).send().await.expect("patch upload")
    }

    /// Pushes a config and one random layer, and returns the manifest bytes (not pushed).
    pub async fn image_manifest(&self, repo: &str, extra: Value) -> Vec<u8> {
        let config = serde_json::to_vec(
            &json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}),
        )
        .unwrap();
        let layer: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        let cd = self.push_blob(repo, &config).await;
        let ld = self.push_blob(repo, &layer).await;
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": layer.len()}],
        });
        if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                m.insert(k.clone(), v.clone());
            }
        }
        serde_json::to_vec(&m).unwrap()
    }

    /// The manifest `reference` names, as JSON (asked for as an OCI manifest).
    pub async fn manifest_json(&self, repo: &str, reference: &str) -> Value {
        self.req(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("manifest")
            .json()
            .await
            .expect("manifest JSON")
    }

    /// Pushes a complete image under `tag`; returns the manifest digest.
    pub async fn push_image(&self, repo: &str, tag: &str) -> String {
        let body = self.image_manifest(repo, json!({})).await;
        let r = self.put_manifest(repo, tag, OCI_MANIFEST, &body).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        sha256(&body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where a blob lives under a data directory or bucket root, in Distribution's layout:
/// `docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`.
pub fn blob_path(digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

pub fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Asserts an OCI error response with the given status and code.
pub async fn assert_error(r: Response, status: u16, code: &str) {
    assert_eq!(r.status().as_u16(), status, "unexpected status for {code}");
    assert_eq!(header(&r, "content-type"), "application/json");
    let body: Value = r.json().await.expect("OCI error body is JSON");
    assert_eq!(body["errors"][0]["code"], code, "body: {body}");
    assert!(body["errors"][0]["message"].is_string(), "body: {body}");
}
