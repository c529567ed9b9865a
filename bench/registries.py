"""Start and stop the registries under test: Berth and Distribution, each without auth, with
htpasswd, or without auth on S3 (the `s3` variant: a bucket of its own on the run's shared S3
server, and for Berth PostgreSQL metadata; see backends.py), on a free 127.0.0.1 port with a
fresh data directory.

The process we start IS the registry (no shell or setsid wrapper in between), so its PID
is what /proc measurements (CPU, VmRSS, VmHWM) must look at.
"""
import base64
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

USER, PASSWORD = "bench", "benchpass"


def free_port():
    """A port the kernel considers free right now (bind port 0 on loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_htpasswd(path):
    """bcrypt htpasswd line with Apache's tool (cost 5, its default for -B), shared by both
    registries so both pay the same bcrypt cost per uncached check."""
    out = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True,
                         stdout=subprocess.PIPE, text=True).stdout.strip()
    with open(path, "w") as f:
        f.write(out + "\n")
    return path


def clean_env():
    """Our environment minus anything that would configure either registry behind our back."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("BERTH_", "REGISTRY_"))}


DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: warn            # Debian's default (info + an access-log line per request) costs CPU
  accesslog:
    disabled: true
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
{driver}  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
"""

DISTRIBUTION_FILESYSTEM = """\
  filesystem:
    rootdirectory: {data}
"""

# Distribution's S3 driver as the research recipe runs it (docs/research/rust-stack.md §9),
# redirects off like Berth's in this variant: both registries serve every byte themselves.
DISTRIBUTION_S3 = """\
  s3:
    region: us-east-1
    bucket: {bucket}
    regionendpoint: "{endpoint}"
    accesskey: {access_key}
    secretkey: {secret_key}
    forcepathstyle: true
    secure: false
    v4auth: true
    rootdirectory: /registry
  redirect:
    disable: true
"""

DISTRIBUTION_AUTH = """\
auth:
  htpasswd:
    realm: basic-realm
    path: {htpasswd}
"""


class Registry:
    """One running registry. kind: berth | distribution; auth: noauth | htpasswd | s3 (no auth,
    blobs in the bucket of `backends`)."""

    def __init__(self, kind, auth, workdir, logdir, berth_bin=None, backends=None):
        self.kind, self.auth = kind, auth
        self.label = "%s-%s" % (kind, auth)
        self.workdir = workdir
        self.data = os.path.join(workdir, "data")
        self.logfile = os.path.join(logdir, "registry.log")
        self.berth_bin = berth_bin
        self.port = None
        self.proc = None
        self.start_s = None
        self.backends = backends

    # the credentials clients use ------------------------------------------------------
    @property
    def user(self):
        return USER if self.auth == "htpasswd" else None

    @property
    def password(self):
        return PASSWORD if self.auth == "htpasswd" else None

    @property
    def auth_header(self):
        if self.auth != "htpasswd":
            return None
        return "Basic " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    # lifecycle --------------------------------------------------------------------------
    def start(self, timeout=60):
        os.makedirs(self.data, exist_ok=True)
        htpasswd = None
        if self.auth == "htpasswd":
            htpasswd = make_htpasswd(os.path.join(self.workdir, "htpasswd"))
        env = clean_env()
        self.port = free_port()
        s3 = None
        if self.auth == "s3":
            if not self.backends:
                raise RuntimeError("the s3 variant needs the run's S3 server and PostgreSQL")
            s3 = self.backends.for_registry(self.label)
        if self.kind == "berth":
            env["BERTH_LOG_LEVEL"] = "warn"
            if htpasswd:
                env["BERTH_AUTH_MODE"] = "htpasswd"
                env["BERTH_AUTH_HTPASSWD_PATH"] = htpasswd
            if s3:
                # Distribution's variables, as a registry:2 Deployment moving to Berth has them.
                env.update({
                    "REGISTRY_STORAGE": "s3", "REGISTRY_STORAGE_S3_REGION": "us-east-1",
                    "REGISTRY_STORAGE_S3_BUCKET": s3["bucket"],
                    "REGISTRY_STORAGE_S3_REGIONENDPOINT": s3["endpoint"],
                    "REGISTRY_STORAGE_S3_ACCESSKEY": s3["access_key"],
                    "REGISTRY_STORAGE_S3_SECRETKEY": s3["secret_key"],
                    "REGISTRY_STORAGE_S3_FORCEPATHSTYLE": "true",
                    "REGISTRY_STORAGE_S3_ROOTDIRECTORY": "/registry",
                    "REGISTRY_STORAGE_REDIRECT_DISABLE": "true",
                    "BERTH_METADATA_URL": s3["metadata_url"],
                })
            cmd = [self.berth_bin, "serve", "--addr", self.host, "--data", self.data]
        else:
            conf = os.path.join(self.workdir, "config.yml")
            with open(conf, "w") as f:
                driver = (DISTRIBUTION_S3.format(**s3) if s3
                          else DISTRIBUTION_FILESYSTEM.format(data=self.data))
                f.write(DISTRIBUTION_CONFIG.format(driver=driver, port=self.port))
                if htpasswd:
                    f.write(DISTRIBUTION_AUTH.format(htpasswd=htpasswd))
            cmd = ["docker-registry", "serve", conf]  # Distribution 2.x needs `serve`
            # Its AWS SDK reads AWS_CA_BUNDLE even for a plain-HTTP endpoint and fails on it
            # (rust-stack.md §9).
            env.pop("AWS_CA_BUNDLE", None)
        log = open(self.logfile, "ab")
        t0 = time.perf_counter()
        # own session: a Ctrl-C of the benchmark does not hit the registry mid-phase; we stop it
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s during start-up:\n%s"
                                   % (self.label, self.proc.returncode, self.log_tail()))
            if self.ready():
                self.start_s = round(time.perf_counter() - t0, 3)
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("%s did not become ready in %d s:\n%s" % (self.label, timeout, self.log_tail()))

    def ready(self):
        if self.kind == "berth":
            # Berth prints this line once it accepts connections
            with open(self.logfile, errors="replace") as f:
                return "berth listening on http://%s" % self.host in f.read()
        try:
            with urllib.request.urlopen(self.base + "/v2/", timeout=1) as r:
                return r.status == 200
        except urllib.error.HTTPError as e:
            return e.code == 401  # htpasswd variant: up, and asking for credentials
        except OSError:
            return False

    def log_tail(self, n=4000):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def stop(self):
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def version(self):
        cmd = [self.berth_bin, "--version"] if self.kind == "berth" else ["docker-registry", "--version"]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return r.stdout.strip()
