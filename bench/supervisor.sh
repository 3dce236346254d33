#!/usr/bin/env bash
# The supervisor benchmark: windlass next to PM2 and supervisord, measured in ONE run on the
# same Python app (examples/hello/app.py). Prints markdown tables; this is not a test.
#
#   bash bench/supervisor.sh            full run (about 10 minutes)
#   QUICK=1 bash bench/supervisor.sh    quick run (fewer repetitions, 10 s idle CPU; ~3 minutes)
#
# What it measures (see bench/README.md for the method):
#   1. supervisor RSS/PSS with 1 app and with N_APPS apps, 10 s after every app answered
#      (windlass: the supervisor, its guardian `windlass-guard`, and the sum)
#   2. crash recovery: kill -9 of the app -> first 200 from a new pid, next to the bare cold start
#   3. CPU of the idle supervisor over IDLE_CPU seconds (utime+stime from /proc/PID/stat)
#   4. log capture: an app writes LOG_MB MB of 100-byte lines to stdout as fast as it can
#
# Knobs (env): QUICK (0), KILLS (10), MEM_REPS (3), IDLE_CPU (60 s), N_APPS (50), SETTLE (10 s),
#   LOG_MB (100), LOG_REPS (3), LOG_PM2 (1), LOG_SUPERVISORD (1), SUPERVISORS ("windlass pm2
#   supervisord"), W (/tmp/windlass-bench, scratch dir), WINDLASS (target/release/windlass; built
#   with `cargo build --release` when missing).
# Only 127.0.0.1 is used. Everything is written under $W, except the installs (apt: supervisor;
# npm: pm2 into $W). Every process started here is stopped on exit (trap), by PID.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  KILLS=${KILLS:-3} MEM_REPS=${MEM_REPS:-1} IDLE_CPU=${IDLE_CPU:-10} LOG_MB=${LOG_MB:-20}
  LOG_REPS=${LOG_REPS:-1} SETTLE=${SETTLE:-5}
fi
KILLS=${KILLS:-10}
MEM_REPS=${MEM_REPS:-3}
IDLE_CPU=${IDLE_CPU:-60}
N_APPS=${N_APPS:-50}
SETTLE=${SETTLE:-10}
LOG_MB=${LOG_MB:-100}
LOG_REPS=${LOG_REPS:-3}
LOG_PM2=${LOG_PM2:-1}
LOG_SUPERVISORD=${LOG_SUPERVISORD:-1}
SUPERVISORS=${SUPERVISORS:-"windlass pm2 supervisord"}
W=${W:-/tmp/windlass-bench}
WINDLASS=${WINDLASS:-$REPO/target/release/windlass}
for v in KILLS MEM_REPS IDLE_CPU N_APPS SETTLE LOG_MB LOG_REPS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a number" >&2; exit 2; }
done
[ "$N_APPS" -le 200 ] || { echo "N_APPS must be <= 200" >&2; exit 2; }

PY=/usr/bin/python3                       # not a pyenv shim: the anchors used Debian's python
APP=$REPO/examples/hello/app.py
B="$PY $HERE/bench.py"
RES=$W/results
TSV=$RES/raw.tsv
export PM2_HOME=$W/pm2home
PM2=$W/node_modules/.bin/pm2
LOG_LINES=$(( LOG_MB * 1000000 / 100 ))

# ports on 127.0.0.1: 19100 floor; 19101 1-app; 19200.. the N_APPS apps
P_FLOOR=19100 P_ONE=19101 P_MANY=19200

STARTED=()       # pids of processes started here (supervisord; windlass supervisors)
WL_DIRS=()       # windlass projects that may have a running supervisor
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
rec() { local IFS=$'\t'; echo "$*" >> "$TSV"; }   # section scenario metric value

wait_gone() { # PID [timeout_s]
  local i; for ((i = 0; i < ${2:-10} * 10; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}
forget() { local p=$1 keep=() i; for i in "${STARTED[@]}"; do [ "$i" = "$p" ] || keep+=("$i"); done; STARTED=("${keep[@]}"); }
stop_pid() { # PID [TIMEOUT_S]: SIGTERM, SIGKILL after TIMEOUT_S (10)
  kill -0 "$1" 2>/dev/null && { kill -TERM "$1" 2>/dev/null; wait_gone "$1" "${2:-10}" || kill -KILL "$1" 2>/dev/null; }
  wait "$1" 2>/dev/null; forget "$1"
}
pm2_down() {
  [ -x "$PM2" ] || return 0
  local dp=""; [ -f "$PM2_HOME/pm2.pid" ] && dp=$(cat "$PM2_HOME/pm2.pid")
  { [ -n "$dp" ] && kill -0 "$dp" 2>/dev/null; } || return 0
  "$PM2" kill >/dev/null 2>&1
  wait_gone "$dp" 10 || kill -KILL "$dp" 2>/dev/null
}
wl_down() { # DIR
  local d=$1 pid=""
  [ -f "$d/.windlass/windlass.pid" ] && pid=$(cat "$d/.windlass/windlass.pid")
  { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; } || return 0
  (cd "$d" && timeout 30 "$WINDLASS" down -f "$d/windlass.toml" >/dev/null 2>&1)
  wait_gone "$pid" 10 || kill -KILL "$pid" 2>/dev/null   # its guardian then kills the apps
}
cleanup() {
  local d p
  for d in "${WL_DIRS[@]}"; do wl_down "$d"; done
  pm2_down
  for p in "${STARTED[@]}"; do stop_pid "$p"; done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- setup
setup() {
  mkdir -p "$W" "$RES"
  if ! command -v supervisord >/dev/null; then
    log "apt-get install supervisor"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq supervisor >/dev/null
  fi
  if [ ! -x "$PM2" ]; then
    log "npm install pm2 (local, under $W)"
    (cd "$W" && { [ -f package.json ] || npm init -y >/dev/null; } &&
      npm install --cache "$W/npm-cache" --no-audit --no-fund pm2 >/dev/null 2>&1)
  fi
  if [ ! -x "$WINDLASS" ]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release -q) || exit 1
  fi
  : > "$TSV"
}
versions() {
  echo "windlass $("$WINDLASS" --version | cut -d' ' -f2) ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)); $(supervisord -v | sed 's/^/supervisord /'); pm2 $(node -p "require('$W/node_modules/pm2/package.json').version"); node $(node --version); python $($PY --version 2>&1 | cut -d' ' -f2); $(nproc) CPUs; kernel $(uname -r)"
}

# ---------------------------------------------------------------- per-supervisor start/stop
# sup_start KIND NAME PORT... : starts a fresh supervisor running one hello app per port;
# sets SUP_PID (and GUARD_PID for windlass). Returns once the supervisor is up.
SUP_PID="" GUARD_PID="" SUP_DIR=""
sup_start() {
  local kind=$1 name=$2; shift 2
  local d=$W/$kind-$name i=0 p
  rm -rf "$d"; mkdir -p "$d"; SUP_DIR=$d; GUARD_PID=""
  case $kind in
  windlass)
    : > "$d/windlass.toml"
    for p in "$@"; do
      printf '[app.a%d]\ncommand = ["%s", "%s"]\nport = %d\nrestart = "always"\n\n' "$i" "$PY" "$APP" "$p" >> "$d/windlass.toml"
      i=$((i + 1))
    done
    WL_DIRS+=("$d")
    (cd "$d" && "$WINDLASS" up -d -f "$d/windlass.toml" >"$d/up.out" 2>&1) || { log "windlass up failed: $(cat "$d/up.out")"; return 1; }
    SUP_PID=$(cat "$d/.windlass/windlass.pid")
    GUARD_PID=$($B children "$SUP_PID" | awk '$2 == "windlass-guard" { print $1 }')
    ;;
  pm2)
    {
      echo "module.exports = { apps: ["
      for p in "$@"; do
        printf '{ name: "a%d", script: "%s", interpreter: "%s", exec_mode: "fork", autorestart: true, env: { PORT: "%d" } },\n' "$i" "$APP" "$PY" "$p"
        i=$((i + 1))
      done
      echo "] };"
    } > "$d/ecosystem.config.js"
    pm2_down; rm -rf "$PM2_HOME"
    "$PM2" start "$d/ecosystem.config.js" >"$d/start.out" 2>&1 || { log "pm2 start failed"; return 1; }
    SUP_PID=$(cat "$PM2_HOME/pm2.pid")
    ;;
  supervisord)
    cat > "$d/sv.conf" <<EOF
[supervisord]
nodaemon=true
logfile=$d/supervisord.log
pidfile=$d/supervisord.pid
childlogdir=$d
[unix_http_server]
file=$d/sv.sock
[supervisorctl]
serverurl=unix://$d/sv.sock
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
EOF
    for p in "$@"; do
      printf '[program:a%d]\ncommand=%s %s\nenvironment=PORT="%d"\nautorestart=true\nstartsecs=0\nstdout_logfile=%s/a%d.out\nstderr_logfile=%s/a%d.err\n' \
        "$i" "$PY" "$APP" "$p" "$d" "$i" "$d" "$i" >> "$d/sv.conf"
      i=$((i + 1))
    done
    supervisord -c "$d/sv.conf" -n >"$d/stdout" 2>&1 &
    SUP_PID=$!; STARTED+=("$SUP_PID")
    ;;
  esac
}
sup_stop() { # KIND; then SIGKILL any app the supervisor left behind (by pid, if still our app)
  local apps p
  apps=$($B children "$SUP_PID" | awk '$2 != "windlass-guard" { print $1 }')
  case $1 in
  windlass) wl_down "$SUP_DIR" ;;
  pm2) pm2_down ;;
  supervisord) stop_pid "$SUP_PID" 90 ;;   # it stops 50 apps one by one (~0.3 s each)
  esac
  for p in $apps; do
    if grep -qF "$APP" "/proc/$p/cmdline" 2>/dev/null; then log "$1 left app pid $p behind; killing it"; kill -KILL "$p" 2>/dev/null; fi
  done
}
mem_rec() { # KIND SCEN
  local r s
  if [ "$1" = windlass ]; then
    read -r r s < <($B mem "$SUP_PID"); rec mem "$2" rss_main "$r"; rec mem "$2" pss_main "$s"
    local gr gs; read -r gr gs < <($B mem "$GUARD_PID"); rec mem "$2" rss_guard "$gr"; rec mem "$2" pss_guard "$gs"
    rec mem "$2" rss_sum $((r + gr)); rec mem "$2" pss_sum $((s + gs))
    log "$2: RSS main ${r} KiB + guard ${gr} KiB = $((r + gr)) KiB (PSS $((s + gs)) KiB)"
  else
    read -r r s < <($B mem "$SUP_PID"); rec mem "$2" rss "$r"; rec mem "$2" pss "$s"
    log "$2: RSS ${r} KiB (PSS ${s} KiB)"
  fi
}
ticks_of() { if [ "$1" = windlass ]; then $B ticks "$SUP_PID" "$GUARD_PID"; else $B ticks "$SUP_PID"; fi; }

# ---------------------------------------------------------------- 1-app: memory, idle CPU, crash
one_app() { # KIND
  local k=$1 rep v
  for ((rep = 1; rep <= MEM_REPS; rep++)); do
    sup_start "$k" one "$P_ONE" || return 1
    $B wait 30 "$P_ONE" || { log "$k: app never answered"; sup_stop "$k"; return 1; }
    sleep "$SETTLE"
    mem_rec "$k" "${k}_1app"
    if [ "$rep" = 1 ]; then
      if [ "$k" = windlass ]; then
        local apid; apid=$($B children "$SUP_PID" | awk '$2 != "windlass-guard" { print $1 }' | head -1)
        [ -n "$apid" ] && rec mem windlass_1app app_rss "$($B mem "$apid" | cut -d' ' -f1)"
      fi
      # 3. idle CPU
      local hz t0 t1 m0 m1 g0 g1 s0 s1
      hz=$(getconf CLK_TCK)
      t0=$(ticks_of "$k"); s0=$(date +%s%N)
      [ "$k" = windlass ] && { m0=$($B ticks "$SUP_PID"); g0=$($B ticks "$GUARD_PID"); }
      sleep "$IDLE_CPU"
      t1=$(ticks_of "$k"); s1=$(date +%s%N)
      [ "$k" = windlass ] && { m1=$($B ticks "$SUP_PID"); g1=$($B ticks "$GUARD_PID"); }
      rec cpu "$k" cpu_ms $(( (t1 - t0) * 1000 / hz )); rec cpu "$k" window_s $(( (s1 - s0) / 1000000000 ))
      if [ "$k" = windlass ]; then
        rec cpu "$k" cpu_ms_main $(( (m1 - m0) * 1000 / hz )); rec cpu "$k" cpu_ms_guard $(( (g1 - g0) * 1000 / hz ))
      fi
      log "$k idle CPU: $(( (t1 - t0) * 1000 / hz )) ms in ${IDLE_CPU} s"
      # 2. crash recovery, with the floor measured right before it
      while read -r v; do rec crash cold_start ms "$v"; done < <(PORT=$P_FLOOR $B cold "$KILLS" -- "$PY" "$APP")
      local to=0
      while read -r v; do
        if [ "$v" = timeout ]; then to=$((to + 1)); else rec crash "$k" ms "$v"; fi
      done < <($B crash "$P_ONE" "$KILLS" 1.5)
      rec crash "$k" timeouts "$to"
      log "$k crash recovery: $(awk -v k="$k" -F'\t' '$1=="crash" && $2==k && $3=="ms" {printf "%s ", $4}' "$TSV")"
    fi
    sup_stop "$k"
  done
}

# ---------------------------------------------------------------- N apps: memory
many_apps() { # KIND
  local k=$1 ports=() i
  for ((i = 0; i < N_APPS; i++)); do ports+=($((P_MANY + i))); done
  sup_start "$k" many "${ports[@]}" || return 1
  $B wait 120 "${ports[@]}" || { log "$k: not every app answered"; sup_stop "$k"; return 1; }
  sleep "$SETTLE"
  mem_rec "$k" "${k}_${N_APPS}app"
  sup_stop "$k"
}

# ---------------------------------------------------------------- 4. log throughput
log_rec() { # SCEN RESULT_FILE LOGFILE KIND(windlass|raw)
  local sc=$1 res=$2 lf=$3 kind=$4 i secs out found order
  for ((i = 0; i < 1800; i++)); do [ -s "$res" ] && break; sleep 0.1; done
  [ -s "$res" ] || { log "log $sc: the writer did not finish in 180 s"; return 1; }
  secs=$(cat "$res")
  for ((i = 0; i < 60; i++)); do     # let the supervisor drain what is left in the pipe
    out=$($B verify "$lf" "$LOG_LINES" "$kind" 2>/dev/null)
    found=$(sed -n 's/.*found=\([0-9]*\).*/\1/p' <<<"$out")
    [ "${found:-0}" -ge "$LOG_LINES" ] && break
    sleep 1
  done
  order=$(sed -n 's/.*in_order=\([a-z]*\).*/\1/p' <<<"$out")
  rec log "$sc" secs "$secs"; rec log "$sc" mb "$LOG_MB"; rec log "$sc" lines "$LOG_LINES"
  rec log "$sc" found "${found:-0}"; rec log "$sc" in_order "$([ "$order" = yes ] && echo 1 || echo 0)"
  log "log $sc: ${secs} s, ${found:-0}/$LOG_LINES lines, in order: ${order:-?}"
}
log_bench() {
  local rep d res
  for ((rep = 1; rep <= LOG_REPS; rep++)); do
    d=$W/log; rm -rf "$d"; mkdir -p "$d"
    # direct: /dev/null and a file
    $B writer "$LOG_LINES" "$d/devnull.res" > /dev/null
    rec log devnull secs "$(cat "$d/devnull.res")"; rec log devnull mb "$LOG_MB"; rec log devnull lines "$LOG_LINES"
    $B writer "$LOG_LINES" "$d/file.res" > "$d/file.log"
    log_rec file "$d/file.res" "$d/file.log" raw
    rm -f "$d/file.log"
    # windlass (log rotation set above the volume, so that one file holds every line)
    if [[ " $SUPERVISORS " == *" windlass "* ]]; then
      mkdir -p "$d/wl"; SUP_DIR=$d/wl; WL_DIRS+=("$d/wl")
      printf '[app.writer]\ncommand = ["%s", "%s", "writer", "%d", "%s"]\nrestart = "never"\nlogs = { max_size = "2GB", keep = 1 }\n' \
        "$PY" "$HERE/bench.py" "$LOG_LINES" "$d/wl.res" > "$d/wl/windlass.toml"
      (cd "$d/wl" && "$WINDLASS" up -d -f "$d/wl/windlass.toml" >"$d/wl/up.out" 2>&1) || log "windlass up (writer) failed"
      log_rec windlass "$d/wl.res" "$d/wl/.windlass/logs/writer.log" windlass
      wl_down "$d/wl"; rm -rf "$d/wl"
    fi
    if [ "$LOG_SUPERVISORD" = 1 ] && [[ " $SUPERVISORS " == *" supervisord "* ]]; then
      mkdir -p "$d/sv"
      cat > "$d/sv/sv.conf" <<EOF
[supervisord]
nodaemon=true
logfile=$d/sv/supervisord.log
pidfile=$d/sv/supervisord.pid
childlogdir=$d/sv
[program:writer]
command=$PY $HERE/bench.py writer $LOG_LINES $d/sv.res
autorestart=false
startsecs=0
stdout_logfile=$d/sv/writer.out
stdout_logfile_maxbytes=0
stderr_logfile=$d/sv/writer.err
EOF
      supervisord -c "$d/sv/sv.conf" -n >"$d/sv/stdout" 2>&1 &
      local sp=$!; STARTED+=("$sp")
      log_rec supervisord "$d/sv.res" "$d/sv/writer.out" raw
      stop_pid "$sp"; rm -rf "$d/sv"
    fi
    if [ "$LOG_PM2" = 1 ] && [[ " $SUPERVISORS " == *" pm2 "* ]]; then
      mkdir -p "$d/pm2"
      printf 'module.exports = { apps: [{ name: "writer", script: "%s", args: ["writer", "%d", "%s"], interpreter: "%s", autorestart: false, out_file: "%s", error_file: "%s" }] };\n' \
        "$HERE/bench.py" "$LOG_LINES" "$d/pm2.res" "$PY" "$d/pm2/writer.out" "$d/pm2/writer.err" > "$d/pm2/ecosystem.config.js"
      pm2_down; rm -rf "$PM2_HOME"
      "$PM2" start "$d/pm2/ecosystem.config.js" >"$d/pm2/start.out" 2>&1
      log_rec pm2 "$d/pm2.res" "$d/pm2/writer.out" raw
      pm2_down; rm -rf "$d/pm2"
    fi
  done
}

# ---------------------------------------------------------------- main
setup
VERSIONS=$(versions)
log "$VERSIONS"
log "KILLS=$KILLS MEM_REPS=$MEM_REPS IDLE_CPU=${IDLE_CPU}s N_APPS=$N_APPS SETTLE=${SETTLE}s LOG_MB=$LOG_MB LOG_REPS=$LOG_REPS"
T0=$(date +%s)
for k in $SUPERVISORS; do
  log "== $k: 1 app (memory, idle CPU, crash recovery)"; one_app "$k"
  log "== $k: $N_APPS apps (memory)"; many_apps "$k"
done
log "== log capture ($LOG_MB MB)"; log_bench
{
  echo "## Supervisor benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(( $(date +%s) - T0 )) s)"
  echo
  echo "$VERSIONS"
  echo
  echo "KILLS=$KILLS MEM_REPS=$MEM_REPS IDLE_CPU=${IDLE_CPU}s N_APPS=$N_APPS SETTLE=${SETTLE}s LOG_MB=$LOG_MB LOG_REPS=$LOG_REPS. Cells: median [min–max], n."
  echo
  $B summary "$TSV"
} | tee "$RES/summary.md"
