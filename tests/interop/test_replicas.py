"""Two replicas of Berth sharing one data directory (a ReadWriteMany volume) and one
PostgreSQL database, with real clients: what skopeo pushes through one, skopeo and podman
pull through the other, byte for byte; a tag moved on one is served moved by the other."""
import hashlib
import json
import urllib.request

import pytest

from berthtest import Berth, Postgres, layout_manifest, run


@pytest.fixture
def replicas(tmp_path):
    postgres = Postgres()
    env = {"BERTH_METADATA_URL": postgres.url("registry")}
    first = Berth(tmp_path / "data", env={**env, "BERTH_SERVER_INSTANCE": "replica-a"})
    second = Berth(tmp_path / "data", env={**env, "BERTH_SERVER_INSTANCE": "replica-b"})
    yield first, second
    first.stop()
    second.stop()
    postgres.stop()


def manifest_digest(host, repo, tag):
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}", method="HEAD")
    req.add_header("Accept", "application/vnd.oci.image.manifest.v1+json")
    with urllib.request.urlopen(req) as r:
        return r.headers["Docker-Content-Digest"]


def test_push_through_one_replica_pull_through_the_other(replicas, mkimage, tmp_path, podman_env):
    first, second = replicas
    layout = mkimage("v1", layers="6M,300K", files=2)
    pushed = layout_manifest(layout, "v1")
    run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
        f"docker://{first.host}/team/app:v1")

    out = tmp_path / "pulled"
    run("skopeo", "copy", "--src-tls-verify=false", f"docker://{second.host}/team/app:v1",
        f"oci:{out}:v1")
    assert layout_manifest(out, "v1")["digest"] == pushed["digest"]
    for blob in (layout / "blobs" / "sha256").iterdir():
        if not blob.name.startswith("."):
            assert (out / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()
    run("podman", "pull", "--tls-verify=false", f"{second.host}/team/app:v1", env=podman_env)

    # Moved through the second, served moved by the first.
    moved = mkimage("v2", layers="200K")
    run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{moved}:v2",
        f"docker://{second.host}/team/app:v1")
    assert manifest_digest(first.host, "team/app", "v1") == layout_manifest(moved, "v2")["digest"]
    tags = json.loads(run("skopeo", "list-tags", "--tls-verify=false",
                          f"docker://{first.host}/team/app"))
    assert tags["Tags"] == ["v1"]
