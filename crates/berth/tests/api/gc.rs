//! Garbage collection by reachability, from the outside: what deleting manifests frees on
//! disk, and a race of pushes, deletes and collections that must lose nothing acknowledged.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

/// Every blob file under the data directory, as digests.
fn blobs_on_disk(data: &Path) -> HashSet<String> {
    let root = data.join("docker/registry/v2/blobs/sha256");
    let mut found = HashSet::new();
    for prefix in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for blob in std::fs::read_dir(prefix.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if blob.path().join("data").exists() {
                found.insert(format!("sha256:{}", blob.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// Runs `berth gc` with no grace; returns the removed `(digest, size)` lines and the summary.
fn berth_gc(data: &Path, extra: &[&str]) -> (Vec<(String, u64)>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["gc", "--grace-seconds", "0", "--data"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let listed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (digest, size) = l.split_once('\t').unwrap();
            (digest.to_owned(), size.parse().unwrap())
        })
        .collect();
    (listed, stderr)
}

/// Pushes an image of a config and `layers` to `repo:tag`; returns the manifest's digest.
async fn push(s: &Server, repo: &str, tag: &str, layers: &[&[u8]]) -> Result<String, StatusCode> {
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "n": rand::random::<u64>()}))
    .unwrap();
    let mut descriptors = Vec::new();
    for layer in layers {
        let digest = sha256(layer);
        let r = s
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            )
            .body(layer.to_vec())
            .send()
            .await
            .unwrap();
        if r.status() != StatusCode::CREATED {
            return Err(r.status());
        }
        descriptors.push(
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": layer.len()}),
        );
    }
    let cd = sha256(&config);
    let r = s
        .req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={cd}"),
        )
        .body(config.clone())
        .send()
        .await
        .unwrap();
    if r.status() != StatusCode::CREATED {
        return Err(r.status());
    }
    let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descriptors}))
    .unwrap();
    let r = s.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
    match r.status() {
        StatusCode::CREATED => Ok(sha256(&manifest)),
        other => Err(other),
    }
}

/// Pulls `repo@digest` with every blob, checking each against its digest.
async fn pulls_intact(s: &Server, repo: &str, digest: &str) -> Result<(), String> {
    let r = s.get(&format!("/v2/{repo}/manifests/{digest}")).await;
    if r.status() != StatusCode::OK {
        return Err(format!("{repo}@{digest}: manifest {}", r.status()));
    }
    let m: Value = r.json().await.unwrap();
    let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    for l in m["layers"].as_array().unwrap() {
        blobs.push(l["digest"].as_str().unwrap().to_owned());
    }
    for b in blobs {
        let r = s.get(&format!("/v2/{repo}/blobs/{b}")).await;
        if r.status() != StatusCode::OK {
            return Err(format!("{repo}@{digest}: blob {b} {}", r.status()));
        }
        if sha256(&r.bytes().await.unwrap()) != b {
            return Err(format!("{repo}@{digest}: blob {b} corrupt"));
        }
    }
    Ok(())
}

async fn layers_of(s: &Server, repo: &str, digest: &str) -> Vec<String> {
    let m: Value = s
        .get(&format!("/v2/{repo}/manifests/{digest}"))
        .await
        .json()
        .await
        .unwrap();
    let mut out = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    out.extend(
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    out
}

/// Deleting a manifest frees exactly its unshared blobs; a layer another image uses stays.
#[tokio::test]
async fn deleting_manifests_frees_exactly_the_unshared_blobs() {
    let s = Server::start_with_env(&[("BERTH_GC_INTERVAL_SECONDS", "0")]).await;
    let (own_a, shared, own_b) = (random_bytes(4096), random_bytes(5000), random_bytes(6000));
    let a = push(&s, "gc/a", "v1", &[&own_a, &shared]).await.unwrap();
    let b = push(&s, "gc/b", "v1", &[&shared, &own_b]).await.unwrap();
    let blobs_a = layers_of(&s, "gc/a", &a).await;
    let before = blobs_on_disk(&s.data);
    assert_eq!(before.len(), 5, "two configs and three layers");
    // Collection counts whole seconds: let the pushes be at least one second old.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (nothing, _) = berth_gc(&s.data, &[]);
    assert!(nothing.is_empty(), "everything is referenced: {nothing:?}");

    assert_eq!(
        s.delete(&format!("/v2/gc/a/manifests/{a}")).await.status(),
        StatusCode::ACCEPTED
    );
    let unshared_a: HashSet<String> = blobs_a
        .iter()
        .filter(|d| **d != sha256(&shared))
        .cloned()
        .collect();
    let digests =
        |lines: &[(String, u64)]| lines.iter().map(|(d, _)| d.clone()).collect::<HashSet<_>>();
    let (would, summary) = berth_gc(&s.data, &["--dry-run"]);
    assert_eq!(digests(&would), unshared_a, "{summary}");
    assert!(summary.contains("would remove 2 blobs"), "{summary}");
    assert_eq!(blobs_on_disk(&s.data), before, "a dry run deletes nothing");
    let (removed, summary) = berth_gc(&s.data, &[]);
    assert_eq!(digests(&removed), unshared_a);
    assert!(
        removed.contains(&(sha256(&own_a), own_a.len() as u64)),
        "{removed:?}"
    );
    let bytes: u64 = removed.iter().map(|(_, n)| n).sum();
    assert!(
        summary.contains(&format!("removed 2 blobs, {bytes} bytes")),
        "{summary}"
    );
    let after = blobs_on_disk(&s.data);
    assert_eq!(after, before.difference(&unshared_a).cloned().collect());
    pulls_intact(&s, "gc/b", &b).await.unwrap();
    assert_error(
        s.get(&format!("/v2/gc/a/blobs/{}", sha256(&own_a))).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;

    // The other image too: now the shared layer goes, and nothing is left.
    assert_eq!(
        s.delete(&format!("/v2/gc/b/manifests/{b}")).await.status(),
        StatusCode::ACCEPTED
    );
    let (removed, _) = berth_gc(&s.data, &[]);
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert!(blobs_on_disk(&s.data).is_empty());
    // A layer pushed again after its collection is stored anew and pulls.
    let again = push(&s, "gc/b", "v2", &[&shared]).await.unwrap();
    pulls_intact(&s, "gc/b", &again).await.unwrap();
}

/// Pushes sharing layers, deletes of manifests and tags, and collections with no grace, all at
/// once: every acknowledged image that was not deleted pulls intact afterwards, and no blob
/// that nothing references remains.
#[tokio::test]
async fn gc_racing_pushes_and_deletes_loses_nothing_acknowledged() {
    let s = std::sync::Arc::new(
        Server::start_with_env(&[
            ("BERTH_GC_INTERVAL_SECONDS", "1"),
            ("BERTH_GC_GRACE_SECONDS", "0"),
        ])
        .await,
    );
    let shared: Vec<Vec<u8>> = (0..4).map(|_| random_bytes(2048)).collect();
    let shared = std::sync::Arc::new(shared);
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    let mut workers = Vec::new();
    for w in 0..4 {
        let (s, shared) = (s.clone(), shared.clone());
        workers.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut i = 0;
            while std::time::Instant::now() < deadline {
                i += 1;
                let repo = format!("race/r{}", i % 3);
                let own = random_bytes(1024);
                let layers: Vec<&[u8]> = vec![&shared[(w + i) % 4], &shared[(w + i + 1) % 4], &own];
                let Ok(digest) = push(&s, &repo, &format!("w{w}-{i}"), &layers).await else {
                    continue; // refused (e.g. a layer collected before the manifest came)
                };
                if i % 3 == 0 {
                    let r = s.delete(&format!("/v2/{repo}/manifests/{digest}")).await;
                    assert_eq!(r.status(), StatusCode::ACCEPTED);
                } else if i % 3 == 1 {
                    let r = s.delete(&format!("/v2/{repo}/manifests/w{w}-{i}")).await;
                    assert_eq!(r.status(), StatusCode::ACCEPTED, "untag");
                    kept.push((repo, digest));
                } else {
                    kept.push((repo, digest));
                }
            }
            kept
        }));
    }
    // Collections from another process at the same time as the server's own.
    let data = s.data.clone();
    let collector = tokio::task::spawn_blocking(move || {
        let mut runs = 0;
        while std::time::Instant::now() < deadline {
            berth_gc(&data, &[]);
            runs += 1;
        }
        runs
    });
    let mut kept = Vec::new();
    for w in workers {
        kept.extend(w.await.unwrap());
    }
    assert!(collector.await.unwrap() > 0);
    assert!(kept.len() >= 8, "only {} images acknowledged", kept.len());
    for (repo, digest) in &kept {
        pulls_intact(&s, repo, digest).await.unwrap();
    }
    // After one more collection, every blob left on disk is one a kept image references.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    berth_gc(&s.data, &[]);
    let mut referenced = HashSet::new();
    for (repo, digest) in &kept {
        referenced.extend(layers_of(&s, repo, digest).await);
    }
    let left = blobs_on_disk(&s.data);
    let stray: Vec<_> = left.difference(&referenced).collect();
    assert!(stray.is_empty(), "unreferenced blobs remain: {stray:?}");
    for (repo, digest) in &kept {
        pulls_intact(&s, repo, digest).await.unwrap();
    }
}
