#!/usr/bin/env bash
# Idle-connection flood benchmark: windlass vs nginx (1 worker), in one run, on the anchors'
# `node app.js`. While bench/idleflood.py holds FLOOD idle connections to the proxy's port
# (sending nothing, reopening any the server closes), `wrk -t2 -c50 -d8s` sends real traffic
# through the same port. Per row: requests served, errors, p99, and whether the app survived
# (same app pid, and a 200 through the proxy once the flood ends). Prints markdown tables.
# A benchmark, not a test. See bench/README.md, "Idle-connection flood".
#
#   cargo build --release && bash bench/flood.sh        # ~4.5 min (REPS=3)
#   REPS=1 bash bench/flood.sh                          # ~1.5 min
#
# Both proxies start as a typical install would: open-files limit LIMIT (soft:hard, default
# 1024:524288, systemd's default for services), nginx with Debian's `worker_connections 768`
# and no `worker_rlimit_nofile`; windlass with its defaults (it raises its soft limit to the
# hard one and derives proxy.max_connections from it). One more windlass row runs with a hard
# limit of 1024 too (LIMIT_TIGHT), where its connection cap (376) is what holds the flood.
# Each rep runs every row, windlass and nginx interleaved; the tables show the median over reps
# of requests and p99, errors summed, and "yes" only if the app survived every rep.
# Knobs (env): REPS (3), FLOODS ("0 2000 10000"), DUR (8, s of wrk), LIMIT, LIMIT_TIGHT (1024:1024),
# RATE (5000, flood connects/s at most), W (/tmp/windlass-floodbench),
# WINDLASS (target/release/windlass), APP_JS (/work/shared/anchors/app.js).
# Loopback only, ports 19400-19403. Writes only under $W. The exit trap stops, by PID, every
# process this script started.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
W=${W:-/tmp/windlass-floodbench}
FLOODS=${FLOODS:-0 2000 10000}
DUR=${DUR:-8}
REPS=${REPS:-3}
LIMIT=${LIMIT:-1024:524288}
LIMIT_TIGHT=${LIMIT_TIGHT:-1024:1024}
RATE=${RATE:-5000}
WINDLASS=${WINDLASS:-$REPO/target/release/windlass}
APP_JS=${APP_JS:-/work/shared/anchors/app.js}
PY=${PY:-python3}
P_APP=19400 P_NGX=19401 P_WL=19402 P_ADMIN=19403
ROWS=$W/rows.tsv

STARTED=()
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
wait_gone() { local i; for ((i = 0; i < ${2:-10} * 10; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; return 1; }
stop_pid() { # PID (only one this script started): TERM, then KILL after 5 s
  local p=$1 i keep=()
  for i in "${STARTED[@]}"; do [ "$i" = "$p" ] || keep+=("$i"); done
  [ ${#keep[@]} -eq ${#STARTED[@]} ] && return 0
  STARTED=("${keep[@]}")
  if kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null; wait_gone "$p" 5 || kill -KILL "$p" 2>/dev/null; fi
  wait "$p" 2>/dev/null
}
cleanup() {
  local p
  [ -f "$W/nginx/nginx.pid" ] && p=$(cat "$W/nginx/nginx.pid") && kill -0 "$p" 2>/dev/null && kill -QUIT "$p" 2>/dev/null
  for p in "${STARTED[@]}"; do stop_pid "$p"; done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_200() { # PORT [timeout s]
  local i; for ((i = 0; i < ${2:-20} * 20; i++)); do
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$1/" && return 0; sleep 0.05; done
  return 1
}
pid_at() { curl -s --max-time 2 "http://127.0.0.1:$1/" | sed -n 's/.*pid=\([0-9]*\).*/\1/p'; }

# ---------------------------------------------------------------- setup
for c in wrk nginx node curl prlimit "$PY"; do
  command -v "$c" >/dev/null || { log "missing: $c (apt-get install wrk nginx-light nodejs curl util-linux)"; exit 1; }
done
[ -x "$WINDLASS" ] || { log "building windlass (release)"; (cd "$REPO" && cargo build --release -q) || exit 1; }
HARD_NOW=$(ulimit -Hn)
lim_ok() { prlimit --nofile="$1" true 2>/dev/null; }
if ! lim_ok "$LIMIT"; then
  LIMIT="${LIMIT%%:*}:$HARD_NOW"
  log "cannot set that hard limit here; using LIMIT=$LIMIT"
fi
rm -rf "$W"; mkdir -p "$W/wl" "$W/app" "$W/nginx/tmp"
cp "$APP_JS" "$W/app/app.js"; cp "$APP_JS" "$W/wl/app.js"
printf 'proxy\tlimit\tflood\trequests\terrors\tp99_ms\tsurvived\tnote\trep\n' > "$ROWS"

versions() {
  echo "windlass $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet -- src || echo '+dirty'); $(nginx -v 2>&1); node $(node --version); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $(nproc) cores, $(uname -r)"
}

# ---------------------------------------------------------------- one row
parse_wrk() { # OUT -> "requests errors p99ms"
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /m$/) return v*60000; if (v ~ /s$/) return v*1000; return v }
    / requests in / { total = $1 }
    /Non-2xx or 3xx responses:/ { non2xx = $5 }
    /Socket errors:/ { gsub(",", ""); err = $4 + $6 + $8 + $10 }
    /^ +99% / { p99 = ms($2) }
    END { printf "%d %d %.2f\n", total, non2xx + err, p99 }
  ' "$1"
}

# row NAME LIMIT PORT FLOOD APP_PID_FN SURVIVED_FN
row() {
  local name=$1 limit=$2 port=$3 n=$4 pidfn=$5 extra=$6
  local before after flood_pid out="$W/wrk-$name-$n.txt" fl="$W/flood-$name-$n.txt" note=""
  before=$($pidfn)
  if [ "$n" -gt 0 ]; then
    : > "$fl"
    "$PY" "$HERE/idleflood.py" "$port" "$n" $((DUR + 12)) "$RATE" > "$fl" 2>&1 & flood_pid=$!; STARTED+=("$flood_pid")
    local i; for ((i = 0; i < 100; i++)); do grep -q '^ready' "$fl" && break; sleep 0.1; done
    sleep 2  # let the proxy take (or shed) them
  fi
  wrk -t2 -c50 -d"${DUR}s" --latency "http://127.0.0.1:$port/" > "$out" 2>&1
  local extra_note; extra_note=$($extra)  # still under the flood
  if [ "$n" -gt 0 ]; then
    stop_pid "$flood_pid"
    note=$(tail -1 "$fl")
  fi
  local survived=no
  if wait_200 "$port" 10; then
    after=$($pidfn)
    [ -n "$before" ] && [ "$before" = "$after" ] && survived=yes
    [ "$survived" = no ] && note="$note; app pid $before -> $after"
  else
    note="$note; no 200 within 10 s after the flood"
  fi
  [ -n "$extra_note" ] && note="$note; $extra_note"
  local f; read -r -a f < <(parse_wrk "$out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$limit" "$n" "${f[0]}" "${f[1]}" "${f[2]}" "$survived" "${note#; }" "$REP" >> "$ROWS"
  log "rep$REP $name ($limit) flood=$n: requests=${f[0]} errors=${f[1]} p99=${f[2]}ms survived=$survived ${note#; }"
}

# ---------------------------------------------------------------- nginx
nginx_pid() { cat "$W/nginx/nginx.pid" 2>/dev/null; }
app_pid() { echo "$APP_PID"; }
nginx_notes() { # the error log's "worker_connections are not enough" lines since the last call
  local c s=0; c=$(grep -c 'worker_connections are not enough' "$W/nginx/error.log" 2>/dev/null); c=${c:-0}
  [ -f "$W/nginx/seen" ] && s=$(cat "$W/nginx/seen"); echo "$c" > "$W/nginx/seen"
  echo "nginx: $((c - s)) 'worker_connections are not enough' lines"
}
run_nginx() {
  cat > "$W/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
daemon off;
events { worker_connections 768; }
http {
  access_log off;
  client_body_temp_path $W/nginx/tmp/body;
  proxy_temp_path $W/nginx/tmp/proxy;
  fastcgi_temp_path $W/nginx/tmp/fastcgi;
  uwsgi_temp_path $W/nginx/tmp/uwsgi;
  scgi_temp_path $W/nginx/tmp/scgi;
  upstream app { server 127.0.0.1:$P_APP; keepalive 32; }
  server {
    listen 127.0.0.1:$P_NGX;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
  (cd "$W/app" && PORT=$P_APP exec prlimit --nofile="$LIMIT" node app.js) > "$W/app/out.log" 2>&1 & APP_PID=$!; STARTED+=("$APP_PID")
  wait_200 $P_APP || { log "node app did not answer"; return 1; }
  prlimit --nofile="$LIMIT" nginx -c "$W/nginx/nginx.conf" > "$W/nginx/out.log" 2>&1 & local np=$!; STARTED+=("$np")
  wait_200 $P_NGX || { log "nginx did not answer: $(tail -3 "$W/nginx/error.log")"; return 1; }
  local n; for n in $FLOODS; do row nginx "$LIMIT" $P_NGX "$n" app_pid nginx_notes; done
  kill -QUIT "$(nginx_pid)" 2>/dev/null; wait_gone "$np" 10; stop_pid "$np"
  stop_pid "$APP_PID"
}

# ---------------------------------------------------------------- windlass
wl() { (cd "$W/wl" && "$WINDLASS" "$@"); }
wl_app_pid() { wl status --json 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["apps"][0]["instances"][0]["pid"] or "")' 2>/dev/null; }
wl_notes() {
  local t0 st; t0=$(date +%s%N)
  st=$(cd "$W/wl" && timeout 10 "$WINDLASS" status --json 2>/dev/null | "$PY" -c 'import json,sys; i=json.load(sys.stdin)["apps"][0]["instances"][0]; print("restarts", i["restarts"])' 2>/dev/null)
  [ -n "$st" ] && st="$st, status in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  local m; m=$(curl -s --max-time 2 "http://127.0.0.1:$P_ADMIN/metrics" | awk '/^windlass_proxy_max_connections/ {c=$2} /^windlass_proxy_idle_connections_closed_total/ {s=$2} END {printf "cap %s, %s idle closed", c, s}')
  echo "windlass: ${st:-status did not answer}, $m"
}
run_windlass() { # NAME LIMIT
  local name=$1 limit=$2
  rm -rf "$W/wl/.windlass"
  cat > "$W/wl/windlass.toml" <<EOF
[app.app]
command = ["node", "app.js"]
port = $P_WL
port_env = "PORT"

[admin]
listen = "127.0.0.1:$P_ADMIN"
EOF
  (cd "$W/wl" && exec prlimit --nofile="$limit" "$WINDLASS" up) > "$W/wl/up.out" 2> "$W/wl/up.err" & local wp=$!; STARTED+=("$wp")
  wait_200 $P_WL || { log "windlass app did not answer: $(tail -3 "$W/wl/up.err")"; return 1; }
  local n; for n in $FLOODS; do row "$name" "$limit" $P_WL "$n" wl_app_pid wl_notes; done
  wl down > /dev/null 2>&1; wait_gone "$wp" 15; stop_pid "$wp"
}

T0=$(date +%s)
log "$(versions)"
for ((REP = 1; REP <= REPS; REP++)); do
  run_windlass windlass "$LIMIT"
  run_nginx
  FLOODS=${FLOODS_TIGHT:-10000} run_windlass windlass "$LIMIT_TIGHT"
done

# ---------------------------------------------------------------- tables
# Per (proxy, limit, flood): median requests and p99 over the reps, errors summed, survived in
# every rep, and the last rep's notes.
summarize() {
  tail -n +2 "$ROWS" | sort -t$'\t' -k1,1r -k2,2r -k3,3n -k9,9n | awk -F'\t' '
    function med(list,   a, n, i, j, t) { n = split(list, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    { k = $1 "\t" $2 "\t" $3; if (!(k in seen)) { seen[k] = 1; order[++n] = k; surv[k] = "yes" }
      req[k] = req[k] " " $4; p99[k] = p99[k] " " $6; err[k] += $5; reps[k]++; if ($7 != "yes") surv[k] = "no"; note[k] = $8 }
    END { for (i = 1; i <= n; i++) { k = order[i]; printf "%s\t%d\t%d\t%.2f\t%s\t%d\t%s\n", k, med(req[k]), err[k], med(p99[k]), surv[k], reps[k], note[k] } }'
}
SUM=$W/summary.tsv
summarize > "$SUM"
{
  echo "### Idle-connection flood + wrk -t2 -c50 -d${DUR}s, median of $REPS ($(date -u +%F), $(versions))"
  echo
  echo "| proxy | open-files limit | idle conns | requests served | errors | p99 ms | app survived | notes (last rep) |"
  echo "|---|---|---:|---:|---:|---:|---|---|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s (%s reps) | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }' "$SUM"
  echo
  echo "Ratios, windlass / nginx at the same limit ($LIMIT): requests (higher is better), p99 (lower is better)."
  echo
  echo "| idle conns | requests | p99 | errors windlass / nginx |"
  echo "|---:|---:|---:|---|"
  awk -F'\t' -v L="$LIMIT" '$2 == L { k = $3; if ($1 == "windlass") { wr[k] = $4; wp[k] = $6; we[k] = $5 } else { nr[k] = $4; np[k] = $6; ne[k] = $5 }; if (!(k in seen)) { seen[k] = 1; order[++n] = k } }
    END { for (i = 1; i <= n; i++) { k = order[i]; printf "| %s | %s | %s | %s / %s |\n", k, (nr[k] > 0 ? sprintf("%.2f", wr[k] / nr[k]) : "n/a (nginx 0)"), (np[k] > 0 ? sprintf("%.2f", wp[k] / np[k]) : "n/a"), we[k], ne[k] } }' "$SUM"
  echo
  echo "Run took $(( $(date +%s) - T0 )) s. Raw rows: $ROWS."
} | tee "$W/summary.md"
