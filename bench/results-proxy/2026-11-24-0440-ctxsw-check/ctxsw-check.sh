set -u
W=/tmp/windlass-proxybench
ctx() { local s=0 t; for p in "$@"; do for t in /proc/$p/task/*; do s=$((s + $(awk '/^voluntary_ctxt/{print $2}' $t/status))); done; done; echo $s; }
cpu() { local s=0; for p in "$@"; do s=$((s + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $s; }
sed -i '/^health/d' $W/wl/windlass.toml
(cd $W/wl && rm -rf .windlass && /work/wt/benchproxy/target/release/windlass up -d >/dev/null 2>&1)
PORT=19300 node $W/app/app.js & A=$!
nginx -p "$W/nginx1/" -c "$W/nginx1/nginx.conf" -e "$W/nginx1/error.log" -g 'daemon off;' & N=$!
sleep 1.5
MP=$(cat $W/wl/.windlass/windlass.pid); NW=$(pgrep -P $N | tr '\n' ' ')
for x in windlass:19301:$MP "nginx_1w:19303:$N $NW"; do
  name=${x%%:*}; rest=${x#*:}; port=${rest%%:*}; pids=${rest#*:}
  wrk -t2 -c50 -d2s http://127.0.0.1:$port/ >/dev/null
  for r in 1 2; do
    c0=$(ctx $pids); u0=$(cpu $pids)
    n=$(wrk -t2 -c50 -d5s http://127.0.0.1:$port/ | awk '/ requests in /{print $1}')
    c1=$(ctx $pids); u1=$(cpu $pids)
    echo "$name rep$r: requests=$n voluntary_ctxsw=$((c1-c0)) per_req=$(echo "scale=2; ($c1-$c0)/$n" | bc) cpu_us_per_req=$(( (u1-u0)*10000/n )) load=$(cut -d' ' -f1 /proc/loadavg)"
  done
done
(cd $W/wl && /work/wt/benchproxy/target/release/windlass down >/dev/null)
kill $N $A; wait $N $A 2>/dev/null
