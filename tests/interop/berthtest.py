"""Helpers shared by the interop and deploy test suites: start the real `berth` binary on an
ephemeral 127.0.0.1 port, run client commands with their output in failures, read OCI layouts."""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

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
    """A running `berth serve` on an ephemeral 127.0.0.1 port.

    `addr` listens elsewhere (port 0 = ephemeral); `prefix` wraps the command, e.g.
    `["ip", "netns", "exec", NS]` (it must exec the binary, so that stop() signals berth);
    `base_env` replaces the inherited environment and the default log level, for a test that
    configures berth with nothing but the variables it names."""

    def __init__(self, data, env=None, addr="127.0.0.1:0", prefix=(), base_env=None, stderr=None):
        self.data = data
        base = {**os.environ, "BERTH_LOG_LEVEL": "warn"} if base_env is None else base_env
        self.env = {**base, **(env or {})}
        self.addr = addr
        self.prefix = list(prefix)
        self.proc = None
        if stderr is None:
            self.start()  # subclasses may take no argument (tests/faults)
        else:
            self.start(stderr)

    def start(self, stderr=None):
        """Starts the process; `stderr` (a file) receives its log."""
        self.proc = subprocess.Popen(
            [*self.prefix, berth_binary(), "serve", "--addr", self.addr, "--data", str(self.data)],
            stdout=subprocess.PIPE, stderr=stderr, env=self.env, text=True)
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


def run(*args, **kw):
    """Runs a client command; on failure shows its output in the test report. A client that
    hangs (retrying forever) fails the test after `timeout` seconds instead of stalling CI."""
    kw.setdefault("timeout", 300)
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result.stdout


def layout_manifest(layout, tag):
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m
    raise KeyError(tag)


class Postgres:
    """A throwaway PostgreSQL cluster on a free 127.0.0.1 port, from Debian's server binaries
    (as `postgres` when run as root: initdb refuses root). `url(name)` creates a database."""

    def __init__(self):
        bins = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed (scripts/install-test-deps.sh)")
        self.bin = bins[-1].parent
        # Not under pytest's tmp_path, whose parents only root may enter.
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="berth-pg-"))
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._pg("initdb", "-D", self.dir / "data", "-U", "postgres", "-A", "trust",
                 "-E", "UTF8", "--locale=C", "--no-sync")
        self._pg("pg_ctl", "-D", self.dir / "data", "-l", self.dir / "server.log", "-w",
                 "-t", "30", "-o",
                 f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off",
                 "start")

    def _pg(self, program, *args):
        command = [self.bin / program, *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        run(*command, timeout=60)

    def url(self, name):
        self._pg("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self):
        try:
            self._pg("pg_ctl", "-D", self.dir / "data", "-m", "immediate", "stop")
        except AssertionError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class Moto:
    """A throwaway S3 server (moto, from the repository's .venv) on a free 127.0.0.1 port,
    with one bucket. `env()` is the registry:2-style configuration that puts Berth on it."""

    def __init__(self, bucket="registry"):
        self.bucket = bucket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        server = pathlib.Path(__file__).resolve().parents[2] / ".venv" / "bin" / "moto_server"
        self.proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(
                    urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT"), timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                if time.time() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def env(self):
        return {
            "REGISTRY_STORAGE": "s3",
            "REGISTRY_STORAGE_S3_REGION": "us-east-1",
            "REGISTRY_STORAGE_S3_BUCKET": self.bucket,
            "REGISTRY_STORAGE_S3_REGIONENDPOINT": self.endpoint,
            "REGISTRY_STORAGE_S3_ACCESSKEY": "berth",
            "REGISTRY_STORAGE_S3_SECRETKEY": "berth-secret",
            "REGISTRY_STORAGE_S3_FORCEPATHSTYLE": "true",
        }

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Distribution:
    """The reference registry (Debian's `docker-registry`, CNCF Distribution 2.8) on a free
    127.0.0.1 port, storing in `data` (a directory) or, with `s3` (a Moto), in its bucket
    under `rootdirectory`, as a registry:2 Deployment would. Deletes are enabled."""

    def __init__(self, workdir, data=None, s3=None, rootdirectory="/"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.host = f"127.0.0.1:{port}"
        if s3:
            storage = (f"  s3:\n    region: us-east-1\n    bucket: {s3.bucket}\n"
                       f"    regionendpoint: \"{s3.endpoint}\"\n    accesskey: berth\n"
                       f"    secretkey: berth-secret\n    forcepathstyle: true\n    secure: false\n"
                       f"    v4auth: true\n    rootdirectory: {rootdirectory}\n")
        else:
            storage = f"  filesystem:\n    rootdirectory: {data}\n"
        config = pathlib.Path(workdir) / "distribution.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n" + storage
            + "  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n"
            + f"http:\n  addr: {self.host}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "AWS_"))}
        self.log = pathlib.Path(workdir) / "distribution.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError("docker-registry did not start:\n" + self.log.read_text())
                time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
