#!/usr/bin/env python3
"""report.md for one bench/run.sh results directory: Berth and Distribution side by side,
the ratio Berth/Distribution per auth variant, memory, CPU, the machine's limits, failures.

usage: report.py bench/results/<run>/      (run.py calls build() itself; this re-renders)
"""
import json
import os
import re
import sys

KINDS = ("berth", "distribution")
NAMES = {"berth": "Berth", "distribution": "Distribution"}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        a = abs(v)
        if a >= 100:
            return "%.0f" % v
        if a >= 10:
            return "%.1f" % v
        return "%.2f" % v if a >= 0.01 or a == 0 else "%.3f" % v
    return str(v)


def ratio(b, d):
    if not isinstance(b, (int, float)) or not isinstance(d, (int, float)) or d == 0:
        return ""
    return "%.2f×" % (b / d)


def phase_val(res, phase, key):
    if not res:
        return None
    ph = res.get("phases", {}).get(phase)
    if not ph:
        return None
    if callable(key):
        try:
            return key(ph)
        except (KeyError, TypeError, ZeroDivisionError):
            return None
    return ph.get(key)


def cpu_per_gib(ph):
    return round(ph["registry_cpu_s"] / ph["bytes"] * (1 << 30), 2)


def each_run(ph):
    """The MB/s of every repetition of a repeated phase (the row shows their median)."""
    runs = ph.get("MBps_runs") or []
    return " / ".join(fmt(v) for v in runs) if len(runs) > 1 else None


# which run.py phase produces which measured phases: only phases that ran are required
GROUP_OF = {"push_skopeo": "big", "upload_monolithic": "big", "upload_patch": "big", "upload_chunked": "big",
            "pull_skopeo": "big", "blob_get_warm": "big", "blob_get_cold": "big", "small_images": "small",
            "populate": "listing", "catalog_list": "listing", "tags_list": "listing"}


def group_of(phase):
    return GROUP_OF.get(phase, "manifest")  # manifest_*, v2_ping_*


# figures whose Berth/Distribution ratio means nothing (≈0 values, counts)
NO_RATIO = {"sync_after_s", "entries"}


def main_rows(run, limits):
    """(title, phase, key, required, limit text). `required` rows must have a number for the
    run to count as working (smoke check)."""
    p = run["params"]
    lim = limits or {}
    size = p["big_size"].replace("G", " GiB").replace("M", " MiB")
    chunks = None
    try:
        n = int(p["big_size"][:-1]) * (1024 if p["big_size"].endswith("G") else 1)
        chunks = -(-n // p["chunk_mib"])
    except ValueError:
        pass
    sha = lim.get("sha256_openssl_1core_MBps")
    disk = lim.get("disk_write_fsync_newfile_MBps")
    loop = lim.get("loopback_tcp_iperf3_1stream_MBps") or lim.get("loopback_tcp_python_1stream_MBps")
    sendf = lim.get("http_get_sendfile_server_MBps")
    ingest = "sha256 1 core %s, fsync'd write %s" % (fmt(sha), fmt(disk)) if sha or disk else ""
    egress = "sendfile server %s, loopback TCP %s" % (fmt(sendf), fmt(loop)) if sendf or loop else ""
    rows = [
        ("**Big image and blobs**", None, None, False, ""),
        ("%s image push, skopeo oci: → docker:// (MB/s ↑)" % size, "push_skopeo", "MBps", True, ingest),
        ("  `sync` right after the push (s; ≈0 = registry fsync'd)", "push_skopeo", "sync_after_s", False, ""),
        ("%s blob upload, curl POST + PUT body (MB/s ↑)" % size, "upload_monolithic", "MBps", True, ingest),
        ("%s blob upload, curl POST + PATCH + PUT (MB/s ↑)" % size, "upload_patch", "MBps", True, ingest),
        ("%s blob upload, curl POST + %s× PATCH (%d MiB chunks) + PUT (MB/s ↑)"
         % (size, chunks or "n", p["chunk_mib"]), "upload_chunked", "MBps", True, ingest),
        ("  each run, POST + PUT upload (MB/s; the row above is their median)", "upload_monolithic", each_run,
         False, ""),
        ("  registry CPU per GiB, POST + PUT upload (s ↓)", "upload_monolithic", cpu_per_gib, False, ""),
        ("  `sync` right after the chunked upload (s)", "upload_chunked", "sync_after_s", False, ""),
        ("%s image pull, skopeo docker:// → oci: (MB/s ↑)" % size, "pull_skopeo", "MBps", True,
         "client writes to disk"),
        ("%s blob GET, curl, page cache warm (MB/s ↑)" % size, "blob_get_warm", "MBps", True, egress),
        ("  each run (MB/s)", "blob_get_warm", each_run, False, ""),
    ]
    if p.get("cold"):
        rows.append(("%s blob GET, curl, after drop_caches (MB/s ↑)" % size, "blob_get_cold", "MBps", True,
                     "O_DIRECT read %s" % fmt(lim.get("disk_read_odirect_MBps"))))
    rows += [
        ("**Small images**", None, None, False, ""),
        ("%d small images (2 × 4 KiB layers), %d conns (images/s ↑)" % (p["op_images"], p["op_concurrency"]),
         "small_images", "images_per_s", True, ""),
        ("  requests/s (HEAD, POST, PATCH, PUT per blob) ↑", "small_images", "requests_per_s", False, ""),
        ("**Manifests under load**", None, None, False, ""),
    ]
    for c in p["conns"]:
        rows += [
            ("manifest GET, wrk, %d conns (req/s ↑)" % c, "manifest_get_wrk_c%d" % c, "rps", True, ""),
            ("  p50 latency (ms ↓)", "manifest_get_wrk_c%d" % c, "lat_p50_ms", True, ""),
            ("  p99 latency (ms ↓)", "manifest_get_wrk_c%d" % c, "lat_p99_ms", True, ""),
            ("manifest HEAD, httpload.py, %d conns (req/s ↑)" % c, "manifest_head_c%d" % c, "rps", True, ""),
            ("  p50 latency (ms ↓)", "manifest_head_c%d" % c, "lat_p50_ms", True, ""),
            ("  p99 latency (ms ↓)", "manifest_head_c%d" % c, "lat_p99_ms", True, ""),
            ("manifest GET, httpload.py, %d conns (req/s ↑; same client as HEAD)" % c,
             "manifest_get_httpload_c%d" % c, "rps", True, ""),
            ("  p99 latency (ms ↓)", "manifest_get_httpload_c%d" % c, "lat_p99_ms", False, ""),
        ]
    c0 = p["conns"][0]
    rows += [
        ("GET /v2/, wrk, %d conns (req/s ↑)" % c0, "v2_ping_wrk_c%d" % c0, "rps", True, ""),
        ("**Listings**", None, None, False, ""),
        ("create %d repos: blob mount + manifest PUT (repos/s ↑)" % p["list_repos"], "populate", "repos_per_s",
         True, ""),
        ("put %d tags into one repo (manifests/s ↑)" % p["list_tags"], "populate", "tags_per_s", True, ""),
        ("catalog, full listing, pages of 1000 (ms per listing ↓)", "catalog_list", "ms_per_listing", True, ""),
        ("  repositories listed", "catalog_list", "entries", False, ""),
        ("tags list of the %d-tag repo (ms per listing ↓)" % p["list_tags"], "tags_list", "ms_per_listing", True,
         ""),
    ]
    return rows


PHASE_ORDER = ["push_skopeo", "upload_monolithic", "upload_patch", "upload_chunked", "pull_skopeo",
               "blob_get_warm", "blob_get_cold", "small_images"]


def phases_seen(results):
    seen = []
    for r in results.values():
        for k in (r or {}).get("phases", {}):
            if k not in seen:
                seen.append(k)
    known = [k for k in PHASE_ORDER if k in seen]
    return known + [k for k in seen if k not in known]


def table(header, rows_out):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows_out]
    return "\n".join(lines)


def build(outdir):
    """Returns (markdown, missing) where missing lists the required figures that are absent."""
    run = load(os.path.join(outdir, "run.json")) or {}
    limits = load(os.path.join(outdir, "limits.json"))
    auths = run.get("auth_variants", ["noauth", "htpasswd"])
    kinds = run.get("registries", list(KINDS))
    results = {(k, a): load(os.path.join(outdir, "%s-%s" % (k, a), "result.json")) for a in auths for k in kinds}
    missing = []
    out = []
    p = run.get("params", {})

    out.append("# Berth vs. Distribution — %s run %s" % (run.get("mode", "?"), run.get("run_id", "?")))
    out.append("")
    if run.get("berth_debug_build"):
        out.append("> **DEBUG BUILD of Berth** (`%s` has debug sections; the release profile strips "
                   "them): these figures only show that the benchmark runs, they say nothing about "
                   "Berth's speed. Use `cargo build --release`." % run.get("berth_bin"))
        out.append("")
    if run.get("mode") == "smoke":
        out.append("> Smoke mode: tiny sizes and %s s load tests — a check that every phase produces a "
                   "number, not a measurement." % fmt(p.get("duration")))
        out.append("")
    out.append("- Berth: `%s` (%s; repository at %s%s)"
               % (run.get("berth_version"), run.get("berth_bin"), run.get("berth_commit"),
                  ", crates/ has uncommitted changes" if run.get("berth_tree_dirty") else ""))
    out.append("- Reference: `%s` (Debian docker-registry), filesystem storage, log level warn, "
               "access log off" % run.get("distribution_version"))
    if limits:
        out.append("- Machine: %s × %s (SHA-NI %s), load average at start %s"
                   % (limits.get("cpus"), limits.get("cpu_model"), "yes" if limits.get("sha_ni") else "no",
                      " ".join(limits.get("loadavg_at_start") or [])))
    out.append("- Load tests: %s s each at %s connections; wrk for GET (2 threads), httpload.py for HEAD "
               "(wrk cannot do HEAD); OCI Accept header on every manifest request"
               % (fmt(p.get("duration")), ", ".join(str(c) for c in p.get("conns", []))))
    out.append("- htpasswd variant: HTTP Basic with a bcrypt (cost 5) htpasswd file, credentials on every "
               "request")
    if "s3" in auths:
        server = {"garage": "Garage (single node, a real distributed S3 store in Rust)"}.get(
            run.get("s3_server"), "moto (Python; objects spooled to the scratch disk; on the big phases "
                                  "it limits both registries)")
        out.append("- s3 variant: no auth; each registry's blobs in a bucket of its own on one %s "
                   "server, redirects off so both registries serve every byte; Berth's metadata in "
                   "PostgreSQL (fsync off), Distribution's in the bucket" % server)
    if run.get("registry_data") == "kept to the end":
        out.append("- Registries run one after the other, each one's data kept until the end of the run "
                   "(deleting it in between slows the next one: bench/README.md, trap 16)")
    elif run.get("registry_data"):
        out.append("- Registries run one after the other, each one's data deleted right after it (the disk "
                   "could not hold all of it), **which slows the next one** (bench/README.md, trap 16)")
    out.append("- Ratio = Berth ÷ Distribution in the same variant; ↑ higher is better, ↓ lower is better. "
               "Total run time %s s." % fmt(run.get("total_s")))
    out.append("")

    header = ["work"]
    for a in auths:
        for k in kinds:
            header.append("%s%s" % (NAMES.get(k, k), "" if a == "noauth" else " (%s)" % a))
        if len(kinds) == 2:
            header.append("ratio" if a == "noauth" else "ratio (%s)" % a)
    header.append("machine limit (MB/s)")

    ran = run.get("phases", [])

    def line(title, phase, key, required=False, lim=""):
        cells = [title]
        if phase is None:
            return cells + [""] * (len(header) - 1)
        required = required and group_of(phase) in ran
        for a in auths:
            vals = []
            for k in kinds:
                v = phase_val(results[(k, a)], phase, key)
                if required and v is None:
                    missing.append("%s-%s: %s.%s" % (k, a, phase, key if isinstance(key, str) else key.__name__))
                vals.append(v)
                cells.append(fmt(v))
            if len(kinds) == 2:
                cells.append("" if key in NO_RATIO else ratio(*vals))
        cells.append(lim)
        return cells

    rows = [line(*r) for r in main_rows(run, limits)] if p else []
    out.append("## Throughput and latency")
    out.append("")
    out.append(table(header, rows))
    out.append("")

    mem_header = header[:-1]

    def idle_row(title, key, required):
        cells = [title]
        for a in auths:
            vals = [((results[(k, a)] or {}).get(key) or {}).get("rss_MiB") for k in kinds]
            for k, v in zip(kinds, vals):
                if required and v is None:
                    missing.append("%s-%s: %s.rss_MiB" % (k, a, key))
            cells += [fmt(v) for v in vals] + ([ratio(*vals)] if len(kinds) == 2 else [])
        return cells

    mem = [idle_row("idle RSS right after start", "idle_start", bool(p))]
    mem += [line("peak during %s" % ph, ph, "registry_peak_rss_MiB")[:-1] for ph in phases_seen(results)]
    mem.append(idle_row("idle RSS at the end (+%s s)" % fmt(p.get("settle")), "idle_end", False))
    out.append("## Memory: registry RSS (MiB ↓)")
    out.append("")
    out.append("Peak = max(VmHWM after resetting it via /proc/PID/clear_refs, VmRSS sampled at 20 Hz).")
    out.append("")
    out.append(table(mem_header, mem))
    out.append("")

    cpu = [line(ph, ph, "registry_cpu_s")[:-1] for ph in phases_seen(results)]
    out.append("## Registry CPU seconds per phase (↓)")
    out.append("")
    out.append(table(["phase"] + mem_header[1:], cpu))
    out.append("")

    if limits:
        out.append("## Machine limits (limits.json)")
        out.append("")
        lrows = [[k, fmt(v) if not isinstance(v, list) else " ".join(v)]
                 for k, v in limits.items() if k != "errors"]
        out.append(table(["limit", "value"], lrows))
        out.append("")
        for k in ("sha256_openssl_1core_MBps", "disk_write_fsync_newfile_MBps", "disk_read_odirect_MBps",
                  "disk_read_pagecache_MBps"):
            if limits.get(k) is None:
                missing.append("limits: " + k)
        if not (limits.get("loopback_tcp_iperf3_1stream_MBps") or limits.get("loopback_tcp_python_1stream_MBps")):
            missing.append("limits: loopback throughput")
    elif p and "limits_s" in run:
        missing.append("limits: limits.json missing")

    notes = []
    ncpu = (limits or {}).get("cpus") or os.cpu_count()
    for (k, a), r in results.items():
        if r is None:
            notes.append("- %s-%s: no result.json" % (k, a))
            continue
        for e in r.get("errors", []):
            notes.append("- %s-%s: %s" % (k, a, e.splitlines()[0][:400]))
        disturbed, client_bound = [], []
        for ph, v in r.get("phases", {}).items():
            if v.get("error"):
                notes.append("- %s-%s %s: **failed**: %s" % (k, a, ph, v["error"].splitlines()[0][:400]))
            other = v.get("other_cpu_s")
            if other is not None and v.get("wall_s") and other > 0.05 * ncpu * v["wall_s"] and other > 0.5:
                disturbed.append("%s (%s CPU-s in %s s)" % (ph, fmt(other), fmt(v["wall_s"])))
            if (ph.startswith("manifest_") or ph.startswith("v2_")) and (v.get("client_cores") or 0) > 0.9:
                client_bound.append("%s (%s cores)" % (ph, fmt(v["client_cores"])))
            if v.get("socket_errors") and any(int(x) for x in re.findall(r"\d+", v["socket_errors"])):
                notes.append("- %s-%s %s: wrk socket errors: %s" % (k, a, ph, v["socket_errors"]))
        if disturbed:
            notes.append("- %s-%s: disturbed by other processes (CPU not used by the registry or the "
                         "benchmark's clients) in: %s" % (k, a, ", ".join(disturbed)))
        if client_bound:
            notes.append("- %s-%s: the load generator used close to a full core, so these may be "
                         "client-bound: %s" % (k, a, ", ".join(client_bound)))
    if limits and limits.get("errors"):
        for k, e in limits["errors"].items():
            notes.append("- limits %s: %s" % (k, e.splitlines()[0][:300]))
    if missing:
        notes.append("- missing figures: " + ", ".join(missing))
    out.append("## Failures and warnings")
    out.append("")
    out.append("\n".join(notes) if notes else "None: every phase produced its figures, no phase was disturbed.")
    out.append("")
    return "\n".join(out), missing


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    text, missing = build(sys.argv[1])
    print(text)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
