//! A throwaway S3-compatible server on a loopback port: moto (`moto_server`, from PyPI into
//! the repository's `.venv` by scripts/install-test-deps.sh), which keeps objects in memory and
//! implements multipart uploads, copies and conditional writes as AWS does. It accepts any
//! credentials, so signatures are not checked here.

#![allow(dead_code)] // shared by several test crates, each using a part

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub port: u16,
}

fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("BERTH_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server");
    assert!(
        venv.exists(),
        "moto_server is not installed at {} (scripts/install-test-deps.sh installs it)",
        venv.display()
    );
    venv
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto takes an unsigned path-style `PUT /bucket`).
    pub fn create_bucket(&self, name: &str) {
        let status = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "-X", "PUT"])
            .arg(format!("{}/{name}", self.endpoint()))
            .status()
            .expect("running curl");
        assert!(status.success(), "creating bucket {name}");
    }

    /// `GET` of a bucket path (an object key, or `?list-type=2&prefix=…`), signed as moto
    /// wants for reads: its status and body.
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let out = Command::new("curl")
            .args([
                "-s",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
                "test:test",
            ])
            .args(["-w", "\n%{http_code}"])
            .arg(format!("{}/{path}", self.endpoint()))
            .output()
            .expect("running curl");
        let mut body = out.stdout;
        let newline = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        let status = String::from_utf8_lossy(&body[newline + 1..])
            .trim()
            .parse()
            .unwrap_or(0);
        body.truncate(newline);
        (status, body)
    }
}

impl Moto {
    /// `PUT` of an object, signed: a test's way to change a stored blob behind Berth's back.
    pub fn put(&self, path: &str, body: &[u8]) -> u16 {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), body).expect("writing the body");
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "test:test"])
            // curl's default form type would make moto (werkzeug) parse the body away.
            .args(["-H", "Content-Type: application/octet-stream"])
            .arg("--data-binary")
            .arg(format!("@{}", file.path().display()))
            .arg(format!("{}/{path}", self.endpoint()))
            .output()
            .expect("running curl");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// s3s-fs (a Rust S3 server on a directory, `cargo install s3s-fs --features binary` by
/// scripts/install-test-deps.sh): unlike moto it checks every SigV4 signature, so a wrong
/// secret fails as it would on AWS.
pub struct S3sFs {
    child: Child,
    pub port: u16,
    /// Holds the server's directory until the server is dropped.
    _dir: tempfile::TempDir,
}

fn s3s_fs() -> PathBuf {
    if let Some(path) = std::env::var_os("BERTH_S3S_FS") {
        return PathBuf::from(path);
    }
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/s3s-fs");
    assert!(
        tools.exists(),
        "s3s-fs is not installed at {} (scripts/install-test-deps.sh installs it)",
        tools.display()
    );
    tools
}

impl S3sFs {
    /// A server taking only `access_key`/`secret_key`, with one bucket, `bucket`.
    pub fn start(access_key: &str, secret_key: &str, bucket: &str) -> S3sFs {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join(bucket)).expect("bucket directory");
        let port = free_port();
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", access_key, "--secret-key", secret_key])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        let server = S3sFs {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
