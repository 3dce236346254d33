#!/usr/bin/env bash
# A/B of two windlass builds as proxies, side by side with nginx (1 worker), in one run: both
# windlass run in the foreground (this script's session, like nginx with `daemon off`) with
# the anchors' `node app.js`, and wrk -t2 -c50 -d5s runs on each in turn, ROUNDS times.
# Prints req/s, proxy CPU µs per request and p99 per run. A benchmark, not a test.
#
#   bash bench/proxy-ab.sh /path/to/old/windlass target/release/windlass [ROUNDS]
#
# Knobs (env): WINDLASS_PROXY_THREADS (passed to both), W (/tmp/windlass-proxy-ab),
# APP_JS (/work/shared/anchors/app.js). Loopback ports 19410-19413. Needs wrk, nginx, node
# (bench/proxy.sh's setup installs them). The exit trap stops everything it started.
set -u
A=$(realpath "$1") B=$(realpath "$2") ROUNDS=${3:-4}
W=${W:-/tmp/windlass-proxy-ab}
APP_JS=${APP_JS:-/work/shared/anchors/app.js}
PIDS=()
cleanup() {
  local p
  for d in A B; do [ -d "$W/$d" ] && (cd "$W/$d" && "$([ $d = A ] && echo "$A" || echo "$B")" down >/dev/null 2>&1); done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$W"; mkdir -p "$W/A" "$W/B" "$W/direct" "$W/nginx/tmp"
for d in A B; do
  cp "$APP_JS" "$W/$d/app.js"
  port=19411; [ $d = B ] && port=19412
  printf '[app.app]\ncommand = ["node", "app.js"]\nport = %s\nport_env = "PORT"\n' $port > "$W/$d/windlass.toml"
done
(cd "$W/A" && exec "$A" up >"$W/A/up.log" 2>&1) & PIDS+=($!)
(cd "$W/B" && exec "$B" up >"$W/B/up.log" 2>&1) & PIDS+=($!)
cp "$APP_JS" "$W/direct/app.js"
(cd "$W/direct" && PORT=19410 exec node app.js >/dev/null 2>&1) & PIDS+=($!)
cat > "$W/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  client_body_temp_path $W/nginx/tmp/body;
  proxy_temp_path $W/nginx/tmp/proxy;
  fastcgi_temp_path $W/nginx/tmp/fastcgi;
  uwsgi_temp_path $W/nginx/tmp/uwsgi;
  scgi_temp_path $W/nginx/tmp/scgi;
  upstream app { server 127.0.0.1:19410; keepalive 64; keepalive_requests 100000; }
  server {
    listen 127.0.0.1:19413;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
nginx -p "$W/nginx/" -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log" -g 'daemon off;' & PIDS+=($!)

for port in 19411 19412 19413; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
pid_of() { # target -> pids whose CPU counts
  case $1 in
    A) cat "$W/A/.windlass/windlass.pid" ;;
    B) cat "$W/B/.windlass/windlass.pid" ;;
    N) pgrep -f "nginx: worker" | head -1 ;;
  esac
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for port in 19411 19412 19413; do wrk -t2 -c50 -d2s "http://127.0.0.1:$port/" >/dev/null; done
printf 'target\tround\treq/s\tproxy_cpu_us_per_req\tp99\n'
for ((i = 1; i <= ROUNDS; i++)); do
  for t in A B N; do
    case $t in A) port=19411 ;; B) port=19412 ;; N) port=19413 ;; esac
    p=$(pid_of $t); c0=$(ticks "$p")
    out=$(wrk -t2 -c50 -d5s --latency "http://127.0.0.1:$port/")
    c1=$(ticks "$p")
    n=$(echo "$out" | awk '/ requests in /{print $1}')
    printf '%s\t%d\t%d\t%d\t%s\n' "$t" "$i" $((n / 5)) $(((c1 - c0) * 10000 / n)) "$(echo "$out" | awk '/^ +99%/{print $2}')"
  done
done
