use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn tags_pagination() {
    let s = Server::start().await;
    let d = s.push_image("pages", "b").await;
    let body = s
        .get(&format!("/v2/pages/manifests/{d}"))
        .await
        .bytes()
        .await
        .unwrap();
    for t in ["a", "d", "c", "E", "e"] {
        assert_eq!(
            s.put_manifest("pages", t, OCI_MANIFEST, &body)
                .await
                .status(),
            StatusCode::CREATED
        );
    }
    let all: Value = s.get("/v2/pages/tags/list").await.json().await.unwrap();
    assert_eq!(
        all,
        json!({"name": "pages", "tags": ["E", "a", "b", "c", "d", "e"]})
    );

    let r = s.get("/v2/pages/tags/list?n=2").await;
    assert_eq!(
        header(&r, "link"),
        "</v2/pages/tags/list?n=2&last=a>; rel=\"next\""
    );
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["tags"], json!(["E", "a"]));

    let r = s.get("/v2/pages/tags/list?n=2&last=b").await;
    assert!(r.headers().get("link").is_some());
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["c", "d"]));
    let r = s.get("/v2/pages/tags/list?n=2&last=d").await;
    assert!(r.headers().get("link").is_none(), "last page has no Link");
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["e"]));
    let r = s.get("/v2/pages/tags/list?n=0").await;
    assert!(r.headers().get("link").is_none());
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!([]));
    let r = s.get("/v2/pages/tags/list?last=c").await;
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["d", "e"]));

    assert_error(
        s.get("/v2/pages/tags/list?n=many").await,
        400,
        "PAGINATION_NUMBER_INVALID",
    )
    .await;
    assert_error(s.get("/v2/unknown/tags/list").await, 404, "NAME_UNKNOWN").await;
    assert_error(s.get("/v2/Bad/tags/list").await, 400, "NAME_INVALID").await;
}

#[tokio::test]
async fn catalog_pagination() {
    let s = Server::start().await;
    for repo in ["zeta", "alpha/one", "alpha/two", "mid"] {
        s.push_blob(repo, b"x").await;
    }
    let all: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        all["repositories"],
        json!(["alpha/one", "alpha/two", "mid", "zeta"])
    );
    let r = s.get("/v2/_catalog?n=3").await;
    assert_eq!(
        header(&r, "link"),
        "</v2/_catalog?n=3&last=mid>; rel=\"next\""
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["repositories"],
        json!(["alpha/one", "alpha/two", "mid"])
    );
    let r = s.get("/v2/_catalog?n=3&last=mid").await;
    assert!(r.headers().get("link").is_none());
    assert_eq!(
        r.json::<Value>().await.unwrap()["repositories"],
        json!(["zeta"])
    );
    assert_error(
        s.get("/v2/_catalog?n=-1").await,
        400,
        "PAGINATION_NUMBER_INVALID",
    )
    .await;
}

#[tokio::test]
async fn referrers() {
    let s = Server::start().await;
    let subject = s.push_image("ref", "v1").await;

    // Never 404 for a valid digest: an empty index.
    let r = s
        .get(&format!("/v2/ref/referrers/{}", sha256(b"unknown")))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    let idx: Value = r.json().await.unwrap();
    assert_eq!(
        idx,
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    );

    let subj = json!({"mediaType": OCI_MANIFEST, "digest": subject, "size": 1});
    let sig = s.image_manifest("ref", json!({"artifactType": "application/x-sig", "subject": subj, "annotations": {"k": "v"}})).await;
    let sbom = s.image_manifest("ref", json!({"subject": subj})).await;
    for m in [&sig, &sbom] {
        let r = s.put_manifest("ref", &sha256(m), OCI_MANIFEST, m).await;
        assert_eq!(header(&r, "oci-subject"), subject);
    }
    let idx: Value = s
        .get(&format!("/v2/ref/referrers/{subject}"))
        .await
        .json()
        .await
        .unwrap();
    let manifests = idx["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2);
    let sig_entry = manifests
        .iter()
        .find(|m| m["digest"] == sha256(&sig))
        .unwrap();
    assert_eq!(sig_entry["artifactType"], "application/x-sig");
    assert_eq!(sig_entry["annotations"], json!({"k": "v"}));
    assert_eq!(sig_entry["size"], sig.len());
    assert_eq!(sig_entry["mediaType"], OCI_MANIFEST);
    let sbom_entry = manifests
        .iter()
        .find(|m| m["digest"] == sha256(&sbom))
        .unwrap();
    assert_eq!(
        sbom_entry["artifactType"], "application/vnd.oci.image.config.v1+json",
        "config media type stands in"
    );

    let r = s
        .get(&format!(
            "/v2/ref/referrers/{subject}?artifactType=application/x-sig"
        ))
        .await;
    assert_eq!(header(&r, "oci-filters-applied"), "artifactType");
    let idx: Value = r.json().await.unwrap();
    assert_eq!(idx["manifests"].as_array().unwrap().len(), 1);

    assert_error(
        s.get("/v2/ref/referrers/sha256:nope").await,
        400,
        "DIGEST_INVALID",
    )
    .await;
}
