#!/usr/bin/env bash
# The deploy benchmark: `windlass deploy` of one release to three hosts, next to the same
# steps done by hand (per host: rsync the release, ssh to switch it, curl until it answers);
# and the bytes a redeploy sends when one file of the release changed. Prints markdown
# tables; this is not a test.
#
#   sudo bash bench/deploy.sh
#
# The hosts are three OpenSSH servers, each in its own network namespace (ip netns, a veth
# pair, 10.77.N.0/30), with keys made here. Needs root, iproute2, openssh-server, rsync.
# Knobs (env): REPS (3), ASSET_KB (2048: size of a static file in the release, so there are
#   bytes to not send), W (/tmp/windlass-bench-deploy), WINDLASS (target/debug/windlass).
# Every process started here is stopped on exit (trap): the hosts' windlass, sshd, the namespaces.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
REPS=${REPS:-3}
ASSET_KB=${ASSET_KB:-2048}
W=${W:-/tmp/windlass-bench-deploy}
WINDLASS=${WINDLASS:-$REPO/target/debug/windlass}
[ -x "$WINDLASS" ] || { echo "no $WINDLASS: cargo build first" >&2; exit 2; }
WINDLASS=$(readlink -f "$WINDLASS")
rm -rf "$W" && mkdir -p "$W/proj" && cd "$W"
SSHD_PIDS=()
cleanup() {
  for i in 1 2 3; do
    p="$W/srv$i/shop"
    [ -S "$p/.windlass/control.sock" ] && (cd "$p" && .windlass/bin/windlass down >/dev/null 2>&1)
  done
  for pid in "${SSHD_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for i in 1 2 3; do
    for pid in $(ip netns pids "wbench$i" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
    ip netns del "wbench$i" 2>/dev/null
  done
}
trap cleanup EXIT

# --- three hosts ---
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f id -C bench
cp id.pub authorized_keys
: > known_hosts; : > ssh_config
for i in 1 2 3; do
  ip netns del "wbench$i" 2>/dev/null
  ip netns add "wbench$i"
  ip link add "wbv${i}a" type veth peer name "wbv${i}b"
  ip link set "wbv${i}b" netns "wbench$i"
  ip addr add "10.77.$i.1/30" dev "wbv${i}a" && ip link set "wbv${i}a" up
  ip netns exec "wbench$i" ip addr add "10.77.$i.2/30" dev "wbv${i}b"
  ip netns exec "wbench$i" ip link set "wbv${i}b" up
  ip netns exec "wbench$i" ip link set lo up
  ssh-keygen -q -t ed25519 -N '' -f "hostkey$i"
  echo "10.77.$i.2 $(cut -d' ' -f1,2 "hostkey$i.pub")" >> known_hosts
  printf 'Port 22\nListenAddress 10.77.%s.2\nHostKey %s\nAuthorizedKeysFile %s\nPidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\nMaxStartups 50\nLogLevel ERROR\n' \
    "$i" "$W/hostkey$i" "$W/authorized_keys" > "sshd$i.conf"
  ip netns exec "wbench$i" /usr/sbin/sshd -D -e -f "$W/sshd$i.conf" 2>"sshd$i.log" &
  SSHD_PIDS+=($!)
  printf 'Host host%s\n  HostName 10.77.%s.2\n  User root\n  IdentityFile %s/id\n  IdentitiesOnly yes\n  UserKnownHostsFile %s/known_hosts\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n\n' \
    "$i" "$i" "$W" "$W" >> ssh_config
  mkdir -p "srv$i"
done
for i in 1 2 3; do
  for _ in $(seq 100); do (echo > "/dev/tcp/10.77.$i.2/22") 2>/dev/null && break; sleep 0.05; done
done

# --- the project: a Python app, its VERSION, a static asset ---
cd "$W/proj"
cat > app.py <<'PY'
import os, http.server
here = os.path.dirname(os.path.abspath(__file__))
version = open(os.path.join(here, "VERSION")).read().strip()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = version.encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
PY
mkdir -p static && head -c "$((ASSET_KB * 1024))" /dev/urandom > static/blob.bin
cat > windlass.toml <<EOF2
[app.web]
command = ["python3", "app.py"]
port = 8080
release = "latest"
health = { path = "/", interval = "100ms", start_timeout = "10s" }
stop = { timeout = "3s" }

[admin]
listen = "127.0.0.1:0"

[deploy]
hosts = [{ name = "host1", path = "$W/srv1/shop" }, { name = "host2", path = "$W/srv2/shop" }, { name = "host3", path = "$W/srv3/shop" }]
ssh_options = ["-F", "$W/ssh_config"]
EOF2
n=0
build() { n=$((n + 1)); echo "v$n" > VERSION; "$WINDLASS" build web >/dev/null || exit 1; ID=$("$WINDLASS" releases web --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["releases"][-1]["id"])'); }
now() { date +%s.%N; }
build
"$WINDLASS" deploy --setup > "$W/setup.out" || { cat "$W/setup.out"; exit 1; }

by_hand() {  # the fabfile way: per host, separate ssh connections, no link-dest
  local bytes=0
  for i in 1 2 3; do
    p="$W/srv$i/shop"
    b=$(rsync -a --stats -e "ssh -F $W/ssh_config" ".windlass/releases/$ID/" "host$i:$p/.windlass/releases/$ID/" | awk -F': ' '/Total bytes sent/ {gsub(",","",$2); print $2}')
    bytes=$((bytes + b))
    ssh -F "$W/ssh_config" "host$i" "cd $p && .windlass/bin/windlass rollback web $ID" >/dev/null || return 1
    for _ in $(seq 200); do [ "$(curl -s "http://10.77.$i.2:8080/")" = "v$n" ] && break; sleep 0.02; done
  done
  HAND_BYTES=$bytes
}

printf 'rep\twindlass_s\thand_s\twindlass_release_bytes\thand_release_bytes\n' > "$W/raw.tsv"
for r in $(seq "$REPS"); do
  build
  t0=$(now); "$WINDLASS" deploy --json > "$W/deploy$r.json" || { cat "$W/deploy$r.json"; exit 1; }; t1=$(now)
  wbytes=$(python3 -c 'import json,sys; print(sum(e.get("bytes",0) for e in map(json.loads, open(sys.argv[1])) if e["step"]=="upload-release"))' "$W/deploy$r.json")
  build
  t2=$(now); by_hand || exit 1; t3=$(now)
  printf '%s\t%.3f\t%.3f\t%s\t%s\n' "$r" "$(echo "$t1 - $t0" | bc)" "$(echo "$t3 - $t2" | bc)" "$wbytes" "$HAND_BYTES" >> "$W/raw.tsv"
done
release_size=$(du -sb ".windlass/releases/$ID" | cut -f1)
python3 - "$W/raw.tsv" "$release_size" "$WINDLASS" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
w = [float(r[1]) for r in rows]; h = [float(r[2]) for r in rows]
wb = [int(r[3]) for r in rows]; hb = [int(r[4]) for r in rows]
ratios = [a / b for a, b in zip(w, h)]
print(f"binary: {sys.argv[3]}; {len(rows)} reps, one release (one file changed) to 3 hosts, hosts one after the other\n")
print("| | windlass deploy | by hand (rsync + ssh rollback + curl, per host) |")
print("|---|---|---|")
print(f"| wall time, windlass / by hand (median of per-rep ratios) | **{st.median(ratios):.2f}x** [{min(ratios):.2f}-{max(ratios):.2f}] | 1 |")
print(f"| bytes sent for the release, 3 hosts (median) | **{int(st.median(wb)):,}** | {int(st.median(hb)):,} |")
print(f"| release size on disk | {int(sys.argv[2]):,} | |")
print("\nwindlass also probes each host, compares the binary's sha256, uploads the config and waits for the health check; by hand does none of that.")
PY
