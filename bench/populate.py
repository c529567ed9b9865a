#!/usr/bin/env python3
"""Create many repositories and many tags fast, for the listing benchmarks (stdlib only).

Content, pushed with raw HTTP over --concurrency keep-alive connections:
  * TAG_REPO gets one small config blob and --tags distinct manifests (an annotation differs)
    tagged t00000, t00001, ...;
  * --repos repositories PREFIX-00000 ... each get the config blob by cross-repository mount
    (POST ?mount=&from=TAG_REPO, 201) and one manifest tagged v1: 2 requests per repository.
    A registry that answers the mount with 202 gets the blob uploaded instead.
Manifests have no layers (`"layers": []`, valid OCI; both registries accept it), so there is
nothing else to upload.

usage: populate.py http://127.0.0.1:5000 --repos 10000 --tags 1000 [--auth-header 'Basic ...']
Prints one JSON line with the counts, seconds and rates of both stages, and errors.
"""
import argparse
import json
import queue
import sys
import threading
import time

from ocipush import Conn, push_blob, loc_path

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"


def manifest(cfg_digest, cfg_size, n):
    return json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                       "config": {"mediaType": MT_CONFIG, "digest": cfg_digest, "size": cfg_size},
                       "layers": [], "annotations": {"bench.n": str(n)}}).encode()


def run_pool(base, auth, jobs, concurrency, fn):
    """Run fn(conn, job) for every job on `concurrency` threads, each with its own
    keep-alive connection. Returns (seconds, requests, errors)."""
    q = queue.Queue()
    for j in jobs:
        q.put(j)
    errors, conns, lock = [], [], threading.Lock()

    def worker():
        c = Conn(base, auth)
        with lock:
            conns.append(c)
        while True:
            try:
                j = q.get_nowait()
            except queue.Empty:
                return
            try:
                err = fn(c, j)
            except Exception as e:  # noqa: BLE001 - report, keep going
                err = "%s: %s" % (type(e).__name__, e)
            if err:
                with lock:
                    errors.append(err)

    t0 = time.perf_counter()
    ths = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return time.perf_counter() - t0, sum(c.requests for c in conns), errors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("--repos", type=int, default=10000)
    ap.add_argument("--repo-prefix", default="catalog/r")
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--tag-repo", default="tags/many")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--auth-header")
    a = ap.parse_args()

    seed = Conn(a.base, a.auth_header)
    errs = []
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    cfg_digest = push_blob(seed, a.tag_repo, cfg, True, errs)
    if not cfg_digest:
        print(json.dumps({"error": "config blob upload failed", "errors": errs}))
        return 1

    def put_tag(c, i):
        st, _, body = c.req("PUT", "/v2/%s/manifests/t%05d" % (a.tag_repo, i),
                            body=manifest(cfg_digest, len(cfg), i),
                            headers={"Content-Type": MT_MANIFEST})
        return None if st == 201 else "PUT tag %d: %s %r" % (i, st, body[:200])

    repo_manifest = manifest(cfg_digest, len(cfg), -1)

    def make_repo(c, i):
        repo = "%s-%05d" % (a.repo_prefix, i)
        st, h, body = c.req("POST", "/v2/%s/blobs/uploads/?mount=%s&from=%s" % (repo, cfg_digest, a.tag_repo),
                            body=b"", headers={"Content-Length": "0"})
        if st == 202:  # mount refused: upload the blob to the session we were given
            loc = loc_path(h["Location"])
            sep = "&" if "?" in loc else "?"
            st, _, body = c.req("PUT", "%s%sdigest=%s" % (loc, sep, cfg_digest), body=cfg,
                                headers={"Content-Type": "application/octet-stream"})
        if st != 201:
            return "mount into %s: %s %r" % (repo, st, body[:200])
        st, _, body = c.req("PUT", "/v2/%s/manifests/v1" % repo, body=repo_manifest,
                            headers={"Content-Type": MT_MANIFEST})
        return None if st == 201 else "PUT manifest %s: %s %r" % (repo, st, body[:200])

    out = {"concurrency": a.concurrency}
    s, n, e = run_pool(a.base, a.auth_header, range(a.tags), a.concurrency, put_tag)
    out.update({"tags": a.tags - len(e), "tags_seconds": round(s, 3),
                "tags_per_s": round((a.tags - len(e)) / s, 1) if s else None, "tags_requests": n})
    errs += e
    s, n, e = run_pool(a.base, a.auth_header, range(a.repos), a.concurrency, make_repo)
    out.update({"repos": a.repos - len(e), "repos_seconds": round(s, 3),
                "repos_per_s": round((a.repos - len(e)) / s, 1) if s else None, "repos_requests": n})
    errs += e
    out.update({"tag_repo": a.tag_repo, "error_count": len(errs), "errors": errs[:5]})
    print(json.dumps(out))
    return 0 if not errs else 1


if __name__ == "__main__":
    sys.exit(main())
