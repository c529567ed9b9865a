//! HTTPS from `berth tls init` certificates: HTTP/2 negotiated, and certificate files
//! replaced on disk take effect without a restart.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn tls_init(dir: &std::path::Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "tls",
            "init",
            "--host",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--out",
        ])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/etc/docker/certs.d/localhost:5000/ca.crt"),
        "{text}"
    );
    assert!(text.contains("hosts.toml"), "{text}");
}

fn client_trusting(ca: &std::path::Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap()
}

#[tokio::test]
async fn https_with_http2_and_certificate_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    tls_init(&first);
    tls_init(&second);
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    for f in ["server.crt", "server.key"] {
        std::fs::copy(first.join(f), served.join(f)).unwrap();
    }
    let s = Server::start_with_env(&[
        (
            "BERTH_TLS_CERTIFICATE",
            served.join("server.crt").to_str().unwrap(),
        ),
        ("BERTH_TLS_KEY", served.join("server.key").to_str().unwrap()),
    ])
    .await;
    assert!(s.base.starts_with("https://"), "{}", s.base);

    let old_ca = client_trusting(&first.join("ca.crt"));
    let new_ca = client_trusting(&second.join("ca.crt"));
    let r = old_ca.get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN picks HTTP/2");
    assert!(
        new_ca.get(s.url("/v2/")).send().await.is_err(),
        "second CA not trusted yet"
    );

    // Rotate: new files renamed into place, as a Secret update does.
    for f in ["server.key", "server.crt"] {
        let tmp = served.join(format!("{f}.new"));
        std::fs::copy(second.join(f), &tmp).unwrap();
        std::fs::rename(&tmp, served.join(f)).unwrap();
    }
    let mut rotated = false;
    for _ in 0..50 {
        // fresh connections, so each attempt runs a new handshake
        if client_trusting(&second.join("ca.crt"))
            .get(s.url("/v2/"))
            .send()
            .await
            .is_ok()
        {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rotated, "rotated certificate served without restart");
}

#[test]
fn tls_config_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env("BERTH_TLS_CERTIFICATE", dir.path().join("missing.crt"))
        .env("BERTH_TLS_KEY", dir.path().join("missing.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.crt"));
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["config", "check"])
        .env("BERTH_TLS_CERTIFICATE", "/x.crt")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a certificate without a key is refused"
    );
}

/// A TLS client that never sends its ClientHello is closed at the handshake timeout, and a
/// real client is served meanwhile.
#[tokio::test]
async fn silent_tls_clients_time_out() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    tls_init(dir.path());
    let s = Server::start_with_env(&[
        (
            "BERTH_TLS_CERTIFICATE",
            dir.path().join("server.crt").to_str().unwrap(),
        ),
        (
            "BERTH_TLS_KEY",
            dir.path().join("server.key").to_str().unwrap(),
        ),
        ("BERTH_SERVER_TLS_HANDSHAKE_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    let addr = s.base.trim_start_matches("https://").to_owned();
    let started = std::time::Instant::now();
    let closed = tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 64];
        matches!(conn.read(&mut buf), Ok(0) | Err(_))
    });
    let r = client_trusting(&dir.path().join("ca.crt"))
        .get(s.url("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(closed.await.unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "held for {:?}",
        started.elapsed()
    );
}
