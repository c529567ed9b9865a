#!/usr/bin/env python3
"""Keep-alive HTTP/1.1 load generator that can do HEAD (stdlib only).

Why this exists: wrk 4.1 cannot measure HEAD. Its response parser is never told that
the request was a HEAD, so it waits for the Content-Length body that never comes
(`0 requests in 2.00s`, checked on this machine). oha can, but building it takes
~13 minutes on 2 cores. This is a small asyncio client instead: N connections, each
sends one request, reads exactly one response (headers + Content-Length body, no body
for HEAD), and sends the next one, rotating over a list of paths.

usage: httpload.py http://127.0.0.1:5000 --paths FILE --method HEAD --conns 32 --duration 10 \
           [--header 'Accept: ...'] [--header 'Authorization: Basic ...'] [--procs 1]

Prints one JSON line: requests, seconds, rps, status counts, errors, latency percentiles (ms).
All connections are opened before the clock starts; at the deadline no new requests are
sent and the ones in flight are awaited (like oha -w), so nothing counts as an error just
because the time ran out. --procs > 1 forks that many event loops (one per core) sharing
the connections, for when one Python process cannot keep up with the server: compare its
client CPU with the wall time to see whether the generator was the bottleneck.
"""
import argparse
import array
import asyncio
import json
import os
import sys
import time
import urllib.parse


class Shared:
    """Per-process state shared by all connections of one event loop."""

    def __init__(self, requests, method_head, deadline_s):
        self.requests = requests  # pre-built request bytes, rotated over
        self.head = method_head
        self.idx = 0
        self.stop = False
        self.deadline_s = deadline_s
        self.lat = array.array("f")  # latencies in ms
        self.status = {}
        self.errors = {}
        self.bytes = 0
        self.last_done = 0.0

    def next_request(self):
        self.idx = (self.idx + 1) % len(self.requests)
        return self.requests[self.idx]

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Client(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time (no pipelining)."""

    def __init__(self, sh):
        self.sh = sh
        self.transport = None
        self.buf = bytearray()
        self.need = None
        self.t0 = 0.0
        self.in_flight = False
        self.finished = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def send(self):
        if self.sh.stop:
            if not self.finished.done():
                self.finished.set_result(None)
            return
        self.buf.clear()
        self.need = None
        self.in_flight = True
        self.t0 = time.perf_counter()
        self.transport.write(self.sh.next_request())

    def data_received(self, data):
        self.buf += data
        if self.need is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            try:
                self.code = int(head[9:12])
            except ValueError:
                self.sh.error("bad status line")
                self.transport.close()
                return
            body = 0
            if not self.sh.head and self.code not in (204, 304):
                i = head.find(b"\r\ncontent-length:")
                if i >= 0:
                    j = head.find(b"\r\n", i + 2)
                    body = int(head[i + 17:j if j > 0 else len(head)])
                elif b"\r\ntransfer-encoding: chunked" in head:
                    # not needed for registries' manifests; fail loudly rather than guess
                    self.sh.error("chunked response not supported")
                    self.transport.close()
                    return
            self.need = end + 4 + body
            self.close_after = b"\r\nconnection: close" in head
        if len(self.buf) < self.need:
            return
        if len(self.buf) > self.need:
            self.sh.error("extra bytes after response")
        now = time.perf_counter()
        sh = self.sh
        sh.lat.append((now - self.t0) * 1000.0)
        sh.status[self.code] = sh.status.get(self.code, 0) + 1
        sh.bytes += self.need
        sh.last_done = now
        self.in_flight = False
        if self.close_after:
            sh.error("server closed keep-alive connection")
            self.transport.close()
            return
        self.send()

    def connection_lost(self, exc):
        if self.in_flight:
            self.sh.error("connection lost mid-request")
        if not self.finished.done():
            # the loop in run_proc reconnects when the test is still running
            self.finished.set_result("lost")


async def run_proc(host, port, requests, head, conns, duration, offset):
    sh = Shared(requests, head, duration)
    sh.idx = offset
    loop = asyncio.get_running_loop()

    async def connect():
        _, proto = await loop.create_connection(lambda: Client(sh), host, port)
        return proto

    clients = await asyncio.gather(*(connect() for _ in range(conns)))
    t0 = time.perf_counter()
    sh.last_done = t0
    loop.call_later(duration, lambda: setattr(sh, "stop", True))

    async def drive(c):
        while True:
            c.send()
            r = await c.finished
            if r != "lost" or sh.stop:
                break
            try:  # server closed the connection: open a new one and go on
                c = await connect()
            except OSError:
                sh.error("reconnect failed")
                await asyncio.sleep(0.05)
                if sh.stop:
                    break
                continue
        if c.transport:
            c.transport.close()

    try:
        await asyncio.wait_for(asyncio.gather(*(drive(c) for c in clients)), duration + 60)
    except asyncio.TimeoutError:
        sh.error("requests still in flight 60 s after the deadline")
    elapsed = max(sh.last_done, t0 + 1e-9) - t0
    return {"requests": len(sh.lat), "seconds": elapsed, "status": sh.status, "errors": sh.errors,
            "bytes": sh.bytes, "lat": sh.lat.tobytes()}


def child(host, port, requests, head, conns, duration, offset, wfd):
    """Forked worker: runs one event loop and writes its raw result to a pipe."""
    res = asyncio.run(run_proc(host, port, requests, head, conns, duration, offset))
    lat = res.pop("lat")
    meta = json.dumps(res).encode()
    with os.fdopen(wfd, "wb") as f:
        f.write(len(meta).to_bytes(8, "little") + meta + lat)


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return round(sorted_vals[k], 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="http://host:port")
    ap.add_argument("--paths", required=True, help="file with one request path per line")
    ap.add_argument("--method", default="HEAD")
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    ap.add_argument("--procs", type=int, default=1)
    a = ap.parse_args()

    u = urllib.parse.urlsplit(a.base)
    host, port = u.hostname, u.port or 80
    with open(a.paths) as f:
        paths = [l.strip() for l in f if l.strip()]
    if not paths:
        sys.exit("no paths in " + a.paths)
    hdrs = "".join(h.strip() + "\r\n" for h in a.header)
    method = a.method.upper()
    requests = [("%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: berth-bench-httpload\r\n%s\r\n"
                 % (method, p, u.netloc, hdrs)).encode() for p in paths]
    procs = max(1, min(a.procs, a.conns))
    per = [a.conns // procs + (1 if i < a.conns % procs else 0) for i in range(procs)]

    results = []
    if procs == 1:
        r = asyncio.run(run_proc(host, port, requests, method == "HEAD", a.conns, a.duration, 0))
        results.append(r)
    else:
        kids = []
        for i, n in enumerate(per):
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(rfd)
                try:
                    child(host, port, requests, method == "HEAD", n, a.duration,
                          i * len(paths) // procs, wfd)
                finally:
                    os._exit(0)
            os.close(wfd)
            kids.append((pid, rfd))
        for pid, rfd in kids:
            with os.fdopen(rfd, "rb") as f:
                data = f.read()
            os.waitpid(pid, 0)
            if len(data) < 8:  # the child died before reporting (its traceback is on stderr)
                results.append({"requests": 0, "seconds": 0.0, "status": {}, "bytes": 0,
                                "errors": {"worker process failed": 1}, "lat": b""})
                continue
            n = int.from_bytes(data[:8], "little")
            r = json.loads(data[8:8 + n])
            r["lat"] = data[8 + n:]
            results.append(r)

    lat = array.array("f")
    status, errors = {}, {}
    total = nbytes = 0
    secs = 0.0
    for r in results:
        lat.frombytes(r["lat"])
        total += r["requests"]
        nbytes += r["bytes"]
        secs = max(secs, r["seconds"])
        for k, v in r["status"].items():
            status[str(k)] = status.get(str(k), 0) + v
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    s = sorted(lat)
    ok = sum(v for k, v in status.items() if k.startswith("2"))
    out = {"tool": "httpload.py", "method": method, "conns": a.conns, "procs": procs,
           "requests": total, "seconds": round(secs, 3),
           "rps": round(total / secs, 1) if secs > 0 else None,
           "ok_2xx": ok, "status": status, "errors": errors,
           "lat_p50_ms": percentile(s, 50), "lat_p90_ms": percentile(s, 90),
           "lat_p99_ms": percentile(s, 99), "lat_max_ms": round(s[-1], 3) if s else None,
           "bytes": nbytes}
    print(json.dumps(out))
    # non-zero exit when nothing succeeded or anything was not 2xx: the caller reports it
    return 0 if total and ok == total and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
