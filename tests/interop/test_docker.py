"""The Docker engine (Debian's docker.io: its dockerd and its docker client) against the real
binary, as the registry:2 recipe in docs/seed uses it: a Deployment configured only by
REGISTRY_AUTH=htpasswd and friends, then `docker login -u … -p …`, `docker tag`, `docker push`,
`docker pull`, `docker logout`; and the recipe's TLS trap solved without `insecure-registries`,
by the CA of `berth tls init` in the daemon's certs.d, at an address outside 127.0.0.0/8.

One private dockerd serves the module: its own socket, data and exec roots, pidfile and
`--config-file`, and its own mount namespace in which a temporary directory covers
/etc/docker, so the daemon's key.json and certs.d are private and nothing global is touched.
No image comes from outside: each test loads a docker-archive it writes itself."""
import base64
import hashlib
import io
import ipaddress
import json
import os
import pathlib
import random
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from berthtest import Berth, berth_binary, run

DOCKERD = "/usr/sbin/dockerd"  # Debian's docker.io; /usr/local/bin/docker may be another client
DOCKER = "/usr/bin/docker"
TIMEOUT = 60  # every docker command; a push or pull here takes about a second
USER, PASSWORD = "username", "password"  # the recipe's
ON_PARENT_DEATH = ["setpriv", "--pdeathsig", "TERM"]  # util-linux


class Docker:
    """The docker client of the package, talking to one private daemon, with its own
    DOCKER_CONFIG (where `docker login` keeps credentials)."""

    def __init__(self, sock, config_dir):
        self.config_dir = pathlib.Path(config_dir)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        self.env.update(DOCKER_HOST=f"unix://{sock}", DOCKER_CONFIG=str(self.config_dir))

    def __call__(self, *args, timeout=TIMEOUT):
        """Runs `docker ARGS`; returns stdout and stderr together; fails the test on error."""
        r = self.result(*args, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"docker {' '.join(map(str, args))} failed ({r.returncode}):\n"
                                 f"{r.stdout}\n{r.stderr}")
        return r.stdout + r.stderr

    def fails(self, *args, timeout=TIMEOUT):
        """Runs `docker ARGS`, which must fail; returns its output."""
        r = self.result(*args, timeout=timeout)
        assert r.returncode != 0, f"docker {' '.join(map(str, args))} succeeded:\n{r.stdout}"
        return r.stdout + r.stderr

    def result(self, *args, timeout=TIMEOUT):
        r = subprocess.run([DOCKER, *map(str, args)], capture_output=True, text=True,
                           env=self.env, timeout=timeout)
        # the transcript, shown with a failing test
        print(f"$ docker {' '.join(map(str, args))}  # exit {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    def image_id(self, ref):
        return self("image", "inspect", "--format", "{{.Id}}", ref).strip()

    def auths(self):
        path = self.config_dir / "config.json"
        return json.loads(path.read_text()).get("auths", {}) if path.exists() else {}


@pytest.fixture(scope="module")
def dockerd():
    """A private dockerd (vfs, no iptables, no bridge); yields (socket, certs.d directory).
    certs.d is what the daemon sees as /etc/docker/certs.d: `<host:port>/ca.crt` in it is
    trusted for that registry."""
    missing = [p for p in (DOCKERD, DOCKER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: install Debian's docker.io "
                    "(scripts/install-test-deps.sh)")
    for tool in ("setpriv", "unshare", "mount"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} missing (util-linux/mount)")
    base = pathlib.Path(tempfile.mkdtemp(prefix="dockerd-"))
    etc = base / "etc"
    (etc / "certs.d").mkdir(parents=True)
    (base / "daemon.json").write_text("{}\n")  # no insecure-registries, no mirrors
    sock = base / "docker.sock"
    log_path = base / "dockerd.log"
    log = open(log_path, "w")
    # A mount namespace of its own, in which `etc` covers /etc/docker (which docker.io ships),
    # so the daemon's key.json and certs.d are private; `exec` keeps dockerd the process we
    # signal. It runs its own containerd as a child, in the same namespace. If pytest itself is
    # killed, the daemon gets SIGTERM (the parent-death signal survives the execs).
    cmd = [*ON_PARENT_DEATH, "unshare", "--mount", "--propagation", "private", "sh", "-c",
           'mount --bind "$0" /etc/docker && exec "$@"', str(etc),
           DOCKERD, "--config-file", str(base / "daemon.json"),
           "--host", f"unix://{sock}", "--data-root", str(base / "root"),
           "--exec-root", str(base / "exec"), "--pidfile", str(base / "dockerd.pid"),
           "--storage-driver=vfs", "--iptables=false", "--ip6tables=false", "--bridge=none"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        docker = Docker(sock, base / "probe-config")
        deadline = time.time() + 30
        while True:
            if proc.poll() is not None:
                # A daemon that cannot run here at all (no mount namespaces, no cgroups, ...)
                # is an environment without Docker, not a Berth failure.
                pytest.skip(f"dockerd could not start (exit {proc.returncode}):\n"
                            + log_path.read_text()[-3000:])
            if sock.exists() and docker.result("version", timeout=10).returncode == 0:
                break
            if time.time() > deadline:
                pytest.fail("dockerd did not answer within 30 s:\n"
                            + log_path.read_text()[-3000:])
            time.sleep(0.2)
        yield sock, etc / "certs.d"
    finally:
        stop_dockerd(proc)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def stop_dockerd(proc):
    """SIGTERM, which also stops the daemon's containerd; then whatever is left of the process
    group started for it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


@pytest.fixture
def docker(dockerd, tmp_path):
    """The docker client with a DOCKER_CONFIG private to the test."""
    sock, _ = dockerd
    return Docker(sock, tmp_path / "docker-config")


def docker_archive(path, ref, files_per_layer):
    """Writes a `docker save` archive of a two-layer image named `ref`; returns its image id
    (the digest of its config)."""
    layers = []
    for files in files_per_layer:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o755, 0
                t.addfile(info, io.BytesIO(data))
        layers.append(buf.getvalue())
    diff_ids = ["sha256:" + hashlib.sha256(b).hexdigest() for b in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    with tarfile.open(path, "w") as t:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            t.addfile(info, io.BytesIO(data))
        names = []
        for diff_id, blob in zip(diff_ids, layers):
            names.append(diff_id.split(":")[1] + "/layer.tar")
            add(names[-1], blob)
        add(config_hex + ".json", config)
        add("manifest.json", json.dumps([{"Config": config_hex + ".json", "RepoTags": [ref],
                                          "Layers": names}]).encode())
    return "sha256:" + config_hex


def load_image(docker, tmp_path, ref):
    """A fresh image (random bytes, so no registry or daemon has its layers yet) loaded into
    the daemon as `ref`; returns its id."""
    archive = tmp_path / "image.tar"
    image_id = docker_archive(archive, ref, [{"hello": os.urandom(1 << 20)},
                                             {"etc/motd": secrets.token_hex(16).encode()}])
    out = docker("load", "-i", archive)
    assert f"Loaded image: {ref}" in out
    assert docker.image_id(ref) == image_id
    return image_id


def pushed_digest(out, tag):
    """The manifest digest from `docker push` output: `TAG: digest: sha256:… size: N`."""
    m = re.search(rf"^{re.escape(tag)}: digest: (sha256:[0-9a-f]{{64}}) size: \d+$", out, re.M)
    assert m, f"no digest line in docker push output:\n{out}"
    return m.group(1)


def htpasswd_file(tmp_path):
    """auth/htpasswd as the recipe makes it (`htpasswd -Bbn username password`), by berth."""
    auth = tmp_path / "auth"
    auth.mkdir()
    line = run(berth_binary(), "htpasswd", "-Bbn", USER, PASSWORD, timeout=30)
    assert line.startswith(f"{USER}:$2"), line
    (auth / "htpasswd").write_text(line)
    return auth / "htpasswd"


def recipe_env(htpasswd):
    """The env of the recipe's Deployment, nothing more (it sets no REGISTRY_STORAGE_*: the
    data dir comes from the test's --data, as the recipe's from its volume mount)."""
    return {"REGISTRY_AUTH": "htpasswd",
            "REGISTRY_AUTH_HTPASSWD_REALM": "Registry Realm",
            "REGISTRY_AUTH_HTPASSWD_PATH": str(htpasswd)}


def registry_get(url, path, accept=None, auth=True, context=None):
    """GET with the recipe's `curl -u username:password`; returns (status, body, headers)."""
    req = urllib.request.Request(url + path)
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    if accept:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def check_manifest(url, repo, tag, digest, image_id, context=None):
    """The registry serves the pushed manifest under that digest, naming the image's config."""
    status, body, headers = registry_get(
        url, f"/v2/{repo}/manifests/{tag}", context=context,
        accept="application/vnd.docker.distribution.manifest.v2+json")
    assert status == 200, body
    assert headers["Docker-Content-Digest"] == digest
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    manifest = json.loads(body)
    assert manifest["config"]["digest"] == image_id
    assert len(manifest["layers"]) == 2


def test_recipe_htpasswd_login_tag_push_pull(docker, tmp_path):
    """The recipe against berth started with only its Deployment's env (plus data dir and
    address): docker treats 127.0.0.1 as insecure, so this is plain HTTP, as the recipe's
    `insecure-registries` arranges."""
    berth = Berth(tmp_path / "data", env=recipe_env(htpasswd_file(tmp_path)),
                  base_env={"PATH": os.environ["PATH"]})
    try:
        host = berth.host
        url = f"http://{host}"
        # `curl http://…/v2/_catalog`: refused with the spec's UNAUTHORIZED and a Basic challenge
        status, body, headers = registry_get(url, "/v2/_catalog", auth=False)
        assert status == 401
        assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
        assert headers["WWW-Authenticate"] == 'Basic realm="Registry Realm"'

        # a wrong password is refused and stores nothing
        out = docker.fails("login", "-u", USER, "-p", "wrong", host)
        assert "401 Unauthorized" in out, out
        assert host not in docker.auths()

        out = docker("login", "-u", USER, "-p", PASSWORD, host)
        assert "Login Succeeded" in out
        assert docker.auths()[host]["auth"] == base64.b64encode(
            f"{USER}:{PASSWORD}".encode()).decode()
        assert json.loads(registry_get(url, "/v2/_catalog")[1]) == {"repositories": []}

        image_id = load_image(docker, tmp_path, "hello-world:latest")
        docker("tag", "hello-world", f"{host}/hello-world:1")
        out = docker("push", f"{host}/hello-world:1")
        assert out.count("Pushed") == 2, out
        digest = pushed_digest(out, "1")
        assert json.loads(registry_get(url, "/v2/_catalog")[1]) == {"repositories": ["hello-world"]}
        check_manifest(url, "hello-world", "1", digest, image_id)

        # remove every local copy, then pull it back: same image, same manifest digest
        docker("rmi", f"{host}/hello-world:1", "hello-world:latest")
        assert docker.result("image", "inspect", image_id).returncode != 0
        out = docker("pull", f"{host}/hello-world:1")
        assert f"Digest: {digest}" in out, out
        assert docker.image_id(f"{host}/hello-world:1") == image_id
        repo_digests = json.loads(docker("image", "inspect", "--format", "{{json .RepoDigests}}",
                                         f"{host}/hello-world:1"))
        assert repo_digests == [f"{host}/hello-world@{digest}"]

        # a second repository: docker mounts the layers it knows are on this registry
        docker("tag", f"{host}/hello-world:1", f"{host}/team/hello:2")
        out = docker("push", f"{host}/team/hello:2")
        assert out.count("Mounted from hello-world") == 2, out
        assert pushed_digest(out, "2") == digest
        status, body, _ = registry_get(url, "/v2/team/hello/tags/list")
        assert (status, json.loads(body)) == (200, {"name": "team/hello", "tags": ["2"]})

        # `docker logout`: the credentials are gone and a pull is refused again
        docker("logout", host)
        assert host not in docker.auths()
        docker("rmi", f"{host}/hello-world:1", f"{host}/team/hello:2")
        out = docker.fails("pull", f"{host}/hello-world:1")
        assert "no basic auth credentials" in out, out
    finally:
        berth.stop()
        for ref in ("hello-world:latest", f"{berth.host}/hello-world:1",
                    f"{berth.host}/team/hello:2"):
            docker.result("rmi", "-f", ref)


@pytest.fixture
def netns():
    """A network namespace joined to this one by a veth pair on a free 10.x.y.z/30; yields
    (namespace, address here, address there). Names are random, so what a crashed run left
    behind never collides; everything is removed afterwards."""
    if not shutil.which("ip"):
        pytest.fail("ip missing: install iproute2 (scripts/install-test-deps.sh)")
    used = []  # every IPv4 address or network this namespace's addresses and routes name
    listing = run("ip", "-4", "-o", "addr", "show", timeout=10) + run(
        "ip", "-4", "route", "show", "table", "all", timeout=10)
    for token in listing.split():
        try:
            used.append(ipaddress.ip_network(token, strict=False))
        except ValueError:
            pass
    for _ in range(100):
        a, b, c = random.randint(200, 250), random.randint(0, 255), 4 * random.randint(0, 63)
        net = ipaddress.ip_network(f"10.{a}.{b}.{c}/30")
        if not any(net.overlaps(u) for u in used):
            break
    else:
        pytest.fail(f"no free 10.x.y.z/30 among {used}")
    here, there = map(str, net.hosts())
    suffix = secrets.token_hex(3)
    ns, veth_here, veth_there = f"berth-docker-{suffix}", f"bd{suffix}h", f"bd{suffix}n"
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", veth_here, "type", "veth", "peer", "name", veth_there],
        ["ip", "link", "set", veth_there, "netns", ns],
        ["ip", "addr", "add", f"{here}/30", "dev", veth_here],
        ["ip", "link", "set", veth_here, "up"],
        ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{there}/30", "dev", veth_there],
        ["ip", "netns", "exec", ns, "ip", "link", "set", veth_there, "up"],
        ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            run(*step, timeout=10)
        yield ns, here, there
    finally:
        # deleting the namespace deletes the peer inside it, and with it the pair
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", veth_here], capture_output=True, timeout=10)


def test_tls_trusted_through_certs_d_without_insecure_registries(dockerd, docker, netns,
                                                                 tmp_path):
    """The recipe's `http: server gave HTTP response to HTTPS client` answered with TLS:
    berth in a network namespace at 10.x.y.z serves the certificate of `berth tls init`,
    with the recipe's htpasswd env. The daemon has no insecure-registries (and 10.x.y.z is not
    loopback), so it must verify; the CA in certs.d/<host:port>/ca.crt is all it gets."""
    _, certs_d = dockerd
    ns, _, there = netns
    tls = tmp_path / "tls"
    run(berth_binary(), "tls", "init", "--host", "registry.berth.test", "--ip", there,
        "--out", tls, timeout=30)
    env = {**recipe_env(htpasswd_file(tmp_path)),
           "REGISTRY_HTTP_TLS_CERTIFICATE": str(tls / "server.crt"),
           "REGISTRY_HTTP_TLS_KEY": str(tls / "server.key")}
    berth = Berth(tmp_path / "data", env=env, addr=f"{there}:0",
                  prefix=[*ON_PARENT_DEATH, "ip", "netns", "exec", ns],
                  base_env={"PATH": os.environ["PATH"]})
    ca_dir = certs_d / berth.host
    try:
        host = berth.host
        assert host.startswith(there + ":"), host
        info = json.loads(docker("info", "--format", "{{json .RegistryConfig}}"))
        assert info["InsecureRegistryCIDRs"] == ["127.0.0.0/8"], info
        assert all(c["Secure"] for c in info["IndexConfigs"].values()), info

        # without the CA: refused for the certificate, no fallback to plain HTTP
        for args in (["login", "-u", USER, "-p", PASSWORD, host], ["pull", f"{host}/hello:1"]):
            out = docker.fails(*args)
            assert "x509: certificate signed by unknown authority" in out, out
        assert host not in docker.auths()

        ca_dir.mkdir()
        shutil.copy(tls / "ca.crt", ca_dir / "ca.crt")
        out = docker("login", "-u", USER, "-p", PASSWORD, host)
        assert "Login Succeeded" in out
        image_id = load_image(docker, tmp_path, "hello-tls:latest")
        docker("tag", "hello-tls:latest", f"{host}/hello:1")
        out = docker("push", f"{host}/hello:1")
        assert out.count("Pushed") == 2, out
        digest = pushed_digest(out, "1")
        check_manifest(f"https://{host}", "hello", "1", digest, image_id,
                       context=ssl.create_default_context(cafile=str(tls / "ca.crt")))
        docker("rmi", f"{host}/hello:1", "hello-tls:latest")
        out = docker("pull", f"{host}/hello:1")
        assert f"Digest: {digest}" in out, out
        assert docker.image_id(f"{host}/hello:1") == image_id

        # the CA file was what made it trusted: without it the same pull fails again
        docker("rmi", f"{host}/hello:1")
        shutil.rmtree(ca_dir)
        out = docker.fails("pull", f"{host}/hello:1")
        assert "x509: certificate signed by unknown authority" in out, out
    finally:
        berth.stop()
        shutil.rmtree(ca_dir, ignore_errors=True)
        for ref in ("hello-tls:latest", f"{berth.host}/hello:1"):
            docker.result("rmi", "-f", ref)
