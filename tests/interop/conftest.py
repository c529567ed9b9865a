"""Fixtures for interoperability tests: the real `berth` binary, containerd on its own socket,
podman with private storage, and OCI image layouts generated on the fly (no network)."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def berth_binary():
    explicit = os.environ.get("BERTH_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    for profile in ("release", "debug"):
        path = pathlib.Path(target) / profile / "berth"
        if path.exists():
            return str(path)
    pytest.fail("berth binary not built: run `cargo build` first or set BERTH_BIN")


class Berth:
    """A running `berth serve` on an ephemeral 127.0.0.1 port."""

    def __init__(self, data, env=None):
        self.data = data
        self.env = dict(os.environ, BERTH_LOG_LEVEL="warn", **(env or {}))
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [berth_binary(), "serve", "--addr", "127.0.0.1:0", "--data", str(self.data)],
            stdout=subprocess.PIPE, env=self.env, text=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("berth listening on "):
                self.host = line.strip().split("://", 1)[1]
                # keep draining stdout so the server never blocks on a full pipe
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return
            if self.proc.poll() is not None:
                break
        raise RuntimeError("berth did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def berth(tmp_path):
    server = Berth(tmp_path / "data")
    yield server
    server.stop()


def run(*args, **kw):
    """Runs a client command; on failure shows its output in the test report. A client that
    hangs (retrying forever) fails the test after `timeout` seconds instead of stalling CI."""
    kw.setdefault("timeout", 300)
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result.stdout


@pytest.fixture
def mkimage(tmp_path):
    """mkimage(tag, layers="1M", platforms=None) -> OCI layout path holding that tag."""
    counter = [0]

    def make(tag, layers="1M", platforms=None, files=1):
        counter[0] += 1
        layout = tmp_path / f"layout{counter[0]}"
        args = [sys.executable, HERE / "mkoci.py", layout, "--tag", tag, "--layers", layers,
                "--files", str(files), "--seed", f"{tmp_path.name}-{counter[0]}"]
        if platforms:
            args += ["--platforms", platforms]
        run(*args)
        return layout
    return make


@pytest.fixture(autouse=True)
def fresh_blob_info_cache(tmp_path, monkeypatch):
    """containers/image remembers blobs it has seen and then skips or mounts them; give each
    test its own cache so every push really uploads."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    shutil.rmtree("/var/lib/containers/cache", ignore_errors=True)


@pytest.fixture
def containerd(tmp_path):
    """containerd with its own root, state and socket; yields the `ctr` argument prefix."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="ctrd-"))
    sock = base / "containerd.sock"
    config = base / "config.toml"
    config.write_text(f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
""")
    log = open(base / "containerd.log", "w")
    proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    ctr = ["ctr", "--address", str(sock)]
    for _ in range(100):
        if subprocess.run(ctr + ["version"], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("containerd did not start: " + (base / "containerd.log").read_text())
    yield ctr
    proc.terminate()
    proc.wait(10)
    subprocess.run(["umount", "-R", str(base / "root")], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def podman_env(tmp_path):
    """Environment for podman with storage private to the test."""
    conf = tmp_path / "storage.conf"
    conf.write_text(f"""[storage]
driver = "overlay"
runroot = "{tmp_path}/podman-run"
graphroot = "{tmp_path}/podman-root"
""")
    env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(conf))
    yield env
    subprocess.run(["podman", "--storage-driver", "overlay", "--root", f"{tmp_path}/podman-root",
                    "--runroot", f"{tmp_path}/podman-run", "system", "reset", "--force"],
                   capture_output=True, env=env)


def layout_manifest(layout, tag):
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m
    raise KeyError(tag)


@pytest.fixture
def berth_tls(tmp_path):
    """berth serving HTTPS with a CA and certificate made by `berth tls init`; yields
    (server, ca_dir) where ca_dir holds only ca.crt, as clients' certs.d directories do."""
    tls = tmp_path / "tls"
    run(berth_binary(), "tls", "init", "--host", "localhost", "--ip", "127.0.0.1", "--out", tls)
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    shutil.copy(tls / "ca.crt", ca_dir / "ca.crt")
    server = Berth(tmp_path / "data", env={
        "REGISTRY_HTTP_TLS_CERTIFICATE": str(tls / "server.crt"),
        "REGISTRY_HTTP_TLS_KEY": str(tls / "server.key"),
    })
    yield server, ca_dir
    server.stop()
