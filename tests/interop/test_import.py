"""Moving from registry:2 to Berth: the real Distribution (Debian's docker-registry) stores
images pushed with skopeo, then Berth imports its data — in place on first start, by
`berth import --from` into another directory, and from Distribution's S3 bucket — and every
image pulls back with identical digests."""
import hashlib
import json
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from berthtest import Berth, Distribution, Moto, berth_binary, run

ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


def manifest(host, repository, reference):
    """(status, sha256 digest of the body, media type) of a manifest GET."""
    request = urllib.request.Request(f"http://{host}/v2/{repository}/manifests/{reference}",
                                     headers={"Accept": ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            body = r.read()
            return r.status, "sha256:" + hashlib.sha256(body).hexdigest(), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        return e.code, None, None


def push_sample(host, mkimage):
    """Pushes, through `host`, an OCI image under two tags, a Docker schema 2 image, a
    multi-arch index, an image in a nested repository, and a tag that is then deleted.
    Returns what must be served afterwards, {(repository, tag): (digest, media type)}."""
    dest = ["skopeo", "copy", "--dest-tls-verify=false"]
    single = mkimage("v1", layers="64K,32K")
    run(*dest, f"oci:{single}:v1", f"docker://{host}/app/single:v1")
    run(*dest, f"oci:{single}:v1", f"docker://{host}/app/single:v1.0")
    docker = mkimage("d", layers="48K")
    run(*dest, "--format", "v2s2", f"oci:{docker}:d", f"docker://{host}/app/docker:latest")
    run(*dest, "--format", "v2s2", f"oci:{docker}:d", f"docker://{host}/team/deep/repo:1")
    multi = mkimage("multi", layers="16K", platforms="linux/amd64,linux/arm64")
    run(*dest, "--all", f"oci:{multi}:multi", f"docker://{host}/app/multi:latest")
    old = mkimage("old", layers="8K")
    run(*dest, f"oci:{old}:old", f"docker://{host}/app/single:old")
    run("skopeo", "delete", "--tls-verify=false", f"docker://{host}/app/single:old")
    kept = {}
    for repository, tag in [("app/single", "v1"), ("app/single", "v1.0"), ("app/docker", "latest"),
                            ("team/deep/repo", "1"), ("app/multi", "latest")]:
        status, digest, media_type = manifest(host, repository, tag)
        assert status == 200, (repository, tag)
        kept[(repository, tag)] = (digest, media_type)
    assert manifest(host, "app/single", "old")[0] == 404
    return kept


def wait_ready(host, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{host}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        assert time.time() < deadline, "berth did not become ready"
        time.sleep(0.2)


def assert_served(host, kept, tmp_path):
    """Every kept tag has its digest and media type, and every image pulls whole."""
    for (repository, tag), (digest, media_type) in kept.items():
        assert manifest(host, repository, tag)[1:] == (digest, media_type), (repository, tag)
        out = tmp_path / f"pulled-{repository.replace('/', '-')}-{tag}"
        run("skopeo", "copy", "--all", "--src-tls-verify=false",
            f"docker://{host}/{repository}:{tag}", f"oci:{out}:{tag}")
        status, by_digest, _ = manifest(host, repository, digest)
        assert (status, by_digest) == (200, digest)
    assert manifest(host, "app/single", "old")[0] == 404, "the deleted tag stays deleted"
    tags = json.loads(run("skopeo", "list-tags", "--tls-verify=false", f"docker://{host}/app/single"))
    assert sorted(tags["Tags"]) == ["v1", "v1.0"]


def test_first_start_imports_registry2_data_in_place(tmp_path, mkimage):
    data = tmp_path / "registry"
    distribution = Distribution(tmp_path, data=data)
    try:
        kept = push_sample(distribution.host, mkimage)
    finally:
        distribution.stop()
    log = tmp_path / "berth.log"
    with open(log, "w") as f:
        berth = Berth(data, env={"BERTH_LOG_LEVEL": "info"}, stderr=f)
    try:
        wait_ready(berth.host)
        assert_served(berth.host, kept, tmp_path)
        text = log.read_text()
        assert "imported registry:2's repositories: 4 repositories, 6 manifests, 5 tags" in text, text
    finally:
        berth.stop()
    # A second start does not import again (the repositories are Berth's now).
    berth = Berth(data)
    try:
        wait_ready(berth.host, timeout=10)
        assert_served(berth.host, kept, tmp_path)
    finally:
        berth.stop()


def test_import_from_another_directory_copies_verified_and_resumes(tmp_path, mkimage):
    source = tmp_path / "registry"
    distribution = Distribution(tmp_path, data=source)
    try:
        kept = push_sample(distribution.host, mkimage)
    finally:
        distribution.stop()
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    target = tmp_path / "berth"
    cmd = [berth_binary(), "import", "--from", str(source), "--data", str(target)]
    first = run(*cmd)
    assert "skipped" not in first.replace("; 0 skipped", ""), first
    assert "4 repositories, 6 manifests, 5 tags" in first, first
    second = run(*cmd)
    assert "4 repositories, 6 manifests, 5 tags" in second, "running again changes nothing and fails nothing"
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before, \
        "the source is only read"
    berth = Berth(target)
    try:
        wait_ready(berth.host, timeout=10)
        assert_served(berth.host, kept, tmp_path)
    finally:
        berth.stop()


def test_first_start_imports_distribution_s3_bucket(tmp_path, mkimage):
    moto = Moto()
    try:
        distribution = Distribution(tmp_path, s3=moto, rootdirectory="/registry")
        try:
            kept = push_sample(distribution.host, mkimage)
        finally:
            distribution.stop()
        env = {**moto.env(), "REGISTRY_STORAGE_S3_ROOTDIRECTORY": "/registry",
               "REGISTRY_STORAGE_REDIRECT_DISABLE": "true"}
        berth = Berth(tmp_path / "state", env=env)
        try:
            wait_ready(berth.host)
            assert_served(berth.host, kept, tmp_path)
        finally:
            berth.stop()
    finally:
        moto.stop()
