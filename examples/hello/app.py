#!/usr/bin/env python3
"""hello: the example app windlass supervises in the README demo and the tests.

Python's standard library only. Listens on 127.0.0.1:$PORT (HTTP/1.1, threaded):
  /          a greeting with the pid, the instance index and the version
  /health    200 "ok"
  /crash     exits with status 3 right away (to watch windlass restart it)
  /slow?ms=N answers after N milliseconds (for drain tests)
  /hold?until=PATH answers once the file PATH exists (at most 120 s; for deterministic tests)
Environment: PORT (default 8080), INSTANCE, VERSION (default "1"), HELLO_BIND (default 127.0.0.1).
It has no graceful-shutdown code on purpose: SIGTERM kills it at once.
"""
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

VERSION = os.environ.get("VERSION", "1")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/health":
            self.reply(200, "ok\n")
        elif url.path == "/crash":
            print(f"crash requested by {self.client_address[0]}", file=sys.stderr, flush=True)
            os._exit(3)
        elif url.path == "/slow":
            ms = int(parse_qs(url.query).get("ms", ["1000"])[0])
            time.sleep(ms / 1000)
            self.reply(200, f"slow {ms}ms version={VERSION} pid={os.getpid()}\n")
        elif url.path == "/hold":
            path = parse_qs(url.query).get("until", [""])[0]
            deadline = time.monotonic() + 120
            while path and not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
            self.reply(200, f"held version={VERSION} pid={os.getpid()}\n")
        elif url.path == "/":
            self.reply(200, f"hello from pid={os.getpid()} instance={os.environ.get('INSTANCE', '?')} version={VERSION}\n")
        else:
            self.reply(404, "not found\n")

    def reply(self, code, body):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        print(f"{self.address_string()} {fmt % args}", flush=True)


def main():
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer((os.environ.get("HELLO_BIND", "127.0.0.1"), port), Handler)
    server.daemon_threads = True
    print(f"hello version={VERSION} listening on {server.server_address[0]}:{port} pid={os.getpid()}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
