"""Real clients over HTTPS with the CA from `berth tls init`, and no insecure flags."""
import json
import ssl
import urllib.request

from berthtest import layout_manifest, run


def test_curl_sees_http2_and_the_ca_is_enough(berth_tls):
    server, ca_dir = berth_tls
    out = run("curl", "-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
              "--cacert", ca_dir / "ca.crt", f"https://{server.host}/v2/")
    assert out == "2 200"
    # Without the CA the connection is refused, so the test above really checks trust.
    r = __import__("subprocess").run(["curl", "-s", f"https://{server.host}/v2/"])
    assert r.returncode != 0


def test_skopeo_push_pull_over_tls(berth_tls, mkimage, tmp_path):
    server, ca_dir = berth_tls
    layout = mkimage("v1", layers="300K")
    pushed = layout_manifest(layout, "v1")
    run("skopeo", "copy", "--dest-cert-dir", ca_dir, f"oci:{layout}:v1",
        f"docker://{server.host}/tls/img:v1")
    out = tmp_path / "pulled"
    run("skopeo", "copy", "--src-cert-dir", ca_dir, f"docker://{server.host}/tls/img:v1",
        f"oci:{out}:v1")
    assert layout_manifest(out, "v1")["digest"] == pushed["digest"]


def test_podman_over_tls(berth_tls, mkimage, podman_env):
    server, ca_dir = berth_tls
    layout = mkimage("v1", layers="200K")
    run("skopeo", "copy", "--dest-cert-dir", ca_dir, f"oci:{layout}:v1",
        f"docker://{server.host}/tls/podman:v1")
    run("podman", "pull", "--cert-dir", ca_dir, f"{server.host}/tls/podman:v1", env=podman_env)
    run("podman", "tag", f"{server.host}/tls/podman:v1", f"{server.host}/tls/podman:v2",
        env=podman_env)
    run("podman", "push", "--cert-dir", ca_dir, f"{server.host}/tls/podman:v2", env=podman_env)
    ctx = ssl.create_default_context(cafile=str(ca_dir / "ca.crt"))
    with urllib.request.urlopen(f"https://{server.host}/v2/tls/podman/tags/list",
                                context=ctx) as r:
        assert json.loads(r.read())["tags"] == ["v1", "v2"]


def test_containerd_with_hosts_toml(berth_tls, mkimage, containerd, tmp_path):
    """What a Kubernetes node does: a hosts.toml under config_path naming the CA."""
    server, ca_dir = berth_tls
    layout = mkimage("v1", layers="200K")
    pushed = layout_manifest(layout, "v1")
    run("skopeo", "copy", "--dest-cert-dir", ca_dir, f"oci:{layout}:v1",
        f"docker://{server.host}/tls/ctr:v1")
    hosts = tmp_path / "certs.d"
    (hosts / server.host).mkdir(parents=True)
    (hosts / server.host / "hosts.toml").write_text(f"""server = "https://{server.host}"
[host."https://{server.host}"]
  capabilities = ["pull", "resolve", "push"]
  ca = "{ca_dir / 'ca.crt'}"
""")
    run(*containerd, "images", "pull", "--hosts-dir", hosts, f"{server.host}/tls/ctr:v1")
    assert pushed["digest"] in run(*containerd, "images", "ls")
    run(*containerd, "images", "tag", f"{server.host}/tls/ctr:v1", f"{server.host}/tls/ctr:v2")
    run(*containerd, "images", "push", "--hosts-dir", hosts, f"{server.host}/tls/ctr:v2")
