#!/usr/bin/env python3
"""Berth vs. the reference registry (CNCF Distribution 2.8, Debian's docker-registry), in one run.

usage: bench/run.sh [--smoke|--full] [options]

  --smoke   tiny sizes and 1 s load tests: proves every phase works and yields a number
            (about 2 minutes); exits non-zero when any figure is missing
  --full    the real benchmark (default): 1 GiB images and blobs, 1,000 small images,
            10 s load tests at 32 and 256 connections, 10,000 repositories, 1,000 tags

For each auth variant (no auth, htpasswd) and each registry (Berth, Distribution) it starts
the registry on a free 127.0.0.1 port with a fresh data directory, runs the phases (big,
small, manifest, listing; see phases.py and README.md), and stops it. Results go to
bench/results/<UTC time>-<mode>/: <registry>-<auth>/result.json (+ raw tool logs),
limits.json (machine limits), machine.txt, report.md (printed at the end).

Berth binary: $BERTH_BIN, else target/release/berth, else target/debug/berth (a debug
build is flagged in the report: its figures say nothing about Berth's speed).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import phases  # noqa: E402
from mkoci import parse_size  # noqa: E402  (the sizes mkoci.py takes are the sizes we pass it)
import report  # noqa: E402
from backends import Backends  # noqa: E402
from registries import Registry  # noqa: E402

MiB = 1 << 20
MODES = {
    "full": {
        "big_size": "1G", "chunk_mib": 64,            # 1 GiB image/blob; chunked upload = 16 PATCHes
        "repeat": 3,                                   # runs per upload style and blob GET; median kept
        "op_images": 1000, "op_concurrency": 32,       # small images over 32 connections
        "conns": [32, 256], "duration": 10, "wrk_threads": 2, "httpload_procs": 1,
        "list_repos": 10000, "list_tags": 1000, "list_seconds": 5,
        "settle": 5, "wait_idle": 120,                 # wait up to 2 min for a quiet machine per phase
        "limits_size_mb": 2048, "limits_seconds": 3,
    },
    "smoke": {
        "big_size": "16M", "chunk_mib": 4, "repeat": 1,
        "op_images": 50, "op_concurrency": 32,
        "conns": [32, 256], "duration": 1, "wrk_threads": 2, "httpload_procs": 1,
        "list_repos": 200, "list_tags": 100, "list_seconds": 0.5,
        "settle": 1, "wait_idle": 0,
        "limits_size_mb": 128, "limits_seconds": 1,
    },
}
ALL_PHASES = ["big", "small", "manifest", "listing"]
TOOLS = ["skopeo", "curl", "wrk", "htpasswd", "openssl", "dd", "docker-registry"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def out_of(cmd):
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        return r.stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return "(%s: %s)" % (" ".join(cmd), e)


def find_berth():
    b = os.environ.get("BERTH_BIN")
    if b:
        return os.path.abspath(b)
    for rel in ("target/release/berth", "target/debug/berth"):
        p = os.path.join(REPO, rel)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return os.path.join(REPO, "target/release/berth")


def elf_has_debug_sections(path):
    """True when the ELF binary carries .debug_* sections. Berth's release profile has
    `strip = true` and its dev profile `debug = "line-tables-only"`, so this tells an
    unoptimised dev build from a release build even when the binary was copied elsewhere."""
    import struct
    try:
        with open(path, "rb") as f:
            data = f.read(64)
            if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit ELF only
                return "/debug/" in path
            shoff, = struct.unpack_from("<Q", data, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            # section header: name offset at 0, file offset at 0x18, size at 0x20
            str_off, str_size = struct.unpack_from("<QQ", table, shstrndx * shentsize + 0x18)
            f.seek(str_off)
            names = f.read(str_size)
        for i in range(shnum):
            off, = struct.unpack_from("<I", table, i * shentsize)
            if names[off:names.index(b"\0", off)].startswith(b".debug_"):
                return True
        return False
    except (OSError, struct.error, ValueError):
        return "/debug/" in path


def size_label(n):
    return "%d GiB" % (n >> 30) if n >= 1 << 30 and n % (1 << 30) == 0 else "%d MiB" % (n >> 20)


def prepare_content(p, work, run_id):
    """Content shared by all registries (each registry starts empty, so reuse is fair):
    an OCI layout with one image of one layer (mkoci.py, gzip level 0 so skopeo does not
    recompress)."""
    size = parse_size(p["big_size"])
    layout = os.path.join(work, "big-layout")
    r = subprocess.run([sys.executable, os.path.join(HERE, "mkoci.py"), layout, "--tag", "big",
                        "--layers", p["big_size"], "--seed", "big-" + run_id],
                       stdout=subprocess.PIPE, text=True, check=True)
    top = json.loads(r.stdout)["top"]
    with open(os.path.join(layout, "blobs", "sha256", top["digest"][7:])) as f:
        man = json.load(f)
    c = {"layout": layout, "big_label": size_label(size), "layer_digest": man["layers"][0]["digest"],
         "layer_bytes": man["layers"][0]["size"],
         "image_bytes": man["layers"][0]["size"] + man["config"]["size"] + top["size"]}
    # The curl uploads get fresh random blobs of this size, written right before each one
    # (phases.RegistryBench.fresh_upload): `repeat` runs × 3 styles × 4 registries of shared
    # content would crowd the page cache, and curl would then read its input from disk.
    c.update({"upload_bytes": size, "chunk_bytes": p["chunk_mib"] * MiB, "repeat": p["repeat"],
              "seed": run_id})
    return c


def registry_data_bytes(p):
    """An upper bound on what one registry stores in a run: the big image, every curl upload,
    and room for the small images and listings (~11 GiB in full mode)."""
    return parse_size(p["big_size"]) * (1 + 3 * p["repeat"]) + 1024 * MiB


def machine_description(path, work, berth_bin):
    parts = [("date", ["date", "-u", "+%FT%TZ"]), ("uname -a", ["uname", "-a"]), ("nproc", ["nproc"]),
             ("lscpu", ["lscpu"]), ("free -m", ["free", "-m"]), ("df -h (work dir)", ["df", "-h", work]),
             ("findmnt (work dir)", ["findmnt", "-T", work]), ("lsblk", ["lsblk"]),
             ("loadavg", ["cat", "/proc/loadavg"]),
             ("ulimit -n", ["sh", "-c", "ulimit -n"]),
             ("berth", [berth_bin, "--version"]), ("docker-registry", ["docker-registry", "--version"]),
             ("skopeo", ["skopeo", "--version"]), ("wrk", ["sh", "-c", "wrk -v 2>&1 | head -1"]),
             ("curl", ["sh", "-c", "curl --version | head -1"]), ("openssl", ["openssl", "version"]),
             ("iperf3", ["sh", "-c", "iperf3 --version 2>&1 | head -1"]), ("python", [sys.executable, "-V"]),
             ("git (berth repo)", ["sh", "-c", "cd '%s' && git rev-parse HEAD && git status --short | head -20"
                                   % REPO])]
    with open(path, "w") as f:
        for title, cmd in parts:
            f.write("## %s\n%s\n\n" % (title, out_of(cmd)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--smoke", dest="mode", action="store_const", const="smoke")
    g.add_argument("--full", dest="mode", action="store_const", const="full")
    ap.add_argument("--registries", default="berth,distribution", help="comma list (default both)")
    ap.add_argument("--auth", default="noauth,htpasswd,s3",
                    help="comma list of variants: noauth, htpasswd, s3 (no auth, blobs on a shared S3 "
                         "server, Berth's metadata in PostgreSQL); default all three")
    ap.add_argument("--phases", default=",".join(ALL_PHASES), help="comma list of " + ",".join(ALL_PHASES))
    ap.add_argument("--s3-server", default="moto", choices=["moto", "garage"],
                    help="the s3 variant's S3 server: moto (default) or garage (.tools/bin/garage)")
    ap.add_argument("--duration", type=float, help="seconds per load test (overrides the mode)")
    ap.add_argument("--conns", help="comma list of connection counts (overrides the mode)")
    ap.add_argument("--httpload-procs", type=int, help="HEAD load generator processes (default 1)")
    ap.add_argument("--wait-idle", type=float, help="max seconds to wait for a quiet machine per phase")
    ap.add_argument("--cold", action="store_true",
                    help="also GET the blob after drop_caches (empties the WHOLE machine's page cache)")
    ap.add_argument("--no-limits", action="store_true", help="skip the machine-limit measurements")
    ap.add_argument("--work", help="scratch directory (default: a new one under /tmp, deleted at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory and registry data")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    mode = a.mode or "full"
    p = dict(MODES[mode])
    if a.duration:
        p["duration"] = a.duration
    if a.conns:
        p["conns"] = [int(x) for x in a.conns.split(",")]
    if a.httpload_procs:
        p["httpload_procs"] = a.httpload_procs
    if a.wait_idle is not None:
        p["wait_idle"] = a.wait_idle
    p["cold"] = a.cold
    kinds = [k for k in a.registries.split(",") if k]
    auths = [x for x in a.auth.split(",") if x]
    phase_list = [x for x in a.phases.split(",") if x]
    for x in phase_list:
        if x not in ALL_PHASES:
            log("unknown phase %r (known: %s)" % (x, ", ".join(ALL_PHASES)))
            return 2

    berth_bin = find_berth()
    missing = [t for t in TOOLS if not shutil.which(t)]
    if "berth" in kinds and not os.access(berth_bin, os.X_OK):
        missing.append("berth binary %s (build it: cargo build --release, or set BERTH_BIN)" % berth_bin)
    if missing:
        log("missing: %s\n(Debian: apt-get install -y skopeo curl wrk apache2-utils openssl "
            "docker-registry iperf3)" % ", ".join(missing))
        return 2

    t_start = time.time()
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    outdir = os.path.join(a.out, "%s-%s" % (run_id, mode))
    os.makedirs(outdir)
    work = a.work or tempfile.mkdtemp(prefix="berth-bench-", dir="/tmp")
    os.makedirs(work, exist_ok=True)
    log("== berth bench, mode %s, results in %s, scratch in %s" % (mode, outdir, work))
    log("== berth binary %s" % berth_bin)

    meta = {"mode": mode, "run_id": run_id, "params": p, "berth_bin": berth_bin,
            "berth_version": out_of([berth_bin, "--version"]),
            "berth_debug_build": elf_has_debug_sections(berth_bin),
            "distribution_version": out_of(["docker-registry", "--version"]),
            "berth_commit": out_of(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]),
            "berth_tree_dirty": bool(out_of(["git", "-C", REPO, "status", "--porcelain", "--", "crates"])),
            "registries": kinds, "auth_variants": auths, "phases": phase_list,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    machine_description(os.path.join(outdir, "machine.txt"), work, berth_bin)
    # Deleting a registry's ~11 GiB right before the next one starts slowed that one's phases by
    # up to a quarter (bench/README.md, trap 16), so every registry's data stays until the end of
    # the run when the disk has room for it, and for the image layout, one upload's input file
    # and limits.py's test file.
    need = len(kinds) * len(auths) * registry_data_bytes(p) + 2 * parse_size(p["big_size"]) + \
        p["limits_size_mb"] * MiB
    free = shutil.disk_usage(work).free
    keep_to_end = a.keep or free > need
    meta["registry_data"] = "kept to the end" if keep_to_end else "deleted after each registry"
    if not keep_to_end:
        log("== only %.0f GiB free, %.0f GiB needed to keep every registry's data to the end: deleting "
            "each one's after it (slows the next registry: bench/README.md, trap 16)"
            % (free / (1 << 30), need / (1 << 30)))
    finished = []
    backends = None
    try:
        if "s3" in auths:
            log("== starting the s3 variant's S3 server (%s) and PostgreSQL" % a.s3_server)
            backends = Backends(work, outdir, a.s3_server)
            meta["s3_server"] = a.s3_server
        if p["wait_idle"] > 0:
            log("== waiting for a quiet machine (up to %d s)" % p["wait_idle"])
            meta["waited_for_idle_at_start"] = phases.wait_idle(p["wait_idle"])
        if not a.no_limits:
            log("== machine limits")
            t = time.time()
            r = subprocess.run([sys.executable, os.path.join(HERE, "limits.py"), os.path.join(work, "limits"),
                                os.path.join(outdir, "limits.json"), "--size-mb", str(p["limits_size_mb"]),
                                "--seconds", str(p["limits_seconds"])] + (["--cold"] if a.cold else []),
                               stdout=subprocess.DEVNULL)
            meta["limits_s"] = round(time.time() - t, 1)
            meta["limits_rc"] = r.returncode
        content = None
        if "big" in phase_list:
            log("== generating content (%s image)" % p["big_size"])
            t = time.time()
            content = prepare_content(p, work, run_id)
            meta["content_s"] = round(time.time() - t, 1)

        # Interleave registries within each variant so slow drift of the machine (page cache,
        # a neighbour starting work) hits both rather than one.
        for auth in auths:
            for kind in kinds:
                reg_work = os.path.join(work, "%s-%s" % (kind, auth))
                reg_out = os.path.join(outdir, "%s-%s" % (kind, auth))
                os.makedirs(reg_work)
                os.makedirs(reg_out)
                reg = Registry(kind, auth, reg_work, reg_out, berth_bin, backends)
                res = {"label": reg.label, "kind": kind, "auth": auth, "phases": {}}
                try:
                    log("== %s: starting" % reg.label)
                    reg.start()
                    res = phases.RegistryBench(reg, p, content, reg_out, reg_work).run(phase_list)
                    res["start_s"] = reg.start_s
                    res["pid"], res["port"] = reg.pid, reg.port
                except Exception as e:  # noqa: BLE001 - recorded; the other registries still run
                    res.setdefault("errors", []).append("%s: %s" % (type(e).__name__, e))
                    log("   ERROR: %s" % e)
                finally:
                    reg.stop()
                    res["version"] = reg.version()
                    res["exit_code"] = reg.proc.returncode if reg.proc else None
                    with open(os.path.join(reg_out, "result.json"), "w") as f:
                        json.dump(res, f, indent=1)
                    if keep_to_end:
                        finished.append(reg_work)
                    else:
                        shutil.rmtree(reg_work, ignore_errors=True)
    finally:
        if backends:
            backends.stop()
        if not a.keep:
            for d in finished:
                shutil.rmtree(d, ignore_errors=True)
        meta["total_s"] = round(time.time() - t_start, 1)
        with open(os.path.join(outdir, "run.json"), "w") as f:
            json.dump(meta, f, indent=1)
        if not a.keep and not a.work:
            shutil.rmtree(work, ignore_errors=True)

    text, missing = report.build(outdir)
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write(text)
    print(text)
    log("== wrote %s (%.0f s)" % (os.path.join(outdir, "report.md"), time.time() - t_start))
    if missing:
        log("== MISSING figures (a phase failed; see the Failures section and the raw logs):")
        for m in missing:
            log("   " + m)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
