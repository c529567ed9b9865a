"""Real clients against the real binary: skopeo, podman, containerd's ctr and the `oras`
Python package push and pull, and digests round-trip byte-identical."""
import hashlib
import json
import pathlib
import urllib.request

import oras.client

from berthtest import layout_manifest, run


def registry_get(host, path, accept=None):
    req = urllib.request.Request(f"http://{host}{path}")
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req) as r:
        return r.read(), r.headers  # case-insensitive lookups


def test_skopeo_oci_layout_roundtrip(berth, mkimage, tmp_path):
    layout = mkimage("v1", layers="1M,300K", files=3)
    pushed = layout_manifest(layout, "v1")
    run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
        f"docker://{berth.host}/skopeo/img:v1")
    body, headers = registry_get(berth.host, "/v2/skopeo/img/manifests/v1")
    assert "sha256:" + hashlib.sha256(body).hexdigest() == pushed["digest"]
    assert headers["Docker-Content-Digest"] == pushed["digest"]

    out = tmp_path / "pulled"
    run("skopeo", "copy", "--src-tls-verify=false", f"docker://{berth.host}/skopeo/img:v1",
        f"oci:{out}:v1")
    assert layout_manifest(out, "v1")["digest"] == pushed["digest"]
    # every blob byte-identical
    for blob in (layout / "blobs" / "sha256").iterdir():
        if blob.name.startswith("."):
            continue
        copy = out / "blobs" / "sha256" / blob.name
        assert copy.read_bytes() == blob.read_bytes()
    tags = json.loads(run("skopeo", "list-tags", "--tls-verify=false",
                          f"docker://{berth.host}/skopeo/img"))
    assert tags["Tags"] == ["v1"]


def test_skopeo_multi_arch_index(berth, mkimage, tmp_path):
    layout = mkimage("multi", layers="200K", platforms="linux/amd64,linux/arm64")
    pushed = layout_manifest(layout, "multi")
    run("skopeo", "copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:multi",
        f"docker://{berth.host}/skopeo/multi:latest")
    raw = run("skopeo", "inspect", "--raw", "--tls-verify=false",
              f"docker://{berth.host}/skopeo/multi:latest")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == pushed["digest"]
    assert len(json.loads(raw)["manifests"]) == 2
    out = tmp_path / "pulled-multi"
    run("skopeo", "copy", "--all", "--src-tls-verify=false",
        f"docker://{berth.host}/skopeo/multi:latest", f"oci:{out}:multi")
    assert layout_manifest(out, "multi")["digest"] == pushed["digest"]


def test_skopeo_docker_archive(berth, mkimage, tmp_path):
    layout = mkimage("v1", layers="500K")
    archive = tmp_path / "image.tar"
    run("skopeo", "copy", f"oci:{layout}:v1", f"docker-archive:{archive}:archive/img:v1")
    run("skopeo", "copy", "--dest-tls-verify=false", f"docker-archive:{archive}",
        f"docker://{berth.host}/archive/img:v1")
    body, headers = registry_get(berth.host, "/v2/archive/img/manifests/v1")
    assert headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
    out = tmp_path / "back.tar"
    run("skopeo", "copy", "--src-tls-verify=false", f"docker://{berth.host}/archive/img:v1",
        f"docker-archive:{out}:archive/img:v1")
    assert out.stat().st_size > 500_000


def test_podman_pull_and_push(berth, mkimage, podman_env):
    layout = mkimage("v1", layers="400K")
    pushed = layout_manifest(layout, "v1")
    run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
        f"docker://{berth.host}/podman/src:v1")
    run("podman", "pull", "--tls-verify=false", f"{berth.host}/podman/src:v1", env=podman_env)
    run("podman", "tag", f"{berth.host}/podman/src:v1", f"{berth.host}/podman/dst:v2",
        env=podman_env)
    run("podman", "push", "--tls-verify=false", f"{berth.host}/podman/dst:v2", env=podman_env)
    _, headers = registry_get(berth.host, "/v2/podman/dst/manifests/v2",
                              accept="application/vnd.oci.image.manifest.v1+json,"
                                     "application/vnd.docker.distribution.manifest.v2+json")
    assert headers["Docker-Content-Digest"].startswith("sha256:")
    # layers are identical content, so the config digest carries over
    src, _ = registry_get(berth.host, f"/v2/podman/src/manifests/{pushed['digest']}")
    config = json.loads(src)["config"]["digest"]
    dst, _ = registry_get(berth.host, "/v2/podman/dst/manifests/v2")
    assert json.loads(dst)["config"]["digest"] == config


def test_skopeo_push_containerd_pull(berth, mkimage, containerd):
    """The README's promise: push with skopeo, pull back with containerd."""
    layout = mkimage("v1", layers="1M", files=4)
    pushed = layout_manifest(layout, "v1")
    run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
        f"docker://{berth.host}/ctr/img:v1")
    run(*containerd, "images", "pull", "--plain-http", f"{berth.host}/ctr/img:v1")
    listed = run(*containerd, "images", "ls")
    assert pushed["digest"] in listed


def test_containerd_multi_arch_and_push(berth, mkimage, containerd):
    layout = mkimage("multi", layers="100K", platforms="linux/amd64,linux/arm64")
    run("skopeo", "copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:multi",
        f"docker://{berth.host}/ctr/multi:m")
    run(*containerd, "images", "pull", "--plain-http", "--all-platforms",
        f"{berth.host}/ctr/multi:m")
    run(*containerd, "images", "tag", f"{berth.host}/ctr/multi:m", f"{berth.host}/ctr/copy:m")
    run(*containerd, "images", "push", "--plain-http", f"{berth.host}/ctr/copy:m")
    a, _ = registry_get(berth.host, "/v2/ctr/multi/manifests/m")
    b, _ = registry_get(berth.host, "/v2/ctr/copy/manifests/m")
    assert a == b


def test_oras_artifacts(berth, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blob = tmp_path / "artifact.bin"
    blob.write_bytes(bytes(range(256)) * 4096)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello from oras\n")
    client = oras.client.OrasClient(hostname=berth.host, insecure=True)
    target = f"{berth.host}/oras/artifact:v1"
    resp = client.push(target=target, files=["artifact.bin", "notes.txt"],
                       manifest_annotations={"org.example.note": "interop"})
    assert resp.status_code == 201
    manifest = client.get_manifest(target)
    assert manifest["annotations"]["org.example.note"] == "interop"
    out = tmp_path / "out"
    client.pull(target=target, outdir=str(out))
    assert (out / "artifact.bin").read_bytes() == blob.read_bytes()
    assert (out / "notes.txt").read_text() == "hello from oras\n"
    assert client.get_tags(f"{berth.host}/oras/artifact") == ["v1"]
