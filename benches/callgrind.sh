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
# instructions, themselves and with what they call (TOP of each, 25 unless set; KEEP=FILE
# keeps callgrind's output for callgrind_annotate). Stops everything it starts by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-6}
UPSTREAM=18181 BEARERD=18183 ADMIN=18193 TOKENS=18184
source benches/common.sh
need valgrind callgrind_control callgrind_annotate wrk nginx python3 curl taskset

echo "building bearerd (release, with symbols)..." >&2
TARGET=${CARGO_TARGET_DIR:-target}/callgrind
CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  timeout 900 cargo build --release --locked --quiet --target-dir "$TARGET"
BIN=$TARGET/release/bearerd

upstream_conf > "$WORK/upstream.conf"
nginx -c "$WORK/upstream.conf" -p "$WORK" -e "$WORK/upstream-error.log" &
PIDS+=($!)
python3 "$WORK/tokens.py" "$TOKENS" 0 &
PIDS+=($!)
wait_http "http://127.0.0.1:$UPSTREAM/"
wait_http "http://127.0.0.1:$TOKENS/"
bearerd_config "$TOKENS" > "$WORK/bearerd.yaml"
RUST_LOG=warn taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
  "$BIN" --config "$WORK/bearerd.yaml" 2>"$WORK/bearerd.log" &
BEARERD_PID=$!
PIDS+=($BEARERD_PID)
# Under valgrind bearerd starts tens of times slower.
wait_http "http://127.0.0.1:$ADMIN/healthz" 60
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
if [[ -n ${KEEP:-} ]]; then cp "$out" "$KEEP"; fi
instructions=$(awk '/^summary:/ {print $2; exit}' "$out")
requests=$((after - before))
echo "requests answered while counting: $requests"
echo "instructions: $instructions, per request: $((instructions / requests))"
strip_paths() { sed -E 's|/root/.cargo/registry/src/[^/]+/||; s|/rustc/[0-9a-f]+/library/||; s| \[[^]]*\]$||'; }
# callgrind_annotate lists the chain from main down to the runtime first, at ~100% each,
# after a zeroed-and-dumped run; those lines say nothing, so lines over 90% are left out.
top() { # callgrind_annotate options...
  callgrind_annotate --threshold=100 "$@" "$out" 2>/dev/null | sed -n '/file:function/,$p' \
    | awk -F'[(%]' -v top="$TOP" 'NF > 2 && $2 + 0 < 90 && ++n <= top' | strip_paths
}
TOP=${TOP:-25}
echo
echo "most instructions, the function itself:"
top --inclusive=no
echo
echo "most instructions, with what it calls:"
top --inclusive=yes
