#!/usr/bin/env bash
# Load comparison: bearerd beside nginx (and HAProxy), in one run on one machine.
#
#   bash benches/load.sh            (needs wrk, nginx, haproxy, openssl, python3, curl,
#                                    taskset; on Debian the missing ones are installed:
#                                    wrk nginx-light haproxy openssl)
#
# Modes (MODES, default all, in this order):
#
# - plain: app → proxy plain HTTP, proxy → plain-HTTP upstream. The upstream is nginx
#   answering a fixed 200 on 127.0.0.1:18081; nginx as an HTTP forward proxy on :18082 that
#   sets a static Authorization header and keeps upstream connections alive; bearerd on
#   :18083 with a cached token (fetched once from a tiny token endpoint); benches/relay.rs on
#   :18087, a tokio TCP relay that reads no HTTP: the floor for any proxy built on tokio.
#   wrk sends absolute-form requests (`GET http://127.0.0.1:18081/ HTTP/1.1`), as HTTP_PROXY
#   apps do. Then bearerd's RSS with 1,000 connections.
# - https: app → proxy plain HTTP absolute-form (`GET http://localhost:18443/`), proxy → a
#   TLS 1.3 nginx upstream on :18443 (certificate for localhost from a CA the script makes),
#   verified and kept alive: nginx on :18086 (`proxy_pass https://`, keepalive 64,
#   `proxy_ssl_verify on`, static Authorization), HAProxy on :18088 (`ssl verify required
#   ca-file`, `http-reuse always`, one thread, static Authorization) and a second bearerd on
#   :18089 (an `upstream_tls: true` route, the CA in `tls.ca_file`, interception on). The
#   direct row is wrk speaking TLS to the upstream itself.
# - intercept: the app speaks TLS to the proxy: to bearerd (:18089) through `CONNECT
#   localhost:18443` and a TLS handshake with the certificate bearerd minted (trusting its
#   ca_bundle_out), then requests inside; to nginx (:18446) terminating TLS itself, no
#   CONNECT, with the same static header and the same verified, kept-alive TLS upstream. wrk
#   cannot CONNECT, so these rows are driven by benches/loadgen.rs, the same way for both
#   (and for the direct row, TLS to the upstream). Then bearerd's idle RSS with interception
#   on (measured before any request) and its RSS with 1,000 intercepted TLS connections.
# - latency: added latency. One connection at a fixed RATE (1,000 req/s), LATENCY_DURATION
#   seconds each, benches/loadgen.rs: direct, nginx and bearerd for the plain and https
#   modes, bearerd intercepted; p50 and p99, and bearerd's over direct (plain over the plain
#   upstream, https and intercepted over TLS to the upstream directly).
# - startup: start to /readyz with 100 auth configs.
# - burst: 10,000 concurrent requests on a cold cache against a slow token endpoint.
# - multicore: the plain path with nothing pinned: nginx with 2 worker processes (its
#   upstream too) against bearerd with `worker_threads: 2`, wrk with 2 threads (no target:
#   the figure users with more than one core ask for).
#
# The upstreams and the proxies are pinned to CPU 0, the load generator to CPU 1; CONNECTIONS
# (50) keep-alive connections, REPS (3) repetitions of DURATION (10) seconds for each path,
# the paths taking turns within a mode; the script reports medians. CPU per request is the
# proxy's own (for direct, the upstream's), from /proc/PID/stat.
#
#   MODES="https intercept" DURATION=3 REPS=1 LATENCY_DURATION=3 bash benches/load.sh
#
# runs a short, partial comparison. Writes RESULTS (benches/RESULTS.md) and prints it.
# Starts and stops everything by PID; every command is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."

MODES=${MODES:-plain https intercept latency startup burst multicore}
DURATION=${DURATION:-10}
REPS=${REPS:-3}
CONNECTIONS=${CONNECTIONS:-50}
RATE=${RATE:-1000}
LATENCY_DURATION=${LATENCY_DURATION:-10}
RESULTS=${RESULTS:-benches/RESULTS.md}
UPSTREAM=18081 NGINX=18082 BEARERD=18083 ADMIN=18093 TOKENS=18084 RELAY=18087
UPSTREAM_TLS=18443 NGINX_HTTPS=18086 NGINX_TERM=18446 HAPROXY=18088 BEARERD_TLS=18089 ADMIN_TLS=18094
source benches/common.sh
has() { [[ " $MODES " == *" $1 "* ]]; }
for mode in $MODES; do
  case $mode in plain | https | intercept | latency | startup | burst | multicore) ;; *) echo "load.sh: unknown mode $mode" >&2; exit 2 ;; esac
done
tls_modes() { has https || has intercept || has latency; }

# Installs what is missing (Debian packages; benches are not run in CI).
missing=()
for pair in wrk:wrk nginx:nginx-light python3:python3 curl:curl taskset:util-linux openssl:openssl haproxy:haproxy; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}..." >&2
  as_root=(); [ "$(id -u)" = 0 ] || as_root=(sudo)
  timeout 300 "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 600 "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >&2
fi
need wrk nginx python3 curl taskset openssl haproxy
# 10,000 client connections and as many upstream ones need more than the usual 1,024 fds.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "building bearerd (release)..." >&2
# benches/relay.rs (the floor) and benches/loadgen.rs (the load for what wrk cannot do);
# their executables' paths are in cargo's JSON report. Built first: cargo builds the
# package's binary for benches too, with the dev-dependencies' features unified in (tokio's
# test-util among them), and puts it in target/release/bearerd's place; the release build
# after it puts back the binary users run, and the run measures a copy of that.
timeout 900 cargo bench --locked --bench relay --bench loadgen --no-run --message-format=json 2>/dev/null > "$WORK/benches.json"
timeout 900 cargo build --release --locked --quiet
cp target/release/bearerd "$WORK/bearerd"
BIN=$WORK/bearerd
bench_bin() {
  python3 -c 'import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[2] and m.get("executable"):
        print(m["executable"])' "$WORK/benches.json" "$1"
}
RELAY_BIN=$(bench_bin relay)
LOADGEN_BIN=$(bench_bin loadgen)
[ -x "$RELAY_BIN" ] && [ -x "$LOADGEN_BIN" ] || { echo "load.sh: the relay and loadgen benches did not build" >&2; exit 1; }
TICK=$(getconf CLK_TCK)

# --- helpers ------------------------------------------------------------------------------

# CPU ticks of the given PIDs: "user system".
ticks() { local u=0 s=0; for p in "$@"; do read -r pu ps < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + pu)); s=$((s + ps)); done; echo "$u $s"; }
# Resident and peak-resident memory of the given PIDs, in KiB.
rss() { local t=0; for p in "$@"; do t=$((t + $(awk '/^VmRSS/{print $2}' "/proc/$p/status"))); done; echo "$t"; }
hwm() { local t=0; for p in "$@"; do t=$((t + $(awk '/^VmHWM/{print $2}' "/proc/$p/status"))); done; echo "$t"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f MB", k*1024/1e6}'; }
children() { pgrep -P "$1" | tr '\n' ' '; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# wrk's latency as microseconds ("612.00us", "1.20ms", "2.01s").
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} else print v}'; }
# Waits until bearerd's /readyz answers 200, or fails naming its log.
wait_ready() { # admin-port pid log
  for _ in $(seq 1 500); do
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$1/readyz" && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.02
  done
  echo "load.sh: bearerd did not get ready:" >&2; cat "$3" >&2; exit 1
}

# Runs one load (`wrk ...` or `loadgen ...`) on CPU 1 while PROCS work, and appends
# "rps p50_us p99_us cpu_ns user_ns system_ns late" (CPU per request; late: loadgen's
# fixed-rate sends that started over 1 ms after their time, 0 for wrk) to $WORK/NAME.runs.
measure() { # rep name "procs" command...
  local rep=$1 name=$2; local procs=($3); shift 3
  local before after out requests rps p50 p99 user system late=0
  before=$(ticks "${procs[@]}")
  if [ "$1" = loadgen ]; then
    shift
    out=$(timeout $((DURATION + 90)) taskset -c 1 "$LOADGEN_BIN" --duration "$DURATION" "$@") || { echo "load.sh: loadgen failed for $name" >&2; exit 1; }
    after=$(ticks "${procs[@]}")
    field() { echo "$out" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }
    requests=$(field requests) rps=$(field rps) p50=$(field p50_us) p99=$(field p99_us) late=$(field late)
    [ "$(field errors)" = 0 ] || { echo "load.sh: $name had errors: $out" >&2; exit 1; }
  else
    local pin=(taskset -c 1)
    [ -z "${UNPINNED:-}" ] || pin=()
    out=$(timeout $((DURATION + 30)) "${pin[@]}" "$@")
    after=$(ticks "${procs[@]}")
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}' | to_us)
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}' | to_us)
    if echo "$out" | grep -q "Non-2xx"; then echo "load.sh: $name answered non-2xx:" >&2; echo "$out" >&2; exit 1; fi
  fi
  [ "${requests:-0}" -gt 0 ] || { echo "load.sh: $name answered no request: $out" >&2; exit 1; }
  read -r user system < <(echo "$before $after" | awk '{print $3 - $1, $4 - $2}')
  echo "$rps $p50 $p99 $(( (user + system) * 1000000000 / TICK / requests )) $(( user * 1000000000 / TICK / requests )) $(( system * 1000000000 / TICK / requests )) $late" >> "$WORK/$name.runs"
  echo "  $name rep $rep: $rps req/s, p50 ${p50}us, p99 ${p99}us, user $((user * 1000000000 / TICK / requests)) ns + kernel $((system * 1000000000 / TICK / requests)) ns per request" >&2
}
col() { awk -v c="$2" '{print $c}' "$WORK/$1.runs" | median; }
# CPU columns are nanoseconds per request (integer arithmetic); printed as microseconds.
us() { awk -v n="$1" 'BEGIN {printf "%.1f", n / 1000}'; }
row() { # name [label]
  printf "| %s | %.0f | %.0f | %.0f | %s | %s | %s |\n" "${2:-$1}" "$(col "$1" 1)" "$(col "$1" 2)" "$(col "$1" 3)" \
    "$(us "$(col "$1" 4)")" "$(us "$(col "$1" 5)")" "$(us "$(col "$1" 6)")"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
table_head() {
  echo "| path | req/s | p50 µs | p99 µs | CPU µs/request | user | kernel |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
}
# Report parts are written as each mode ends, then put together.
report() { cat >> "$WORK/report.$1"; }

# --- upstreams, peers and bearerd ---------------------------------------------------------

python3 "$WORK/tokens.py" "$TOKENS" 0 &
PIDS+=($!)
wait_http "http://127.0.0.1:$TOKENS/"

if has plain || has latency; then
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
  UPSTREAM_PID=$!
  PIDS+=($UPSTREAM_PID)
  taskset -c 0 nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log" &
  NGINX_PID=$!
  PIDS+=($NGINX_PID)
  wait_http "http://127.0.0.1:$UPSTREAM/"
  wait_http "http://127.0.0.1:$NGINX/"
  UPSTREAM_PROCS="$UPSTREAM_PID $(children "$UPSTREAM_PID")"
  NGINX_PROCS="$NGINX_PID $(children "$NGINX_PID")"

  bearerd_config "$TOKENS" > "$WORK/bearerd.yaml"
  RUST_LOG=warn taskset -c 0 "$BIN" --config "$WORK/bearerd.yaml" 2>"$WORK/bearerd.log" &
  BEARERD_PID=$!
  PIDS+=($BEARERD_PID)
  wait_ready "$ADMIN" "$BEARERD_PID" "$WORK/bearerd.log"
fi
if has plain; then
  taskset -c 0 "$RELAY_BIN" "127.0.0.1:$RELAY" "127.0.0.1:$UPSTREAM" &
  RELAY_PID=$!
  PIDS+=($RELAY_PID)
  wait_http "http://127.0.0.1:$RELAY/"
fi

if tls_modes; then
  # A CA of the benchmark's own and the upstream's certificate from it (ECDSA P-256, for
  # localhost and 127.0.0.1); every TLS client here verifies against it.
  (
    cd "$WORK"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
      -out ca.pem -days 2 -subj "/CN=bearerd bench CA" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout leaf.key \
      -out leaf.csr -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' > leaf.ext
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile leaf.ext -out leaf.pem 2>/dev/null
  )
  # The TLS upstream: nginx answering a fixed 200 `ok` over TLS 1.3 only.
  tls_server="ssl_certificate $WORK/leaf.pem; ssl_certificate_key $WORK/leaf.key; ssl_protocols TLSv1.3;"
  nginx_conf upstream-tls "server { listen 127.0.0.1:$UPSTREAM_TLS ssl; $tls_server location / { return 200 'ok'; } }" \
    > "$WORK/upstream-tls.conf"
  # nginx's two TLS paths: plain HTTP in and TLS to the upstream (https mode), and TLS
  # terminated from the app (intercept mode's peer); both set a static Authorization and
  # keep 64 verified upstream connections alive.
  to_tls_upstream="proxy_pass https://tlsapi;
      proxy_http_version 1.1;
      proxy_set_header Connection '';
      proxy_set_header Authorization 'Bearer static-token-for-the-benchmark';
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $WORK/ca.pem;
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_session_reuse on;"
  nginx_conf proxy-tls "upstream tlsapi { server 127.0.0.1:$UPSTREAM_TLS; keepalive 64; }
  server { listen 127.0.0.1:$NGINX_HTTPS; location / { $to_tls_upstream } }
  server { listen 127.0.0.1:$NGINX_TERM ssl; $tls_server location / { $to_tls_upstream } }" > "$WORK/nginx-tls.conf"
  # HAProxy, one thread as the others have, verifying the upstream and reusing its
  # connections for any request.
  cat > "$WORK/haproxy.cfg" <<CFG
global
  nbthread 1
  maxconn 4000
  ssl-server-verify required
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend app
  bind 127.0.0.1:$HAPROXY
  http-request set-header Authorization "Bearer static-token-for-the-benchmark"
  default_backend api
backend api
  server upstream 127.0.0.1:$UPSTREAM_TLS ssl verify required ca-file $WORK/ca.pem sni str(localhost) verifyhost localhost alpn http/1.1
CFG
  taskset -c 0 nginx -c "$WORK/upstream-tls.conf" -p "$WORK" -e "$WORK/upstream-tls-error.log" &
  UPSTREAM_TLS_PID=$!
  PIDS+=($UPSTREAM_TLS_PID)
  taskset -c 0 nginx -c "$WORK/nginx-tls.conf" -p "$WORK" -e "$WORK/nginx-tls-error.log" &
  NGINX_TLS_PID=$!
  PIDS+=($NGINX_TLS_PID)
  taskset -c 0 haproxy -db -f "$WORK/haproxy.cfg" 2>"$WORK/haproxy.log" &
  HAPROXY_PID=$!
  PIDS+=($HAPROXY_PID)
  wait_http "http://127.0.0.1:$NGINX_HTTPS/"
  wait_http "http://127.0.0.1:$HAPROXY/"
  UPSTREAM_TLS_PROCS="$UPSTREAM_TLS_PID $(children "$UPSTREAM_TLS_PID")"
  NGINX_TLS_PROCS="$NGINX_TLS_PID $(children "$NGINX_TLS_PID")"

  # The second bearerd: the TLS upstream by an `upstream_tls: true` route, and interception
  # of CONNECTs to it, with its CA in ca_bundle_out for the app.
  {
    echo "listen: 127.0.0.1:$BEARERD_TLS"
    echo "admin_listen: 127.0.0.1:$ADMIN_TLS"
    echo "config_watch_interval: 0s"
    echo "tls:"
    echo "  ca_file: $WORK/ca.pem"
    echo "intercept:"
    echo "  ca_bundle_out: $WORK/bearerd-ca-bundle.pem"
    bearerd_config "$TOKENS" | sed -n '/^auth_configs:/,/^routes:/p'
    echo "  - match: { host: localhost }"
    echo "    auth_config: bench"
    echo "    upstream_tls: true"
    echo "    intercept: true"
  } > "$WORK/bearerd-tls.yaml"
  RUST_LOG=warn taskset -c 0 "$BIN" --config "$WORK/bearerd-tls.yaml" 2>"$WORK/bearerd-tls.log" &
  BEARERD_TLS_PID=$!
  PIDS+=($BEARERD_TLS_PID)
  wait_ready "$ADMIN_TLS" "$BEARERD_TLS_PID" "$WORK/bearerd-tls.log"
fi

sleep 1
# Idle: started, nothing asked yet (interception on for the second bearerd).
if [ -n "${BEARERD_PID:-}" ]; then BEARERD_IDLE=$(rss "$BEARERD_PID") NGINX_IDLE=$(rss $NGINX_PROCS); fi
if [ -n "${BEARERD_TLS_PID:-}" ]; then BEARERD_TLS_IDLE=$(rss "$BEARERD_TLS_PID"); fi

# Warm: fetch the tokens once, open the paths; each must answer the upstream's `ok`.
check() { # what curl-arguments...
  local body
  body=$(curl -s --max-time 10 "${@:2}") || true
  [ "$body" = ok ] || { echo "load.sh: $1 answered '$body'" >&2; exit 1; }
}
if [ -n "${BEARERD_PID:-}" ]; then
  check bearerd -x "http://127.0.0.1:$BEARERD" "http://127.0.0.1:$UPSTREAM/"
  check nginx -x "http://127.0.0.1:$NGINX" "http://127.0.0.1:$UPSTREAM/"
fi
if tls_modes; then
  check "the TLS upstream" --cacert "$WORK/ca.pem" "https://localhost:$UPSTREAM_TLS/"
  check "bearerd to the TLS upstream" -x "http://127.0.0.1:$BEARERD_TLS" "http://localhost:$UPSTREAM_TLS/"
  check "bearerd intercepting" --cacert "$WORK/bearerd-ca-bundle.pem" -x "http://127.0.0.1:$BEARERD_TLS" "https://localhost:$UPSTREAM_TLS/"
  check "nginx to the TLS upstream" -x "http://127.0.0.1:$NGINX_HTTPS" "http://localhost:$UPSTREAM_TLS/"
  check "nginx terminating TLS" --cacert "$WORK/ca.pem" --connect-to "localhost:$UPSTREAM_TLS:127.0.0.1:$NGINX_TERM" "https://localhost:$UPSTREAM_TLS/"
  check "HAProxy to the TLS upstream" -x "http://127.0.0.1:$HAPROXY" "http://localhost:$UPSTREAM_TLS/"
fi

# wrk's scripts for requests through a proxy: absolute-form, as an HTTP_PROXY client sends
# them (proxy.lua, from common.sh, for the plain upstream; https.lua for the TLS one, by
# the name its certificate has).
cat > "$WORK/https.lua" <<LUA
local absolute
init = function(args)
  absolute = wrk.format("GET", "http://localhost:$UPSTREAM_TLS/", { Host = "localhost:$UPSTREAM_TLS" })
end
request = function() return absolute end
LUA
# loadgen's arguments for the TLS paths: straight to the upstream, to nginx terminating TLS,
# and through bearerd's CONNECT (trusting the bundle bearerd wrote).
TLS_DIRECT=(--to "127.0.0.1:$UPSTREAM_TLS" --tls localhost --ca "$WORK/ca.pem" --host "localhost:$UPSTREAM_TLS" --target /)
TLS_NGINX=(--to "127.0.0.1:$NGINX_TERM" --tls localhost --ca "$WORK/ca.pem" --host "localhost:$UPSTREAM_TLS" --target /)
TLS_BEARERD=(--to "127.0.0.1:$BEARERD_TLS" --connect "localhost:$UPSTREAM_TLS" --tls localhost --ca "$WORK/bearerd-ca-bundle.pem" --host "localhost:$UPSTREAM_TLS" --target /)

# --- plain: plain-HTTP upstream -----------------------------------------------------------

WRK=(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency)
if has plain; then
  echo "plain: $REPS x ${DURATION}s, $CONNECTIONS connections..." >&2
  # Repetitions interleave the paths, so a change in the machine's speed during the run
  # (shared cloud CPUs) lands on all of them alike instead of on whichever ran last.
  for rep in $(seq 1 "$REPS"); do
    measure "$rep" direct "$UPSTREAM_PROCS" "${WRK[@]}" "http://127.0.0.1:$UPSTREAM/"
    measure "$rep" nginx "$NGINX_PROCS" "${WRK[@]}" -s "$WORK/proxy.lua" "http://127.0.0.1:$NGINX/"
    measure "$rep" bearerd "$BEARERD_PID" "${WRK[@]}" -s "$WORK/proxy.lua" "http://127.0.0.1:$BEARERD/"
    measure "$rep" relay "$RELAY_PID" "${WRK[@]}" -s "$WORK/proxy.lua" "http://127.0.0.1:$RELAY/"
  done
  kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true
  BEARERD_LOAD=$(hwm "$BEARERD_PID")
  NGINX_LOAD=$(hwm $NGINX_PROCS)
  timeout 60 taskset -c 1 wrk -t1 -c1000 -d5s -s "$WORK/proxy.lua" "http://127.0.0.1:$BEARERD/" > "$WORK/c1000.txt"
  BEARERD_1000=$(hwm "$BEARERD_PID")
  if grep -q "Non-2xx" "$WORK/c1000.txt"; then echo "load.sh: errors with 1,000 connections" >&2; cat "$WORK/c1000.txt" >&2; exit 1; fi

  B_RPS=$(col bearerd 1) N_RPS=$(col nginx 1) D_RPS=$(col direct 1) R_RPS=$(col relay 1) R_CPU=$(col relay 4)
  B_P99=$(col bearerd 3) N_P99=$(col nginx 3)
  B_CPU=$(col bearerd 4) N_CPU=$(col nginx 4)
  report plain <<MD
## Plain upstream

App → proxy plain HTTP, absolute-form (\`GET http://127.0.0.1:$UPSTREAM/\`), as from HTTP_PROXY
apps; proxy → the plain-HTTP nginx upstream. wrk, $CONNECTIONS keep-alive connections. nginx sets
a static \`Authorization\` header and keeps 64 upstream connections alive; bearerd injects a cached token.

$(table_head)
$(row direct)
$(row nginx)
$(row bearerd)
$(row relay)

relay is benches/relay.rs, the floor for a proxy on tokio: it copies bytes between each
client connection and its own upstream connection and reads no HTTP (no parsing, routing,
token or header work), on the same current-thread runtime and the same socket calls.

| ratio | value | target |
| --- | ---: | --- |
| bearerd / nginx throughput | $(ratio "$B_RPS" "$N_RPS") | ≥ 1.2 (issue 24: stays ≥ 1.1) |
| bearerd / nginx p99 | $(ratio "$B_P99" "$N_P99") | ≤ 1.0 |
| bearerd / nginx CPU per request | $(ratio "$B_CPU" "$N_CPU") | ≤ 0.8 |
| bearerd / direct throughput | $(ratio "$B_RPS" "$D_RPS") | |
| nginx / direct throughput | $(ratio "$N_RPS" "$D_RPS") | |
| relay / nginx throughput | $(ratio "$R_RPS" "$N_RPS") | |
| relay / nginx CPU per request | $(ratio "$R_CPU" "$N_CPU") | |

All three proxies make one read and one write on each side per request (see
benches/README.md). The relay's $(us "$R_CPU") µs per request is what tokio and the kernel's loopback
TCP cost before any HTTP work. The CPU target (0.8 × $(us "$N_CPU") = $(us $((N_CPU * 8 / 10))) µs) leaves
$(us $((N_CPU * 8 / 10 - R_CPU))) µs over the relay for parsing, routing, the token and the headers; nginx spends
$(us $((N_CPU - R_CPU))) µs over the relay, bearerd $(us $((B_CPU - R_CPU))).

| memory | bearerd | nginx (master + worker) | target (bearerd) |
| --- | ---: | ---: | --- |
| idle RSS | $(mb "$BEARERD_IDLE") | $(mb "$NGINX_IDLE") | ≤ 10 MB |
| peak RSS under the $CONNECTIONS-connection load | $(mb "$BEARERD_LOAD") | $(mb "$NGINX_LOAD") | |
| peak RSS with 1,000 connections | $(mb "$BEARERD_1000") | | ≤ 64 MB |
MD
fi

# --- https: TLS upstream ------------------------------------------------------------------

if has https; then
  echo "https: $REPS x ${DURATION}s, $CONNECTIONS connections..." >&2
  for rep in $(seq 1 "$REPS"); do
    measure "$rep" https-direct "$UPSTREAM_TLS_PROCS" "${WRK[@]}" "https://localhost:$UPSTREAM_TLS/"
    measure "$rep" https-nginx "$NGINX_TLS_PROCS" "${WRK[@]}" -s "$WORK/https.lua" "http://127.0.0.1:$NGINX_HTTPS/"
    measure "$rep" https-haproxy "$HAPROXY_PID" "${WRK[@]}" -s "$WORK/https.lua" "http://127.0.0.1:$HAPROXY/"
    measure "$rep" https-bearerd "$BEARERD_TLS_PID" "${WRK[@]}" -s "$WORK/https.lua" "http://127.0.0.1:$BEARERD_TLS/"
  done
  B_RPS=$(col https-bearerd 1) N_RPS=$(col https-nginx 1) H_RPS=$(col https-haproxy 1)
  B_P99=$(col https-bearerd 3) N_P99=$(col https-nginx 3) H_P99=$(col https-haproxy 3)
  B_CPU=$(col https-bearerd 4) N_CPU=$(col https-nginx 4) H_CPU=$(col https-haproxy 4)
  report https <<MD
## HTTPS upstream

App → proxy plain HTTP, absolute-form (\`GET http://localhost:$UPSTREAM_TLS/\`); proxy → a TLS 1.3
nginx upstream (ECDSA P-256 certificate for localhost from the run's own CA), verified and kept
alive. wrk, $CONNECTIONS keep-alive connections. nginx: \`proxy_pass https://\`, keepalive 64,
\`proxy_ssl_verify on\` against the CA, static \`Authorization\`; HAProxy: \`ssl verify required
ca-file\`, \`http-reuse always\`, \`nbthread 1\`, static \`Authorization\`; bearerd: an
\`upstream_tls: true\` route, the CA in \`tls.ca_file\`, interception on, cached token. The direct
row is wrk speaking TLS to the upstream (its CPU is the upstream's).

$(table_head)
$(row https-direct "direct (wrk over TLS)")
$(row https-nginx nginx)
$(row https-haproxy HAProxy)
$(row https-bearerd bearerd)

| ratio | value | target (issue 24) |
| --- | ---: | --- |
| bearerd / nginx throughput | $(ratio "$B_RPS" "$N_RPS") | ≥ 1.2 |
| bearerd / nginx p99 | $(ratio "$B_P99" "$N_P99") | ≤ 1.0 |
| bearerd / nginx CPU per request | $(ratio "$B_CPU" "$N_CPU") | ≤ 0.8 |
| bearerd / HAProxy throughput | $(ratio "$B_RPS" "$H_RPS") | |
| bearerd / HAProxy p99 | $(ratio "$B_P99" "$H_P99") | |
| bearerd / HAProxy CPU per request | $(ratio "$B_CPU" "$H_CPU") | |
MD
fi

# --- intercept: the app's TLS terminated by the proxy -------------------------------------

if has intercept; then
  echo "intercept: $REPS x ${DURATION}s, $CONNECTIONS connections..." >&2
  for rep in $(seq 1 "$REPS"); do
    measure "$rep" tls-direct "$UPSTREAM_TLS_PROCS" loadgen --connections "$CONNECTIONS" "${TLS_DIRECT[@]}"
    measure "$rep" tls-nginx "$NGINX_TLS_PROCS" loadgen --connections "$CONNECTIONS" "${TLS_NGINX[@]}"
    measure "$rep" tls-bearerd "$BEARERD_TLS_PID" loadgen --connections "$CONNECTIONS" "${TLS_BEARERD[@]}"
  done
  # 1,000 intercepted TLS connections, each with requests under way.
  timeout 120 taskset -c 1 "$LOADGEN_BIN" --duration 5 --connections 1000 "${TLS_BEARERD[@]}" > "$WORK/tls1000.txt" \
    || { echo "load.sh: 1,000 intercepted connections failed" >&2; exit 1; }
  grep -q ' errors=0 ' "$WORK/tls1000.txt" || { echo "load.sh: errors with 1,000 intercepted connections: $(cat "$WORK/tls1000.txt")" >&2; exit 1; }
  BEARERD_TLS_1000=$(hwm "$BEARERD_TLS_PID")
  INTERCEPTED_OK=$(curl -s "http://127.0.0.1:$ADMIN_TLS/metrics" | awk '/^bearerd_intercepted_connections_total\{outcome="ok"\}/ {print $2}')
  B_RPS=$(col tls-bearerd 1) N_RPS=$(col tls-nginx 1)
  B_P99=$(col tls-bearerd 3) N_P99=$(col tls-nginx 3)
  B_CPU=$(col tls-bearerd 4) N_CPU=$(col tls-nginx 4)
  report intercept <<MD
## Intercepted HTTPS

The app speaks TLS 1.3 to the proxy and keeps the connection alive. bearerd: \`CONNECT
localhost:$UPSTREAM_TLS\` answered 200, then a TLS handshake with the certificate bearerd minted
for localhost (the app trusts its \`ca_bundle_out\`), then requests inside, each sent on to the
TLS upstream (verified, kept alive) with the token. nginx terminates the app's TLS itself (its
certificate from the run's CA): no \`CONNECT\`, as an app calling nginx's own https:// address
would, and proxies with a static \`Authorization\` to the same upstream (\`proxy_ssl_verify on\`,
keepalive 64). wrk cannot \`CONNECT\`, so all three rows are driven by benches/loadgen.rs (one
thread, $CONNECTIONS connections, each set up once, one request at a time); direct is loadgen
speaking TLS to the upstream (its CPU is the upstream's). CPU windows include the connections'
set-up (one \`CONNECT\` and handshake per connection and run).

$(table_head)
$(row tls-direct "direct (TLS to the upstream)")
$(row tls-nginx "nginx terminating TLS")
$(row tls-bearerd "bearerd intercepting (CONNECT)")

| ratio or figure | value | target (issue 24) |
| --- | ---: | --- |
| bearerd / nginx throughput | $(ratio "$B_RPS" "$N_RPS") | ≥ 0.9 |
| bearerd / nginx p99 | $(ratio "$B_P99" "$N_P99") | |
| bearerd / nginx CPU per request | $(ratio "$B_CPU" "$N_CPU") | ≤ 1.0 |
| bearerd idle RSS, interception on (before any request) | $(mb "$BEARERD_TLS_IDLE") | ≤ 10 MB |
| bearerd peak RSS with 1,000 intercepted TLS connections (5 s, requests under way) | $(mb "$BEARERD_TLS_1000") | ≤ 64 MB |

bearerd counted ${INTERCEPTED_OK:-?} intercepted handshakes (\`ok\`) over the run. The 1,000-connection
load: $(sed 's/ /, /g' "$WORK/tls1000.txt").
MD
fi

# --- latency: added latency at a fixed rate -----------------------------------------------

if has latency; then
  echo "latency: $REPS x ${LATENCY_DURATION}s, 1 connection at $RATE req/s..." >&2
  FIXED=(loadgen --connections 1 --rate "$RATE")
  for rep in $(seq 1 "$REPS"); do
    DURATION=$LATENCY_DURATION measure "$rep" lat-direct "$UPSTREAM_PROCS" "${FIXED[@]}" --to "127.0.0.1:$UPSTREAM" --host "127.0.0.1:$UPSTREAM" --target /
    DURATION=$LATENCY_DURATION measure "$rep" lat-nginx "$NGINX_PROCS" "${FIXED[@]}" --to "127.0.0.1:$NGINX" --host "127.0.0.1:$UPSTREAM" --target "http://127.0.0.1:$UPSTREAM/"
    DURATION=$LATENCY_DURATION measure "$rep" lat-bearerd "$BEARERD_PID" "${FIXED[@]}" --to "127.0.0.1:$BEARERD" --host "127.0.0.1:$UPSTREAM" --target "http://127.0.0.1:$UPSTREAM/"
    DURATION=$LATENCY_DURATION measure "$rep" lat-tls-direct "$UPSTREAM_TLS_PROCS" "${FIXED[@]}" "${TLS_DIRECT[@]}"
    DURATION=$LATENCY_DURATION measure "$rep" lat-https-nginx "$NGINX_TLS_PROCS" "${FIXED[@]}" --to "127.0.0.1:$NGINX_HTTPS" --host "localhost:$UPSTREAM_TLS" --target "http://localhost:$UPSTREAM_TLS/"
    DURATION=$LATENCY_DURATION measure "$rep" lat-https-haproxy "$HAPROXY_PID" "${FIXED[@]}" --to "127.0.0.1:$HAPROXY" --host "localhost:$UPSTREAM_TLS" --target "http://localhost:$UPSTREAM_TLS/"
    DURATION=$LATENCY_DURATION measure "$rep" lat-https-bearerd "$BEARERD_TLS_PID" "${FIXED[@]}" --to "127.0.0.1:$BEARERD_TLS" --host "localhost:$UPSTREAM_TLS" --target "http://localhost:$UPSTREAM_TLS/"
    DURATION=$LATENCY_DURATION measure "$rep" lat-tls-nginx "$NGINX_TLS_PROCS" "${FIXED[@]}" "${TLS_NGINX[@]}"
    DURATION=$LATENCY_DURATION measure "$rep" lat-tls-bearerd "$BEARERD_TLS_PID" "${FIXED[@]}" "${TLS_BEARERD[@]}"
  done
  lat_row() { # name label direct-name
    printf "| %s | %.0f | %s | %.0f | %.0f | %+.0f | %+.0f |\n" "$2" "$(col "$1" 1)" "$(col "$1" 7)" "$(col "$1" 2)" "$(col "$1" 3)" \
      "$(awk -v a="$(col "$1" 2)" -v b="$(col "$3" 2)" 'BEGIN {print a - b}')" \
      "$(awk -v a="$(col "$1" 3)" -v b="$(col "$3" 3)" 'BEGIN {print a - b}')"
  }
  report latency <<MD
## Added latency

One keep-alive connection at a fixed $RATE requests a second (benches/loadgen.rs, sends spread
evenly; latency from the request's write to the response's last byte), ${LATENCY_DURATION} s per run,
medians of the runs' p50 and p99. A stall of the machine shows as a rate below $RATE and as late
sends (started over 200 µs after their time; the median run's count). "Over direct" is the path's figure minus the direct one of its
kind: the plain rows over the plain upstream straight, the HTTPS-upstream and intercepted rows
over TLS to the upstream straight (what the app would see without a proxy).

| path | req/s | late sends | p50 µs | p99 µs | p50 over direct | p99 over direct |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
$(lat_row lat-direct "plain: direct" lat-direct)
$(lat_row lat-nginx "plain: nginx" lat-direct)
$(lat_row lat-bearerd "plain: **bearerd**" lat-direct)
$(lat_row lat-tls-direct "TLS: direct" lat-tls-direct)
$(lat_row lat-https-nginx "HTTPS upstream: nginx" lat-tls-direct)
$(lat_row lat-https-haproxy "HTTPS upstream: HAProxy" lat-tls-direct)
$(lat_row lat-https-bearerd "HTTPS upstream: **bearerd**" lat-tls-direct)
$(lat_row lat-tls-nginx "TLS to the proxy: nginx terminating" lat-tls-direct)
$(lat_row lat-tls-bearerd "TLS to the proxy: **bearerd** intercepting" lat-tls-direct)
MD
fi

# The load is over: what follows starts bearerds of its own on the first one's ports.
if [ -n "${BEARERD_PID:-}" ]; then kill "$BEARERD_PID"; wait "$BEARERD_PID" 2>/dev/null || true; fi

# --- startup: start to ready with 100 auth configs ----------------------------------------

if has startup; then
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
    for _ in $(seq 1 10000); do
      curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN/readyz" && break
      sleep 0.001
    done
    end=$(date +%s%N)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo $(( (end - start) / 1000000 )) >> "$WORK/start.runs"
  done
  report startup <<MD
## Start-up

Start to \`/readyz\` with 100 auth configs: $(median < "$WORK/start.runs") ms (median of 3; target ≤ 50 ms).
MD
fi

# --- burst: 10,000 concurrent requests, cold cache, slow token endpoint -------------------

if has burst; then
  python3 "$WORK/tokens.py" $((TOKENS + 1)) 1.5 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$((TOKENS + 1))/"
  bearerd_config $((TOKENS + 1)) > "$WORK/burst.yaml"
  RUST_LOG=warn taskset -c 0 "$BIN" --config "$WORK/burst.yaml" 2>"$WORK/burst.log" &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$ADMIN/healthz"
  timeout 120 taskset -c 1 wrk -t2 -c10000 -d4s --timeout 10s -s "$WORK/proxy.lua" "http://127.0.0.1:$BEARERD/" > "$WORK/burst.txt"
  BURST_TOKENS=$(curl -s "http://127.0.0.1:$((TOKENS + 1))/")
  BURST_REQUESTS=$(awk '/requests in/ {print $1}' "$WORK/burst.txt")
  BURST_ERRORS=$(awk '/Socket errors/ {gsub(",", ""); s += $4 + $6 + $8 + $10} /Non-2xx/ {s += $5} END {print s + 0}' "$WORK/burst.txt")
  curl -s "http://127.0.0.1:$ADMIN/metrics" > "$WORK/burst.metrics"
  METRIC_200=$(awk '/^bearerd_requests_total\{auth_config="bench",status="200"\}/ {print $2}' "$WORK/burst.metrics")
  METRIC_ERR=$(awk '/^bearerd_requests_total\{auth_config="bench"/ && !/status="200"/ {s += $2} END {print s + 0}' "$WORK/burst.metrics")
  METRIC_ERR_BY=$(awk -F'status="' '/^bearerd_requests_total\{auth_config="bench"/ && !/status="200"/ {split($2, a, "\""); split($2, v, " "); printf "%s %s; ", a[1], v[2]}' "$WORK/burst.metrics")
  report burst <<MD
## Burst

wrk with 10,000 connections against a cold cache and a token endpoint that takes 1.5 s:
$BURST_TOKENS token request(s); $BURST_REQUESTS requests answered in 4 s; bearerd counted
${METRIC_200:-0} answered 200 and $METRIC_ERR other (${METRIC_ERR_BY:-none}); wrk socket errors and
non-2xx: $BURST_ERRORS.
MD
fi

if has multicore; then
  echo "multicore: $REPS x ${DURATION}s, $CONNECTIONS connections, nothing pinned..." >&2
  UPSTREAM_MC=18071 NGINX_MC=18072 BEARERD_MC=18073 ADMIN_MC=18074
  two_workers() { sed 's/^worker_processes 1;/worker_processes 2;/'; }
  nginx_conf upstream-mc "server { listen 127.0.0.1:$UPSTREAM_MC; location / { return 200 'ok'; } }" | two_workers \
    > "$WORK/upstream-mc.conf"
  nginx_conf proxy-mc "upstream api { server 127.0.0.1:$UPSTREAM_MC; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_MC;
    location / {
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection '';
      proxy_set_header Authorization 'Bearer static-token-for-the-benchmark';
    }
  }" | two_workers > "$WORK/nginx-mc.conf"
  nginx -c "$WORK/upstream-mc.conf" -p "$WORK" -e "$WORK/upstream-mc-error.log" &
  PIDS+=($!)
  MC_UPSTREAM_PID=$!
  nginx -c "$WORK/nginx-mc.conf" -p "$WORK" -e "$WORK/nginx-mc-error.log" &
  PIDS+=($!)
  MC_NGINX_PID=$!
  wait_http "http://127.0.0.1:$UPSTREAM_MC/"
  wait_http "http://127.0.0.1:$NGINX_MC/"
  MC_NGINX_PROCS="$MC_NGINX_PID $(children "$MC_NGINX_PID")"
  { BEARERD=$BEARERD_MC ADMIN=$ADMIN_MC bearerd_config "$TOKENS"; echo "worker_threads: 2"; } > "$WORK/bearerd-mc.yaml"
  RUST_LOG=warn "$BIN" --config "$WORK/bearerd-mc.yaml" 2>"$WORK/bearerd-mc.log" &
  MC_BEARERD_PID=$!
  PIDS+=($MC_BEARERD_PID)
  wait_ready "$ADMIN_MC" "$MC_BEARERD_PID" "$WORK/bearerd-mc.log"
  sed "s/$UPSTREAM/$UPSTREAM_MC/g" "$WORK/proxy.lua" > "$WORK/proxy-mc.lua"
  for rep in $(seq 1 "$REPS"); do
    UNPINNED=1 measure "$rep" mc-nginx "$MC_NGINX_PROCS" wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
      -s "$WORK/proxy-mc.lua" "http://127.0.0.1:$NGINX_MC/"
    UNPINNED=1 measure "$rep" mc-bearerd "$MC_BEARERD_PID" wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
      -s "$WORK/proxy-mc.lua" "http://127.0.0.1:$BEARERD_MC/"
  done
  report multicore <<MD
## Two cores

The plain path with nothing pinned: the upstream and nginx with 2 worker processes each,
bearerd with \`worker_threads: 2\`, wrk with 2 threads and $CONNECTIONS connections, all sharing
the machine's $(nproc) CPUs. No target: the figure for users with more than one core.

$(table_head)
$(row mc-nginx "nginx, 2 workers")
$(row mc-bearerd "bearerd, 2 worker threads")

bearerd / nginx throughput: $(ratio "$(col mc-bearerd 1)" "$(col mc-nginx 1)"); CPU per request: $(ratio "$(col mc-bearerd 4)" "$(col mc-nginx 4)").
MD
fi

# --- report -------------------------------------------------------------------------------

versions="wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), nginx $(nginx -v 2>&1 | cut -d/ -f2)"
if tls_modes; then versions+=", HAProxy $(haproxy -v | awk 'NR == 1 {print $3}'), OpenSSL $(openssl version | awk '{print $2}')"; fi
{
  echo "# Load comparison results"
  echo
  echo "Produced by \`MODES=\"$MODES\" bash benches/load.sh\` on $(date -u +%Y-%m-%d) at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (with uncommitted changes in src)') ($(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))."
  echo "$versions, bearerd $("$BIN" --version | awk '{print $2}') (release)."
  echo "Upstreams and proxies pinned to CPU 0, the load generator (wrk, or benches/loadgen.rs) to CPU 1;"
  echo "$CONNECTIONS keep-alive connections, ${DURATION} s per run, median of $REPS runs, the paths of a mode taking turns."
  echo "CPU is the proxy's (for direct, the upstream's), from /proc/PID/stat, split into user and kernel time."
  for part in plain https intercept latency startup burst multicore; do
    if [ -f "$WORK/report.$part" ]; then echo; cat "$WORK/report.$part"; fi
  done
} > "$RESULTS"
cat "$RESULTS"
