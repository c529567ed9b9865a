"""Real clients through the built-in token service: they meet a Bearer challenge, log in with
a user or a robot account, and push/pull only what their role allows."""
import subprocess

import oras.client
import pytest

from berthtest import Berth, berth_binary, layout_manifest, run


def cli(data, *args, stdin=None):
    return subprocess.run([berth_binary(), *args, "--data", str(data)], input=stdin,
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def token_registry(tmp_path):
    data = tmp_path / "data"
    cli(data, "user", "add", "dev", stdin="dev-password\n")
    cli(data, "user", "add", "viewer", stdin="viewer-password\n")
    cli(data, "project", "add", "team")
    cli(data, "project", "member", "add", "team", "dev", "developer")
    cli(data, "project", "member", "add", "team", "viewer", "guest")
    name, secret = cli(data, "robot", "add", "team", "ci", "--actions", "pull").split()
    server = Berth(data, env={"BERTH_AUTH_MODE": "token"})
    yield server, (name, secret)
    server.stop()


def test_skopeo_and_podman_login_push_pull(token_registry, mkimage, podman_env, tmp_path):
    server, _ = token_registry
    layout = mkimage("v1", layers="200K")
    pushed = layout_manifest(layout, "v1")
    # Without credentials the push is refused.
    r = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
                        f"docker://{server.host}/team/app:v1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and ("unauthorized" in r.stderr.lower() or "forbidden" in r.stderr.lower())
    run("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", "dev:dev-password",
        f"oci:{layout}:v1", f"docker://{server.host}/team/app:v1")
    # A guest may pull but not push.
    out = tmp_path / "pulled"
    run("skopeo", "copy", "--src-tls-verify=false", "--src-creds", "viewer:viewer-password",
        f"docker://{server.host}/team/app:v1", f"oci:{out}:v1")
    assert layout_manifest(out, "v1")["digest"] == pushed["digest"]
    r = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds",
                        "viewer:viewer-password", f"oci:{layout}:v1",
                        f"docker://{server.host}/team/other:v1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0

    auth = tmp_path / "auth.json"
    run("podman", "login", "--tls-verify=false", "--authfile", auth, "-u", "dev", "-p",
        "dev-password", server.host, env=podman_env)
    run("podman", "pull", "--tls-verify=false", "--authfile", auth,
        f"{server.host}/team/app:v1", env=podman_env)
    run("podman", "tag", f"{server.host}/team/app:v1", f"{server.host}/team/app:v2", env=podman_env)
    run("podman", "push", "--tls-verify=false", "--authfile", auth, f"{server.host}/team/app:v2",
        env=podman_env)
    r = subprocess.run(["podman", "login", "--tls-verify=false", "--authfile", str(auth), "-u",
                        "dev", "-p", "wrong-password", server.host], capture_output=True,
                       text=True, env=podman_env, timeout=120)
    assert r.returncode != 0


def test_containerd_pulls_with_a_robot(token_registry, mkimage, containerd):
    server, (robot, secret) = token_registry
    layout = mkimage("v1", layers="100K")
    pushed = layout_manifest(layout, "v1")
    run("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", "dev:dev-password",
        f"oci:{layout}:v1", f"docker://{server.host}/team/app:v1")
    r = subprocess.run([*containerd, "images", "pull", "--plain-http", f"{server.host}/team/app:v1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, "anonymous pull of a private project"
    run(*containerd, "images", "pull", "--plain-http", "--user", f"{robot}:{secret}",
        f"{server.host}/team/app:v1")
    assert pushed["digest"] in run(*containerd, "images", "ls")
    run(*containerd, "images", "tag", f"{server.host}/team/app:v1", f"{server.host}/team/app:robot")
    r = subprocess.run([*containerd, "images", "push", "--plain-http", "--user", f"{robot}:{secret}",
                        f"{server.host}/team/app:robot"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, "a pull-only robot cannot push"


def test_oras_token_login(token_registry, tmp_path, monkeypatch):
    server, _ = token_registry
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("artifact through the token service\n")
    client = oras.client.OrasClient(hostname=server.host, insecure=True)
    client.login(username="dev", password="dev-password", hostname=server.host,
                 tls_verify=False)
    target = f"{server.host}/team/artifact:v1"
    assert client.push(target=target, files=["a.txt"]).status_code == 201
    out = tmp_path / "out"
    client.pull(target=target, outdir=str(out))
    assert (out / "a.txt").read_text() == "artifact through the token service\n"
