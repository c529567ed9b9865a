"""The Containerfile builds an image that works: a static binary on an empty base, running as
the non-root user the Deployment expects, serving on port 5000, storing pushes in the
/var/lib/registry volume, with `berth htpasswd` inside.

The Containerfile's build stage pulls a Rust image, which this test does not need: it builds
the same static binary here (`--target x86_64-unknown-linux-musl`) and hands it to podman as the
`build` stage (`--build-context build=DIR`), so the runtime stage — everything the image
ships — is built from the Containerfile exactly as written. Skipped, saying why, only where
podman or Rust's musl target is not installed."""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "interop"))
from berthtest import run  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
MUSL = "x86_64-unknown-linux-musl"
IMAGE = "localhost/berth-containerfile-test:latest"
# This sandbox lets containers lower rlimits but not keep the host's; harmless elsewhere.
ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


def musl_target_installed():
    try:
        out = subprocess.run(["rustup", "target", "list", "--installed"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return MUSL in out.split()


pytestmark = [
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
    pytest.mark.skipif(not musl_target_installed(),
                       reason=f"Rust target {MUSL} is not installed (rustup target add {MUSL})"),
]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    target_dir = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    run("cargo", "build", "--locked", "--release", "--target", MUSL, "-p", "berth",
        cwd=ROOT, timeout=1800)
    binary = pathlib.Path(target_dir) / MUSL / "release" / "berth"
    # Static: no program interpreter, so it runs on an empty base.
    assert b"ld-linux" not in binary.read_bytes()[:4096], "the musl build is not static"

    stage = tmp_path_factory.mktemp("build-stage")
    (stage / "out" / "var" / "lib" / "registry").mkdir(parents=True)
    shutil.copy(binary, stage / "out" / "berth")
    run("podman", "build", "--build-context", f"build={stage}", "-t", IMAGE,
        "-f", ROOT / "Containerfile", ROOT, timeout=600)
    yield IMAGE
    subprocess.run(["podman", "rmi", "-f", IMAGE], capture_output=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_image_metadata(image):
    info = json.loads(run("podman", "image", "inspect", image))[0]
    config = info["Config"]
    assert config["User"] == "65532:65532"
    assert "5000/tcp" in config["ExposedPorts"]
    assert "/var/lib/registry" in config["Volumes"]
    assert config["Entrypoint"] == ["/usr/local/bin/berth"] and config["Cmd"] == ["serve"]
    assert "BERTH_STORAGE_ROOT=/var/lib/registry" in config["Env"]
    assert info["Size"] < 30 * 1024 * 1024, f"image is {info['Size']} bytes"


def test_htpasswd_inside(image):
    line = run("podman", "run", "--rm", "--network", "none", *ULIMITS, image,
               "htpasswd", "-Bbn", "alice", "s3cret").strip()
    user, _, hashed = line.partition(":")
    assert user == "alice" and hashed.startswith("$2"), line


def test_serves_and_stores_as_non_root(image, tmp_path):
    port = free_port()
    name = f"berth-ct-{port}"
    run("podman", "run", "-d", "--name", name, *ULIMITS, "-p", f"127.0.0.1:{port}:5000", image)
    try:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError(run("podman", "logs", name))
                time.sleep(0.2)
        layout = tmp_path / "layout"
        run(sys.executable, ROOT / "bench" / "mkoci.py", layout, "--tag", "v1", "--layers", "200K",
            "--seed", "container")
        run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
            f"docker://127.0.0.1:{port}/demo/app:v1")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/demo/app/tags/list") as r:
            assert json.load(r) == {"name": "demo/app", "tags": ["v1"]}
        # The bytes went to the volume, written by the non-root user.
        assert run("podman", "exec", name, "/usr/local/bin/berth", "--version").startswith("berth ")
        volume = json.loads(run("podman", "inspect", name))[0]["Mounts"]
        data = next(m for m in volume if m["Destination"] == "/var/lib/registry")["Source"]
        blobs = list(pathlib.Path(data).glob("docker/registry/v2/blobs/sha256/*/*/data"))
        assert len(blobs) >= 2, blobs
        assert all(b.stat().st_uid == 65532 for b in blobs)
    finally:
        subprocess.run(["podman", "rm", "-f", "-v", name], capture_output=True)
