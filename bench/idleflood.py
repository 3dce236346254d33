#!/usr/bin/env python3
"""idleflood: hold N idle TCP connections to 127.0.0.1:PORT, sending nothing, for SECS seconds.

Used by bench/flood.sh (a benchmark, not a test). Bounded: at most N sockets, at most
RATE new connects a second, loopback only, exits after SECS. A connection the server
closes is opened again (an attacker keeps the pressure on), within the same rate.
Prints one line when N connects were issued ("ready N") and a summary at the end:
"opened O closed_by_server C open_at_end E".

usage: idleflood.py PORT N SECS [RATE]
"""
import errno
import resource
import selectors
import socket
import sys
import time

port, n, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
rate = int(sys.argv[4]) if len(sys.argv) > 4 else 5000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = n + 64
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    n = min(n, min(want, hard) - 64)

sel = selectors.DefaultSelector()
opened = closed = 0
t0 = time.monotonic()
end = t0 + secs
budget, last = 0.0, t0


def connect():
    global opened
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    except OSError as e:
        s.close()
        if e.errno in (errno.EMFILE, errno.ENFILE, errno.EADDRNOTAVAIL):
            return False
        return True
    sel.register(s, selectors.EVENT_READ)
    opened += 1
    return True


announced = False
while True:
    now = time.monotonic()
    if now >= end:
        break
    budget = min(rate, budget + (now - last) * rate)
    last = now
    while len(sel.get_map()) < n and budget >= 1:
        budget -= 1
        if not connect():
            break
    if not announced and opened >= n:
        print(f"ready {n}", flush=True)
        announced = True
    for key, _ in sel.select(timeout=0.05):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            sel.unregister(s)
            s.close()
            closed += 1
open_at_end = len(sel.get_map())
for key in list(sel.get_map().values()):
    key.fileobj.close()
print(f"opened {opened} closed_by_server {closed} open_at_end {open_at_end}", flush=True)
