#!/usr/bin/env python3
"""Helper for bench/supervisor.sh (loopback only; no third-party modules).

The probe logic (wait / crash / cold) is copied from /work/shared/anchors/probe.py so that the
numbers are comparable with the anchors.

  bench.py wait  TIMEOUT_S PORT...        wait until every http://127.0.0.1:PORT/ answers 200
  bench.py crash PORT N [GAP_S]           N times: read the app's pid from its 200 body, SIGKILL
                                          it, time until the port answers 200 from a *different*
                                          pid; sleep GAP_S between kills. One line per kill: ms
  bench.py cold  N -- CMD...              N times: spawn CMD (env PORT set), time spawn -> first
                                          200, SIGKILL the child. One line per start: ms
  bench.py mem   PID                      "rss_kib pss_kib" (VmRSS from status, Pss from smaps_rollup)
  bench.py ticks PID...                   sum of utime+stime of the PIDs, in clock ticks
  bench.py children PID                   pids whose parent is PID, with their comm
  bench.py writer LINES RESULT_FILE       pre-builds LINES numbered lines of 100 bytes, writes them
                                          to stdout as fast as it can, writes the seconds taken to
                                          RESULT_FILE
  bench.py verify FILE LINES KIND         count the writer's lines in a log file (KIND: windlass =
                                          `TS INSTANCE out LINE` records; raw = the lines as is) and
                                          check they are 0..LINES-1 in order. Prints
                                          "found=N in_order=yes|no"
  bench.py summary TSV                    print the markdown tables
"""
import os
import signal
import statistics
import subprocess
import sys
import time
import socket

REQ = b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
LINE_LEN = 100  # bytes per writer line, newline included


def get(port, timeout=1.0):
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
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None
    return status, body


def body_pid(body):
    b = body.decode(errors="replace")
    if "pid=" not in b:
        return None
    return int(b.split("pid=")[1].split()[0])


def pid_of(port):
    r = get(port)
    if not r or r[0] != 200:
        return None
    return body_pid(r[1])


def wait_200(port, timeout_s, not_pid=None, poll_s=0.0005):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = get(port, timeout=0.5)
        if r and r[0] == 200:
            if not_pid is None:
                return True
            p = body_pid(r[1])
            if p is not None and p != not_pid:
                return True
        time.sleep(poll_s)
    return False


def mem(pid):
    rss = pss = "NA"
    try:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = line.split()[1]
        with open("/proc/%s/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = line.split()[1]
    except OSError:
        pass
    return rss, pss


def ticks(pid):
    with open("/proc/%s/stat" % pid) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return int(fields[11]) + int(fields[12])


def children(ppid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        ppid_of = int(s[s.rindex(")") + 2:].split()[1])
        if ppid_of == int(ppid):
            out.append((int(d), comm))
    return out


def writer(n, result):
    block = 10000
    blocks = []
    pad = "x" * (LINE_LEN - 11)  # 9 digits + space + pad + newline = LINE_LEN
    for start in range(0, n, block):
        blocks.append("".join("%09d %s\n" % (i, pad) for i in range(start, min(n, start + block))).encode())
    out = sys.stdout.buffer
    t0 = time.perf_counter()
    for b in blocks:
        out.write(b)
    out.flush()
    dt = time.perf_counter() - t0
    with open(result, "w") as f:
        f.write("%.6f\n" % dt)


def verify(path, n, kind):
    found = 0
    expect = 0
    in_order = True
    with open(path, "rb") as f:
        for line in f:
            if kind == "windlass":
                parts = line.split(b" ", 3)
                if len(parts) < 4 or parts[2] != b"out":
                    continue
                text = parts[3]
            else:
                text = line
            head = text[:9]
            if len(text) < 10 or not head.isdigit() or text[9:10] != b" ":
                continue
            if int(head) != expect:
                in_order = False
            expect = int(head) + 1
            found += 1
    print("found=%d in_order=%s" % (found, "yes" if in_order and found == n else "no"))


# ---------------------------------------------------------------- summary
def load(tsv):
    rows = {}
    with open(tsv) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) != 4:
                continue
            section, scen, metric, val = p
            try:
                v = float(val)
            except ValueError:
                continue
            rows.setdefault((section, scen, metric), []).append(v)
    return rows


def med(vs):
    return statistics.median(vs) if vs else None


def cell(vs, fmt="%.1f"):
    if not vs:
        return "n/a"
    if len(vs) == 1:
        return (fmt + " (n=1)") % vs[0]
    return (fmt + " [" + fmt + "–" + fmt + "], n=%d") % (med(vs), min(vs), max(vs), len(vs))


def ratio(a, b, fmt="%.2f×"):
    if a is None or b is None or b == 0:
        return "n/a"
    return fmt % (a / b)


def summary(tsv):
    R = load(tsv)
    g = lambda s, sc, m: R.get((s, sc, m), [])
    sups = ["windlass", "pm2", "supervisord"]
    kib = lambda vs: [v / 1024 for v in vs]

    print("### 1. Supervisor memory, idle, SETTLE seconds (10 s in a full run) after every app answered (MiB)\n")
    print("RSS = VmRSS; PSS = proportional set size (shared pages split between the processes that map them).")
    print("For windlass, `main` is the supervisor, `guard` its guardian process (`windlass-guard`), `sum` both.\n")
    print("| supervisor | apps | RSS | PSS | RSS vs windlass sum |")
    print("|---|---|---|---|---|")
    for apps in ("1", "50"):
        scen = lambda s: "%s_%sapp" % (s, apps)
        wl_sum = med(kib(g("mem", scen("windlass"), "rss_sum")))
        for s in sups:
            if s == "windlass":
                for part in ("main", "guard", "sum"):
                    rss = kib(g("mem", scen(s), "rss_" + part))
                    pss = kib(g("mem", scen(s), "pss_" + part))
                    if not rss:
                        continue
                    print("| windlass (%s) | %s | %s | %s | %s |" % (part, apps, cell(rss), cell(pss),
                                                                      "1×" if part == "sum" else ""))
            else:
                rss = kib(g("mem", scen(s), "rss"))
                pss = kib(g("mem", scen(s), "pss"))
                if not rss:
                    continue
                print("| %s | %s | %s | %s | %s |" % (s, apps, cell(rss), cell(pss), ratio(med(rss), wl_sum)))
    app_rss = kib(g("mem", "windlass_1app", "app_rss"))
    if app_rss:
        print("\n(The app itself, for scale: %s MiB under windlass.)" % cell(app_rss))

    print("\n### 2. Crash recovery: kill -9 → first 200 from a new pid (ms)\n")
    floor = g("crash", "cold_start", "ms")
    fm = med(floor)
    print("| scenario | recovery ms | median minus floor | ratio to floor |")
    print("|---|---|---|---|")
    print("| bare cold start (floor, no supervisor) | %s | | |" % cell(floor))
    for s in sups:
        vs = g("crash", s, "ms")
        if not vs:
            continue
        m = med(vs)
        print("| %s | %s | %+.0f ms | %s |" % (s, cell(vs), m - fm if fm else float("nan"), ratio(m, fm)))
    to = {s: g("crash", s, "timeouts") for s in sups}
    if any(sum(v) for v in to.values() if v):
        print("\nTimeouts: " + ", ".join("%s %d" % (s, sum(v)) for s, v in to.items() if v))

    print("\n### 3. Idle supervisor CPU (1 app, no requests)\n")
    print("| supervisor | CPU ms over the window | % of one core | window s |")
    print("|---|---|---|---|")
    for s in sups:
        vs = g("cpu", s, "cpu_ms")
        win = g("cpu", s, "window_s")
        if not vs:
            continue
        w = med(win)
        print("| %s | %s | %.3f %% | %.0f |" % (s, cell(vs, "%.0f"), med(vs) / (w * 1000) * 100, w))
    for part in ("main", "guard"):
        vs = g("cpu", "windlass", "cpu_ms_" + part)
        if vs:
            print("| windlass (%s only) | %s | | |" % (part, cell(vs, "%.0f")))

    lines_n = g("log", "devnull", "lines")
    print("\n### 4. Log capture: an app writes %d lines of 100 bytes (%d MB) to stdout as fast as it can\n"
          % (lines_n[0] if lines_n else 0, lines_n[0] / 10000 if lines_n else 0))
    print("Time is measured inside the writer, from its first write to its last flush. MB/s = 10^6 bytes/s.")
    print("\n| destination | seconds | MB/s | vs `> file` | lines in the log | in order |")
    print("|---|---|---|---|---|---|")
    base = med(g("log", "file", "secs"))
    for sc, label in (("devnull", "`> /dev/null`"), ("file", "`> file`"), ("windlass", "windlass"),
                      ("supervisord", "supervisord"), ("pm2", "pm2")):
        vs = g("log", sc, "secs")
        if not vs:
            continue
        mb = g("log", sc, "mb")
        mbs = [m / v for m, v in zip(mb, vs) if v > 0] if mb else []
        found = g("log", sc, "found")
        order = g("log", sc, "in_order")
        lines = g("log", sc, "lines")
        fcell = ("%d/%d" % (min(found), max(lines))) if found and lines else ""
        ocell = ("yes" if order and min(order) == 1 else ("no" if order else ""))
        print("| %s | %s | %s | %s | %s | %s |" % (label, cell(vs, "%.4f"), cell(mbs, "%.0f") if mbs else "",
                                                 ratio(med(vs), base) if sc != "file" else "1×", fcell, ocell))


def main():
    mode = sys.argv[1]
    if mode == "wait":
        t = float(sys.argv[2])
        deadline = time.monotonic() + t
        for p in sys.argv[3:]:
            if not wait_200(int(p), max(0.1, deadline - time.monotonic()), poll_s=0.01):
                sys.exit("port %s never answered" % p)
    elif mode == "crash":
        port, n = int(sys.argv[2]), int(sys.argv[3])
        gap = float(sys.argv[4]) if len(sys.argv) > 4 else 1.5
        if not wait_200(port, 20):
            sys.exit("port %d never answered" % port)
        for _ in range(n):
            pid = pid_of(port)
            if pid is None:
                sys.exit("could not read pid from port %d" % port)
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            ok = wait_200(port, 30, not_pid=pid)
            dt = (time.perf_counter() - t0) * 1000
            print("%.1f" % dt if ok else "timeout", flush=True)
            time.sleep(gap)
    elif mode == "cold":
        n = int(sys.argv[2])
        cmd = sys.argv[sys.argv.index("--") + 1:]
        port = int(os.environ["PORT"])
        for _ in range(n):
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ok = wait_200(port, 30)
            dt = (time.perf_counter() - t0) * 1000
            p.kill()
            p.wait()
            print("%.1f" % dt if ok else "timeout", flush=True)
            time.sleep(0.3)
    elif mode == "mem":
        print("%s %s" % mem(sys.argv[2]))
    elif mode == "ticks":
        print(sum(ticks(p) for p in sys.argv[2:]))
    elif mode == "children":
        for pid, comm in children(sys.argv[2]):
            print(pid, comm)
    elif mode == "writer":
        writer(int(sys.argv[2]), sys.argv[3])
    elif mode == "verify":
        verify(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif mode == "summary":
        summary(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
