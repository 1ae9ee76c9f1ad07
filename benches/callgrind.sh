#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: unlike
# wall-clock numbers on a shared machine, the count is the same from run to run, so a
# change in bearerd's own CPU cost shows even when the machine's speed drifts.
#
#   bash benches/callgrind.sh       (needs valgrind, wrk, nginx, python3, curl, taskset;
#                                    Debian: apt-get install valgrind wrk nginx-light)
#
# Runs bearerd (release, symbols kept) under callgrind on one CPU, as in benches/load.sh:
# a warm-up with wrk, then counters zeroed, DURATION seconds of wrk (50 connections,
# absolute-form requests, cached token), counters dumped. Prints the instructions per
# request (bearerd's own count of answered requests) and the functions with the most
# instructions, themselves and with what they call. Stops everything it starts by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-6}
UPSTREAM=18181 BEARERD=18183 ADMIN=18193 TOKENS=18184
for tool in valgrind callgrind_control callgrind_annotate wrk nginx python3 curl taskset; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh: $tool is not installed" >&2; exit 1; }
done
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.3
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "building bearerd (release, with symbols)..." >&2
TARGET=${CARGO_TARGET_DIR:-target}/callgrind
CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  timeout 900 cargo build --release --locked --quiet --target-dir "$TARGET"
BIN=$TARGET/release/bearerd

cat > "$WORK/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/upstream.pid; error_log $WORK/upstream-error.log warn;
events { worker_connections 1024; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $WORK/b; proxy_temp_path $WORK/p; fastcgi_temp_path $WORK/f; uwsgi_temp_path $WORK/u; scgi_temp_path $WORK/s;
  server { listen 127.0.0.1:$UPSTREAM; location / { return 200 'ok'; } }
}
CONF
nginx -c "$WORK/upstream.conf" -p "$WORK" -e "$WORK/upstream-error.log" &
PIDS+=($!)
python3 - "$TOKENS" <<'PY' &
import http.server, json, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"access_token": "bench-token", "token_type": "Bearer", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
PY
PIDS+=($!)
cat > "$WORK/bearerd.yaml" <<YAML
listen: 127.0.0.1:$BEARERD
admin_listen: 127.0.0.1:$ADMIN
config_watch_interval: 0s
auth_configs:
  - id: bench
    token_url: http://127.0.0.1:$TOKENS/token
    client_id: bench
    client_secret: bench-secret
routes:
  - match: { host: 127.0.0.1 }
    auth_config: bench
YAML
RUST_LOG=warn taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
  "$BIN" --config "$WORK/bearerd.yaml" 2>"$WORK/bearerd.log" &
BEARERD_PID=$!
PIDS+=($BEARERD_PID)
for _ in $(seq 1 300); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN/healthz" && break; sleep 0.1; done
cat > "$WORK/proxy.lua" <<LUA
local absolute
init = function(args)
  absolute = wrk.format("GET", "http://127.0.0.1:$UPSTREAM/", { Host = "127.0.0.1:$UPSTREAM" })
end
request = function() return absolute end
LUA
answered() {
  curl -s --max-time 10 "http://127.0.0.1:$ADMIN/metrics" \
    | awk '/^bearerd_requests_total\{auth_config="bench",status="200"\}/ {print $2}'
}
timeout 60 taskset -c 1 wrk -t1 -c50 -d3s -s "$WORK/proxy.lua" "http://127.0.0.1:$BEARERD/" >/dev/null
before=$(answered)
timeout 30 callgrind_control --zero "$BEARERD_PID" >/dev/null
timeout $((DURATION + 60)) taskset -c 1 wrk -t1 -c50 -d"${DURATION}s" -s "$WORK/proxy.lua" "http://127.0.0.1:$BEARERD/" >/dev/null
timeout 60 callgrind_control --dump "$BEARERD_PID" >/dev/null
after=$(answered)
sleep 0.5
out=$(ls -t "$WORK"/callgrind.out* | head -1)
instructions=$(awk '/^summary:/ {print $2; exit}' "$out")
requests=$((after - before))
echo "requests answered while counting: $requests"
echo "instructions: $instructions, per request: $((instructions / requests))"
strip_paths() { sed -E 's|/root/.cargo/registry/src/[^/]+/||; s|/rustc/[0-9a-f]+/library/||; s| \[[^]]*\]$||'; }
# callgrind_annotate lists the chain from main down to the runtime first, at ~100% each,
# after a zeroed-and-dumped run; those lines say nothing, so lines over 90% are left out.
top() { # callgrind_annotate options...
  callgrind_annotate --threshold=100 "$@" "$out" 2>/dev/null | sed -n '/file:function/,$p' \
    | awk -F'[(%]' 'NF > 2 && $2 + 0 < 90' | head -"$TOP" | strip_paths
}
TOP=${TOP:-25}
echo
echo "most instructions, the function itself:"
top --inclusive=no
echo
echo "most instructions, with what it calls:"
top --inclusive=yes
