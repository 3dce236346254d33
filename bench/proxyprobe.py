#!/usr/bin/env python3
"""Probes and summaries for bench/proxy.sh (loopback only).

  proxyprobe.py gap PORT [POLL_MS]        until SIGINT/SIGTERM: every POLL_MS (default 2) open a
                                          fresh connection and GET / (2 s client timeout); then
                                          print "probes=N failed=F max_gap_ms=G" where G is the
                                          longest time between two successful (200) answers.
                                          Same logic as the anchors' `probe.py gap`, except that
                                          it runs until stopped (the reload loop decides the end).
  proxyprobe.py switch PORT OUT [POLL_MS] until SIGINT/SIGTERM: one keep-alive HTTP/1.1
                                          connection (re-opened after any error), GET / every
                                          POLL_MS (default 1); writes "t_recv_utc pid" per answer
                                          (t = time.time(), wall clock, the clock windlass
                                          stamps its log with) and "t fail" per failure to OUT.
  proxyprobe.py switchcalc PROBE LOGJSON  per reload: the `reload: pid N healthy after ...;
                                          traffic switched` line of `windlass logs APP --json`
                                          against the first answer from pid N in PROBE; prints
                                          one TSV line per reload: new_pid healthy_ts
                                          first_new_minus_healthy_ms last_old_minus_healthy_ms
  proxyprobe.py rss PID...                VmRSS in KiB of each PID
  proxyprobe.py summary RAW.tsv           markdown tables from the raw TSV
"""
import datetime
import json
import re
import signal
import socket
import statistics
import sys
import time

REQ = b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
STOP = False


def _stop(*_):
    global STOP
    STOP = True


def get(port, timeout=2.0):
    """One HTTP/1.0 GET on a fresh connection (as the anchors' probe.py)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(REQ)
            chunks = []
            while True:
                b = s.recv(4096)
                if not b:
                    break
                chunks.append(b)
    except OSError:
        return None
    data = b"".join(chunks)
    if not data.startswith(b"HTTP/"):
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), body
    except (IndexError, ValueError):
        return None


def gap(port, poll):
    probes = failed = 0
    last_ok = None
    max_gap = 0.0
    while not STOP:
        r = get(port, timeout=2.0)
        now = time.perf_counter()
        probes += 1
        if r and r[0] == 200:
            if last_ok is not None:
                max_gap = max(max_gap, now - last_ok)
            last_ok = now
        else:
            failed += 1
        time.sleep(poll)
    print("probes=%d failed=%d max_gap_ms=%.1f" % (probes, failed, max_gap * 1000), flush=True)


class KeepAlive:
    """A minimal HTTP/1.1 keep-alive client for `GET /` answered with Content-Length."""

    def __init__(self, port):
        self.port = port
        self.s = None
        self.buf = b""

    def get_pid(self):
        if self.s is None:
            self.s = socket.create_connection(("127.0.0.1", self.port), timeout=2.0)
            self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = b""
        self.s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        while b"\r\n\r\n" not in self.buf:
            b = self.s.recv(4096)
            if not b:
                raise OSError("closed")
            self.buf += b
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        n = int(m.group(1)) if m else 0
        while len(rest) < n:
            b = self.s.recv(4096)
            if not b:
                raise OSError("closed")
            rest += b
        body, self.buf = rest[:n], rest[n:]
        if re.search(rb"(?i)^connection:\s*close", head, re.M):
            self.close()
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise OSError("status %d" % status)
        return int(body.split(b"pid=")[1].split()[0])

    def close(self):
        if self.s is not None:
            try:
                self.s.close()
            except OSError:
                pass
        self.s = None


def switch(port, out, poll):
    c = KeepAlive(port)
    with open(out, "w") as f:
        while not STOP:
            try:
                pid = c.get_pid()
                f.write("%.6f %d\n" % (time.time(), pid))
            except (OSError, ValueError, IndexError):
                c.close()
                f.write("%.6f fail\n" % time.time())
            time.sleep(poll)


def parse_ts(s):
    # RFC 3339 UTC with microseconds, e.g. 2026-11-24T10:11:12.123456Z
    return datetime.datetime.strptime(s.rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=datetime.timezone.utc).timestamp()


HEALTHY = re.compile(r"reload: pid (\d+) healthy after .*traffic switched from pid (\d+)")


def switchcalc(probe, logjson):
    answers = []  # (t, pid)
    with open(probe) as f:
        for line in f:
            t, v = line.split()
            if v != "fail":
                answers.append((float(t), int(v)))
    with open(logjson) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            m = HEALTHY.search(rec.get("line", ""))
            if not m:
                continue
            new, old = int(m.group(1)), int(m.group(2))
            th = parse_ts(rec["ts"])
            if not answers or th < answers[0][0]:
                continue  # a reload from before the probe started
            first_new = next((t for t, p in answers if p == new), None)
            last_old = max((t for t, p in answers if p == old), default=None)
            if first_new is None:
                continue  # a reload from outside the probe's window
            print("%d\t%s\t%.3f\t%s" % (new, rec["ts"], (first_new - th) * 1000,
                                         "%.3f" % ((last_old - th) * 1000) if last_old else "NA"))


def rss(pids):
    for pid in pids:
        kb = "NA"
        try:
            with open("/proc/%s/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kb = line.split()[1]
        except OSError:
            pass
        print(kb)


# ------------------------------------------------------------------ summary
def cell(vals, fmt="%.2f", n=True):
    vals = [v for v in vals if v is not None]
    if not vals:
        return ""
    med = statistics.median(vals)
    if len(vals) == 1:
        return (fmt % med) + (" (n=1)" if n else "")
    return "%s [%s–%s]%s" % (fmt % med, fmt % min(vals), fmt % max(vals), ", n=%d" % len(vals) if n else "")


def summary(path):
    data = {}  # (section, scenario, rep, metric) -> value
    notes = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            sec, scen, rep, metric, val = parts
            if sec == "note":
                notes.append("%s: %s" % (metric, val))
                continue
            try:
                data[(sec, scen, rep, metric)] = float(val)
            except ValueError:
                pass

    def series(sec, scen, metric):
        return [v for (s, c, r, m), v in sorted(data.items()) if s == sec and c == scen and m == metric]

    def reps(sec, scen):
        return sorted({r for (s, c, r, m) in data if s == sec and c == scen and r != "0"}, key=int)

    out = []
    # --- 1. throughput
    targets = [t for t in ("direct", "windlass", "nginx_2w", "nginx_1w") if series("proxy", t, "rps")]
    if targets:
        out.append("### 1. Throughput and latency (wrk -t2 -c50 -dDUR --latency, per repetition: direct → windlass → nginx 2w → nginx 1w)\n")
        out.append("| target | req/s | vs direct (per rep) | p50 ms | p99 ms | p99 vs direct | max ms | vs nginx_2w req/s | vs nginx_1w req/s | errors | RSS after load MiB | proxy CPU µs/req | app CPU µs/req |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for t in targets:
            rr, ratio, p99r, vs2, vs1 = [], [], [], [], []
            for r in reps("proxy", t):
                g = lambda tt, m: data.get(("proxy", tt, r, m))
                d, x = g("direct", "rps"), g(t, "rps")
                if t != "direct" and d and x:
                    ratio.append(x / d)
                    p99r.append(g(t, "p99_ms") / g("direct", "p99_ms"))
                if t not in ("nginx_2w",) and g("nginx_2w", "rps") and x:
                    vs2.append(x / g("nginx_2w", "rps"))
                if t not in ("nginx_1w",) and g("nginx_1w", "rps") and x:
                    vs1.append(x / g("nginx_1w", "rps"))
            err = sum(series("proxy", t, "sock_err")) + sum(series("proxy", t, "non2xx"))
            rssv = series("proxy", t, "rss_after_load_kb")
            out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s | %s | %s |" % (
                t, cell(series("proxy", t, "rps"), "%.0f"), cell(ratio, "%.2f×", False),
                cell(series("proxy", t, "p50_ms"), "%.3f", False), cell(series("proxy", t, "p99_ms"), "%.2f", False),
                cell(p99r, "%.2f×", False), cell(series("proxy", t, "max_ms"), "%.1f", False),
                "" if t == "nginx_2w" else cell(vs2, "%.2f×", False),
                "" if t == "nginx_1w" else cell(vs1, "%.2f×", False),
                err, "%.1f" % (rssv[0] / 1024) if rssv else "",
                cell(series("proxy", t, "proxy_cpu_us_per_req"), "%.0f", False) if t != "direct" else "",
                cell(series("proxy", t, "app_cpu_us_per_req"), "%.0f", False)))
        la = series("proxy", "loadavg", "load1")
        if la:
            out.append("\nload average (1 min) before each repetition: %s" % cell(la, "%.2f"))
        # the headline comparisons, per repetition
        w99, n99 = [], []
        for r in reps("proxy", "windlass"):
            a, b, c = data.get(("proxy", "windlass", r, "p99_ms")), data.get(("proxy", "nginx_2w", r, "p99_ms")), data.get(("proxy", "nginx_1w", r, "p99_ms"))
            if a and b:
                w99.append(a / b)
            if a and c:
                n99.append(a / c)
        if w99:
            out.append("windlass p99 / nginx_2w p99 per repetition: %s; / nginx_1w p99: %s" % (cell(w99, "%.2f×"), cell(n99, "%.2f×")))
        out.append("")
    # --- 2. reloads
    scens = [s for s in ("windlass_reload", "pm2_cluster2_reload", "pm2_fork_restart") if series("reload", s, "rps")]
    if scens:
        out.append("### 2. Reloads under load (wrk -t2 -c50 for the whole series + side probe: fresh connection every ~2 ms)\n")
        out.append("| scenario | reloads | failed requests (wrk errors + non-2xx) | per reload | of which connect / read / write / timeout | non-2xx | probe fails | probe gap max ms | p99 ms | max ms | req/s | cmd ms per reload | load avg |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for s in scens:
            g = lambda m: (series("reload", s, m) or [None])[0]
            n = g("reloads") or 0
            failed = (g("sock_err") or 0) + (g("non2xx") or 0)
            cmd = series("reload_cmd", s, "cmd_ms")
            out.append("| %s | %d | %d | %.1f | %d / %d / %d / %d | %d | %d | %.1f | %.2f | %.1f | %.0f | %s | %.2f |" % (
                s, n, failed, failed / n if n else 0, g("err_connect"), g("err_read"), g("err_write"), g("err_timeout"),
                g("non2xx"), g("probe_failed") or 0, g("probe_max_gap_ms") or 0, g("p99_ms"), g("max_ms"), g("rps"),
                cell(cmd, "%.0f"), g("load1") or 0))
        out.append("")
    # --- 3. switch latency
    sw = [s for s in ("idle", "load") if series("switch", s, "first_new_ms")]
    if sw:
        out.append("### 3. Switch latency: first answer from the new pid minus the `healthy ...; traffic switched` log timestamp (ms)\n")
        out.append("| condition | first answer from new pid − healthy line | last answer from old pid − healthy line | probe failures | reloads measured | cmd ms per reload |")
        out.append("|---|---|---|---|---|---|")
        for s in sw:
            out.append("| %s | %s | %s | %d | %d | %s |" % (
                "idle (probe only)" if s == "idle" else "under wrk -t2 -c50", cell(series("switch", s, "first_new_ms"), "%.1f"),
                cell(series("switch", s, "last_old_ms"), "%.1f"), sum(series("switch_sum", s, "probe_fail")),
                len(series("switch", s, "first_new_ms")), cell(series("reload_cmd", "switch_" + s, "cmd_ms"), "%.0f")))
        out.append("")
    if notes:
        out.append("Notes: " + "; ".join(notes))
    print("\n".join(out))


def main():
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    mode = sys.argv[1]
    if mode == "gap":
        gap(int(sys.argv[2]), (float(sys.argv[3]) if len(sys.argv) > 3 else 2.0) / 1000)
    elif mode == "switch":
        switch(int(sys.argv[2]), sys.argv[3], (float(sys.argv[4]) if len(sys.argv) > 4 else 1.0) / 1000)
    elif mode == "switchcalc":
        switchcalc(sys.argv[2], sys.argv[3])
    elif mode == "rss":
        rss(sys.argv[2:])
    elif mode == "summary":
        summary(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
