#!/usr/bin/env python3
"""Physical limits of this machine for registry work (adapted from the research limits.sh).

usage: limits.py SCRATCH_DIR OUT_JSON [--size-mb 2048] [--seconds 3] [--cold]

SCRATCH_DIR must be on the file system the registries store blobs on. Measures:
  * SHA-256 on one core: `openssl speed -evp sha256 -bytes 65536` (what a registry that
    hashes at hardware speed, e.g. with SHA-NI, could reach) and Python's hashlib; and
    openssl on all cores (-multi NPROC);
  * disk: write SIZE_MB of random data to a NEW file with `dd conv=fsync` (registry blobs
    are new files, and must be durable), read it back from the page cache, with O_DIRECT
    (disk speed without evicting anybody's cache) and, only with --cold, after drop_caches
    (that empties the page cache of the whole machine, including a neighbour's build);
  * loopback TCP: iperf3 on 127.0.0.1 (a Python socket pair when iperf3 is missing);
  * HTTP GET ceiling: curl fetching the same file from a tiny sendfile() server, page
    cache warm (the most a registry's blob GET can reach here).
Every figure is MB/s = 10^6 bytes/s. A failed measurement is recorded as null plus an
entry in "errors", never guessed.
"""
import argparse
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time


def sh(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=True, **kw).stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl_sha256(seconds, multi=0):
    cmd = ["openssl", "speed"] + (["-multi", str(multi)] if multi else []) + \
          ["-evp", "sha256", "-bytes", "65536", "-seconds", str(seconds)]
    out = sh(cmd)
    # result line: "sha256   1797128.19k"  (1000s of bytes per second)
    m = re.findall(r"^(?:sha256|SHA2-256|evp)\s+([\d.]+)k\s*$", out, re.M | re.I)
    if not m:
        raise RuntimeError("cannot parse openssl speed output: " + out[-300:])
    return round(float(m[-1]) / 1000)


def python_sha256(seconds):
    buf = os.urandom(1 << 20)
    h = hashlib.sha256()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(64):
            h.update(buf)
        n += 64 << 20
    return round(n / (time.perf_counter() - t0) / 1e6)


def dd_rate(args):
    """MB/s from dd's summary line ('... bytes (...) copied, 1.23 s, 870 MB/s')."""
    out = subprocess.run(["dd"] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, LC_ALL="C"), check=True).stderr
    m = re.search(r"^(\d+) bytes .* copied, ([\d.e+-]+) s", out, re.M)
    if not m:
        raise RuntimeError("cannot parse dd output: " + out)
    return round(int(m.group(1)) / float(m.group(2)) / 1e6)


def iperf3(seconds, streams):
    port = free_port()
    srv = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # no probe connection: iperf3 -s -1 would take it for its one test and exit;
        # retry the client until the server listens instead
        for attempt in range(50):
            r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds),
                                "-P", str(streams), "-J"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
            j = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
            if "end" in j and "sum_received" in j["end"]:
                return round(j["end"]["sum_received"]["bits_per_second"] / 8e6)
            if "connect" not in str(j.get("error", "")) or srv.poll() is not None:
                raise RuntimeError("iperf3: %s %s" % (j.get("error"), r.stderr[-300:]))
            time.sleep(0.1)
        raise RuntimeError("iperf3 server did not come up")
    finally:
        srv.kill()
        srv.wait()


def python_loopback(seconds):
    """Fallback: one TCP stream, 1 MiB sends, Python on both ends (a lower bound)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    got = [0]

    def sink():
        c, _ = ls.accept()
        while True:
            b = c.recv(1 << 20)
            if not b:
                break
            got[0] += len(b)
        c.close()

    t = threading.Thread(target=sink)
    t.start()
    s = socket.create_connection(ls.getsockname())
    buf = b"\0" * (1 << 20)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        s.sendall(buf)
    s.close()
    t.join()
    dt = time.perf_counter() - t0
    ls.close()
    return round(got[0] / dt / 1e6)


def http_sendfile_get(path):
    """curl GET of `path` from a minimal server that answers with socket.sendfile()."""
    size = os.path.getsize(path)

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with open(path, "rb") as f:
                self.connection.sendfile(f)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        out = sh(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                  "http://127.0.0.1:%d/f" % srv.server_address[1]])
        n, t = out.split()
        return round(int(n) / float(t) / 1e6)
    finally:
        srv.shutdown()
        srv.server_close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scratch")
    ap.add_argument("out")
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="also read after drop_caches (whole machine!)")
    a = ap.parse_args()
    os.makedirs(a.scratch, exist_ok=True)
    res, errors = {}, {}

    def measure(key, fn, *args):
        print("   limits: %s" % key, file=sys.stderr, flush=True)
        try:
            res[key] = fn(*args)
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            res[key] = None
            errors[key] = "%s: %s" % (type(e).__name__, str(e)[-500:])

    res["loadavg_at_start"] = open("/proc/loadavg").read().split()[:3]
    res["cpus"] = os.cpu_count()
    with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    m = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    res["cpu_model"] = m.group(1).strip() if m else None
    res["sha_ni"] = bool(re.search(r"^flags\s*:.*\bsha_ni\b", cpuinfo, re.M))
    res["test_size_MiB"] = a.size_mb

    measure("sha256_openssl_1core_MBps", openssl_sha256, a.seconds)
    measure("sha256_openssl_allcores_MBps", openssl_sha256, a.seconds, os.cpu_count())
    measure("sha256_python_hashlib_1core_MBps", python_sha256, a.seconds)

    src = "/dev/shm/berth-bench-limits-%d" % os.getpid()
    f = os.path.join(a.scratch, "ddtest.bin")
    try:
        # random data (not zeros: some layers compress or dedupe zeros) staged in RAM
        sh(["dd", "if=/dev/urandom", "of=" + src, "bs=1M", "count=%d" % a.size_mb])
        for i, key in enumerate(("disk_write_fsync_newfile_MBps", "disk_write_fsync_newfile_2nd_MBps")):
            if os.path.exists(f):
                os.remove(f)
            measure(key, dd_rate, ["if=" + src, "of=" + f, "bs=1M", "conv=fsync"])
    finally:
        if os.path.exists(src):
            os.remove(src)
    if os.path.exists(f):
        with open(f, "rb") as fh:  # make sure it is all in the page cache
            while fh.read(8 << 20):
                pass
        measure("disk_read_pagecache_MBps", dd_rate, ["if=" + f, "of=/dev/null", "bs=1M"])
        measure("disk_read_odirect_MBps", dd_rate, ["if=" + f, "of=/dev/null", "bs=4M", "iflag=direct"])
        if a.cold:
            def cold():
                os.sync()
                with open("/proc/sys/vm/drop_caches", "w") as dc:
                    dc.write("3")
                return dd_rate(["if=" + f, "of=/dev/null", "bs=1M"])
            measure("disk_read_cold_MBps", cold)
        measure("http_get_sendfile_server_MBps", http_sendfile_get, f)
        os.remove(f)
    if shutil.which("iperf3"):
        measure("loopback_tcp_iperf3_1stream_MBps", iperf3, a.seconds, 1)
        measure("loopback_tcp_iperf3_2streams_MBps", iperf3, a.seconds, 2)
    else:
        measure("loopback_tcp_python_1stream_MBps", python_loopback, a.seconds)
    res["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    res["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res["errors"] = errors
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(json.dumps(res, indent=1))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
