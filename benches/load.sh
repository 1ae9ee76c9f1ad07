#!/usr/bin/env bash
# Load comparison: direct vs nginx vs bearerd, in one run on one machine.
#
#   bash benches/load.sh            (needs wrk, nginx, python3, curl, taskset; Debian:
#                                    apt-get install wrk nginx-light)
#
# - upstream: nginx answering a fixed 200 on 127.0.0.1:18081;
# - nginx as an HTTP forward proxy on :18082 that sets a static Authorization header and
#   keeps upstream connections alive;
# - bearerd on :18083 with a cached token (fetched once from a tiny token endpoint);
# - benches/relay.rs on :18087, a tokio TCP relay that reads no HTTP: the floor for any
#   proxy built on tokio, measured in the same run.
# The upstream and the proxies are pinned to CPU 0, wrk to CPU 1; wrk sends absolute-form
# requests (`GET http://127.0.0.1:18081/ HTTP/1.1`) to the proxies, as HTTP_PROXY apps do,
# over 50 keep-alive connections, 3 repetitions each; the script reports medians.
# Then: RSS with 1,000 connections, start-to-ready with 100 auth configs, and a burst of
# 10,000 concurrent requests on a cold cache against a slow token endpoint.
#
# Writes benches/RESULTS.md and prints it. Starts and stops everything by PID; every
# command is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
REPS=${REPS:-3}
CONNECTIONS=${CONNECTIONS:-50}
UPSTREAM=18081 NGINX=18082 BEARERD=18083 ADMIN=18093 TOKENS=18084 RELAY=18087
source benches/common.sh
need wrk nginx python3 curl taskset
# 10,000 client connections and as many upstream ones need more than the usual 1,024 fds.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "building bearerd (release)..." >&2
timeout 900 cargo build --release --locked --quiet
BIN=$PWD/target/release/bearerd
# The floor: benches/relay.rs, a tokio TCP relay that reads no HTTP (its executable's path
# is in cargo's JSON report).
RELAY_BIN=$(timeout 900 cargo bench --locked --bench relay --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "relay" and m.get("executable"):
        print(m["executable"])')
TICK=$(getconf CLK_TCK)

# --- helpers ------------------------------------------------------------------------------

# CPU ticks of the given PIDs: "user system".
ticks() { local u=0 s=0; for p in "$@"; do read -r pu ps < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + pu)); s=$((s + ps)); done; echo "$u $s"; }
# Resident and peak-resident memory of the given PIDs, in KiB.
rss() { local t=0; for p in "$@"; do t=$((t + $(awk '/^VmRSS/{print $2}' "/proc/$p/status"))); done; echo "$t"; }
hwm() { local t=0; for p in "$@"; do t=$((t + $(awk '/^VmHWM/{print $2}' "/proc/$p/status"))); done; echo "$t"; }
children() { pgrep -P "$1" | tr '\n' ' '; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# wrk's latency as microseconds ("612.00us", "1.20ms", "2.01s").
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} else print v}'; }

# --- the upstream and nginx ---------------------------------------------------------------

upstream_conf > "$WORK/upstream.conf"
nginx_conf proxy "upstream api { server 127.0.0.1:$UPSTREAM; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection '';
      proxy_set_header Authorization 'Bearer static-token-for-the-benchmark';
    }
  }" > "$WORK/nginx.conf"
taskset -c 0 nginx -c "$WORK/upstream.conf" -p "$WORK" -e "$WORK/upstream-error.log" &
PIDS+=($!)
UPSTREAM_PID=$!
taskset -c 0 nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log" &
PIDS+=($!)
NGINX_PID=$!
wait_http "http://127.0.0.1:$UPSTREAM/"
wait_http "http://127.0.0.1:$NGINX/"
NGINX_PROCS="$NGINX_PID $(children "$NGINX_PID")"

# --- a token endpoint and bearerd -------------------------------------------------------

python3 "$WORK/tokens.py" "$TOKENS" 0 &
PIDS+=($!)
wait_http "http://127.0.0.1:$TOKENS/"

bearerd_config "$TOKENS" > "$WORK/bearerd.yaml"
RUST_LOG=warn taskset -c 0 "$BIN" --config "$WORK/bearerd.yaml" 2>"$WORK/bearerd.log" &
BEARERD_PID=$!
PIDS+=($BEARERD_PID)
wait_http "http://127.0.0.1:$ADMIN/healthz"
taskset -c 0 "$RELAY_BIN" "127.0.0.1:$RELAY" "127.0.0.1:$UPSTREAM" &
RELAY_PID=$!
PIDS+=($RELAY_PID)
wait_http "http://127.0.0.1:$RELAY/"
sleep 1
BEARERD_IDLE=$(rss $BEARERD_PID)
NGINX_IDLE=$(rss $NGINX_PROCS)
# Warm: fetch the token once.
curl -s -o /dev/null -x "http://127.0.0.1:$BEARERD" "http://127.0.0.1:$UPSTREAM/"
curl -s -o /dev/null -x "http://127.0.0.1:$NGINX" "http://127.0.0.1:$UPSTREAM/"

# --- throughput, latency, CPU -------------------------------------------------------------

run_wrk() { # rep name target-port procs... ; appends "rps p50_us p99_us cpu_ns user_ns system_ns" per request
  local rep=$1 name=$2 port=$3; shift 3
  local procs=("$@") script=()
  [ "$port" != "$UPSTREAM" ] && script=(-s "$WORK/proxy.lua")
  {
    local before after out requests rps p50 p99 user system
    before=$(ticks "${procs[@]}")
    out=$(timeout $((DURATION + 30)) taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${script[@]}" "http://127.0.0.1:$port/")
    after=$(ticks "${procs[@]}")
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}' | to_us)
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}' | to_us)
    if echo "$out" | grep -q "Non-2xx"; then echo "load.sh: $name answered non-2xx:" >&2; echo "$out" >&2; exit 1; fi
    read -r user system < <(echo "$before $after" | awk '{print $3 - $1, $4 - $2}')
    echo "$rps $p50 $p99 $(( (user + system) * 1000000000 / TICK / requests )) $(( user * 1000000000 / TICK / requests )) $(( system * 1000000000 / TICK / requests ))" >> "$WORK/$name.runs"
    echo "  $name rep $rep: $rps req/s, p50 ${p50}us, p99 ${p99}us, user $((user * 1000000000 / TICK / requests)) ns + kernel $((system * 1000000000 / TICK / requests)) ns per request" >&2
  }
}
echo "measuring: $REPS x ${DURATION}s, $CONNECTIONS connections..." >&2
# Repetitions interleave the four paths, so a change in the machine's speed during the run
# (shared cloud CPUs) lands on all four alike instead of on whichever ran last.
UPSTREAM_PROCS="$UPSTREAM_PID $(children "$UPSTREAM_PID")"
for rep in $(seq 1 "$REPS"); do
  run_wrk "$rep" direct "$UPSTREAM" $UPSTREAM_PROCS
  run_wrk "$rep" nginx "$NGINX" $NGINX_PROCS
  run_wrk "$rep" bearerd "$BEARERD" "$BEARERD_PID"
  run_wrk "$rep" relay "$RELAY" "$RELAY_PID"
done
kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true
BEARERD_LOAD=$(hwm $BEARERD_PID)
NGINX_LOAD=$(hwm $NGINX_PROCS)
col() { awk -v c="$2" '{print $c}' "$WORK/$1.runs" | median; }

# CPU columns are nanoseconds per request (integer arithmetic); printed as microseconds.
us() { awk -v n="$1" 'BEGIN {printf "%.1f", n / 1000}'; }
row() { # name
  printf "| %s | %.0f | %.0f | %.0f | %s | %s | %s |" "$1" "$(col "$1" 1)" "$(col "$1" 2)" "$(col "$1" 3)" \
    "$(us "$(col "$1" 4)")" "$(us "$(col "$1" 5)")" "$(us "$(col "$1" 6)")"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

# --- RSS with 1,000 connections -----------------------------------------------------------

timeout 60 taskset -c 1 wrk -t1 -c1000 -d5s -s "$WORK/proxy.lua" "http://127.0.0.1:$BEARERD/" > "$WORK/c1000.txt"
BEARERD_1000=$(hwm $BEARERD_PID)
grep -q "Non-2xx" "$WORK/c1000.txt" && { echo "load.sh: errors with 1,000 connections" >&2; cat "$WORK/c1000.txt" >&2; exit 1; }
kill "$BEARERD_PID"; wait "$BEARERD_PID" 2>/dev/null || true

# --- start to ready with 100 auth configs -------------------------------------------------

{
  echo "listen: 127.0.0.1:$BEARERD"
  echo "admin_listen: 127.0.0.1:$ADMIN"
  echo "auth_configs:"
  for i in $(seq 1 100); do
    printf "  - id: c%d\n    token_url: https://idp%d.example.com/oauth2/token\n    client_id: c%d\n    client_secret: s%d\n    scopes: [api.read]\n    allowed_hosts: [api%d.example.com]\n" "$i" "$i" "$i" "$i" "$i"
  done
} > "$WORK/hundred.yaml"
for _ in 1 2 3; do
  start=$(date +%s%N)
  RUST_LOG=warn "$BIN" --config "$WORK/hundred.yaml" 2>/dev/null &
  pid=$!
  until curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN/readyz"; do sleep 0.001; done
  end=$(date +%s%N)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo $(( (end - start) / 1000000 )) >> "$WORK/start.runs"
done
START_MS=$(median < "$WORK/start.runs")

# --- burst: 10,000 concurrent requests, cold cache, slow token endpoint -------------------

python3 "$WORK/tokens.py" $((TOKENS + 1)) 1.5 &
SLOW_PID=$!
PIDS+=($SLOW_PID)
wait_http "http://127.0.0.1:$((TOKENS + 1))/"
bearerd_config $((TOKENS + 1)) > "$WORK/burst.yaml"
RUST_LOG=warn taskset -c 0 "$BIN" --config "$WORK/burst.yaml" 2>"$WORK/burst.log" &
BURST_PID=$!
PIDS+=($BURST_PID)
wait_http "http://127.0.0.1:$ADMIN/healthz"
timeout 120 taskset -c 1 wrk -t2 -c10000 -d4s --timeout 10s -s "$WORK/proxy.lua" "http://127.0.0.1:$BEARERD/" > "$WORK/burst.txt"
BURST_TOKENS=$(curl -s "http://127.0.0.1:$((TOKENS + 1))/")
BURST_REQUESTS=$(awk '/requests in/ {print $1}' "$WORK/burst.txt")
BURST_ERRORS=$(awk '/Socket errors/ {gsub(",", ""); s += $4 + $6 + $8 + $10} /Non-2xx/ {s += $5} END {print s + 0}' "$WORK/burst.txt")
METRIC_200=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^bearerd_requests_total\{auth_config="bench",status="200"\}/ {print $2}')
METRIC_ERR=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^bearerd_requests_total\{auth_config="bench"/ && !/status="200"/ {s += $2} END {print s + 0}')
METRIC_ERR_BY=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -F'status="' '/^bearerd_requests_total\{auth_config="bench"/ && !/status="200"/ {split($2, a, "\""); split($2, v, " "); printf "%s %s; ", a[1], v[2]}')

# --- report -------------------------------------------------------------------------------

B_RPS=$(col bearerd 1) N_RPS=$(col nginx 1) D_RPS=$(col direct 1) R_RPS=$(col relay 1) R_CPU=$(col relay 4)
B_P99=$(col bearerd 3) N_P99=$(col nginx 3)
B_CPU=$(col bearerd 4) N_CPU=$(col nginx 4)
{
  echo "# Load comparison results"
  echo
  echo "Produced by \`bash benches/load.sh\` on $(date -u +%Y-%m-%d) ($(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))."
  echo "wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), nginx $(nginx -v 2>&1 | cut -d/ -f2), bearerd $("$BIN" --version | awk '{print $2}') (release)."
  echo "Upstream and proxies pinned to CPU 0, wrk to CPU 1; $CONNECTIONS keep-alive connections,"
  echo "${DURATION} s per run, median of $REPS runs (direct, nginx, bearerd and relay taking turns). Proxies receive absolute-form requests"
  echo "(\`GET http://127.0.0.1:$UPSTREAM/\`), as from HTTP_PROXY apps; nginx sets a static"
  echo "\`Authorization\` header and keeps 64 upstream connections alive; bearerd injects a cached token."
  echo
  echo "CPU is the proxy's (for direct, the upstream's), from /proc/PID/stat, split into user and kernel time."
  echo
  echo "| path | req/s | p50 µs | p99 µs | CPU µs/request | user | kernel |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  row direct; echo
  row nginx; echo
  row bearerd; echo
  row relay; echo
  echo
  echo "relay is benches/relay.rs, the floor for a proxy on tokio: it copies bytes between each"
  echo "client connection and its own upstream connection and reads no HTTP (no parsing, routing,"
  echo "token or header work), on the same current-thread runtime and the same socket calls."
  echo
  echo "| ratio | value | target |"
  echo "| --- | ---: | --- |"
  echo "| bearerd / nginx throughput | $(ratio "$B_RPS" "$N_RPS") | ≥ 1.2 |"
  echo "| bearerd / nginx p99 | $(ratio "$B_P99" "$N_P99") | ≤ 1.0 |"
  echo "| bearerd / nginx CPU per request | $(ratio "$B_CPU" "$N_CPU") | ≤ 0.8 |"
  echo "| bearerd / direct throughput | $(ratio "$B_RPS" "$D_RPS") | |"
  echo "| nginx / direct throughput | $(ratio "$N_RPS" "$D_RPS") | |"
  echo "| relay / nginx throughput | $(ratio "$R_RPS" "$N_RPS") | |"
  echo "| relay / nginx CPU per request | $(ratio "$R_CPU" "$N_CPU") | |"
  echo
  echo "All three proxies make one read and one write on each side per request (see"
  echo "benches/README.md). The relay's $(us "$R_CPU") µs per request is what tokio and the kernel's loopback"
  echo "TCP cost before any HTTP work. The CPU target (0.8 × $(us "$N_CPU") = $(us $((N_CPU * 8 / 10))) µs) leaves"
  echo "$(us $((N_CPU * 8 / 10 - R_CPU))) µs over the relay for parsing, routing, the token and the headers; nginx spends"
  echo "$(us $((N_CPU - R_CPU))) µs over the relay, bearerd $(us $((B_CPU - R_CPU)))."
  echo
  echo "| memory and start-up | bearerd | nginx (master + worker) | target (bearerd) |"
  echo "| --- | ---: | ---: | --- |"
  echo "| idle RSS | $(awk -v k="$BEARERD_IDLE" 'BEGIN {printf "%.1f MB", k*1024/1e6}') | $(awk -v k="$NGINX_IDLE" 'BEGIN {printf "%.1f MB", k*1024/1e6}') | ≤ 10 MB |"
  echo "| peak RSS under the $CONNECTIONS-connection load | $(awk -v k="$BEARERD_LOAD" 'BEGIN {printf "%.1f MB", k*1024/1e6}') | $(awk -v k="$NGINX_LOAD" 'BEGIN {printf "%.1f MB", k*1024/1e6}') | |"
  echo "| peak RSS with 1,000 connections | $(awk -v k="$BEARERD_1000" 'BEGIN {printf "%.1f MB", k*1024/1e6}') | | ≤ 64 MB |"
  echo "| start to /readyz with 100 auth configs (median of 3) | $START_MS ms | | ≤ 50 ms |"
  echo
  echo "Burst: wrk with 10,000 connections against a cold cache and a token endpoint that takes"
  echo "1.5 s: $BURST_TOKENS token request(s); $BURST_REQUESTS requests answered in 4 s;"
  echo "bearerd counted $METRIC_200 answered 200 and $METRIC_ERR other (${METRIC_ERR_BY:-none}); wrk socket"
  echo "errors and non-2xx: $BURST_ERRORS."
} > benches/RESULTS.md
cat benches/RESULTS.md
