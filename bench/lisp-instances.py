#!/usr/bin/env python3
"""Time to all instances healthy for a Common Lisp app from source (issue 17).

For each windlass binary given as label=path, for each instance count N, first with a cold
fasl cache (none), then warm (the cache the cold run left): copy examples/hello-lisp into a
fresh directory, `windlass up -d --wait 600s`, poll `windlass status --json` every 0.1 s until
all N instances are `running` (behind the proxy: health check passed), note the time since
`up` started and the sum of restarts, then `windlass down`. It is a benchmark, not a test.

    python3 bench/lisp-instances.py before=/tmp/windlass-before after=target/release/windlass
    N="1 2 4" REPS=1 W=/tmp/windlass-lisp-bench python3 bench/lisp-instances.py ...

Only 127.0.0.1; writes only under $W; stops each supervisor it started with `windlass down`.
Prints one TSV line per run and a markdown table at the end.
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W = os.environ.get("W", "/tmp/windlass-lisp-bench")
NS = [int(n) for n in os.environ.get("N", "1 2 4").split()]
REPS = int(os.environ.get("REPS", "1"))
DEADLINE = 900.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(exe, project):
    o = subprocess.run([exe, "status", "--json"], cwd=project, capture_output=True, text=True)
    if o.returncode != 0:
        return None
    try:
        return json.loads(o.stdout)
    except ValueError:
        return None


def one_run(exe, project, n):
    t0 = time.monotonic()
    up = subprocess.Popen([exe, "up", "-d", "--wait", "600s"], cwd=project,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if time.monotonic() - t0 > DEADLINE:
                return None, None
            s = status(exe, project)
            if s:
                inst = s["apps"][0]["instances"]
                if len(inst) == n and all(i["state"] == "running" for i in inst):
                    took = time.monotonic() - t0
                    return took, sum(i["restarts"] for i in inst)
            time.sleep(0.1)
    finally:
        up.wait()
        subprocess.run([exe, "down"], cwd=project, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


def main():
    exes = [a.split("=", 1) for a in sys.argv[1:]]
    if not exes or any(len(e) != 2 for e in exes):
        sys.exit(__doc__)
    os.makedirs(W, exist_ok=True)
    rows = []
    for rep in range(REPS):
        for n in NS:
            for label, exe in exes:
                exe = os.path.abspath(exe)
                project = os.path.join(W, f"{label}-{n}-{rep}")
                shutil.rmtree(project, ignore_errors=True)
                shutil.copytree(os.path.join(ROOT, "examples/hello-lisp"), project)
                with open(os.path.join(project, "windlass.toml"), "w") as f:
                    f.write(
                        "[app.hello]\n"
                        'lisp = { system = "hello-lisp", entry = "hello-lisp:main" }\n'
                        f"port = {free_port()}\ninstances = {n}\n"
                        'health = { path = "/health", start_timeout = "600s" }\n'
                        '[admin]\nlisten = "127.0.0.1:0"\n')
                for cache in ("cold", "warm"):
                    took, restarts = one_run(exe, project, n)
                    row = (label, n, cache, rep, took, restarts)
                    rows.append(row)
                    print("\t".join(map(str, row)), flush=True)
                shutil.rmtree(project, ignore_errors=True)
    print()
    print("| instances | cache | " + " | ".join(l for l, _ in exes) + " |")
    print("|---|---|" + "---|" * len(exes))
    for n in NS:
        for cache in ("cold", "warm"):
            cells = []
            for label, _ in exes:
                got = [r for r in rows if r[0] == label and r[1] == n and r[2] == cache]
                times = sorted(r[4] for r in got if r[4] is not None)
                restarts = sum(r[5] or 0 for r in got)
                if not times:
                    cells.append("timeout")
                    continue
                cell = f"{statistics.median(times):.1f} s"
                if len(times) > 1:
                    cell += f" [{times[0]:.1f}–{times[-1]:.1f}]"
                cell += f", {restarts} restart{'s' if restarts != 1 else ''}"
                cells.append(cell)
            print(f"| {n} | {cache} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
