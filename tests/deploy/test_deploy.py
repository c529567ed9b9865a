"""Kubernetes packaging: every manifest and every rendered chart template is valid against the
Kubernetes schemas (offline, kubernetes-validate), and what the Deployments and the Containerfile
promise — ports, probes, environment, mounts, user — is what the binary actually serves and
reads."""
import base64
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
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


S3_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

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
    # Blobs in a bucket (an in-cluster MinIO here), the index in PostgreSQL: no shared volume.
    "replicas-s3": {
        "auth": {"mode": "token", "token": {"bootstrapAdminPassword": "change-me-please",
                                            "existingSigningKeySecret": "berth-token-key"}},
        "replicaCount": 3,
        "storage": {"s3": {"bucket": "berth-blobs", "region": "eu-central-1",
                           "regionEndpoint": "http://minio.minio.svc:9000", "forcePathStyle": True,
                           "rootDirectory": "/registry", "chunkSize": 16777216,
                           "storageClass": "STANDARD_IA", "redirect": False,
                           "accessKey": "AKIAIOSFODNN7EXAMPLE", "secretKey": S3_SECRET}},
        "metadata": {"postgres": {"url": "postgres://berth:secret@db.internal:5432/registry?sslmode=require"}},
    },
    # AWS with IRSA: no keys anywhere, the ServiceAccount carries the role.
    "replicas-s3-irsa": {
        "auth": {"mode": "none"},
        "replicaCount": 2,
        "serviceAccount": {"create": True, "annotations": {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/berth"}},
        "storage": {"s3": {"bucket": "berth-blobs", "region": "eu-west-1", "encrypt": True,
                           "keyId": "arn:aws:kms:eu-west-1:111122223333:key/abcd"}},
        "metadata": {"postgres": {"existingSecret": "berth-metadata"}},
    },
    # One pod: blobs in the bucket, SQLite still on its (small) volume.
    "s3-sqlite": {
        "auth": {"mode": "none"},
        "persistence": {"size": "1Gi"},
        "storage": {"s3": {"bucket": "berth-blobs", "existingSecret": "aws-keys",
                           "existingSecretKeys": {"accessKey": "AWS_ACCESS_KEY_ID",
                                                  "secretKey": "AWS_SECRET_ACCESS_KEY"}}},
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
    postgres = {"postgres": {"url": "postgres://db/registry"}}
    s3 = {"s3": {"bucket": "berth-blobs"}}
    for values, message in [
        ({"auth": {"mode": "none"}, "replicaCount": 2}, "metadata.postgres"),
        ({"auth": {"mode": "none"}, "replicaCount": 2, "metadata": postgres}, "ReadWriteMany"),
        # Each pod's own emptyDir would hold different blobs.
        ({"auth": {"mode": "none"}, "replicaCount": 2, "metadata": postgres,
          "persistence": {"enabled": False}}, "ReadWriteMany"),
        # The bucket is shared, the SQLite file is not.
        ({"auth": {"mode": "none"}, "replicaCount": 2, "storage": s3}, "metadata.postgres"),
        # Each pod would sign tokens with a key of its own, which the others reject.
        ({"auth": {"mode": "token"}, "replicaCount": 2, "storage": s3, "metadata": postgres},
         "auth.token.signingKey"),
        ({"auth": {"mode": "none"}, "storage": {"s3": {"bucket": "b", "accessKey": "AKIA"}}},
         "storage.s3.secretKey"),
    ]:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(values, f)
        r = subprocess.run([str(helmrender), str(CHART), f.name], capture_output=True, text=True)
        assert r.returncode != 0 and message in r.stderr, (values, r.stderr)


def fill_env(container, rendered):
    """The container's environment as Kubernetes fills it in: values, Secrets the chart made,
    the pod's name; a variable from a Secret the chart does not make is left out."""
    secrets = {d["metadata"]["name"]: d["data"] for d in rendered if d["kind"] == "Secret"}
    filled = {}
    for e in container["env"]:
        source = e.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            if ref["name"] in secrets:
                filled[e["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            filled[e["name"]] = "berth-7d9f8c6b5-x2k4q"
        else:
            filled[e["name"]] = e.get("value", "")
    return filled


def config_check(env):
    """`berth config check` with exactly `env`: the effective configuration, secrets masked."""
    result = subprocess.run([berth_binary(), "config", "check"], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], **env}, timeout=60)
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    return result.stdout, tomllib.loads(result.stdout)


def test_chart_runs_replicas_on_s3_and_postgres(helmrender):
    rendered = render(helmrender, VALUE_SETS["replicas-s3"])
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]["spec"]
    container = container_of(deployment)
    env = {e["name"]: e for e in container["env"]}

    # The keys reach the pod from the chart's Secret, and nothing else holds the secret one.
    secret = next(d for d in rendered if d["kind"] == "Secret" and "secretKey" in d.get("data", {}))
    assert base64.b64decode(secret["data"]["secretKey"]).decode() == S3_SECRET
    for name, key in [("BERTH_STORAGE_S3_ACCESS_KEY", "accessKey"),
                      ("BERTH_STORAGE_S3_SECRET_KEY", "secretKey")]:
        assert "value" not in env[name], f"{name} is not in the Deployment"
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": key}
    encoded = base64.b64encode(S3_SECRET.encode()).decode()
    for doc in rendered:
        if doc is not secret:
            text = yaml.safe_dump(doc)
            assert S3_SECRET not in text and encoded not in text, f"{doc['kind']} holds the S3 secret"
    assert not [d for d in rendered if d["kind"] == "ConfigMap" and S3_SECRET in yaml.safe_dump(d)]

    # No claim: the blobs are in the bucket, the index in PostgreSQL, so no ReadWriteMany volume.
    assert not [d for d in rendered if d["kind"] == "PersistentVolumeClaim"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["data"] and "persistentVolumeClaim" not in volumes["data"]

    # Every replica signs tokens with the one key from the Secret.
    key_path = env["BERTH_AUTH_TOKEN_KEY_PATH"]["value"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == os.path.dirname(key_path))
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["secret"]["secretName"] == "berth-token-key"

    # Drains take one replica at a time; the replicas spread over nodes.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = next(d for d in rendered if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()

    # The binary understands every variable, as Kubernetes fills them in, and masks the secret.
    shown, config = config_check(fill_env(container, rendered))
    assert S3_SECRET not in shown
    s3 = config["storage"]["s3"]
    assert config["storage"]["driver"] == "s3" and config["storage"]["redirect"] is False
    assert s3["secret_key"] == "********" and s3["access_key"] == "AKIAIOSFODNN7EXAMPLE"
    assert (s3["bucket"], s3["region"], s3["region_endpoint"]) == (
        "berth-blobs", "eu-central-1", "http://minio.minio.svc:9000")
    assert s3["force_path_style"] is True and s3["root_directory"] == "/registry"
    assert (s3["chunk_size"], s3["storage_class"]) == (16777216, "STANDARD_IA")
    assert config["metadata"]["url"] == "postgres://berth:********@db.internal:5432/registry?sslmode=require"
    assert config["auth"]["token_key_path"] == key_path
    assert config["auth"]["bootstrap_admin_password"] == "********"


def test_chart_uses_the_aws_chain_without_keys(helmrender):
    """IRSA: the pod runs as the annotated ServiceAccount; no key is configured anywhere."""
    rendered = render(helmrender, VALUE_SETS["replicas-s3-irsa"])
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    account = next(d for d in rendered if d["kind"] == "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/berth")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    container = container_of(deployment)
    names = {e["name"] for e in container["env"]}
    assert not names & {"BERTH_STORAGE_S3_ACCESS_KEY", "BERTH_STORAGE_S3_SECRET_KEY"}
    assert not [d for d in rendered if d["kind"] == "Secret"]
    assert not [d for d in rendered if d["kind"] == "PersistentVolumeClaim"]
    env = fill_env(container, rendered)
    env["BERTH_METADATA_URL"] = "postgres://berth:secret@db.internal:5432/registry"
    _, config = config_check(env)
    s3 = config["storage"]["s3"]
    assert config["storage"]["driver"] == "s3" and config["storage"]["redirect"] is True
    assert (s3["access_key"], s3["secret_key"]) == ("", "")
    assert s3["encrypt"] is True and s3["key_id"].startswith("arn:aws:kms:")


def test_chart_keeps_sqlite_on_a_volume_beside_s3(helmrender):
    """One pod with blobs in the bucket still keeps its SQLite file on a claim, and replaces
    itself (Recreate) rather than overlap on it; keys come from an existing Secret's keys."""
    rendered = render(helmrender, VALUE_SETS["s3-sqlite"])
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pvc = next(d for d in rendered if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert not [d for d in rendered if d["kind"] in ("PodDisruptionBudget", "Secret")]
    env = {e["name"]: e for e in container_of(deployment)["env"]}
    assert env["BERTH_STORAGE_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "aws-keys", "key": "AWS_SECRET_ACCESS_KEY"}
    filled = fill_env(container_of(deployment), rendered)
    filled.update(BERTH_STORAGE_S3_ACCESS_KEY="AKIA", BERTH_STORAGE_S3_SECRET_KEY=S3_SECRET)
    shown, config = config_check(filled)
    assert config["storage"]["driver"] == "s3" and config["metadata"]["url"] == ""
    assert config["storage"]["root"] == "/var/lib/registry" and S3_SECRET not in shown


def test_replicas_share_one_token_signing_key(helmrender, tmp_path):
    """A key made as values.yaml says, given to the chart, lands in its Secret; two servers
    reading it (as two replicas do) each accept the tokens the other issues."""
    key = tmp_path / "token.key"
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    values = {**VALUE_SETS["replicas-s3"]}
    values["auth"] = {"mode": "token", "token": {"signingKey": key.read_text()}}
    rendered = render(helmrender, values)
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "token-key")
    secret = next(d for d in rendered if d["kind"] == "Secret"
                  and d["metadata"]["name"] == volume["secret"]["secretName"])
    mounted = tmp_path / "mounted.key"
    mounted.write_bytes(base64.b64decode(secret["data"]["token.key"]))
    mounted.chmod(0o440)  # the Secret volume's defaultMode
    env = {"BERTH_AUTH_MODE": "token", "BERTH_AUTH_TOKEN_KEY_PATH": str(mounted),
           "BERTH_AUTH_BOOTSTRAP_ADMIN_PASSWORD": "a-long-password"}
    servers = [Berth(tmp_path / name, env=env) for name in ("a", "b")]
    try:
        scope = "service=berth-registry&scope=registry:catalog:*"
        auth = base64.b64encode(b"admin:a-long-password").decode()
        request = urllib.request.Request(f"http://{servers[0].host}/auth/token?{scope}",
                                         headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(request) as r:
            token = json.load(r)["token"]
        for server in servers:
            request = urllib.request.Request(f"http://{server.host}/v2/_catalog",
                                             headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request) as r:
                assert r.status == 200
    finally:
        for server in servers:
            server.stop()
    assert not list(tmp_path.glob("*/berth/token.key")), "no replica made a key of its own"


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
    deployment["spec"]["template"]["spec"].update(
        topologySpreadConstraints=patch["spec"]["template"]["spec"]["topologySpreadConstraints"])
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    assert "pdb.yaml" in yaml.safe_load((overlay / "kustomization.yaml").read_text())["resources"]
    pdb = yaml.safe_load((overlay / "pdb.yaml").read_text())
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

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


def merge_patch(base, patch):
    """A strategic merge as kustomize does it for what the overlays patch: maps merge, null
    deletes, lists of named items (containers, env, volumes) merge by name, other lists replace."""
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_patch(base[key], value)
        elif (isinstance(value, list) and isinstance(base.get(key), list)
              and all(isinstance(i, dict) and "name" in i for i in value + base[key])):
            by_name = {i["name"]: i for i in base[key]}
            for item in value:
                if item["name"] in by_name:
                    merge_patch(by_name[item["name"]], item)
                else:
                    base[key].append(item)
        else:
            base[key] = value
    return base


def test_replicas_s3_overlay_patches_what_the_binary_needs():
    """The S3 overlay, merged into the base as kustomize merges it: three replicas on the bucket
    and PostgreSQL, keys from Secrets, no claim, a PodDisruptionBudget and a spread over nodes."""
    overlay = KUBE / "overlays" / "replicas-s3"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    deployment = yaml.safe_load((KUBE / "base" / "deployment.yaml").read_text())
    merge_patch(deployment, yaml.safe_load((overlay / "deployment-replicas.patch.yaml").read_text()))
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]["spec"]
    container = container_of(deployment)
    env = {e["name"]: e for e in container["env"]}
    for name in ("BERTH_METADATA_URL", "BERTH_STORAGE_S3_ACCESS_KEY", "BERTH_STORAGE_S3_SECRET_KEY"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"], name

    # The base's claim is deleted and nothing mounts it: no ReadWriteMany volume is needed.
    deleted = yaml.safe_load((overlay / "pvc-delete.patch.yaml").read_text())
    base_pvc = yaml.safe_load((KUBE / "base" / "pvc.yaml").read_text())
    assert deleted["$patch"] == "delete" and deleted["kind"] == base_pvc["kind"]
    assert deleted["metadata"]["name"] == base_pvc["metadata"]["name"]
    assert "pvc-delete.patch.yaml" in [p["path"] for p in kustomization["patches"]]
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    assert "emptyDir" in data and "persistentVolumeClaim" not in data
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "pdb.yaml" in kustomization["resources"]
    pdb = yaml.safe_load((overlay / "pdb.yaml").read_text())
    assert pdb["kind"] == "PodDisruptionBudget" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()

    filled = {e["name"]: e.get("value", "") for e in container["env"]}
    filled["BERTH_METADATA_URL"] = "postgres://berth:secret@db.internal:5432/registry"
    filled["BERTH_SERVER_INSTANCE"] = "berth-7d9f8c6b5-x2k4q"
    filled["BERTH_STORAGE_S3_ACCESS_KEY"] = "AKIAIOSFODNN7EXAMPLE"
    filled["BERTH_STORAGE_S3_SECRET_KEY"] = S3_SECRET
    shown, config = config_check(filled)
    assert config["storage"]["driver"] == "s3" and config["storage"]["s3"]["bucket"]
    assert config["storage"]["s3"]["secret_key"] == "********" and S3_SECRET not in shown
    assert config["storage"]["root"] == "/var/lib/registry"
    assert "db.internal" in config["metadata"]["url"]

