"""Fixtures for fault tests: a small tmpfs per test, and the real `berth` binary serving a data
directory on it with its log (stderr) kept in a file outside that tmpfs."""
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "interop"))
from berthtest import Berth  # noqa: E402


@pytest.fixture
def tmpfs():
    """A fresh 64 MiB tmpfs, unmounted after the test (after every berth on it was killed: the
    `berth_on` fixture depends on this one, so its teardown runs first)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = pathlib.Path(tempfile.mkdtemp(prefix="berth-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                   check=True, capture_output=True)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        os.rmdir(mount)


class LoggedBerth(Berth):
    """`berth serve` on an ephemeral 127.0.0.1 port whose stderr (the log) goes to a file
    outside the tmpfs, one file per process start, so a test can read what each process
    logged."""

    def __init__(self, data, log_dir, env=None):
        self.log_dir = log_dir
        self.logs = []  # one path per start
        base = {**os.environ, "BERTH_LOG_LEVEL": "info", "BERTH_LOG_FORMAT": "json"}
        super().__init__(data, env=env, base_env=base)

    def start(self):
        log_path = self.log_dir / f"berth-{len(self.logs) + 1}.log"
        self.logs.append(log_path)
        try:
            with open(log_path, "wb") as log:
                super().start(stderr=log)
        except RuntimeError:
            self.kill()
            raise AssertionError(
                f"berth did not start on {self.data} (exit status {self.proc.returncode}); "
                f"its log:\n{log_path.read_text(errors='replace')}") from None

    def kill(self):
        """SIGKILL, as a crash or an OOM kill would: no shutdown code runs."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_lines(self):
        """[(log file name, line)] over every process started, in order."""
        return [(p.name, line) for p in self.logs
                for line in p.read_text(errors="replace").splitlines()]


@pytest.fixture
def berth_on(tmp_path, tmpfs):
    """berth_on(data) -> LoggedBerth; every server started is killed at teardown, before the
    tmpfs is unmounted."""
    servers = []

    def start(data, env=None):
        server = LoggedBerth(data, tmp_path, env)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.kill()
