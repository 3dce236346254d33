#!/usr/bin/env bash
# What one log read costs the supervisor: ~LOG_MB MB of records in an app's log files (the
# current file and rotated ones, written here directly in windlass's record format), then, in a
# fresh `windlass up -d` per measurement, one `GET /api/v1/logs?app=big&n=N` on the admin
# listener (with the token). Prints, per binary and N: the seconds curl took, the lines
# returned, and the supervisor's VmRSS before and VmHWM (peak RSS) after, from /proc/PID/status.
#
#   bash bench/log-read.sh [NAME=BINARY ...]     default: windlass=target/release/windlass
#   e.g. NS="10000 1000000" bash bench/log-read.sh before=/tmp/wl-before after=target/debug/windlass
#
# Knobs (env): LOG_MB (18), NS ("10000"), LINE (100: bytes per record), W (/tmp/windlass-logread). Only 127.0.0.1 is used;
# every supervisor started is stopped with `windlass down` (and SIGTERM by pid on exit).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
LOG_MB=${LOG_MB:-18}
LINE=${LINE:-100}
NS=${NS:-10000}
W=${W:-/tmp/windlass-logread}
[ $# -gt 0 ] || set -- "windlass=$REPO/target/release/windlass"
mkdir -p "$W"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null; done
  return 0
}
trap cleanup EXIT

# The log files: LOG_MB MB of ~100-byte records, 10 MB per file (the default max_size).
LOGS=$W/logs
if [ ! -f "$LOGS/.done-$LOG_MB-$LINE" ]; then
  rm -rf "$LOGS"; mkdir -p "$LOGS"
  /usr/bin/python3 - "$LOGS" "$LOG_MB" "$LINE" <<'EOF'
import sys
d, mb, line = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
total, per_file = mb * 1000000, 10 * 1000000
files, i, size = [], 0, 0
rec = lambda i: ("2026-11-25T00:00:00.%06dZ 0 out line %09d %s\n" % (i % 1000000, i, "x" * max(0, line - 55))).encode()
while size < total:
    chunk = bytearray()
    while len(chunk) < per_file and size + len(chunk) < total:
        chunk += rec(i); i += 1
    files.append(bytes(chunk)); size += len(chunk)
# Oldest first: big.log.K ... big.log.1, then big.log.
for k, data in enumerate(files):
    n = len(files) - 1 - k
    name = "big.log" if n == 0 else "big.log.%d" % n
    open("%s/%s" % (d, name), "wb").write(data)
print("%d records in %d files" % (i, len(files)), file=sys.stderr)
EOF
  touch "$LOGS/.done-$LOG_MB-$LINE"
fi

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$2/status"; }

printf 'binary\tn\tseconds\tlines\trss_before_kib\thwm_after_kib\n'
for spec in "$@"; do
  name=${spec%%=*}; bin=${spec#*=}
  for n in $NS; do
    d=$W/run-$name-$n
    rm -rf "$d"; mkdir -p "$d/.windlass"
    cp -r "$LOGS" "$d/.windlass/logs"; rm -f "$d/.windlass/logs"/.done-*
    port=$(free_port)
    printf '[app.big]\ncommand = ["sleep", "100000"]\n\n[admin]\nlisten = "127.0.0.1:%s"\ntoken = "bench-token"\n' "$port" > "$d/windlass.toml"
    (cd "$d" && "$bin" up -d >/dev/null 2>&1) || { echo "$name: up -d failed" >&2; continue; }
    pid=$(cat "$d/.windlass/windlass.pid"); PIDS+=("$pid")
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/api/v1/status" && break; sleep 0.1; done
    before=$(kib VmRSS "$pid")
    out=$(curl -s -o "$d/body" -w '%{http_code} %{time_total}' -H 'Authorization: Bearer bench-token' \
      "http://127.0.0.1:$port/api/v1/logs?app=big&n=$n")
    hwm=$(kib VmHWM "$pid")
    code=${out%% *}; secs=${out#* }
    lines=$(wc -l < "$d/body")
    [ "$code" = 200 ] || lines="HTTP $code: $(head -c 200 "$d/body")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$n" "$secs" "$lines" "$before" "$hwm"
    (cd "$d" && "$bin" down >/dev/null 2>&1)
  done
done
