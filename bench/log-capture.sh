#!/usr/bin/env bash
# Only the log-capture step of bench/supervisor.sh, to compare windlass builds in ONE run:
# `bench.py writer` writes LOG_MB MB of 100-byte lines to stdout as fast as it can, timed by its
# own clock, with stdout going to a file, to supervisord, and to `windlass up` under each binary
# given. Rounds are interleaved (file, supervisord, each windlass, then again), so that the
# machine's noise hits every destination alike. Every run is verified: all lines, in order.
#
#   bash bench/log-capture.sh [NAME=BINARY ...]     default: windlass=target/release/windlass
#   e.g. REPS=7 bash bench/log-capture.sh before=/tmp/wl-before after=target/release/windlass
#
# Knobs (env): LOG_MB (100), REPS (5), SUPERVISORD (1), W (/tmp/windlass-logbench).
# Prints one TSV row per run (destination, seconds, lines found, in order) and a summary table:
# median [min–max] of the writer's seconds, and the ratio to `> file`.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
LOG_MB=${LOG_MB:-100}
REPS=${REPS:-5}
SUPERVISORD=${SUPERVISORD:-1}
W=${W:-/tmp/windlass-logbench}
PY=/usr/bin/python3
B="$PY $HERE/bench.py"
N=$(( LOG_MB * 1000000 / 100 ))
[ $# -gt 0 ] || set -- "windlass=$REPO/target/release/windlass"
mkdir -p "$W"
TSV=$W/runs.tsv
: > "$TSV"
STARTED=()
WL=()
cleanup() {
  local p d
  for d in "${WL[@]}"; do
    if [ -f "$d/.windlass/windlass.pid" ]; then
      p=$(cat "$d/.windlass/windlass.pid"); kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
    fi
  done
  for p in "${STARTED[@]}"; do kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null; done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_done NAME RES LOGFILE KIND: waits for the writer's result, then for every line in the log
wait_done() {
  local name=$1 res=$2 lf=$3 kind=$4 i out found order
  for ((i = 0; i < 3000; i++)); do [ -s "$res" ] && break; sleep 0.05; done
  [ -s "$res" ] || { echo "$name: the writer did not finish" >&2; return 1; }
  for ((i = 0; i < 600; i++)); do
    out=$($B verify "$lf" "$N" "$kind" 2>/dev/null)
    found=$(sed -n 's/.*found=\([0-9]*\).*/\1/p' <<<"$out")
    [ "${found:-0}" -ge "$N" ] && break
    sleep 0.1
  done
  order=$(sed -n 's/.*in_order=\([a-z]*\).*/\1/p' <<<"$out")
  printf '%s\t%s\t%s\t%s\n' "$name" "$(cat "$res")" "${found:-0}" "${order:-?}" | tee -a "$TSV"
}

run_file() {
  local d=$W/file; rm -rf "$d"; mkdir -p "$d"
  $B writer "$N" "$d/res" > "$d/out.log"
  printf '%s\t%s\t%s\n' "> file" "$(cat "$d/res")" \
    "$($B verify "$d/out.log" "$N" raw | sed 's/found=\([0-9]*\) in_order=\([a-z]*\)/\1\t\2/')" | tee -a "$TSV"
  rm -rf "$d"
}
run_supervisord() {
  local d=$W/sv sp; rm -rf "$d"; mkdir -p "$d"
  cat > "$d/sv.conf" <<EOF
[supervisord]
nodaemon=true
logfile=$d/supervisord.log
pidfile=$d/supervisord.pid
childlogdir=$d
[program:writer]
command=$PY $HERE/bench.py writer $N $d/res
autorestart=false
startsecs=0
stdout_logfile=$d/writer.out
stdout_logfile_maxbytes=0
stderr_logfile=$d/writer.err
EOF
  supervisord -c "$d/sv.conf" -n >"$d/stdout" 2>&1 &
  sp=$!; STARTED+=("$sp")
  wait_done supervisord "$d/res" "$d/writer.out" raw
  kill -TERM "$sp"; wait "$sp" 2>/dev/null
  rm -rf "$d"
}
run_windlass() { # NAME BINARY
  local name=$1 bin=$2 d=$W/wl-$1 pid i
  rm -rf "$d"; mkdir -p "$d"; WL+=("$d")
  # admin listener off: another windlass on this machine may hold its default port
  printf '[admin]\nlisten = "off"\n\n[app.writer]\ncommand = ["%s", "%s", "writer", "%d", "%s"]\nrestart = "never"\nlogs = { max_size = "2GB", keep = 1 }\n' \
    "$PY" "$HERE/bench.py" "$N" "$d/res" > "$d/windlass.toml"
  # `up -d` may report the writer as exited (it can finish before up returns): not an error here
  (cd "$d" && "$bin" up -d -f "$d/windlass.toml" >"$d/up.out" 2>&1)
  [ -d "$d/.windlass/logs" ] || { echo "$name: windlass up failed: $(cat "$d/up.out")" >&2; exit 1; }
  wait_done "$name" "$d/res" "$d/.windlass/logs/writer.log" windlass
  pid=$(cat "$d/.windlass/windlass.pid" 2>/dev/null)
  (cd "$d" && timeout 30 "$bin" down -f "$d/windlass.toml" >/dev/null 2>&1)
  [ -n "$pid" ] && for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -rf "$d"
}

for ((rep = 1; rep <= REPS; rep++)); do
  run_file
  [ "$SUPERVISORD" = 1 ] && command -v supervisord >/dev/null && run_supervisord
  for nb in "$@"; do run_windlass "${nb%%=*}" "${nb#*=}"; done
done

$PY - "$TSV" "$N" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
n = int(sys.argv[2])
names = list(dict.fromkeys(r[0] for r in rows))
secs = {k: [float(r[1]) for r in rows if r[0] == k] for k in names}
ok = {k: all(int(r[2]) == n and r[3] == "yes" for r in rows if r[0] == k) for k in names}
base = statistics.median(secs["> file"])
print("| destination | writer seconds | vs `> file` | MB/s | every line, in order |")
print("|---|---|---|---|---|")
for k in names:
    v = secs[k]; m = statistics.median(v)
    print("| %s | %.3f [%.3f–%.3f], n=%d | %.2f× | %.0f | %s |" % (
        "`%s`" % k if k.startswith(">") else k, m, min(v), max(v), len(v), m / base, n * 100 / 1e6 / m,
        "yes (%d/%d)" % (n, n) if ok[k] else "NO"))
EOF
