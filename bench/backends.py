"""The shared backends of the `s3` variant: one S3-compatible server and one PostgreSQL
cluster on free 127.0.0.1 ports, started once per run. Every registry gets a bucket of its own
on the same server (Berth's also gets a database), so Berth on S3 + PostgreSQL and
Distribution on S3 meet the same store.

The S3 server is moto (`moto_server` from the repository's .venv, or $BENCH_MOTO_SERVER), the
one both registries run on: Distribution's driver needs ListMultipartUploads, which s3s-fs
lacks. moto spools every object above 5 MiB to a file under the run's scratch directory, so
the 1 GiB phases do not live in its memory. It is a Python server: on the big phases it is a
bottleneck both registries share, which the report says. PostgreSQL comes from Debian's server
binaries, run as `postgres` when we are root (initdb refuses root), with fsync off like the
tests' clusters.
"""
import collections
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ACCESS_KEY, SECRET_KEY = "bench", "bench-secret-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A store's process: its log goes to the scratch directory (moto and Garage log every
    request: hundreds of megabytes in a full run) and only its last lines are kept with the
    results when it stops."""

    TAIL_LINES = 200

    def __init__(self, name, cmd, work, logdir, env=None):
        self.name, self.logdir = name, logdir
        self.logfile = os.path.join(work, name + ".log")
        self.log = open(self.logfile, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_for_port(self, port):
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("%s did not start" % self.name)
                time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        with open(self.logfile, errors="replace") as f:
            tail = collections.deque(f, maxlen=self.TAIL_LINES)
        with open(os.path.join(self.logdir, self.name + ".log"), "w") as f:
            f.writelines(tail)


def moto_binary():
    path = os.environ.get("BENCH_MOTO_SERVER") or os.path.join(REPO, ".venv", "bin", "moto_server")
    return path if os.access(path, os.X_OK) else shutil.which("moto_server")


class MotoServer:
    def __init__(self, work, logdir):
        binary = moto_binary()
        if not binary:
            raise RuntimeError("moto_server not found (scripts/install-test-deps.sh installs it in .venv)")
        self.spool = os.path.join(work, "s3")
        os.makedirs(self.spool, exist_ok=True)
        self.port = free_port()
        env = dict(os.environ, TMPDIR=self.spool)
        self.process = ServerProcess("moto", [binary, "-H", "127.0.0.1", "-p", str(self.port)],
                                     work, logdir, env)
        self.proc = self.process.proc
        self.process.wait_for_port(self.port)

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.port

    def bucket(self, name):
        """A new, empty bucket (moto takes an unsigned path-style PUT)."""
        urllib.request.urlopen(urllib.request.Request("%s/%s" % (self.endpoint, name), method="PUT"),
                               timeout=30).close()
        return name

    def stop(self):
        self.process.stop()


def garage_binary():
    path = os.environ.get("BENCH_GARAGE") or os.path.join(REPO, ".tools", "bin", "garage")
    return path if os.access(path, os.X_OK) else shutil.which("garage")


class GarageServer:
    """A single-node Garage (a distributed S3 store in Rust; `cargo install garage`), for
    `--s3-server garage`: set up with a one-node layout, then one bucket and key per
    registry. Garage has no anonymous bucket creation, so `bucket()` goes through its CLI."""

    REGION = "us-east-1"

    def __init__(self, work, logdir):
        self.binary = garage_binary()
        if not self.binary:
            raise RuntimeError("garage not found (cargo install garage --locked --root .tools "
                               "--no-default-features --features bundled-libs,sqlite,lmdb)")
        self.dir = os.path.join(work, "garage")
        os.makedirs(os.path.join(self.dir, "meta"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        self.port, rpc, admin = free_port(), free_port(), free_port()
        self.config = os.path.join(self.dir, "garage.toml")
        with open(self.config, "w") as f:
            f.write('metadata_dir = "%s/meta"\ndata_dir = "%s/data"\ndb_engine = "sqlite"\n'
                    'replication_factor = 1\nrpc_bind_addr = "127.0.0.1:%d"\n'
                    'rpc_public_addr = "127.0.0.1:%d"\nrpc_secret = "%s"\n'
                    '[s3_api]\ns3_region = "%s"\napi_bind_addr = "127.0.0.1:%d"\n'
                    '[admin]\napi_bind_addr = "127.0.0.1:%d"\n'
                    % (self.dir, self.dir, rpc, rpc, "0" * 64, self.REGION, self.port, admin))
        self.process = ServerProcess("garage", [self.binary, "-c", self.config, "server"], work,
                                     logdir, dict(os.environ, RUST_LOG="warn"))
        self.proc = self.process.proc
        deadline = time.time() + 30
        while True:
            try:
                node = self.cli("node", "id", "-q").strip().split("@")[0]
                break
            except subprocess.CalledProcessError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("garage did not start")
                time.sleep(0.2)
        self.cli("layout", "assign", "-z", "dc1", "-c", "100G", node)
        self.cli("layout", "apply", "--version", "1")
        self.keys = {}

    def cli(self, *args):
        return subprocess.run([self.binary, "-c", self.config] + list(args), check=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60).stdout

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.port

    def bucket(self, name):
        self.cli("bucket", "create", name)
        out = self.cli("key", "create", name + "-key")
        key_id = next(l.split()[-1] for l in out.splitlines() if "Key ID" in l)
        secret = next(l.split()[-1] for l in out.splitlines() if "Secret key" in l)
        self.cli("bucket", "allow", "--read", "--write", "--owner", name, "--key", name + "-key")
        self.keys[name] = (key_id, secret)
        return name

    def stop(self):
        self.process.stop()


class Postgres:
    def __init__(self):
        bins = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = bins[-1].parent
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="berth-bench-pg-"))
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self._pg("initdb", "-D", self.dir / "data", "-U", "postgres", "-A", "trust", "-E", "UTF8",
                 "--locale=C", "--no-sync")
        self._pg("pg_ctl", "-D", self.dir / "data", "-l", self.dir / "server.log", "-w", "-t", "30", "-o",
                 "-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off -c max_connections=200"
                 % (self.port, self.dir), "start")

    def _pg(self, program, *args):
        cmd = [str(self.bin / program)] + [str(a) for a in args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def database(self, name):
        self._pg("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return "postgres://postgres@127.0.0.1:%d/%s" % (self.port, name)

    def stop(self):
        try:
            self._pg("pg_ctl", "-D", self.dir / "data", "-m", "fast", "stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class Backends:
    """Both, for the `s3` variant; `for_registry(label)` gives one registry its bucket and
    database."""

    def __init__(self, work, logdir, server="moto"):
        self.s3 = GarageServer(work, logdir) if server == "garage" else MotoServer(work, logdir)
        self.server = server
        try:
            self.pg = Postgres()
        except Exception:
            self.s3.stop()
            raise

    def for_registry(self, label):
        name = label.replace("-", "_")
        bucket = self.s3.bucket(label)
        access_key, secret_key = getattr(self.s3, "keys", {}).get(bucket, (ACCESS_KEY, SECRET_KEY))
        return {"endpoint": self.s3.endpoint, "bucket": bucket, "access_key": access_key,
                "secret_key": secret_key, "metadata_url": self.pg.database(name)}

    def pids(self):
        """The S3 server and every PostgreSQL process (the postmaster and its backends): their
        CPU is the stores' share of a phase, not another tenant's."""
        pids = [self.s3.proc.pid]
        try:
            with open(self.pg.dir / "data" / "postmaster.pid") as f:
                postmaster = int(f.readline())
        except (OSError, ValueError):
            return pids
        pids.append(postmaster)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == postmaster:
                pids.append(int(entry))
        return pids

    def stop(self):
        self.s3.stop()
        self.pg.stop()
