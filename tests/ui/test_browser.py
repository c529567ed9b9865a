"""The web UI in a real browser: Debian's Chromium driven by playwright-core (tests/ui/e2e.mjs).

This file sets the stage — the real `berth` binary in token mode with users of each role, images
pushed with skopeo — and runs one browser scenario per test. What a scenario did to the registry
(a deleted tag, a refused delete) is checked here again through the registry API, so the UI's
own pages are never the only witness. Screenshots land in tests/ui/screenshots/ (README.md)."""
import base64
import json
import os
import pathlib
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "interop"))
from berthtest import ROOT, Berth, berth_binary, layout_manifest, run  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
SCREENSHOTS = pathlib.Path(os.environ.get("BERTH_UI_SCREENSHOTS", HERE / "screenshots"))
ACCOUNTS = {
    "admin": "admin-password-1",
    "maintainer": "maintainer-password-1",
    "viewer": "viewer-password-1",
}


def cli(data, *args, stdin=None):
    return run(berth_binary(), *args, "--data", data, input=stdin)


def image(tmp, name, tag, layers, platforms=None):
    layout = tmp / name
    args = [sys.executable, ROOT / "bench" / "mkoci.py", layout, "--tag", tag, "--layers", layers,
            "--seed", f"ui-{name}-{tag}"]
    if platforms:
        args += ["--platforms", platforms]
    run(*args)
    return layout


def push(server, layout, tag, reference):
    run("skopeo", "copy", "--all", "--dest-tls-verify=false", "--dest-creds",
        f"admin:{ACCOUNTS['admin']}", f"oci:{layout}:{tag}", f"docker://{server.host}/{reference}")


def registry_get(server, path, who="admin"):
    """GET on the registry API as `who` (Basic); returns (status, parsed JSON or None)."""
    request = urllib.request.Request(f"http://{server.host}{path}", headers={
        "Authorization": "Basic " + base64.b64encode(f"{who}:{ACCOUNTS[who]}".encode()).decode(),
        "Accept": "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
    })
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as error:
        return error.code, None


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A token-mode registry: project `team` (private) with a maintainer and a guest, project
    `public` (public); `team/app` has tags v1 and v2, `team/multi` is a two-platform index."""
    tmp = tmp_path_factory.mktemp("ui")
    data = tmp / "data"
    cli(data, "user", "add", "admin", "--admin", stdin=ACCOUNTS["admin"] + "\n")
    cli(data, "user", "add", "maintainer", stdin=ACCOUNTS["maintainer"] + "\n")
    cli(data, "user", "add", "viewer", stdin=ACCOUNTS["viewer"] + "\n")
    cli(data, "project", "add", "team")
    cli(data, "project", "add", "public", "--public")
    cli(data, "project", "member", "add", "team", "maintainer", "maintainer")
    cli(data, "project", "member", "add", "team", "viewer", "guest")
    server = Berth(data, env={"BERTH_AUTH_MODE": "token"})
    v1 = image(tmp, "app1", "v1", "300K,40K")
    v2 = image(tmp, "app2", "v2", "100K")
    multi = image(tmp, "multi", "latest", "50K", platforms="linux/amd64,linux/arm64")
    hello = image(tmp, "hello", "1.0", "20K")
    push(server, v1, "v1", "team/app:v1")
    push(server, v2, "v2", "team/app:v2")
    push(server, multi, "latest", "team/multi:latest")
    push(server, hello, "1.0", "public/hello:1.0")
    server.digests = {
        "team/app:v1": layout_manifest(v1, "v1")["digest"],
        "team/app:v2": layout_manifest(v2, "v2")["digest"],
        "team/multi:latest": layout_manifest(multi, "latest")["digest"],
    }
    yield server
    server.stop()


@pytest.fixture(scope="module", autouse=True)
def screenshots():
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


def browse(registry, scenario):
    """Runs one scenario of e2e.mjs against `registry`; its output is the failure message."""
    node_modules = HERE / "node_modules"
    if not node_modules.is_dir():
        pytest.fail("tests/ui/node_modules is missing: run scripts/install-test-deps.sh")
    env = dict(os.environ,
               BERTH_URL=f"http://{registry.host}",
               BERTH_ACCOUNTS=json.dumps(ACCOUNTS),
               BERTH_DIGESTS=json.dumps(registry.digests),
               BERTH_UI_SCREENSHOTS=str(SCREENSHOTS),
               BERTH_UI_CATALOGS=str(ROOT / "crates" / "ui" / "i18n"))
    result = subprocess.run(["node", HERE / "e2e.mjs", scenario], capture_output=True, text=True,
                            env=env, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"browser scenario {scenario!r} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def test_guest_sees_no_delete_and_forged_deletes_are_refused(registry):
    browse(registry, "permissions")
    # Every forged request was refused: both tags and the repository are still there.
    status, tags = registry_get(registry, "/v2/team/app/tags/list")
    assert status == 200 and sorted(tags["tags"]) == ["v1", "v2"]
    status, _ = registry_get(registry, f"/v2/team/app/manifests/{registry.digests['team/app:v1']}")
    assert status == 200


def test_sign_in_browse_copy_delete_sign_out(registry):
    browse(registry, "journey")
    status, tags = registry_get(registry, "/v2/team/app/tags/list")
    assert status == 200 and tags["tags"] == ["v1"], tags
    status, _ = registry_get(registry, "/v2/team/app/manifests/v2")
    assert status == 404
    # Deleting a tag leaves the manifest it named reachable by digest.
    status, _ = registry_get(registry, f"/v2/team/app/manifests/{registry.digests['team/app:v2']}")
    assert status == 200


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_main_pages_accessible_with_screenshots(registry, scheme):
    browse(registry, f"pages-{scheme}")
    shots = sorted(p.name for p in SCREENSHOTS.glob(f"*-{scheme}.png"))
    assert len(shots) >= 10, shots


def test_chinese_pages_show_no_english_catalog_strings(registry):
    browse(registry, "chinese")
    assert (SCREENSHOTS / "repositories-zh-CN-light.png").stat().st_size > 0


def test_narrow_screen_and_keyboard(registry):
    browse(registry, "narrow")
