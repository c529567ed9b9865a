#!/usr/bin/env python3
"""Protocol-level concurrent pusher of many small OCI images (stdlib only).

(From the shared research harness, unchanged in behaviour; run.py calls it for the
"small images" phase and populate.py reuses its Conn class.)

Each image = 1 config blob + L random layers of S bytes + an OCI manifest, pushed
the way most real clients do it (per blob: HEAD -> 404, POST /blobs/uploads/,
PATCH <location> with the bytes, PUT <location>?digest=...; then PUT manifest).
--monolithic uses POST + a single PUT with the body instead of PATCH+PUT.
Runs T worker threads, each with its own keep-alive connection.

usage: ocipush.py http://127.0.0.1:5000 --repo-prefix bench/op-RUN --images 1000 \
          --concurrency 32 --layers 2 --layer-size 4096 [--user U --password P]
Prints one JSON line: images, requests, seconds, images_per_s, requests_per_s, errors.
"""
import argparse
import base64
import hashlib
import http.client
import json
import os
import queue
import random
import sys
import threading
import time
import urllib.parse

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Conn:
    def __init__(self, base, auth):
        u = urllib.parse.urlsplit(base)
        self.https = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port or (443 if self.https else 80)
        self.auth = auth
        self.c = None
        self.requests = 0

    def _connect(self):
        if self.https:
            import ssl
            ctx = ssl._create_unverified_context()
            self.c = http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=60)
        else:
            self.c = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def req(self, method, path, body=None, headers=None):
        h = dict(headers or {})
        if self.auth:
            h["Authorization"] = self.auth
        for attempt in (0, 1):
            if self.c is None:
                self._connect()
            try:
                self.c.request(method, path, body=body, headers=h)
                r = self.c.getresponse()
                data = r.read()
                self.requests += 1
                return r.status, r.headers, data
            except (http.client.HTTPException, ConnectionError, OSError):
                self.c.close()
                self.c = None
                if attempt:
                    raise


def loc_path(location, base_path=""):
    u = urllib.parse.urlsplit(location)
    p = u.path if u.path.startswith("/") else base_path + "/" + u.path
    return p + ("?" + u.query if u.query else "")


def push_blob(conn, repo, data, monolithic, errors):
    dig = "sha256:" + hashlib.sha256(data).hexdigest()
    st, _, _ = conn.req("HEAD", f"/v2/{repo}/blobs/{dig}")
    if st == 200:
        return dig
    st, h, body = conn.req("POST", f"/v2/{repo}/blobs/uploads/", body=b"",
                           headers={"Content-Length": "0"})
    if st != 202:
        errors.append(f"POST upload {repo}: {st} {body[:200]!r}")
        return None
    loc = loc_path(h["Location"])
    if not monolithic:
        st, h, body = conn.req("PATCH", loc, body=data, headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
        if st != 202:
            errors.append(f"PATCH {repo}: {st} {body[:200]!r}")
            return None
        loc = loc_path(h["Location"])
        sep = "&" if "?" in loc else "?"
        st, h, body = conn.req("PUT", f"{loc}{sep}digest={dig}", body=b"",
                               headers={"Content-Length": "0"})
    else:
        sep = "&" if "?" in loc else "?"
        st, h, body = conn.req("PUT", f"{loc}{sep}digest={dig}", body=data, headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
    if st != 201:
        errors.append(f"PUT blob {repo}: {st} {body[:200]!r}")
        return None
    return dig


def push_image(conn, repo, tag, rng, nlayers, size, monolithic, errors):
    layers = []
    for _ in range(nlayers):
        data = rng.randbytes(size)
        d = push_blob(conn, repo, data, monolithic, errors)
        if d is None:
            return False
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size})
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]},
                      "config": {"Labels": {"n": str(rng.random())}}}).encode()
    cd = push_blob(conn, repo, cfg, monolithic, errors)
    if cd is None:
        return False
    man = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                 "digest": cd, "size": len(cfg)},
                      "layers": layers}).encode()
    st, _, body = conn.req("PUT", f"/v2/{repo}/manifests/{tag}", body=man,
                           headers={"Content-Type": MT_MANIFEST})
    if st != 201:
        errors.append(f"PUT manifest {repo}:{tag}: {st} {body[:200]!r}")
        return False
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base", help="registry base URL, e.g. http://127.0.0.1:5000")
    ap.add_argument("--repo-prefix", default="bench/op")
    ap.add_argument("--repos", type=int, default=0,
                    help="spread images over this many repos (0 = one repo per image)")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--layer-size", type=int, default=4096)
    ap.add_argument("--monolithic", action="store_true")
    ap.add_argument("--seed", default=str(time.time_ns()))
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--auth-header", help="full Authorization header value (e.g. 'Bearer ...')")
    ap.add_argument("--paths-out", help="write the manifest paths pushed here (for wrk)")
    a = ap.parse_args()
    auth = a.auth_header
    if a.user:
        auth = "Basic " + base64.b64encode(f"{a.user}:{a.password}".encode()).decode()

    q = queue.Queue()
    for i in range(a.images):
        repo = f"{a.repo_prefix}-{i % a.repos if a.repos else i}"
        q.put((i, repo, f"t{i}"))
    errors, done, conns = [], [], []
    lock = threading.Lock()

    def worker():
        conn = Conn(a.base, auth)
        with lock:
            conns.append(conn)
        while True:
            try:
                i, repo, tag = q.get_nowait()
            except queue.Empty:
                return
            rng = random.Random(f"{a.seed}|{i}")
            try:
                ok = push_image(conn, repo, tag, rng, a.layers, a.layer_size, a.monolithic, errors)
            except Exception as e:  # noqa
                errors.append(f"{repo}: {type(e).__name__}: {e}")
                ok = False
            if ok:
                with lock:
                    done.append(f"/v2/{repo}/manifests/{tag}")

    t0 = time.perf_counter()
    ths = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    dt = time.perf_counter() - t0
    nreq = sum(c.requests for c in conns)
    if a.paths_out:
        with open(a.paths_out, "w") as f:
            f.write("\n".join(done) + "\n")
    out = {"images": len(done), "failed": a.images - len(done), "requests": nreq,
           "seconds": round(dt, 3), "images_per_s": round(len(done) / dt, 1),
           "requests_per_s": round(nreq / dt, 1), "concurrency": a.concurrency,
           "layers": a.layers, "layer_size": a.layer_size,
           "mode": "monolithic" if a.monolithic else "post-patch-put",
           "errors": errors[:5], "error_count": len(errors)}
    print(json.dumps(out))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
