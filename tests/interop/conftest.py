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

from berthtest import ROOT, Berth, berth_binary, layout_manifest, run  # noqa: F401

@pytest.fixture
def berth(tmp_path):
    server = Berth(tmp_path / "data")
    yield server
    server.stop()


@pytest.fixture
def mkimage(tmp_path):
    """mkimage(tag, layers="1M", platforms=None) -> OCI layout path holding that tag."""
    counter = [0]

    def make(tag, layers="1M", platforms=None, files=1):
        counter[0] += 1
        layout = tmp_path / f"layout{counter[0]}"
        # One OCI layout generator for tests and benchmarks: bench/mkoci.py.
        args = [sys.executable, ROOT / "bench" / "mkoci.py", layout, "--tag", tag, "--layers", layers,
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
    # The overlay driver mounts its home over itself, and `system reset` leaves that mount.
    subprocess.run(["umount", "-R", str(tmp_path / "podman-root" / "overlay")], capture_output=True)


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
