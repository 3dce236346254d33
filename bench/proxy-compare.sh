#!/usr/bin/env bash
# Compare wrk throughput: direct to an upstream, through windlass's proxy, through nginx.
# Loopback only; each run is bounded (-d). Usage: bench/compare.sh [ROUNDS] [DURATION]
# Upstream: node anchors/app.js when node and the anchors exist, else the built-in hyper one.
set -euo pipefail
ROUNDS=${1:-3}
DUR=${2:-5s}
HERE=$(cd "$(dirname "$0")/.." && pwd)
WORK=/tmp/wlbench
APP_JS=${APP_JS:-/work/shared/anchors/app.js}
UP_PORT=18380
NGX_PORT=18381
mkdir -p "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
            [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; }
trap cleanup EXIT

cargo build --release --example bench_proxy --manifest-path "$HERE/Cargo.toml" >/dev/null 2>&1
BIN="$HERE/target/release/examples/bench_proxy"

if command -v node >/dev/null && [ -f "$APP_JS" ]; then
  PORT=$UP_PORT node "$APP_JS" & pids+=($!)
  UPSTREAM=node
else
  "$BIN" --upstream-only --port $UP_PORT > "$WORK/up.out" & pids+=($!)
  UPSTREAM=hyper
fi
"$BIN" --upstream 127.0.0.1:$UP_PORT > "$WORK/proxy.out" & pids+=($!)
for _ in $(seq 100); do grep -q '^proxy ' "$WORK/proxy.out" 2>/dev/null && break; sleep 0.05; done
PROXY=$(awk '/^proxy /{print $2}' "$WORK/proxy.out")

HAVE_NGINX=0
if command -v nginx >/dev/null; then
  cat > "$WORK/nginx.conf" <<NGX
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
  nginx -c "$WORK/nginx.conf" -p "$WORK" && HAVE_NGINX=1
fi
sleep 0.5
curl -sf "http://$PROXY/" >/dev/null

run() { wrk -t2 -c50 -d"$DUR" --latency "http://$1/" | awk '/Requests\/sec/{rps=$2} /^ +99%/{p99=$2} /Non-2xx|Socket errors/{err=err" "$0} END{print rps, p99, (err==""?"-":err)}'; }
echo "upstream: $UPSTREAM on 127.0.0.1:$UP_PORT; windlass proxy on $PROXY; nginx: $HAVE_NGINX"
printf "%-6s %-10s %-10s %-10s %-10s %-10s %-10s %-8s %-8s\n" round direct p99 windlass p99 nginx p99 w/direct n/direct
for r in $(seq "$ROUNDS"); do
  read -r d dp _ <<<"$(run 127.0.0.1:$UP_PORT)"
  read -r w wp werr <<<"$(run "$PROXY")"
  if [ $HAVE_NGINX = 1 ]; then read -r n np _ <<<"$(run 127.0.0.1:$NGX_PORT)"; else n=0; np=-; fi
  printf "%-6s %-10s %-10s %-10s %-10s %-10s %-10s %-8s %-8s %s\n" "$r" "$d" "$dp" "$w" "$wp" "$n" "$np" \
    "$(echo "scale=2; $w/$d" | bc)" "$(echo "scale=2; $n/$d" | bc)" "${werr}"
done
