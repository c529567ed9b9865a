"""Kubernetes packaging: every manifest and every rendered chart template is valid against the
Kubernetes schemas (offline, kubernetes-validate), and what the Deployments and the Containerfile
promise — ports, probes, environment, mounts, user — is what the binary actually serves and
reads."""
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import urllib.request

import kubernetes_validate
import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "interop"))
from berthtest import Berth, berth_binary, run  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
CHART = ROOT / "deploy" / "helm" / "berth"
K8S_VERSION = "1.30"


def manifest_files():
    for path in sorted(KUBE.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.name.endswith(".patch.yaml"):
            continue
        yield path


def docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.mark.parametrize("path", list(manifest_files()), ids=lambda p: str(p.relative_to(KUBE)))
def test_kubernetes_manifests_are_valid(path):
    for doc in docs(path.read_text()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomizations_list_existing_files():
    for kustomization in KUBE.rglob("kustomization.yaml"):
        k = yaml.safe_load(kustomization.read_text())
        for entry in k.get("resources", []) + [p["path"] for p in k.get("patches", [])]:
            assert (kustomization.parent / entry).exists(), f"{kustomization}: {entry}"


@pytest.fixture(scope="session")
def helmrender():
    out = pathlib.Path(tempfile.mkdtemp()) / "helmrender"
    env = dict(os.environ, GOPATH="/usr/share/gocode", GO111MODULE="off",
               GOCACHE=str(out.parent / "gocache"))
    run("go", "build", "-o", out, ".", cwd=ROOT / "tests" / "deploy" / "helmrender", env=env)
    return out


VALUE_SETS = {
    "htpasswd": {"auth": {"htpasswd": "user:$2y$10$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXY\n"}},
    "token-tls-ingress": {
        "auth": {"mode": "token", "token": {"bootstrapAdminPassword": "change-me-please",
                                            "externalIssuer": "corp",
                                            "externalPublicKey": "-----BEGIN PUBLIC KEY-----\nMFk=\n-----END PUBLIC KEY-----\n"}},
        "tls": {"enabled": True, "existingSecret": "berth-tls"},
        "ingress": {"enabled": True, "className": "nginx"},
        "service": {"type": "ClusterIP"},
        "server": {"metricsPort": 9090},
        "tracing": {"otlpEndpoint": "http://otel-collector.monitoring:4318"},
        "persistence": {"storageClass": "fast"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
    },
    "no-auth-no-persistence": {"auth": {"mode": "none"}, "persistence": {"enabled": False}},
    "replicas-postgres": {
        "auth": {"mode": "none"},
        "replicaCount": 3,
        "persistence": {"accessMode": "ReadWriteMany", "storageClass": "nfs"},
        "metadata": {"postgres": {"url": "postgres://berth:secret@db.internal:5432/registry?sslmode=require",
                                  "caConfigMap": "db-ca"}},
    },
}


def render(helmrender, values):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(values, f)
    return docs(run(helmrender, CHART, f.name))


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_chart_is_valid(helmrender, name):
    rendered = render(helmrender, VALUE_SETS[name])
    kinds = [d["kind"] for d in rendered]
    assert "Deployment" in kinds and "Service" in kinds
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_chart_runs_replicas_on_postgres_and_a_shared_volume(helmrender):
    rendered = render(helmrender, VALUE_SETS["replicas-postgres"])
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    container = container_of(deployment)
    env = {e["name"]: e for e in container["env"]}
    url = env["BERTH_METADATA_URL"]["valueFrom"]["secretKeyRef"]
    secret = next(d for d in rendered if d["kind"] == "Secret" and d["metadata"]["name"] == url["name"])
    assert __import__("base64").b64decode(secret["data"][url["key"]]).decode().startswith("postgres://")
    assert "value" not in env["BERTH_METADATA_URL"], "the password is not in the Deployment"
    assert env["BERTH_SERVER_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    ca = env["BERTH_METADATA_TLS_CA_FILE"]["value"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert ca.rsplit("/", 1)[0] in mounts
    pvc = next(d for d in rendered if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # The binary understands every variable, as Kubernetes fills them in.
    filled = {name: e.get("value", "") for name, e in env.items()}
    filled["BERTH_METADATA_URL"] = __import__("base64").b64decode(secret["data"]["url"]).decode()
    filled["BERTH_SERVER_INSTANCE"] = "berth-7d9f8c6b5-x2k4q"
    result = subprocess.run([berth_binary(), "config", "check"], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], **filled}, timeout=60)
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    config = __import__("tomllib").loads(result.stdout)
    assert config["metadata"]["url"] == "postgres://berth:********@db.internal:5432/registry?sslmode=require"
    assert config["metadata"]["tls_ca_file"] == ca


def test_chart_refuses_replicas_it_cannot_run(helmrender):
    for values, message in [
        ({"auth": {"mode": "none"}, "replicaCount": 2}, "metadata.postgres"),
        ({"auth": {"mode": "none"}, "replicaCount": 2,
          "metadata": {"postgres": {"url": "postgres://db/registry"}}}, "ReadWriteMany"),
    ]:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(values, f)
        r = subprocess.run([str(helmrender), str(CHART), f.name], capture_output=True, text=True)
        assert r.returncode != 0 and message in r.stderr, r.stderr


def test_chart_refuses_htpasswd_mode_without_users(helmrender):
    r = subprocess.run([str(helmrender), str(CHART)], capture_output=True, text=True)
    assert r.returncode != 0 and "berth htpasswd" in r.stderr


def container_of(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def env_of(container):
    return {e["name"]: e.get("value", "secret-from-kubernetes") for e in container.get("env", [])}


def check_binary_accepts(container, volumes_by_mount, tmp_path):
    """The Deployment's environment is understood by the binary (no unsupported variables), its
    port and mounts match the binary's configuration, and its probe paths answer."""
    env = env_of(container)
    result = subprocess.run([berth_binary(), "config", "check"], capture_output=True, text=True,
                            env={**{"PATH": os.environ["PATH"]}, **env}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    config = __import__("tomllib").loads(result.stdout)
    port = int(config["server"]["addr"].rsplit(":", 1)[1])
    assert port in [p["containerPort"] for p in container["ports"]]
    mounts = {m["mountPath"].rstrip("/") for m in container["volumeMounts"]}
    assert config["storage"]["root"].rstrip("/") in mounts, "the data directory is a volume"
    if config["auth"]["htpasswd_path"]:
        assert os.path.dirname(config["auth"]["htpasswd_path"]) in mounts
    # Probes: run the binary with this environment (paths moved into a temp dir) and ask.
    data = tmp_path / "data"
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(run(berth_binary(), "htpasswd", "-Bbn", "probe", "probe-password"))
    local = {k: v for k, v in env.items() if not k.startswith(("BERTH_TLS", "BERTH_AUTH_EXTERNAL"))}
    for k in list(local):
        if local[k] == "/var/lib/registry":
            local[k] = str(data)
        elif local[k] == "/auth/htpasswd":
            local[k] = str(htpasswd)
    local.pop("REGISTRY_HTTP_ADDR", None)
    local.pop("BERTH_SERVER_ADDR", None)
    local.pop("BERTH_SERVER_METRICS_ADDR", None)
    server = Berth(data, env=local)
    try:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = container[probe]["httpGet"]["path"]
            with urllib.request.urlopen(f"http://{server.host}{path}") as r:
                assert r.status == 200, probe
    finally:
        server.stop()


def test_plain_manifests_match_the_binary(tmp_path):
    deployment = yaml.safe_load((KUBE / "base" / "deployment.yaml").read_text())
    container = container_of(deployment)
    check_binary_accepts(container, None, tmp_path)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    service = yaml.safe_load((KUBE / "base" / "service.yaml").read_text())
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


@pytest.mark.parametrize("name", ["htpasswd", "token-tls-ingress"])
def test_chart_deployment_matches_the_binary(helmrender, name, tmp_path):
    deployment = next(d for d in render(helmrender, VALUE_SETS[name]) if d["kind"] == "Deployment")
    container = container_of(deployment)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        container[probe]["httpGet"]["scheme"] = "HTTP"  # the test server runs without TLS
    check_binary_accepts(container, None, tmp_path)


def test_containerfile_matches_the_deployment():
    text = (ROOT / "Containerfile").read_text()
    deployment = yaml.safe_load((KUBE / "base" / "deployment.yaml").read_text())
    container = container_of(deployment)
    assert re.search(r"^EXPOSE 5000$", text, re.M)
    assert container["ports"][0]["containerPort"] == 5000
    assert "BERTH_STORAGE_ROOT=/var/lib/registry" in text
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert int(user.group(1)) == pod["runAsUser"] and int(user.group(2)) == pod["runAsGroup"]
    assert 'CMD ["serve"]' in text and container["args"] == ["serve"]


def test_replicas_overlay_patches_what_the_binary_needs(tmp_path):
    """The replicas overlay's patches, merged into the base as kustomize merges them (lists
    of containers and env by name), give a valid Deployment and PVC the binary accepts."""
    overlay = KUBE / "overlays" / "replicas-postgres"
    deployment = yaml.safe_load((KUBE / "base" / "deployment.yaml").read_text())
    patch = yaml.safe_load((overlay / "deployment-replicas.patch.yaml").read_text())
    deployment["spec"]["replicas"] = patch["spec"]["replicas"]
    deployment["spec"]["strategy"] = patch["spec"]["strategy"]
    container = container_of(deployment)
    extra = container_of(patch)["env"]
    names = {e["name"] for e in extra}
    container["env"] = [e for e in container.get("env", []) if e["name"] not in names] + extra
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"

    pvc = yaml.safe_load((KUBE / "base" / "pvc.yaml").read_text())
    pvc["spec"].update(yaml.safe_load((overlay / "pvc-shared.patch.yaml").read_text())["spec"])
    kubernetes_validate.validate(pvc, K8S_VERSION, strict=True)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]

    filled = {e["name"]: e.get("value", "") for e in container["env"]}
    filled["BERTH_METADATA_URL"] = "postgres://berth:secret@db.internal:5432/registry"
    filled["BERTH_SERVER_INSTANCE"] = "berth-7d9f8c6b5-x2k4q"
    result = subprocess.run([berth_binary(), "config", "check"], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], **filled}, timeout=60)
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    assert "metadata" in result.stdout and "db.internal" in result.stdout
