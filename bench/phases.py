"""The benchmark phases, run the same way against every registry.

Each phase runs inside `Measure`, which records for the registry process we started:
wall time, CPU seconds (utime+stime of all its threads, /proc/PID/stat), peak RSS (VmHWM
after resetting it through /proc/PID/clear_refs = 5, and a 20 Hz VmRSS sampler in case the
reset is refused), plus the CPU of our clients (children rusage + this process) and the
CPU of everybody else on the machine (other tenants: non-zero means the phase was disturbed).
A phase that raises is recorded with an "error" and the run goes on; the report then shows
the hole and run.py exits non-zero.
"""
import hashlib
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

import http.client

HERE = os.path.dirname(os.path.abspath(__file__))
CLK = os.sysconf("SC_CLK_TCK")
OCI_ACCEPT = ("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
              "application/vnd.docker.distribution.manifest.v2+json, "
              "application/vnd.docker.distribution.manifest.list.v2+json")
# containers/image (skopeo) remembers where it has seen blobs and then skips uploads or tries
# cross-repository mounts: delete its cache before every skopeo copy.
SKOPEO_CACHES = ["/var/lib/containers/cache/blob-info-cache-v1.boltdb",
                 os.path.expanduser("~/.local/share/containers/cache/blob-info-cache-v1.boltdb")]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(cmd, check=True, timeout=None):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError("command failed (%d): %s\n%s" % (r.returncode, " ".join(cmd), r.stdout[-2000:]))
    return r


# ------------------------------------------------------------------------- /proc helpers
def proc_status_kb(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def proc_cpu_s(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CLK  # utime + stime, all threads
    except (FileNotFoundError, ProcessLookupError):
        return None


def reset_hwm(pid):
    """Reset VmHWM to the current RSS so it reports this phase's peak only."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def own_cpu_s():
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = resource.getrusage(resource.RUSAGE_SELF)
    return c.ru_utime + c.ru_stime + s.ru_utime + s.ru_stime


def machine_cpu():
    """(busy_s, total_s) over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy / CLK, (busy + idle + iowait) / CLK


def disk_busy_ms():
    """Milliseconds the machine's block devices have spent doing I/O (io_ticks, summed)."""
    total = 0
    for dev in os.listdir("/sys/block"):
        if dev.startswith(("loop", "ram", "zram", "dm-")):
            continue
        try:
            with open("/sys/block/%s/stat" % dev) as f:
                total += int(f.read().split()[9])
        except (OSError, IndexError, ValueError):
            pass
    return total


def wait_idle(max_wait, threshold=0.10, window=2.0):
    """Wait (up to max_wait s) until the machine is < threshold busy over `window` s, both its
    CPUs and its disks: a neighbour's build on a 2-core machine distorts every figure, and so
    does the disk still discarding the previous registry's deleted data (this VM's ext4 is
    mounted with `discard`), which halved the next big upload in one run. Returns
    (waited_s, busy), busy being the larger of the two fractions."""
    t0 = time.time()
    while True:
        b0, a0 = machine_cpu()
        d0 = disk_busy_ms()
        time.sleep(window)
        b1, a1 = machine_cpu()
        d1 = disk_busy_ms()
        cpu = (b1 - b0) / max(a1 - a0, 1e-9)
        disk = (d1 - d0) / 1000.0 / window
        frac = max(cpu, disk)
        if frac < threshold or time.time() - t0 > max_wait:
            return round(time.time() - t0, 1), round(frac, 3)
        log("   machine %.0f%% busy (CPU %.0f%%, disk %.0f%%), waiting for idle..."
            % (frac * 100, cpu * 100, disk * 100))


class Measure:
    """Context manager around one phase; stores its figures in bench.results['phases'][name]."""

    def __init__(self, bench, name):
        self.b, self.name, self.extra = bench, name, {}

    def __enter__(self):
        if self.b.p["wait_idle"] > 0:
            self.extra["waited_for_idle_s"], self.extra["busy_before"] = wait_idle(self.b.p["wait_idle"])
        pid = self.b.reg.pid
        self.peak_kb = 0
        self.stop = threading.Event()
        self.hwm_reset = reset_hwm(pid)
        self.cpu0 = proc_cpu_s(pid)

        def sampler():
            while not self.stop.is_set():
                v = proc_status_kb(pid, "VmRSS")
                if v and v > self.peak_kb:
                    self.peak_kb = v
                self.stop.wait(0.05)
        self.th = threading.Thread(target=sampler, daemon=True)
        self.th.start()
        self.own0 = own_cpu_s()
        self.store0 = self.store_cpu()
        self.m0 = machine_cpu()
        self.t0 = time.perf_counter()
        log("-- %s: %s" % (self.b.reg.label, self.name))
        return self

    def store_cpu(self):
        """CPU seconds of the s3 variant's S3 server and database so far (0 otherwise)."""
        backends = self.b.reg.backends if self.b.reg.auth == "s3" else None
        if not backends:
            return 0.0
        return sum(proc_cpu_s(pid) or 0.0 for pid in backends.pids())

    def __exit__(self, et, ev, tb):
        wall = time.perf_counter() - self.t0
        m1 = machine_cpu()
        self.stop.set()
        self.th.join()
        pid = self.b.reg.pid
        client = own_cpu_s() - self.own0
        cpu1 = proc_cpu_s(pid)
        reg_cpu = (cpu1 - self.cpu0) if (cpu1 is not None and self.cpu0 is not None) else None
        hwm = proc_status_kb(pid, "VmHWM") if self.hwm_reset else 0
        res = {"wall_s": round(wall, 3),
               "registry_cpu_s": round(reg_cpu, 2) if reg_cpu is not None else None,
               "registry_cores": round(reg_cpu / wall, 2) if reg_cpu is not None and wall > 0 else None,
               "client_cpu_s": round(client, 2),
               "client_cores": round(client / wall, 2) if wall > 0 else None,
               "registry_peak_rss_MiB": round(max(hwm or 0, self.peak_kb) / 1024, 1),
               "registry_rss_end_MiB": round((proc_status_kb(pid, "VmRSS") or 0) / 1024, 1)}
        store = self.store_cpu() - self.store0
        if self.b.reg.auth == "s3":
            res["store_cpu_s"] = round(store, 2)
        if reg_cpu is not None:
            # machine busy time not spent by the registry, its stores or us: other tenants
            res["other_cpu_s"] = round(m1[0] - self.m0[0] - client - reg_cpu - store, 2)
        if self.b.reg.proc.poll() is not None:
            res["error"] = "registry exited (code %s) during the phase" % self.b.reg.proc.returncode
        if et is not None:
            res["error"] = "%s: %s" % (et.__name__, str(ev)[-2000:])
            log("   ERROR in %s: %s" % (self.name, res["error"].splitlines()[0][:300]))
        res.update(self.extra)
        self.b.results["phases"][self.name] = res
        return True  # go on with the next phase


def write_random(paths, total, chunk, seed):
    """Fresh random bytes (new per run, so no cache anywhere knows them) split over `paths`
    of `chunk` bytes each (the last one takes the rest); returns the sha256 digest of all."""
    rng = random.Random(seed)
    h = hashlib.sha256()
    left = total
    for p in paths:
        n = min(chunk, left)
        with open(p, "wb") as f:
            while n:
                b = rng.randbytes(min(n, 4 << 20))
                h.update(b)
                f.write(b)
                n -= len(b)
                left -= len(b)
    return "sha256:" + h.hexdigest()


def mbps(nbytes, seconds):
    return round(nbytes / seconds / 1e6, 1) if seconds > 0 else None


def parse_wrk_latency(v):
    """'1.23ms' / '850.00us' / '1.10s' -> milliseconds."""
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v or "")
    if not m:
        return None
    return round(float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[m.group(2)], 3)


class RegistryBench:
    """All phases against one running registry (`reg`), with mode parameters `p`, the
    prepared content `content` (see run.py), writing raw logs to `outdir`."""

    def __init__(self, reg, p, content, outdir, work):
        self.reg, self.p, self.c, self.outdir, self.work = reg, p, content, outdir, work
        self.results = {"label": reg.label, "kind": reg.kind, "auth": reg.auth, "phases": {}}
        self.manifest_paths = []

    # helpers ----------------------------------------------------------------------------
    def save_log(self, name, text):
        with open(os.path.join(self.outdir, name), "a") as f:
            f.write(text)

    def curl_auth(self):
        return ["-u", "%s:%s" % (self.reg.user, self.reg.password)] if self.reg.user else []

    def skopeo_creds(self, side):
        args = ["--%s-tls-verify=false" % side]
        if self.reg.user:
            args += ["--%s-creds" % side, "%s:%s" % (self.reg.user, self.reg.password)]
        return args

    @staticmethod
    def clear_skopeo_cache():
        for p in SKOPEO_CACHES:
            try:
                os.remove(p)
            except FileNotFoundError:
                pass

    def idle(self, key):
        pid = self.reg.pid
        self.results[key] = {"rss_MiB": round((proc_status_kb(pid, "VmRSS") or 0) / 1024, 1),
                             "threads": proc_status_kb(pid, "Threads"),
                             "cpu_s_total": proc_cpu_s(pid)}

    def curl(self, method, url, upload=None, headers=()):
        """One curl request; returns (status, {lower-case header: value})."""
        cmd = ["curl", "-sS", "-X", method, "-D", "-", "-o", "/dev/null",
               "-H", "Expect:"] + self.curl_auth()  # Expect: no 100-continue round trip
        for h in headers:
            cmd += ["-H", h]
        if upload:
            cmd += ["-T", upload, "-H", "Content-Type: application/octet-stream"]
        elif method in ("POST", "PUT", "PATCH"):
            cmd += ["-H", "Content-Length: 0"]
        out = sh(cmd + [url]).stdout
        status, hdrs = None, {}
        for line in out.splitlines():
            if line.startswith("HTTP/"):
                status, hdrs = int(line.split()[1]), {}
            elif ":" in line:
                k, v = line.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        return status, hdrs

    def location(self, hdrs):
        return urllib.parse.urljoin(self.reg.base + "/", hdrs["location"])

    def curl_upload(self, repo, files, digest, mode):
        """Blob upload with curl, no client-side hashing:
        monolithic: POST, PUT ?digest= with the body;
        patch:      POST, one PATCH streaming the whole file, PUT ?digest= (what skopeo does);
        chunked:    POST, one PATCH per file with Content-Range, PUT ?digest=."""
        st, h = self.curl("POST", "%s/v2/%s/blobs/uploads/" % (self.reg.base, repo))
        if st != 202:
            raise RuntimeError("POST upload -> %s" % st)
        loc = self.location(h)
        if mode == "monolithic":
            sep = "&" if "?" in loc else "?"
            st, h = self.curl("PUT", loc + sep + "digest=" + digest, upload=files[0])
        else:
            offset = 0
            for f in files:
                size = os.path.getsize(f)
                hdr = ["Content-Range: %d-%d" % (offset, offset + size - 1)] if mode == "chunked" else []
                st, h = self.curl("PATCH", loc, upload=f, headers=hdr)
                if st != 202:
                    raise RuntimeError("PATCH at offset %d -> %s" % (offset, st))
                offset += size
                loc = self.location(h)
            sep = "&" if "?" in loc else "?"
            st, h = self.curl("PUT", loc + sep + "digest=" + digest)
        if st != 201:
            raise RuntimeError("PUT ?digest -> %s" % st)

    def fresh_upload(self, mode, rep):
        """Writes a new random blob for one curl upload (chunked: one file per chunk) and
        returns {files, digest, bytes, requests}; the caller deletes `dir` afterwards."""
        c = self.c
        size, chunk = c["upload_bytes"], c["chunk_bytes"]
        d = os.path.join(self.work, "upload-content")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        nfiles = -(-size // chunk) if mode == "chunked" else 1
        files = [os.path.join(d, "part%04d" % i) for i in range(nfiles)]
        digest = write_random(files, size, chunk if mode == "chunked" else size,
                              "%s-%s-%d-%s" % (self.reg.label, mode, rep, c["seed"]))
        return {"dir": d, "files": files, "digest": digest, "bytes": size,
                "requests": {"monolithic": 2, "patch": 3}.get(mode, nfiles + 2)}

    def keep_median(self, name, n):
        """Folds the runs `name#0` … `name#n-1` into `name`: the figures of the median run by
        MB/s, each run's MB/s in `MBps_runs`, the highest peak RSS of any, the first error."""
        phases = self.results["phases"]
        runs = [phases.pop("%s#%d" % (name, i)) for i in range(n) if "%s#%d" % (name, i) in phases]
        if not runs:
            return
        good = sorted((r for r in runs if r.get("MBps") and "error" not in r), key=lambda r: r["MBps"])
        kept = dict(good[(len(good) - 1) // 2] if good else runs[0])
        kept["MBps_runs"] = [r.get("MBps") for r in runs]
        kept["registry_peak_rss_MiB"] = max(r.get("registry_peak_rss_MiB") or 0 for r in runs)
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            kept["error"] = errors[0]
        phases[name] = kept

    # phases -----------------------------------------------------------------------------
    def phase_big(self):
        c, reg = self.c, self.reg
        size_label = c["big_label"]
        ref = "docker://%s/bench/big:v1" % reg.host
        os.sync()  # start with nothing dirty, so the `sync` after the push is the registry's
        self.clear_skopeo_cache()
        with Measure(self, "push_skopeo") as m:
            t = time.perf_counter()
            r = sh(["skopeo", "copy", "--retry-times", "0"] + self.skopeo_creds("dest") +
                   ["oci:%s:big" % c["layout"], ref], check=False, timeout=3600)
            dt = time.perf_counter() - t
            self.save_log("push_skopeo.log", r.stdout)
            if r.returncode:
                raise RuntimeError(r.stdout[-1500:])
            m.extra.update({"bytes": c["image_bytes"], "MBps": mbps(c["image_bytes"], dt), "size": size_label})
            t = time.perf_counter()
            os.sync()  # how much the registry left unwritten (it should have fsync'd)
            m.extra["sync_after_s"] = round(time.perf_counter() - t, 3)

        # Each upload style runs `repeat` times, round-robin, every time with a fresh blob (a
        # registry may skip work for a blob it already has); the median run is reported.
        repeat = c["repeat"]
        for rep in range(repeat):
            for mode in ("monolithic", "patch", "chunked"):
                up = self.fresh_upload(mode, rep)
                os.sync()
                with Measure(self, "upload_%s#%d" % (mode, rep)) as m:
                    t = time.perf_counter()
                    self.curl_upload("bench/upload-%s-%d" % (mode, rep), up["files"], up["digest"], mode)
                    dt = time.perf_counter() - t
                    m.extra.update({"bytes": up["bytes"], "MBps": mbps(up["bytes"], dt),
                                    "requests": up["requests"], "size": size_label})
                    t = time.perf_counter()
                    os.sync()
                    m.extra["sync_after_s"] = round(time.perf_counter() - t, 3)
                shutil.rmtree(up["dir"], ignore_errors=True)
        for mode in ("monolithic", "patch", "chunked"):
            self.keep_median("upload_" + mode, repeat)

        pulled = os.path.join(self.work, "pulled-" + reg.label)
        shutil.rmtree(pulled, ignore_errors=True)
        self.clear_skopeo_cache()
        with Measure(self, "pull_skopeo") as m:
            t = time.perf_counter()
            r = sh(["skopeo", "copy", "--retry-times", "0"] + self.skopeo_creds("src") +
                   [ref, "oci:%s:big" % pulled], check=False, timeout=3600)
            dt = time.perf_counter() - t
            self.save_log("pull_skopeo.log", r.stdout)
            if r.returncode:
                raise RuntimeError(r.stdout[-1500:])
            m.extra.update({"bytes": c["image_bytes"], "MBps": mbps(c["image_bytes"], dt), "size": size_label})
        shutil.rmtree(pulled, ignore_errors=True)

        url = "%s/v2/bench/big/blobs/%s" % (reg.base, c["layer_digest"])
        curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"] + \
            self.curl_auth()
        modes = ["warm"] + (["cold"] if self.p.get("cold") else [])
        for mode in modes:
            if mode == "cold":
                os.sync()
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3")
            else:
                sh(curl + [url])  # make sure the blob is in the page cache
            for rep in range(repeat):
                with Measure(self, "blob_get_%s#%d" % (mode, rep)) as m:
                    code, n, tt = sh(curl + [url]).stdout.split()
                    if code != "200" or int(n) != c["layer_bytes"]:
                        raise RuntimeError("GET blob -> %s, %s bytes" % (code, n))
                    m.extra.update({"bytes": int(n), "MBps": mbps(int(n), float(tt)), "size": size_label})
            self.keep_median("blob_get_" + mode, repeat)

    def phase_small(self):
        p, reg = self.p, self.reg
        paths = os.path.join(self.outdir, "manifest-paths.txt")
        cmd = [sys.executable, os.path.join(HERE, "ocipush.py"), reg.base, "--repo-prefix", "bench/small",
               "--images", str(p["op_images"]), "--concurrency", str(p["op_concurrency"]),
               "--layers", "2", "--layer-size", "4096", "--paths-out", paths]
        if reg.auth_header:
            cmd += ["--auth-header", reg.auth_header]
        with Measure(self, "small_images") as m:
            r = sh(cmd, check=False, timeout=3600)
            self.save_log("small_images.log", r.stdout)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            m.extra.update(res)
            if res["failed"] or res["error_count"]:
                raise RuntimeError("%d images failed: %s" % (res["failed"], res["errors"][:2]))
        with open(paths) as f:
            self.manifest_paths = [l.strip() for l in f if l.strip()]

    def wrk(self, name, paths_file, conns):
        cmd = ["wrk", "-t", str(min(self.p["wrk_threads"], conns)), "-c", str(conns),
               "-d", "%ds" % self.p["duration"], "--timeout", "10s", "--latency",
               "-s", os.path.join(HERE, "manifest.lua"), self.reg.base, "--", "GET", paths_file,
               self.reg.auth_header or ""]
        with Measure(self, name) as m:
            r = sh(cmd, check=False, timeout=self.p["duration"] + 120)
            self.save_log(name + ".log", r.stdout)
            out = r.stdout
            rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
            total = re.search(r"(\d+) requests in", out)
            non2 = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
            sock = re.search(r"Socket errors:(.*)", out)
            lat = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M))
            m.extra.update({"tool": "wrk", "method": "GET", "conns": conns,
                            "rps": float(rps.group(1)) if rps else None,
                            "requests": int(total.group(1)) if total else None,
                            "non_2xx": int(non2.group(1)) if non2 else 0,
                            "socket_errors": sock.group(1).strip() if sock else None,
                            "lat_p50_ms": parse_wrk_latency(lat.get("50")),
                            "lat_p90_ms": parse_wrk_latency(lat.get("90")),
                            "lat_p99_ms": parse_wrk_latency(lat.get("99"))})
            if r.returncode or not rps or not total or int(total.group(1)) == 0:
                raise RuntimeError("wrk failed: " + out[-800:])
            if m.extra["non_2xx"]:
                raise RuntimeError("%d non-2xx responses of %s" % (m.extra["non_2xx"], total.group(1)))

    def httpload(self, name, method, paths_file, conns):
        cmd = [sys.executable, os.path.join(HERE, "httpload.py"), self.reg.base, "--paths", paths_file,
               "--method", method, "--conns", str(conns), "--duration", str(self.p["duration"]),
               "--procs", str(self.p["httpload_procs"]), "--header", "Accept: " + OCI_ACCEPT]
        if self.reg.auth_header:
            cmd += ["--header", "Authorization: " + self.reg.auth_header]
        with Measure(self, name) as m:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               timeout=self.p["duration"] + 120)
            self.save_log(name + ".log", r.stdout + r.stderr)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            m.extra.update(res)
            if not res["requests"]:
                raise RuntimeError("no requests completed: %s %s" % (res["errors"], r.stderr[-500:]))
            if res["ok_2xx"] != res["requests"] or res["errors"]:
                raise RuntimeError("%d of %d not 2xx (%s), errors %s"
                                   % (res["requests"] - res["ok_2xx"], res["requests"], res["status"], res["errors"]))

    def phase_manifest(self):
        if not self.manifest_paths:
            raise RuntimeError("no manifests to read: the small_images phase did not run or failed")
        paths = os.path.join(self.outdir, "manifest-paths.txt")
        for conns in self.p["conns"]:
            self.wrk("manifest_get_wrk_c%d" % conns, paths, conns)
            self.httpload("manifest_head_c%d" % conns, "HEAD", paths, conns)
            self.httpload("manifest_get_httpload_c%d" % conns, "GET", paths, conns)
        ping = os.path.join(self.outdir, "ping-paths.txt")
        with open(ping, "w") as f:
            f.write("/v2/\n")
        self.wrk("v2_ping_wrk_c%d" % self.p["conns"][0], ping, self.p["conns"][0])

    def full_listing(self, conn, first):
        """GET `first` and every page its Link headers lead to; returns (entries, pages)."""
        path, entries, pages = first, [], 0
        hdrs = {"Authorization": self.reg.auth_header} if self.reg.auth_header else {}
        while path:
            conn.request("GET", path, headers=hdrs)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError("GET %s -> %s %r" % (path, r.status, body[:200]))
            j = json.loads(body)
            entries += j.get("repositories") or j.get("tags") or []
            pages += 1
            link = r.getheader("Link")
            path = None
            if link:
                m = re.search(r"<([^>]+)>", link)
                u = urllib.parse.urlsplit(m.group(1))
                path = u.path + ("?" + u.query if u.query else "")
        return entries, pages

    def timed_listings(self, name, first, expect_min):
        """Repeat a full listing for list_seconds (at least once); ms per full listing."""
        conn = http.client.HTTPConnection("127.0.0.1", self.reg.port, timeout=300)
        with Measure(self, name) as m:
            times, n, pages = [], 0, 0
            t_end = time.perf_counter() + self.p["list_seconds"]
            while not times or (time.perf_counter() < t_end and len(times) < 1000):
                t = time.perf_counter()
                entries, pages = self.full_listing(conn, first)
                times.append(time.perf_counter() - t)
                n = len(entries)
            m.extra.update({"entries": n, "pages": pages, "listings": len(times),
                            "ms_per_listing": round(1000 * sum(times) / len(times), 2),
                            "ms_min": round(1000 * min(times), 2), "request": first})
            if n < expect_min:
                raise RuntimeError("listing returned %d entries, expected at least %d" % (n, expect_min))
        conn.close()

    def phase_listing(self):
        p, reg = self.p, self.reg
        cmd = [sys.executable, os.path.join(HERE, "populate.py"), reg.base, "--repos", str(p["list_repos"]),
               "--tags", str(p["list_tags"]), "--concurrency", str(p["op_concurrency"])]
        if reg.auth_header:
            cmd += ["--auth-header", reg.auth_header]
        with Measure(self, "populate") as m:
            r = sh(cmd, check=False, timeout=7200)
            self.save_log("populate.log", r.stdout)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            m.extra.update(res)
            if r.returncode:
                raise RuntimeError("populate failed: %s" % res.get("errors"))
        # Distribution serves at most n=1000 per catalog page (PAGINATION_NUMBER_INVALID above),
        # so both are asked for pages of 1000 and the Link chain is followed to the end.
        self.timed_listings("catalog_list", "/v2/_catalog?n=1000", p["list_repos"])
        self.timed_listings("tags_list", "/v2/tags/many/tags/list", p["list_tags"])

    def run(self, phases):
        t0 = time.time()
        time.sleep(1)  # let start-up work settle before reading the idle RSS
        self.idle("idle_start")
        for ph in phases:
            try:
                getattr(self, "phase_" + ph)()
            except Exception as e:  # noqa: BLE001 - a phase outside Measure failed (e.g. setup)
                self.results.setdefault("errors", []).append("%s: %s: %s" % (ph, type(e).__name__, e))
                log("   ERROR in %s: %s" % (ph, e))
        time.sleep(self.p["settle"])
        self.idle("idle_end")
        self.results["total_s"] = round(time.time() - t0, 1)
        return self.results
