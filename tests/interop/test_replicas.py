"""Two replicas of Berth sharing one PostgreSQL database and their blobs, either on one data
directory (a ReadWriteMany volume) or in an S3 bucket (each replica then has its own data
directory: they share nothing but the two stores), with real clients: what skopeo pushes
through one, skopeo and podman pull through the other, byte for byte; a tag moved on one is
served moved by the other. On S3, blob downloads are redirected to presigned URLs, as
Distribution does by default, so the clients follow them to the bucket."""
import hashlib
import json
import urllib.request

import pytest

from berthtest import Berth, Moto, Postgres, layout_manifest, run


@pytest.fixture(params=["shared-volume", "s3"])
def replicas(request, tmp_path):
    postgres = Postgres()
    env = {"BERTH_METADATA_URL": postgres.url("registry")}
    moto = None
    if request.param == "s3":
        moto = Moto()
        env.update(moto.env())
        data = (tmp_path / "data-a", tmp_path / "data-b")
    else:
        data = (tmp_path / "data", tmp_path / "data")
    first = Berth(data[0], env={**env, "BERTH_SERVER_INSTANCE": "replica-a"})
    second = Berth(data[1], env={**env, "BERTH_SERVER_INSTANCE": "replica-b"})
    yield first, second
    first.stop()
    second.stop()
    postgres.stop()
    if moto:
        moto.stop()


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
