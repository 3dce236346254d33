#!/usr/bin/env bash
# Instance killed under load (issue 18), in one run for windlass, nginx and PM2: a Node app with
# two instances, `wrk -t2 -c50` for DUR seconds, one instance `kill -9`ed every EVERY seconds
# (KILLS kills, alternating between the two), and a fresh-connection probe (proxyprobe.py gap:
# a new connection and GET / every 2 ms) counting failures and the longest gap between two 200s.
#   windlass: `instances = 2` behind its proxy (restarts by the supervisor).
#   nginx:    two upstreams (default proxy_next_upstream error timeout, keepalive 64), each app
#             restarted by a shell loop; `nginx-maxfails0`: the same with max_fails=0 (by
#             default an upstream that failed once is skipped for 10 s: both, here).
#   pm2:      cluster mode, `instances: 2` (npm install pm2 under $W; skipped if that fails).
# A benchmark, not a test. Loopback only, ports 19300-19302; writes only under $W; every
# process it starts is stopped on exit, by pid.
# Usage: bash bench/kill-under-load.sh   (knobs: DUR=20 KILLS=10 EVERY=1.5, TARGETS)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
W=${W:-/tmp/wl-kill}
DUR=${DUR:-20}
KILLS=${KILLS:-10}
EVERY=${EVERY:-1.5}
TARGETS=${TARGETS:-"windlass nginx nginx-maxfails0 pm2"}
WINDLASS=${WINDLASS:-$REPO/target/release/windlass}
PORT=19300 UP1=19301 UP2=19302
export PM2_HOME=$W/pm2home
PM2=$W/node_modules/.bin/pm2
STARTED=()
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

cleanup() {
  local p
  for p in "$W"/windlass*/.windlass/windlass.pid; do
    [ -f "$p" ] && kill -0 "$(cat "$p")" 2>/dev/null && kill -TERM "$(cat "$p")" 2>/dev/null   # its guardian then stops the apps
  done
  [ -x "$PM2" ] && [ -f "$PM2_HOME/pm2.pid" ] && "$PM2" kill >/dev/null 2>&1
  for p in "$W"/nginx*/nginx.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
  for p in "${STARTED[@]}"; do kill "$p" 2>/dev/null; done
  # The restart loops' current apps.
  for p in "$W"/nginx*/pids/*.pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null; done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$W"
cat > "$W/app.js" <<'JS'
// Answers "ok"; writes its pid to $PIDDIR/<slot>.pid so the bench can kill it.
const http = require("http");
const fs = require("fs");
const slot = process.env.INSTANCE ?? process.env.NODE_APP_INSTANCE ?? process.env.SLOT ?? "0";
fs.mkdirSync(process.env.PIDDIR, { recursive: true });
fs.writeFileSync(`${process.env.PIDDIR}/${slot}.pid`, String(process.pid));
http.createServer((req, res) => res.end("ok\n")).listen(+process.env.PORT, "127.0.0.1");
JS

wait_200() { local i; for ((i = 0; i < 200; i++)); do curl -sf -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; return 1; }

# One run against whatever serves $PORT, killing the pids in $1/{0,1}.pid.
measure() {
  local name=$1 piddir=$2 out=$W/$1 probe wrkpid i pid
  python3 "$HERE/proxyprobe.py" gap $PORT 2 > "$out/probe.out" & probe=$!
  wrk -t2 -c50 -d"${DUR}s" "http://127.0.0.1:$PORT/" > "$out/wrk.out" 2>&1 & wrkpid=$!
  for ((i = 0; i < KILLS; i++)); do
    sleep "$EVERY"
    pid=$(cat "$piddir/$((i % 2)).pid" 2>/dev/null) && kill -9 "$pid" 2>/dev/null
  done
  wait $wrkpid
  kill -INT $probe; wait $probe
  local reqs non2xx sock
  reqs=$(awk '/requests in/{print $1}' "$out/wrk.out")
  non2xx=$(awk '/Non-2xx/{print $NF}' "$out/wrk.out")
  sock=$(awk '/Socket errors/{gsub(",",""); print $4+$6+$8+$10}' "$out/wrk.out")
  echo -e "$name\t${reqs:-?}\t$(( ${non2xx:-0} + ${sock:-0} ))\t$(sed 's/[a-z_]*=//g' "$out/probe.out")"
}

run_windlass() { windlass_with windlass "$WINDLASS"; }
# Another build, e.g. WINDLASS_BEFORE=/path/to/old/windlass TARGETS="windlass-before windlass".
run_windlass-before() { windlass_with windlass-before "${WINDLASS_BEFORE:?set WINDLASS_BEFORE}"; }
windlass_with() {
  local name=$1 bin=$2 d=$W/$1
  [ -x "$bin" ] || (cd "$REPO" && cargo build --release -q) || return 1
  rm -rf "$d"; mkdir -p "$d"
  printf '[app.web]\ncommand = ["node", "%s"]\nport = %d\ninstances = 2\nenv = { PIDDIR = "%s" }\n' \
    "$W/app.js" $PORT "$d/pids" > "$d/windlass.toml"
  (cd "$d" && "$bin" up -d -f windlass.toml > up.out 2>&1) || { log "windlass up failed"; return 1; }
  wait_200 $PORT && until [ -f "$d/pids/1.pid" ]; do sleep 0.05; done
  measure "$name" "$d/pids"
  (cd "$d" && timeout 30 "$bin" down -f windlass.toml >/dev/null 2>&1)
}

run_nginx() { nginx_with nginx ""; }
# The same with max_fails=0: an upstream that failed is never taken out for fail_timeout.
run_nginx-maxfails0() { nginx_with nginx-maxfails0 " max_fails=0"; }
nginx_with() {
  local name=$1 opts=$2 d=$W/$1 slot port
  command -v nginx >/dev/null || { log "no nginx: skipped"; return 0; }
  rm -rf "$d"; mkdir -p "$d/pids"
  for slot in 0 1; do
    port=$((UP1 + slot))
    (while :; do SLOT=$slot PORT=$port PIDDIR=$d/pids node "$W/app.js"; done) > /dev/null 2>&1 &
    STARTED+=($!)
  done
  cat > "$d/nginx.conf" <<NGX
worker_processes 2;
pid $d/nginx.pid;
error_log $d/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$UP1$opts; server 127.0.0.1:$UP2$opts; keepalive 64; }
  server {
    listen 127.0.0.1:$PORT;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
  wait_200 $UP1 && wait_200 $UP2 && nginx -c "$d/nginx.conf" -p "$d" && wait_200 $PORT || { log "nginx did not start"; return 1; }
  measure "$name" "$d/pids"
  kill "$(cat "$d/nginx.pid")"
  for slot in "${STARTED[@]}"; do kill "$slot" 2>/dev/null; done
  STARTED=()
  sleep 0.2; for slot in 0 1; do kill -9 "$(cat "$d/pids/$slot.pid")" 2>/dev/null; done
}

run_pm2() {
  local d=$W/pm2
  if [ ! -x "$PM2" ]; then
    log "npm install pm2 (under $W)"
    (cd "$W" && { [ -f package.json ] || npm init -y >/dev/null; } &&
      npm install --cache "$W/npm-cache" --no-audit --no-fund pm2 >/dev/null 2>&1) || { log "pm2 could not be installed: skipped"; return 0; }
  fi
  rm -rf "$d" "$PM2_HOME"; mkdir -p "$d"
  cat > "$d/ecosystem.config.js" <<JS
module.exports = { apps: [{ name: "web", script: "$W/app.js", exec_mode: "cluster", instances: 2,
  autorestart: true, env: { PORT: "$PORT", PIDDIR: "$d/pids" } }] };
JS
  "$PM2" start "$d/ecosystem.config.js" > "$d/start.out" 2>&1 || { log "pm2 start failed"; return 1; }
  wait_200 $PORT && until [ -f "$d/pids/1.pid" ]; do sleep 0.05; done
  measure pm2 "$d/pids"
  "$PM2" kill > /dev/null 2>&1
}

log "node $(node --version), wrk, $(nginx -v 2>&1); DUR=${DUR}s KILLS=$KILLS EVERY=${EVERY}s"
rows=()
for t in $TARGETS; do
  log "$t"
  row=$("run_$t") && [ -n "$row" ] && rows+=("$row")
done
echo
echo "| target | wrk requests | wrk failed (non-2xx + socket errors) | fresh probes | probes failed | longest probe gap (ms) |"
echo "|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
  IFS=$'\t' read -r name reqs failed probes pfailed gap <<<"$(echo "$row" | tr ' ' '\t')"
  echo "| $name | $reqs | $failed | $probes | $pfailed | $gap |"
done
