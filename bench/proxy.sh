#!/usr/bin/env bash
# Proxy and zero-downtime reload benchmark: windlass vs nginx (proxy overhead) and vs PM2
# (reload under load), in one run, on the anchors' `node app.js`. Prints markdown tables.
# A benchmark, not a test. See bench/README.md, "Proxy and zero-downtime reload".
#
#   cargo build --release && bash bench/proxy.sh          # full run, ~8-10 min
#   QUICK=1 bash bench/proxy.sh                           # 2 reps x 5 s, 5 reloads per scenario
#
# Knobs (env): QUICK, REPS (5), DUR (10, s per wrk run), RELOADS (20), SPACING (0.75, s between
# reloads), STEPS ("setup proxy reload switch summary"), W (/tmp/windlass-proxybench),
# SHAPES, SH_REPS (3), SH_DUR (6) and SH_PROXY (a windlass proxy table body, e.g.
# "plain_path = false") for the traffic shapes of issue 11:
#   STEPS="shapes_setup shapes shapes_summary" bash bench/proxy.sh    # ~15 min
# WINDLASS (target/release/windlass), APP_JS (/work/shared/anchors/app.js).
# Loopback only, ports 19300-19321. Writes only under $W (and the apt/npm installs).
# The exit trap stops, by PID, every process this script started (windlass down, pm2 kill).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
W=${W:-/tmp/windlass-proxybench}
RES=${RES:-$W/results}
HEALTH_PATH=${HEALTH_PATH:-}
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then REPS=${REPS:-2} DUR=${DUR:-5} RELOADS=${RELOADS:-5}; fi
REPS=${REPS:-5}
DUR=${DUR:-10}
RELOADS=${RELOADS:-20}
SPACING=${SPACING:-0.75}
WINDLASS=${WINDLASS:-$REPO/target/release/windlass}
APP_JS=${APP_JS:-/work/shared/anchors/app.js}
STEPS=${STEPS:-setup proxy reload switch summary}
WRK_T=2 WRK_C=50
PY=/usr/bin/python3
PROBE="$PY $HERE/proxyprobe.py"
TSV=$RES/raw.tsv
export PM2_HOME=$W/pm2home
PM2=$W/node_modules/.bin/pm2

P_DIRECT=19300 P_WL=19301 P_NGX2=19302 P_NGX1=19303 P_PM2C=19320 P_PM2F=19321

STARTED=()
WL_UP=0
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
rec() { local IFS=$'\t'; echo "$*" >> "$TSV"; }   # section scenario rep metric value
cpu_ticks() { local p s=0; for p in "$@"; do [ -r "/proc/$p/stat" ] && s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $s; }  # utime+stime, 10 ms ticks
load1() { cut -d' ' -f1 /proc/loadavg; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

wait_gone() { local i; for ((i = 0; i < ${2:-10} * 10; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; return 1; }
stop_pid() { # PID: only PIDs in STARTED; TERM, then KILL after 5 s
  local p=$1 i keep=()
  for i in "${STARTED[@]}"; do [ "$i" = "$p" ] || keep+=("$i"); done
  [ ${#keep[@]} -eq ${#STARTED[@]} ] && return 0
  STARTED=("${keep[@]}")
  if kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null; wait_gone "$p" 5 || kill -KILL "$p" 2>/dev/null; fi
  wait "$p" 2>/dev/null
}
unstart() { local keep=() i; for i in "${STARTED[@]}"; do [ "$i" = "$1" ] || keep+=("$i"); done; STARTED=("${keep[@]}"); }
wl() { (cd "$W/wl" && "$WINDLASS" "$@"); }
wl_main_pid() { cat "$W/wl/.windlass/windlass.pid" 2>/dev/null; }
wl_down() {
  [ "$WL_UP" = 1 ] || return 0
  local mp; mp=$(wl_main_pid)
  wl down >/dev/null 2>&1
  [ -n "$mp" ] && { wait_gone "$mp" 15 || kill -KILL "$mp" 2>/dev/null; }
  [ -n "$WL_FG_PID" ] && { wait "$WL_FG_PID" 2>/dev/null; unstart "$WL_FG_PID"; WL_FG_PID=; }
  WL_UP=0
}
pm2_down() {
  [ -x "$PM2" ] || return 0
  local dp=""; [ -f "$PM2_HOME/pm2.pid" ] && dp=$(cat "$PM2_HOME/pm2.pid")
  [ -n "$dp" ] && kill -0 "$dp" 2>/dev/null || return 0
  "$PM2" kill >/dev/null 2>&1
  wait_gone "$dp" 10 || kill -KILL "$dp" 2>/dev/null
}
cleanup() {
  wl_down; pm2_down
  local p; for p in "${STARTED[@]}"; do stop_pid "$p"; done
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
do_setup() {
  local need=()
  command -v wrk >/dev/null || need+=(wrk)
  command -v nginx >/dev/null || need+=(nginx)
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
  command -v curl >/dev/null || need+=(curl)
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  mkdir -p "$W"
  if [ ! -x "$PM2" ]; then
    log "npm install pm2 (local, under $W)"
    (cd "$W" && { [ -f package.json ] || npm init -y >/dev/null; } &&
      npm install --cache "$W/npm-cache" --no-audit --no-fund pm2 >/dev/null 2>&1)
  fi
  [ -x "$WINDLASS" ] || { log "building windlass (release)"; (cd "$REPO" && cargo build --release -q); }
  mkdir -p "$W/wl" "$W/app"
  cp "$APP_JS" "$W/wl/app.js"; cp "$APP_JS" "$W/app/app.js"
  cat > "$W/wl/windlass.toml" <<EOF
[app.app]
command = ["node", "app.js"]
port = $P_WL
port_env = "PORT"
EOF
  [ -z "$HEALTH_PATH" ] || echo "health = { path = \"$HEALTH_PATH\" }" >> "$W/wl/windlass.toml"
}

versions() {
  echo "windlass $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet -- src || echo '+dirty'); node $(node --version); pm2 $(node -p "require('$W/node_modules/pm2/package.json').version"); $(nginx -v 2>&1); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $(nproc) cores, $(uname -r)"
}

# ---------------------------------------------------------------- wrk helpers
parse_wrk() { # OUT -> "rps total non2xx connect read write timeout p50ms p99ms maxms"
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /m$/) return v*60000; if (v ~ /s$/) return v*1000; return v }
    /^Requests\/sec:/ { rps = $2 }
    / requests in / { total = $1 }
    /Non-2xx or 3xx responses:/ { non2xx = $5 }
    /Socket errors:/ { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
    /^ +50% / { p50 = ms($2) }
    /^ +99% / { p99 = ms($2) }
    /^ +Latency +[0-9]/ { mx = ms($4) }
    END { printf "%s %s %d %d %d %d %d %.3f %.3f %.1f\n", rps, total, non2xx, c, r, w, t, p50, p99, mx }
  ' "$1"
}
rec_wrk() { # section scenario rep OUT
  local f; read -r -a f < <(parse_wrk "$4")
  rec "$1" "$2" "$3" rps "${f[0]}"; rec "$1" "$2" "$3" requests "${f[1]}"
  rec "$1" "$2" "$3" non2xx "${f[2]}"
  rec "$1" "$2" "$3" sock_err "$(( f[3] + f[4] + f[5] + f[6] ))"
  rec "$1" "$2" "$3" err_connect "${f[3]}"; rec "$1" "$2" "$3" err_read "${f[4]}"
  rec "$1" "$2" "$3" err_write "${f[5]}"; rec "$1" "$2" "$3" err_timeout "${f[6]}"
  rec "$1" "$2" "$3" p50_ms "${f[7]}"; rec "$1" "$2" "$3" p99_ms "${f[8]}"; rec "$1" "$2" "$3" max_ms "${f[9]}"
  log "$2 rep$3: rps=${f[0]} non2xx=${f[2]} sockerr(c/r/w/t)=${f[3]}/${f[4]}/${f[5]}/${f[6]} p50=${f[7]}ms p99=${f[8]}ms max=${f[9]}ms"
}
warm() { wrk -t$WRK_T -c$WRK_C -d2s "http://127.0.0.1:$1/" >/dev/null 2>&1; }

# ---------------------------------------------------------------- nginx
nginx_conf() { # dir port workers
  mkdir -p "$1/tmp"
  cat > "$1/nginx.conf" <<EOF
worker_processes $3;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  upstream app {
    server 127.0.0.1:$P_DIRECT;
    keepalive 64;
    keepalive_requests 100000;
  }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
}

# windlass runs in the foreground (`windlass up`, a background job of this script) by default,
# like nginx (`daemon off`), the apps and wrk: the kernel's autogroup scheduler
# (/proc/sys/kernel/sched_autogroup_enabled) gives every session one share of the CPU, and
# `up -d` starts a new session, which on a box this loaded changes who gets the cores
# more than anything the proxy does. WL_DETACH=1 measures `up -d` instead.
WL_DETACH=${WL_DETACH:-0}
WL_FG_PID=
wl_up() {
  rm -rf "$W/wl/.windlass"
  if [ "$WL_DETACH" = 1 ]; then
    wl up -d >/dev/null 2>"$W/wl/up.err" || { log "windlass up -d failed: $(cat "$W/wl/up.err")"; return 1; }
  else
    (cd "$W/wl" && exec "$WINDLASS" up) >/dev/null 2>"$W/wl/up.err" & WL_FG_PID=$!; STARTED+=("$WL_FG_PID")
  fi
  WL_UP=1
  wait_200 $P_WL || { log "windlass app did not answer: $(tail -3 "$W/wl/up.err")"; return 1; }
}

# ---------------------------------------------------------------- 1. proxy overhead
do_proxy() {
  log "== 1. throughput/latency: wrk -t$WRK_T -c$WRK_C -d${DUR}s --latency, $REPS reps"
  local p rep t out
  PORT=$P_DIRECT node "$W/app/app.js" & p=$!; STARTED+=("$p"); local APP_PID=$p
  nginx_conf "$W/nginx2" $P_NGX2 2
  nginx -p "$W/nginx2/" -c "$W/nginx2/nginx.conf" -e "$W/nginx2/error.log" -g 'daemon off;' & p=$!; STARTED+=("$p"); local NGX2_PID=$p
  nginx_conf "$W/nginx1" $P_NGX1 1
  nginx -p "$W/nginx1/" -c "$W/nginx1/nginx.conf" -e "$W/nginx1/error.log" -g 'daemon off;' & p=$!; STARTED+=("$p"); local NGX1_PID=$p
  wl_up || return 1
  for port in $P_DIRECT $P_WL $P_NGX2 $P_NGX1; do wait_200 "$port" || { log "port $port did not come up"; return 1; }; done
  for port in $P_DIRECT $P_WL $P_NGX2 $P_NGX1; do warm "$port"; done
  local -A PORTS=([direct]=$P_DIRECT [windlass]=$P_WL [nginx_2w]=$P_NGX2 [nginx_1w]=$P_NGX1)
  # whose CPU each target costs: the proxy's processes, and the app behind it
  local WL_APP; WL_APP=$(pid_at $P_WL)
  local -A PROXY_PIDS=([direct]="" [windlass]="$(wl_main_pid)" [nginx_2w]="$NGX2_PID $(pgrep -P "$NGX2_PID" | tr '\n' ' ')" [nginx_1w]="$NGX1_PID $(pgrep -P "$NGX1_PID" | tr '\n' ' ')")
  local -A APP_PIDS=([direct]=$APP_PID [windlass]=$WL_APP [nginx_2w]=$APP_PID [nginx_1w]=$APP_PID)
  local c0 a0 c1 a1 n
  for ((rep = 1; rep <= REPS; rep++)); do
    rec proxy loadavg "$rep" load1 "$(load1)"
    for t in direct windlass nginx_2w nginx_1w; do
      out=$RES/wrk-proxy-$t-$rep.txt
      c0=$(cpu_ticks ${PROXY_PIDS[$t]}); a0=$(cpu_ticks ${APP_PIDS[$t]})
      wrk -t$WRK_T -c$WRK_C -d"${DUR}s" --latency "http://127.0.0.1:${PORTS[$t]}/" > "$out" 2>&1
      c1=$(cpu_ticks ${PROXY_PIDS[$t]}); a1=$(cpu_ticks ${APP_PIDS[$t]})
      rec_wrk proxy "$t" "$rep" "$out"
      n=$(awk '/ requests in /{print $1}' "$out")
      if [ "${n:-0}" -gt 0 ]; then
        rec proxy "$t" "$rep" proxy_cpu_us_per_req "$(( (c1 - c0) * 10000 / n ))"
        rec proxy "$t" "$rep" app_cpu_us_per_req "$(( (a1 - a0) * 10000 / n ))"
      fi
    done
  done
  local kids
  rec proxy windlass 0 rss_after_load_kb "$($PROBE rss "$(wl_main_pid)")"
  kids=$(pgrep -P "$NGX2_PID" | tr '\n' ' ')
  rec proxy nginx_2w 0 rss_after_load_kb "$($PROBE rss "$NGX2_PID" $kids | awk '{s+=$1} END {print s}')"
  kids=$(pgrep -P "$NGX1_PID" | tr '\n' ' ')
  rec proxy nginx_1w 0 rss_after_load_kb "$($PROBE rss "$NGX1_PID" $kids | awk '{s+=$1} END {print s}')"
  rec proxy direct 0 rss_after_load_kb "$($PROBE rss "$APP_PID")"
  wl_down
  for p in "$NGX1_PID" "$NGX2_PID" "$APP_PID"; do stop_pid "$p"; done
}

# ---------------------------------------------------------------- 2. reloads under load
# reload_series SCENARIO PORT CMD...: wrk for the whole series + gap probe; RELOADS x CMD
reload_series() {
  local scen=$1 port=$2; shift 2
  local out=$RES/wrk-reload-$scen.txt i t0 t1 wp gp before after
  rec reload "$scen" 1 load1 "$(load1)"
  $PROBE gap "$port" > "$out.gap" 2>&1 & gp=$!; STARTED+=("$gp")
  wrk -t$WRK_T -c$WRK_C -d600s --latency "http://127.0.0.1:$port/" > "$out" 2>&1 & wp=$!; STARTED+=("$wp")
  sleep 2
  before=$(pid_at "$port")
  for ((i = 1; i <= RELOADS; i++)); do
    t0=$(now_ms)
    "$@" >> "$out.cmd" 2>&1 || log "$scen: reload $i: command failed (exit $?)"
    t1=$(now_ms)
    rec reload_cmd "$scen" "$i" cmd_ms $((t1 - t0))
    sleep "$SPACING"
  done
  sleep 1
  after=$(pid_at "$port")
  kill -INT "$wp"; wait "$wp" 2>/dev/null
  kill -INT "$gp"; wait "$gp" 2>/dev/null
  unstart "$wp"; unstart "$gp"
  rec_wrk reload "$scen" 1 "$out"
  rec reload "$scen" 1 reloads "$RELOADS"
  local gap gf
  gap=$(sed -n 's/.*max_gap_ms=\([0-9.]*\).*/\1/p' "$out.gap"); gf=$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' "$out.gap")
  rec reload "$scen" 1 probe_max_gap_ms "${gap:-NA}"; rec reload "$scen" 1 probe_failed "${gf:-NA}"
  log "$scen: $RELOADS reloads, pid $before -> $after, probe: $(cat "$out.gap")"
  [ "$before" != "$after" ] || log "WARNING: $scen: pid did not change"
}
do_reload() {
  log "== 2. $RELOADS reloads under load, ${SPACING}s apart"
  wl_up || return 1
  warm $P_WL
  reload_series windlass_reload $P_WL wl reload app
  rec reload windlass_reload 0 rss_after_reloads_kb "$($PROBE rss "$(wl_main_pid)")"
  wl_down

  (cd "$W/app" && PORT=$P_PM2C GRACEFUL=0 "$PM2" start app.js --name app -i 2 >/dev/null 2>&1)
  wait_200 $P_PM2C; sleep 1; warm $P_PM2C
  reload_series pm2_cluster2_reload $P_PM2C "$PM2" reload app
  "$PM2" delete app >/dev/null 2>&1

  (cd "$W/app" && PORT=$P_PM2F GRACEFUL=0 "$PM2" start app.js --name app >/dev/null 2>&1)
  wait_200 $P_PM2F; sleep 1; warm $P_PM2F
  reload_series pm2_fork_restart $P_PM2F "$PM2" restart app
  "$PM2" delete app >/dev/null 2>&1
  pm2_down
}

# ---------------------------------------------------------------- 3. switch latency
switch_series() { # COND (idle|load)
  local cond=$1 sp wp="" i t0 t1 out
  out=$RES/switch-$cond
  $PROBE switch $P_WL "$out.probe" 1 & sp=$!; STARTED+=("$sp")
  if [ "$cond" = load ]; then
    wrk -t$WRK_T -c$WRK_C -d600s --latency "http://127.0.0.1:$P_WL/" > "$out.wrk" 2>&1 & wp=$!; STARTED+=("$wp")
  fi
  sleep 1
  for ((i = 1; i <= RELOADS; i++)); do
    t0=$(now_ms); wl reload app >> "$out.cmd" 2>&1 || log "switch $cond: reload $i failed"; t1=$(now_ms)
    rec reload_cmd "switch_$cond" "$i" cmd_ms $((t1 - t0))
    sleep "$SPACING"
  done
  kill -INT "$sp"; wait "$sp" 2>/dev/null; unstart "$sp"
  if [ -n "$wp" ]; then kill -INT "$wp"; wait "$wp" 2>/dev/null; unstart "$wp"; fi
  wl logs app -n 100000 --json > "$out.log.json" 2>/dev/null
  $PROBE switchcalc "$out.probe" "$out.log.json" > "$out.tsv"
  local i=0 pid ts fn lo
  while IFS=$'\t' read -r pid ts fn lo; do
    i=$((i + 1)); rec switch "$cond" "$i" first_new_ms "$fn"; rec switch "$cond" "$i" last_old_ms "$lo"
  done < "$out.tsv"
  rec switch_sum "$cond" 1 probe_fail "$(grep -c fail "$out.probe")"
  log "switch $cond: $i reloads matched; first-new minus healthy (ms): $(cut -f3 "$out.tsv" | tr '\n' ' ')"
}
do_switch() {
  log "== 3. switch latency: $RELOADS reloads idle, then $RELOADS under load"
  wl_up || return 1
  switch_series idle
  warm $P_WL
  switch_series load
  wl_down
}

# ---------------------------------------------------------------- 4. traffic shapes (issue 11)
# One app (bench/shapes-app.js, which counts the connections it accepts) behind direct,
# windlass, nginx 1 worker and nginx 2 workers; for each shape and repetition the four run
# back to back in a rotating order (interleaved), so load from elsewhere hits them alike.
P_SH_DIRECT=19330 P_SH_WL=19331 P_SH_NGX2=19332 P_SH_NGX1=19333 P_SH_WLB=19334
# WINDLASS_B=/path/to/another/windlass adds it as a fifth target, `windlass_b` (an A/B of two
# builds in one run).
SHAPES=${SHAPES:-"json600 json16k close blob1m post64k post8m chunked http10 c5000"}
SH_REPS=${SH_REPS:-3}
SH_DUR=${SH_DUR:-6}
shape() { # SHAPE -> S_PATH S_BODY S_HTTP10 S_HDR S_C
  S_PATH="/json?size=600" S_BODY=0 S_HTTP10=0 S_HDR="" S_C=50
  case $1 in
    json600) ;;
    json16k) S_PATH="/json?size=16384" ;;
    close) S_HDR="Connection: close" ;;
    blob1m) S_PATH="/blob?size=1048576" ;;
    post64k) S_PATH="/upload" S_BODY=65536 ;;
    post8m) S_PATH="/upload" S_BODY=8388608 S_C=16 ;;
    chunked) S_PATH="/chunked" ;;
    http10) S_HTTP10=1 ;;
    c5000) S_C=5000 ;;
    *) log "unknown shape $1"; return 1 ;;
  esac
}
shapes_nginx_conf() { # dir port workers
  mkdir -p "$1/tmp"
  cat > "$1/nginx.conf" <<EOF
worker_processes $3;
worker_rlimit_nofile 20000;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 100000;
  client_max_body_size 16m;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  upstream app {
    server 127.0.0.1:$P_SH_DIRECT;
    keepalive 64;
    keepalive_requests 100000;
  }
  server {
    listen 127.0.0.1:$2 backlog=511;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
}
conns_at() { curl -s --max-time 5 "http://127.0.0.1:$1/conns"; }
do_shapes() {
  ulimit -n "$(ulimit -Hn)" 2>/dev/null
  log "== 4. shapes: $SHAPES; $SH_REPS interleaved reps x ${SH_DUR}s; open files $(ulimit -n)"
  local p rep t out sh
  mkdir -p "$W/shapes/wl"
  cp "$HERE/shapes-app.js" "$W/shapes/app.js"; cp "$HERE/shapes-app.js" "$W/shapes/wl/app.js"
  cat > "$W/shapes/wl/windlass.toml" <<EOF
[app.app]
command = ["node", "app.js"]
port = $P_SH_WL
port_env = "PORT"
EOF
  [ -z "${SH_PROXY:-}" ] || echo "proxy = { $SH_PROXY }" >> "$W/shapes/wl/windlass.toml"
  PORT=$P_SH_DIRECT node "$W/shapes/app.js" & p=$!; STARTED+=("$p"); local APP_PID=$p
  shapes_nginx_conf "$W/shapes/nginx2" $P_SH_NGX2 2
  nginx -p "$W/shapes/nginx2/" -c "$W/shapes/nginx2/nginx.conf" -e "$W/shapes/nginx2/error.log" -g 'daemon off;' & p=$!; STARTED+=("$p"); local NGX2_PID=$p
  shapes_nginx_conf "$W/shapes/nginx1" $P_SH_NGX1 1
  nginx -p "$W/shapes/nginx1/" -c "$W/shapes/nginx1/nginx.conf" -e "$W/shapes/nginx1/error.log" -g 'daemon off;' & p=$!; STARTED+=("$p"); local NGX1_PID=$p
  rm -rf "$W/shapes/wl/.windlass"
  (cd "$W/shapes/wl" && exec "$WINDLASS" up) >/dev/null 2>"$W/shapes/wl/up.err" & p=$!; STARTED+=("$p"); local WL_PID=$p
  local -A PORTS=([direct]=$P_SH_DIRECT [windlass]=$P_SH_WL [nginx_2w]=$P_SH_NGX2 [nginx_1w]=$P_SH_NGX1)
  local -A PROXY_PIDS=([direct]="" [windlass]="$WL_PID" [nginx_2w]="$NGX2_PID $(pgrep -P "$NGX2_PID" | tr '\n' ' ')" [nginx_1w]="$NGX1_PID $(pgrep -P "$NGX1_PID" | tr '\n' ' ')")
  local order=(direct windlass nginx_1w nginx_2w) c0 c1 k0 k1 n i args wp WLB_PID=
  if [ -n "${WINDLASS_B:-}" ]; then
    mkdir -p "$W/shapes/wlb"; cp "$HERE/shapes-app.js" "$W/shapes/wlb/app.js"; rm -rf "$W/shapes/wlb/.windlass"
    sed "s/port = $P_SH_WL/port = $P_SH_WLB/" "$W/shapes/wl/windlass.toml" > "$W/shapes/wlb/windlass.toml"
    (cd "$W/shapes/wlb" && exec "$WINDLASS_B" up) >/dev/null 2>"$W/shapes/wlb/up.err" & p=$!; STARTED+=("$p"); WLB_PID=$p
    PORTS[windlass_b]=$P_SH_WLB; PROXY_PIDS[windlass_b]=$WLB_PID; order+=(windlass_b)
  fi
  for t in "${order[@]}"; do wait_200 "${PORTS[$t]}" || { log "$t (port ${PORTS[$t]}) did not come up"; return 1; }; done
  for t in "${order[@]}"; do warm "${PORTS[$t]}"; done
  for ((rep = 1; rep <= SH_REPS; rep++)); do
    rec shapes loadavg "$rep" load1 "$(load1)"
    for sh in $SHAPES; do
      shape "$sh" || continue
      for ((i = 0; i < ${#order[@]}; i++)); do
        t=${order[$(( (i + rep + ${#sh}) % ${#order[@]} ))]}
        out=$RES/wrk-shape-$sh-$t-$rep.txt
        args=(-t$WRK_T -c"$S_C" -d"${SH_DUR}s" --latency --timeout 10s -s "$HERE/shapes.lua")
        [ -n "$S_HDR" ] && args+=(-H "$S_HDR")
        # warmed with the same shape first, so the counts are those of a running proxy
        # (windlass drops idle app connections after 4 s, the other targets' turns)
        SHAPE_PATH=$S_PATH SHAPE_BODY=$S_BODY SHAPE_HTTP10=$S_HTTP10 \
          wrk "${args[@]/-d${SH_DUR}s/-d2s}" "http://127.0.0.1:${PORTS[$t]}$S_PATH" > /dev/null 2>&1
        c0=$(cpu_ticks ${PROXY_PIDS[$t]})
        SHAPE_PATH=$S_PATH SHAPE_BODY=$S_BODY SHAPE_HTTP10=$S_HTTP10 \
          wrk "${args[@]}" "http://127.0.0.1:${PORTS[$t]}$S_PATH" > "$out" 2>&1 & wp=$!; STARTED+=("$wp")
        # the app's connection count sampled 1 s into the run and 1 s before its end: the
        # steady state, not the reconnects after the requests the warm-up's end cut off
        sleep 1; k0=$(conns_at "${PORTS[$t]}"); sleep $((SH_DUR - 2)); k1=$(conns_at "${PORTS[$t]}")
        wait "$wp"; unstart "$wp"
        c1=$(cpu_ticks ${PROXY_PIDS[$t]})
        rec_wrk "shape_$sh" "$t" "$rep" "$out"
        n=$(awk '/ requests in /{print $1}' "$out")
        if [ "${n:-0}" -gt 0 ]; then
          rec "shape_$sh" "$t" "$rep" proxy_cpu_us_per_req "$(( (c1 - c0) * 10000 / n ))"
          # connections the app accepted between the samples (the two /conns requests may
          # add one each), per 100 of wrk's requests in that time (its mean rate)
          rec "shape_$sh" "$t" "$rep" upstream_conns_per_100 "$(awk -v a="$k0" -v b="$k1" -v n="$n" -v d="$SH_DUR" 'BEGIN { printf "%.3f", (b - a) * 100 / (n * (d - 2) / d) }')"
        fi
        # thousands of connections leave sockets closing: let them go first
        [ "$S_C" -gt 100 ] && sleep 2
      done
    done
  done
  rec shapes windlass 0 rss_after_load_kb "$($PROBE rss "$WL_PID")"
  (cd "$W/shapes/wl" && "$WINDLASS" down >/dev/null 2>&1); wait_gone "$WL_PID" 15; wait "$WL_PID" 2>/dev/null; unstart "$WL_PID"
  if [ -n "$WLB_PID" ]; then
    (cd "$W/shapes/wlb" && "$WINDLASS_B" down >/dev/null 2>&1); wait_gone "$WLB_PID" 15; wait "$WLB_PID" 2>/dev/null; unstart "$WLB_PID"
  fi
  for p in "$NGX1_PID" "$NGX2_PID" "$APP_PID"; do stop_pid "$p"; done
}

do_summary() { $PY "$HERE/proxyprobe.py" summary "$TSV"; }
do_shapes_summary() { $PY "$HERE/shapes-summary.py" "$TSV"; }

# ---------------------------------------------------------------- main
mkdir -p "$W" "$RES"
for s in $STEPS; do
  case $s in
    setup) do_setup; : > "$TSV"; versions > "$RES/versions.txt"
           echo "started $(date -u +%FT%TZ); load average $(cut -d' ' -f1-3 /proc/loadavg); REPS=$REPS DUR=$DUR RELOADS=$RELOADS SPACING=$SPACING WL_DETACH=$WL_DETACH WINDLASS_PROXY_THREADS=${WINDLASS_PROXY_THREADS:-default}" > "$RES/meta.txt"
           cat "$RES/versions.txt" "$RES/meta.txt" >&2 ;;
    proxy|reload|switch|shapes) "do_$s" ;;
    shapes_setup) mkdir -p "$RES"; : > "$TSV"
           [ -x "$WINDLASS" ] || { log "building windlass (release)"; (cd "$REPO" && cargo build --release -q); }
           echo "windlass $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet -- src || echo '+dirty'); node $(node --version); $(nginx -v 2>&1); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $(nproc) cores, $(uname -r)" > "$RES/versions.txt"
           echo "started $(date -u +%FT%TZ); load average $(cut -d' ' -f1-3 /proc/loadavg); SHAPES=$SHAPES SH_REPS=$SH_REPS SH_DUR=$SH_DUR SH_PROXY=${SH_PROXY:-} WINDLASS_B=${WINDLASS_B:-}" > "$RES/meta.txt"
           cat "$RES/versions.txt" "$RES/meta.txt" >&2 ;;
    shapes_summary) { cat "$RES/versions.txt" "$RES/meta.txt"; echo "finished $(date -u +%FT%TZ); load average $(cut -d' ' -f1-3 /proc/loadavg)"; echo; do_shapes_summary; }  | tee "$RES/shapes-summary.md" ;;
    summary) cat "$RES/versions.txt" "$RES/meta.txt" 2>/dev/null; echo "finished $(date -u +%FT%TZ); load average $(cut -d' ' -f1-3 /proc/loadavg)"; echo; do_summary | tee "$RES/summary.md" ;;
    *) echo "unknown step $s" >&2; exit 2 ;;
  esac
done
