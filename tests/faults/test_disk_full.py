"""Berth on a full disk (a 64 MiB tmpfs as its data directory), over plain HTTP.

Every write the disk cannot hold is refused with 507 and an OCI error body: never a 500, never a
success that is not true. Nothing partial becomes visible, everything acknowledged before still
pulls byte-exact (also after a SIGKILL and a restart at 100% full), the condition is logged once
per episode and shown in /metrics, and pushes work again once space is freed."""
import errno
import hashlib
import http.client
import json
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
from berthtest import berth_binary  # noqa: E402

REPO = "faults/app"
MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
FULL_DETAIL = "the registry's storage is full; nothing was stored."


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Reply:
    def __init__(self, method, path, status, headers, body):
        self.method, self.path, self.status, self.headers, self.body = (
            method, path, status, headers, body)

    def __repr__(self):
        body = self.body[:400].decode(errors="replace") if self.body else ""
        return f"{self.method} {self.path} -> {self.status} {body!r}"


class Client:
    """Plain HTTP to the current berth process. Remembers every answer, and fails at once on a
    5xx other than 507: a full disk must never be an internal error."""

    def __init__(self, server):
        self.server = server
        self.seen = []

    def __call__(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection(self.server.host, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            reply = Reply(method, path, r.status, {k.lower(): v for k, v in r.getheaders()},
                          r.read())
        except (OSError, http.client.HTTPException) as e:
            raise AssertionError(f"{method} {path} got no HTTP answer: {e!r}") from e
        finally:
            conn.close()
        self.seen.append(reply)
        if method not in ("GET", "HEAD"):
            print(f"{method} {path.split('?')[0][-40:]} ({len(body or b'')} bytes) -> {reply.status}")
        assert reply.status < 500 or reply.status == 507, f"server error at a full disk: {reply}"
        return reply


def push_blob(http, data):
    """Monolithic upload (POST ?digest= with the bytes); returns (digest, reply)."""
    digest = sha256(data)
    return digest, http("POST", f"/v2/{REPO}/blobs/uploads/?digest={digest}", data,
                        {"Content-Type": "application/octet-stream"})


def image_manifest(config, layers, annotations=None):
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(layer), "size": len(layer)} for layer in layers],
    }
    if annotations:
        manifest["annotations"] = annotations
    return json.dumps(manifest).encode()


def push_manifest(http, tag, manifest):
    return http("PUT", f"/v2/{REPO}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST})


def assert_full(reply, when):
    """The refusal for a full disk: 507 with one OCI error, DENIED, saying nothing was stored."""
    assert reply.status == 507, f"{when}: expected 507 (storage full), got {reply}"
    try:
        body = json.loads(reply.body)
    except ValueError:
        raise AssertionError(f"{when}: the 507 body is not JSON: {reply}") from None
    errors = body.get("errors") if isinstance(body, dict) else None
    assert isinstance(errors, list) and len(errors) == 1, f"{when}: 507 body {body}"
    error = errors[0]
    assert error.get("code") == "DENIED", f"{when}: 507 code {error.get('code')!r} in {body}"
    assert isinstance(error.get("message"), str) and error["message"], f"{when}: 507 body {body}"
    assert str(error.get("detail", "")).startswith(FULL_DETAIL), (
        f"{when}: 507 detail {error.get('detail')!r} does not start with {FULL_DETAIL!r}")
    assert reply.headers.get("content-type", "").startswith("application/json"), (
        f"{when}: 507 Content-Type {reply.headers.get('content-type')!r}")


def blob_file(data_dir, digest):
    hexdigest = digest.split(":", 1)[1]
    return data_dir / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


def assert_blob(http, digest, size, when):
    """The blob pulls byte-exact (GET) and HEAD reports its size."""
    r = http("GET", f"/v2/{REPO}/blobs/{digest}")
    assert r.status == 200, f"{when}: pulling acknowledged blob {digest}: {r}"
    got = sha256(r.body)
    assert got == digest and len(r.body) == size, (
        f"{when}: GET blob {digest} ({size} bytes) gave {len(r.body)} bytes hashing to {got}")
    r = http("HEAD", f"/v2/{REPO}/blobs/{digest}")
    assert r.status == 200 and r.headers.get("content-length") == str(size), (
        f"{when}: HEAD blob {digest} ({size} bytes): {r}, Content-Length "
        f"{r.headers.get('content-length')!r}")


def assert_absent(http, data_dir, digest, when):
    """A blob whose upload was refused is not there: 404 on HEAD and GET, no file in the layout."""
    for method in ("HEAD", "GET"):
        r = http(method, f"/v2/{REPO}/blobs/{digest}")
        assert r.status == 404, f"{when}: the refused blob {digest} is visible: {r}"
    path = blob_file(data_dir, digest)
    assert not path.exists(), (
        f"{when}: the refused blob {digest} has a file {path} of {path.stat().st_size} bytes")


def assert_pulls(http, image, when):
    """An image (tag, manifest bytes, {digest: size}) pulls byte-exact."""
    tag, manifest, blobs = image
    r = http("GET", f"/v2/{REPO}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert r.status == 200 and r.body == manifest, (
        f"{when}: pulling {REPO}:{tag} (manifest {sha256(manifest)}, {len(manifest)} bytes): {r}")
    assert r.headers.get("docker-content-digest") == sha256(manifest), (
        f"{when}: {REPO}:{tag} Docker-Content-Digest {r.headers.get('docker-content-digest')!r}, "
        f"expected {sha256(manifest)}")
    for digest, size in blobs.items():
        assert_blob(http, digest, size, when)


def start_session(http, when):
    """POST for an upload session: its Location, or None when refused with the full-disk 507."""
    r = http("POST", f"/v2/{REPO}/blobs/uploads/")
    if r.status == 507:
        assert_full(r, f"{when}: POST (start a session)")
        return None
    assert r.status == 202 and r.headers.get("location"), f"{when}: POST (start a session): {r}"
    return r.headers["location"]


def upload_range(held):
    return f"0-{max(held, 1) - 1}"  # Distribution's way: 0-0 for an empty upload too


def send_rest(http, data_dir, location, data, held, split, when):
    """Continues a session holding data[:held]: PATCH data[held:split], then PUT ?digest= with
    the rest. Each answer must be its step's success or the full-disk 507, and a refused chunk
    must leave the session as it was. Returns whether berth acknowledged the blob (201), after
    checking that an acknowledged blob pulls and a refused one is absent."""
    digest = sha256(data)
    octets = {"Content-Type": "application/octet-stream"}
    chunk = data[held:split]
    r = http("PATCH", location, chunk,
             {**octets, "Content-Range": f"{held}-{held + len(chunk) - 1}"})
    if r.status == 507:
        assert_full(r, f"{when}: PATCH of {len(chunk)} bytes at offset {held}")
        # Appends are all or nothing: the refused chunk left the session as it was.
        status = http("GET", location)
        assert status.status == 204 and status.headers.get("range") == upload_range(held), (
            f"{when}: upload status after the refused PATCH should still say {held} bytes "
            f"(204, Range {upload_range(held)}): {status}, Range {status.headers.get('range')!r}")
    else:
        assert r.status == 202 and r.headers.get("range") == upload_range(split), (
            f"{when}: PATCH of {len(chunk)} bytes at offset {held}: {r}, "
            f"Range {r.headers.get('range')!r}")
        location = r.headers.get("location", location)
        held = split
    sep = "&" if "?" in location else "?"
    r = http("PUT", f"{location}{sep}digest={digest}", data[held:], octets)
    if r.status == 507:
        assert_full(r, f"{when}: final PUT of {len(data) - held} bytes at offset {held}")
        assert_absent(http, data_dir, digest, f"{when}: after the refused final PUT")
        return False
    assert r.status == 201, f"{when}: final PUT of {len(data) - held} bytes at offset {held}: {r}"
    assert_blob(http, digest, len(data), f"{when}: after the acknowledged final PUT")
    return True


def fill(path):
    """Appends zeros to `path` until the filesystem refuses a page (ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (MiB, 4096):
            chunk = bytes(size)
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def upload_leftovers(data_dir, keep):
    """Bytes under berth/uploads other than the sessions named in `keep`: {path: size}."""
    uploads = data_dir / "berth" / "uploads"
    return {str(p.relative_to(uploads)): p.stat().st_size
            for p in uploads.rglob("*") if p.is_file() and p.stat().st_size
            and not any(k in str(p) for k in keep)}


def scrape(http, when):
    """The storage gauges from /metrics: (free, total, full)."""
    r = http("GET", "/metrics")
    assert r.status == 200, f"{when}: GET /metrics: {r}"
    values = {}
    for line in r.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = value
    names = ("berth_storage_free_bytes", "berth_storage_total_bytes", "berth_storage_full")
    missing = [n for n in names if n not in values]
    assert not missing, (f"{when}: /metrics lacks {missing}; its storage lines: "
                         f"{ {k: v for k, v in values.items() if 'storage' in k} }")
    return tuple(float(values[n]) for n in names)


def log_events(server):
    """What berth logged over every process: storage-full lines (error level), room-again
    lines, and other errors (error-level lines, panics, anything that is not a JSON record)."""
    full, room, other = [], [], []
    for file, line in server.log_lines():
        try:
            record = json.loads(line)
        except ValueError:
            other.append((file, line))
            continue
        message = str(record.get("fields", {}).get("message", ""))
        if "storage is full" in message and record.get("level") == "ERROR":
            full.append((file, message))
        elif "storage has room again" in message:
            room.append((file, message))
        elif record.get("level") == "ERROR":
            other.append((file, line))
    return full, room, other


def test_full_disk(tmpfs, berth_on):
    started = time.monotonic()
    data_dir = tmpfs
    filler = data_dir / "filler"
    server = berth_on(data_dir)
    http = Client(server)

    # 1. A small image, acknowledged while there is room.
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer = os.urandom(256 * 1024)
    for blob in (config, layer):
        digest, r = push_blob(http, blob)
        assert r.status == 201, f"pushing {digest} ({len(blob)} bytes) to an empty disk: {r}"
    manifest = image_manifest(config, [layer])
    r = push_manifest(http, "v1", manifest)
    assert r.status == 201, f"pushing {REPO}:v1 to an empty disk: {r}"
    first = ("v1", manifest, {sha256(config): len(config), sha256(layer): len(layer)})
    assert_pulls(http, first, "before the disk fills")
    # An upload session holding its first MiB, continued once the disk is full.
    held = os.urandom(3 * MiB)
    held_at = start_session(http, "while there is room")
    assert held_at, "starting an upload session on an empty disk was refused with 507"
    r = http("PATCH", held_at, held[:MiB],
             {"Content-Type": "application/octet-stream", "Content-Range": f"0-{MiB - 1}"})
    assert r.status == 202, f"PATCH of the first MiB on an empty disk: {r}"
    held_at = r.headers.get("location", held_at)
    held_id = held_at.rstrip("/").rsplit("/", 1)[-1].split("?")[0]

    # 2. Fill the disk with 8 MiB monolithic uploads until one is refused.
    acknowledged = {}
    for attempt in range(1, 17):
        free_before = free_bytes(data_dir)
        blob = os.urandom(8 * MiB)
        refused, r = push_blob(http, blob)
        if r.status != 201:
            break
        acknowledged[refused] = len(blob)
    else:
        pytest.fail("16 uploads of 8 MiB were all acknowledged on a 64 MiB tmpfs")
    when = f"monolithic upload #{attempt} of 8 MiB with {free_before} bytes free"
    assert_full(r, when)
    assert_absent(http, data_dir, refused, when)
    leftovers = upload_leftovers(data_dir, [held_id])
    assert not leftovers, f"{when}: 507 says nothing was stored, but berth/uploads holds {leftovers}"
    assert_pulls(http, first, f"after {when} was refused")
    for digest, size in acknowledged.items():
        assert_blob(http, digest, size, f"after {when} was refused")

    # 3. The disk at 100%: a chunked upload and a manifest push to a new tag are each refused
    # with 507 or really succeed.
    fill(filler)
    assert free_bytes(data_dir) == 0, f"the filler left {free_bytes(data_dir)} bytes free"
    chunked = os.urandom(2 * MiB)
    when = "chunked upload at 100% full"
    location = start_session(http, when)
    chunked_stored = location is not None and send_rest(
        http, data_dir, location, chunked, 0, MiB, when)
    held_stored = send_rest(http, data_dir, held_at, held, MiB, 2 * MiB,
                            "the session opened before, continued at 100% full")
    at_full = image_manifest(config, [layer], {"berth.test": "pushed at 100% full"})
    r = push_manifest(http, "at-full", at_full)
    images = [first]
    if r.status == 201:
        images.append(("at-full", at_full, first[2]))
        assert_pulls(http, images[-1], "after the manifest push at 100% full was acknowledged")
    else:
        assert_full(r, "manifest PUT to a new tag at 100% full")
        for ref in ("at-full", sha256(at_full)):
            got = http("GET", f"/v2/{REPO}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
            assert got.status == 404, f"the refused manifest push is visible as {ref}: {got}"
    # One more refused write, so the episode is surely on when the gauges are read.
    fill(filler)
    digest, r = push_blob(http, os.urandom(MiB))
    assert_full(r, "monolithic upload of 1 MiB at 100% full")
    assert_absent(http, data_dir, digest, "monolithic upload of 1 MiB at 100% full")
    free, total, full = scrape(http, "during the full episode")
    st = os.statvfs(data_dir)
    assert total == st.f_blocks * st.f_frsize, (
        f"berth_storage_total_bytes {total}, the tmpfs has {st.f_blocks * st.f_frsize}")
    assert free < MiB, (
        f"berth_storage_free_bytes {free} at 100% full (statvfs: {free_bytes(data_dir)} bytes)")
    assert full == 1, f"berth_storage_full {full} right after a 507"
    r = http("GET", "/readyz")
    assert r.status == 200, f"a full registry still serves pulls, yet /readyz answers {r}"

    # 4. SIGKILL, then start again on the same data at 100% full: it starts and serves pulls.
    server.kill()
    fill(filler)
    assert free_bytes(data_dir) == 0, f"the filler left {free_bytes(data_dir)} bytes free"
    server.start()
    for image in images:
        assert_pulls(http, image, "after a SIGKILL and a restart at 100% full")
    for digest, size in acknowledged.items():
        assert_blob(http, digest, size, "after a SIGKILL and a restart at 100% full")
    for stored, blob in ((chunked_stored, chunked), (held_stored, held)):
        if stored:
            assert_blob(http, sha256(blob), len(blob), "after a restart at 100% full")
    r = http("GET", "/readyz")
    assert r.status == 200, f"restarted at 100% full, /readyz answers {r}"
    digest, r = push_blob(http, os.urandom(MiB))
    assert_full(r, "monolithic upload of 1 MiB after the restart at 100% full")
    assert_absent(http, data_dir, digest, "the refused upload after the restart")
    free, _, full = scrape(http, "after the restart at 100% full")
    assert free < MiB and full == 1, (
        f"after a refused upload in the restarted process: berth_storage_free_bytes {free}, "
        f"berth_storage_full {full}")

    # 5. Space freed: a new blob and a manifest push succeed, and the episode ends.
    filler_size = filler.stat().st_size
    filler.unlink()
    config2 = json.dumps({"architecture": "arm64", "os": "linux",
                          "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer2 = os.urandom(MiB)
    for blob in (config2, layer2):
        digest, r = push_blob(http, blob)
        assert r.status == 201, f"pushing {digest} ({len(blob)} bytes) once space was freed: {r}"
    after = ("after", image_manifest(config2, [layer2]),
             {sha256(config2): len(config2), sha256(layer2): len(layer2)})
    r = push_manifest(http, after[0], after[1])
    assert r.status == 201, f"pushing {REPO}:after once space was freed: {r}"
    assert_pulls(http, after, "once space was freed")
    if not held_stored:
        # The session refused at 100% full (and carried across the restart) still holds its
        # first MiB and completes.
        status = http("GET", held_at)
        assert status.status == 204 and status.headers.get("range") == upload_range(MiB), (
            f"the session refused at 100% full, after the restart and freeing space, should "
            f"hold {MiB} bytes (204, Range {upload_range(MiB)}): {status}, "
            f"Range {status.headers.get('range')!r}")
        assert send_rest(http, data_dir, held_at, held, MiB, 2 * MiB, "once space was freed"), (
            "the session refused at 100% full was refused again once space was freed")
    for image in images:
        assert_pulls(http, image, "once space was freed")
    free, _, full = scrape(http, "once space was freed")
    assert full == 0, f"berth_storage_full {full} after successful pushes"
    assert free >= MiB and abs(free - free_bytes(data_dir)) < MiB, (
        f"berth_storage_free_bytes {free} once the {filler_size}-byte filler was deleted "
        f"(statvfs now: {free_bytes(data_dir)} bytes free)")

    # 6. The log: the condition once per episode, not once per request; no other error.
    full_lines, room_lines, other = log_events(server)
    refusals = sum(r.status == 507 for r in http.seen)
    assert 1 <= len(full_lines) <= 2, (
        f"{len(full_lines)} 'storage is full' error lines for {refusals} requests refused with "
        f"507 over 2 processes (at most one per process expected): {full_lines}; "
        f"'room again' lines: {room_lines}")
    last = server.logs[-1].name
    assert any(f == last for f, _ in room_lines), (
        f"the restarted process ({last}) never logged 'storage has room again' after the "
        f"pushes that succeeded; storage lines: {full_lines + room_lines}")
    errors = [r for r in http.seen if r.status >= 500 and r.status != 507]
    assert not errors, f"server errors: {errors}"
    # The audit writer's own errors at a full disk are test_pulls_at_full_disk_are_audited's.
    other = [(f, line) for f, line in other if '"target":"berth_api::audit"' not in line]
    assert not other, f"berth logged errors (or non-JSON lines) besides the full disk: {other}"
    elapsed = time.monotonic() - started
    print(f"{len(http.seen)} requests, {refusals} refused with 507, {elapsed:.1f} s")


def test_pulls_at_full_disk_are_audited(tmpfs, berth_on):
    """Pulls keep working at 100% full, and the audit log (which records pulls) must neither
    lose them nor log its failing writes once per batch: the full disk is one episode."""
    data_dir = tmpfs
    filler = data_dir / "filler"
    server = berth_on(data_dir)
    http = Client(server)
    config, layer = b'{"architecture":"amd64","os":"linux"}', os.urandom(64 * 1024)
    for blob in (config, layer):
        digest, r = push_blob(http, blob)
        assert r.status == 201, f"pushing {digest} to an empty disk: {r}"
    image = ("v1", image_manifest(config, [layer]),
             {sha256(config): len(config), sha256(layer): len(layer)})
    # Repeated pulls of one reference by one client are folded into one event a minute, so
    # each pull here is of a tag of its own.
    pulls = 5
    tags = [f"v{i}" for i in range(1, pulls + 1)]
    for tag in tags:
        r = push_manifest(http, tag, image[1])
        assert r.status == 201, f"pushing {REPO}:{tag} to an empty disk: {r}"

    fill(filler)
    assert free_bytes(data_dir) == 0, f"the filler left {free_bytes(data_dir)} bytes free"
    for tag in tags:
        assert_pulls(http, (tag, *image[1:]), "at 100% full")
    time.sleep(1.5)  # longer than the audit writer's retries
    filler.unlink()
    digest, r = push_blob(http, os.urandom(MiB))
    assert r.status == 201, f"pushing 1 MiB once space was freed: {r}"
    time.sleep(0.5)
    server.kill()

    audit = subprocess.run([berth_binary(), "audit", "--json", "--limit", "1000",
                            "--data", str(data_dir)], capture_output=True, text=True, timeout=30)
    assert audit.returncode == 0, f"berth audit failed: {audit.stderr}"
    events = [json.loads(line) for line in audit.stdout.splitlines() if line.strip()]
    pulled = [e for e in events if e.get("action") == "pull"]
    audit_errors = []
    for _, line in server.log_lines():
        if '"level":"ERROR"' in line and '"target":"berth_api::audit"' in line:
            audit_errors.append(json.loads(line).get("fields", {}).get("message"))
    problems = []
    if len(audit_errors) > 1:
        problems.append(f"{len(audit_errors)} audit-writer error lines in one full-disk "
                        f"episode: {audit_errors}")
    if len(pulled) < pulls:
        problems.append(f"{pulls} pulls answered 200 at 100% full, {len(pulled)} pull events in "
                        f"the audit log once space was freed; its events: "
                        f"{[(e.get('action'), e.get('resource')) for e in events]}")
    assert not problems, "; ".join(problems)


def test_refused_blob_leaves_no_bytes(tmpfs, berth_on):
    """A blob whose bytes fit but whose metadata the full disk cannot take is refused with 507
    saying nothing was stored: its bytes must not stay in the layout either, where no row points
    at them and garbage collection (which goes by rows) would never reclaim them."""
    data_dir = tmpfs
    filler = data_dir / "filler"
    http = Client(berth_on(data_dir))
    for pages in (1, 2, 3, 4):
        fill(filler)
        os.truncate(filler, filler.stat().st_size - pages * 4096)
        blob = os.urandom(pages * 4096 - 100)
        digest, r = push_blob(http, blob)
        when = f"a {len(blob)}-byte blob with {pages * 4096} bytes free"
        if r.status == 507:
            break
        assert r.status == 201, f"{when}: {r}"
        assert_blob(http, digest, len(blob), when)
    else:
        pytest.fail("blobs filling the last free pages were all acknowledged: nothing tested")
    assert_full(r, when)
    assert_absent(http, data_dir, digest, when)
