//! Connection limits, tried as a flood of slow, idle and half-open clients would: every phase
//! of a connection has a timeout, and half-sent requests cannot lock out a real client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::common::*;

fn connect(s: &Server) -> TcpStream {
    let conn = TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    conn
}

/// Waits until the server closes `conn` (a read returns 0 or fails); returns how long it took.
fn closed_after(mut conn: TcpStream, started: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => continue,
        }
    }
}

/// Slowloris: headers trickling one byte at a time are cut off at the header timeout.
#[tokio::test]
async fn headers_sent_byte_by_byte_time_out() {
    let s = Server::start_with_env(&[("BERTH_SERVER_HEADER_READ_TIMEOUT_SECONDS", "2")]).await;
    let mut conn = connect(&s);
    let started = Instant::now();
    conn.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut writer = conn.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(250));
            if writer.write_all(b"X").is_err() {
                return;
            }
        }
    });
    let took = tokio::task::spawn_blocking(move || closed_after(conn, started))
        .await
        .unwrap();
    trickle.join().unwrap();
    assert!(took < Duration::from_secs(6), "stayed open {took:?}");
}

/// A keep-alive connection with nothing to do is closed at the idle timeout.
#[tokio::test]
async fn idle_connections_are_closed() {
    let s = Server::start_with_env(&[("BERTH_SERVER_IDLE_TIMEOUT_SECONDS", "1")]).await;
    let mut conn = connect(&s);
    conn.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let took = tokio::task::spawn_blocking(move || closed_after(conn, Instant::now()))
        .await
        .unwrap();
    assert!(took < Duration::from_secs(4), "idle for {took:?}");
    // A connection that never sends anything is idle too.
    let silent = connect(&s);
    let took = tokio::task::spawn_blocking(move || closed_after(silent, Instant::now()))
        .await
        .unwrap();
    assert!(took < Duration::from_secs(4), "silent for {took:?}");
}

/// 300 half-sent requests against a server limited to 256 descriptors: a real client still
/// gets its answer at once, because waiting connections give way to new ones.
#[tokio::test]
async fn half_open_floods_do_not_lock_out_clients() {
    let s = Server::start_with_env(&[("BERTH_TEST_NOFILE", "256")]).await;
    let mut flood = Vec::new();
    for _ in 0..300 {
        let mut c = connect(&s);
        c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        flood.push(c);
    }
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for _ in 0..5 {
        let r = client.get(s.url("/v2/")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answers took {:?}",
        started.elapsed()
    );
    // The oldest half-sent requests were closed to make room.
    let closed = tokio::task::spawn_blocking(move || {
        flood
            .into_iter()
            .take(50)
            .filter(|c| {
                c.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut buf = [0u8; 16];
                matches!((&*c).read(&mut buf), Ok(0))
            })
            .count()
    })
    .await
    .unwrap();
    assert!(closed > 0, "no waiting connection was closed");
}

/// A body that stops moving is abandoned (and its partial chunk cut back); a slow one that
/// keeps moving is read to the end.
#[tokio::test]
async fn stalled_bodies_time_out_slow_ones_finish() {
    let s = Server::start_with_env(&[("BERTH_SERVER_BODY_READ_TIMEOUT_SECONDS", "1")]).await;
    let location = s.start_upload("slow/app").await;
    let request = |len: usize| {
        format!(
            "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    let mut stalled = connect(&s);
    stalled.write_all(request(100).as_bytes()).unwrap();
    stalled.write_all(b"0123456789").unwrap();
    let started = Instant::now();
    let answer = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        let _ = stalled.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let status = s.get(&location).await;
    assert_eq!(
        header(&status, "range"),
        "0-0",
        "the partial chunk was cut back"
    );

    let mut slow = connect(&s);
    slow.write_all(request(8).as_bytes()).unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        for b in b"abcdefgh" {
            std::thread::sleep(Duration::from_millis(400));
            slow.write_all(&[*b]).unwrap();
        }
        let mut out = String::new();
        let _ = slow.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("range: 0-7"),
        "{answer}"
    );
}
