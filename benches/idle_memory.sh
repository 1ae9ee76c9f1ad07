#!/usr/bin/env bash
# Memory held by idle app connections: RSS with N idle keep-alive connections open, and
# after they close, over a few rounds.
#
#   bash benches/idle_memory.sh     (needs nginx, python3, curl, ss; Debian:
#                                    apt-get install nginx-light)
#
# - upstream: nginx answering a fixed 200 `ok` on 127.0.0.1:18181;
# - bearerd on :18183 (admin :18193) with a cached token from a tiny token endpoint (:18184),
#   its config from benches/common.sh (default worker threads) with max_connections raised
#   to CONNECTIONS + 100;
# - each round: RSS (VmRSS of bearerd) at idle; then a Python asyncio helper opens
#   CONNECTIONS (5000) connections to bearerd, sends ONE absolute-form request on each
#   (`GET http://127.0.0.1:18181/ HTTP/1.1`), CONCURRENCY (1) exchanges at a time (more
#   makes bearerd pool that many upstream connections, whose memory then counts too),
#   reads each whole response, checks it is the upstream's 200 `ok` on a kept-alive
#   connection, and leaves the connection open and idle; after SETTLE (3) seconds, RSS "with
#   N idle" (the helper then checks no connection was closed under it); then every
#   connection is closed, the script waits until bearerd holds none of them (no socket on
#   the proxy port established or in close-wait, and `bearerd_connections` at 0 if /metrics
#   has it), SETTLE seconds more, and RSS "after close". ROUNDS (3) rounds.
#
# Prints a Markdown table and whether the targets hold (5,000 idle connections add at most
# 25 MB, scaled to CONNECTIONS; after close, RSS within 20% of the idle figure before the
# first round). A missed target does not fail the script; anything that broke does. Starts
# and stops everything by PID; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-5000}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-1}
SETTLE=${SETTLE:-3}
UPSTREAM=18181 BEARERD=18183 ADMIN=18193 TOKENS=18184
source benches/common.sh
need nginx python3 curl ss
# CONNECTIONS app connections in bearerd and in the helper need more than 1,024 fds.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((CONNECTIONS + 100)) ] || { echo "idle_memory.sh: ulimit -n $(ulimit -n) is too low for $CONNECTIONS connections" >&2; exit 1; }

die() { echo "idle_memory.sh: $*" >&2; exit 1; }
trap 'echo "idle_memory.sh: line $LINENO failed" >&2' ERR

echo "building bearerd (release)..." >&2
timeout 900 cargo build --release --locked --quiet
BIN=$PWD/target/release/bearerd

# --- helpers ------------------------------------------------------------------------------

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# KiB to MB (10^6 bytes), as load.sh reports.
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k * 1024 / 1e6}'; }
# bearerd's sockets on the proxy port that it has not closed yet (accepted and open, or
# closed by the app and not yet by bearerd).
held() { ss -Htn state established state close-wait "( sport = :$BEARERD )" | wc -l; }
# bearerd's connections to the upstream (its pool), for the record.
upstream_conns() { ss -Htn state established "( dport = :$UPSTREAM )" | wc -l; }
# bearerd_connections from /metrics, or "" when bearerd does not export it.
# (awk reads all of it: stopping early would fail curl's write, and the pipe with it.)
gauge() { { curl -s --max-time 2 "http://127.0.0.1:$ADMIN/metrics" || true; } | awk '/^bearerd_connections[ {]/ {v = $NF} END {print v}'; }

# The connection opener. Arguments: host port upstream-port n concurrency. Opens n
# connections, one request each, and checks every response: status 200, the upstream's
# body `ok` by its Content-Length, no `Connection: close`. Prints "open N" once all are
# open and answered (exits 1, saying what failed, if any was not), then waits for a line on
# stdin; prints "alive K" (connections not closed by bearerd meanwhile), closes them all,
# prints "closed".
cat > "$WORK/opener.py" <<'PY'
import asyncio, collections, sys

host, port, upstream, n, concurrency = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
REQUEST = (f"GET http://127.0.0.1:{upstream}/ HTTP/1.1\r\nHost: 127.0.0.1:{upstream}\r\n"
           "User-Agent: idle-memory\r\nAccept: */*\r\n\r\n").encode()

async def exchange(sem):
    async with sem:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        try:
            writer.write(REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0]
            length = None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and "close" in value:
                    raise RuntimeError(f"{status!r} with Connection: close")
                elif name == "transfer-encoding":
                    raise RuntimeError(f"{status!r} with Transfer-Encoding: {value}")
            if length is None:
                raise RuntimeError(f"{status!r} without Content-Length")
            body = await asyncio.wait_for(reader.readexactly(length), 10)
            if not status.startswith("HTTP/1.1 200 ") or body != b"ok":
                raise RuntimeError(f"{status!r} body {body[:60]!r}")
            return reader, writer
        except BaseException:
            writer.close()
            raise

async def main():
    sem = asyncio.Semaphore(concurrency)
    results = await asyncio.gather(*(exchange(sem) for _ in range(n)), return_exceptions=True)
    conns = [r for r in results if not isinstance(r, BaseException)]
    failed = collections.Counter(f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException))
    if failed:
        print(f"opener: {len(conns)} of {n} answered 200 by the upstream; failures:", file=sys.stderr)
        for what, count in failed.most_common(10):
            print(f"  {count} x {what}", file=sys.stderr)
        sys.exit(1)
    print(f"open {len(conns)}", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    # A connection bearerd closed meanwhile has had its EOF read by the event loop.
    alive = sum(1 for reader, writer in conns if not reader.at_eof() and not writer.transport.is_closing())
    print(f"alive {alive}", flush=True)
    for _, writer in conns:
        writer.close()
    await asyncio.wait_for(asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True), 30)
    print("closed", flush=True)

asyncio.run(main())
PY

# Reads the opener's next line into LINE, waiting at most $1 seconds; fails at once if the
# opener has exited. (A read that times out mid-line keeps what it read in LINE.)
next_line() {
  local limit=$1 waited=0 part=""
  LINE=""
  until read -r -t 1 -u "$OUT" LINE; do
    part+=$LINE
    kill -0 "$OPENER_PID" 2>/dev/null || { wait "$OPENER_PID" || true; die "the connection opener stopped (see above)"; }
    waited=$((waited + 1))
    [ "$waited" -lt "$limit" ] || die "no word from the connection opener in $limit s"
  done
  LINE=$part$LINE
}

# --- the upstream, the token endpoint and bearerd ---------------------------------------

upstream_conf > "$WORK/upstream.conf"
nginx -c "$WORK/upstream.conf" -p "$WORK" -e "$WORK/upstream-error.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$UPSTREAM/"

python3 "$WORK/tokens.py" "$TOKENS" 0 &
PIDS+=($!)
wait_http "http://127.0.0.1:$TOKENS/"

# bearerd accepts at most max_connections (default 4096) app connections; past that they
# wait in the kernel's accept queue, unanswered. Room for all of them, and some.
{ bearerd_config "$TOKENS"; echo "max_connections: $((CONNECTIONS + 100))"; } > "$WORK/bearerd.yaml"
RUST_LOG=warn "$BIN" --config "$WORK/bearerd.yaml" 2>"$WORK/bearerd.log" &
BEARERD_PID=$!
PIDS+=($BEARERD_PID)
ready=0
for _ in $(seq 1 500); do
  if curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN/readyz"; then ready=1; break; fi
  kill -0 "$BEARERD_PID" 2>/dev/null || { cat "$WORK/bearerd.log" >&2; die "bearerd exited"; }
  sleep 0.02
done
[ "$ready" = 1 ] || { cat "$WORK/bearerd.log" >&2; die "bearerd's /readyz did not answer 200 in 10 s"; }

# Warm-up: a few requests (the token is fetched, an upstream connection pooled).
for _ in 1 2 3 4 5; do
  body=$(curl -s --max-time 5 -x "http://127.0.0.1:$BEARERD" "http://127.0.0.1:$UPSTREAM/")
  [ "$body" = ok ] || die "warm-up request through bearerd answered '$body'"
done
sleep "$SETTLE"
[ "$(held)" = 0 ] || die "bearerd still holds the warm-up connections"
GAUGE=$(gauge)
echo "bearerd_connections on /metrics: ${GAUGE:-not exported (waiting on sockets only)}" >&2

# --- rounds -------------------------------------------------------------------------------

FIRST_IDLE=$(rss_kib "$BEARERD_PID")
mkfifo "$WORK/ctl" "$WORK/out"
: > "$WORK/rounds"
for round in $(seq 1 "$ROUNDS"); do
  idle=$(rss_kib "$BEARERD_PID")
  # Opened read-write here, the FIFOs never block either side's open.
  exec {CTL}<>"$WORK/ctl" {OUT}<>"$WORK/out"
  started=$(date +%s%N)
  python3 "$WORK/opener.py" 127.0.0.1 "$BEARERD" "$UPSTREAM" "$CONNECTIONS" "$CONCURRENCY" <"$WORK/ctl" >"$WORK/out" &
  OPENER_PID=$!
  PIDS+=($OPENER_PID)
  next_line 300
  [ "$LINE" = "open $CONNECTIONS" ] || die "the connection opener said '$LINE'"
  opening=$(( ($(date +%s%N) - started) / 1000000 ))
  sleep "$SETTLE"
  open=$(rss_kib "$BEARERD_PID")
  open_held=$(held) pool=$(upstream_conns) open_gauge=$(gauge)
  [ "$open_held" = "$CONNECTIONS" ] || die "bearerd holds $open_held app connections, not $CONNECTIONS"
  echo >&"$CTL"
  next_line 60
  [ "$LINE" = "alive $CONNECTIONS" ] || die "round $round: the opener found '$LINE' of $CONNECTIONS connections still open at RSS time"
  next_line 60
  [ "$LINE" = closed ] || die "the connection opener said '$LINE'"
  wait "$OPENER_PID" || die "the connection opener failed"
  unset 'PIDS[-1]' # the opener, reaped
  exec {CTL}>&- {OUT}>&-
  # Bounded wait until bearerd has closed every app connection.
  for i in $(seq 1 600); do
    if [ "$(held)" = 0 ] && { [ -z "$GAUGE" ] || [ "$(gauge)" = 0 ]; }; then break; fi
    [ "$i" -lt 600 ] || die "bearerd still holds $(held) app connections (gauge: $(gauge)) 60 s after they closed"
    sleep 0.1
  done
  sleep "$SETTLE"
  after=$(rss_kib "$BEARERD_PID")
  echo "  round $round: idle $(mb "$idle") MB, $CONNECTIONS opened and answered in $opening ms, with them open $(mb "$open") MB (bearerd holds $open_held app and $pool upstream connections${open_gauge:+, gauge $open_gauge}), after close $(mb "$after") MB" >&2
  echo "$round $idle $open $after" >> "$WORK/rounds"
done

# --- report -------------------------------------------------------------------------------

echo "bearerd $("$BIN" --version | awk '{print $2}') (release, commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ', with uncommitted changes in src')), $(date -u +%Y-%m-%d), $(nproc) CPUs; $CONNECTIONS connections, one request on each, $CONCURRENCY at a time, RSS read ${SETTLE} s after they are open and ${SETTLE} s after bearerd closed them."
echo
echo "| round | RSS idle | with $CONNECTIONS idle | added per connection | after close | after close / first idle |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
awk -v n="$CONNECTIONS" -v first="$FIRST_IDLE" '{
  printf "| %d | %.1f MB | %.1f MB | %.2f kB | %.1f MB | %.2f |\n", $1, $2 * 1024 / 1e6, $3 * 1024 / 1e6, ($3 - $2) * 1024 / 1000 / n, $4 * 1024 / 1e6, $4 / first
}' "$WORK/rounds"
echo
awk -v n="$CONNECTIONS" -v first="$FIRST_IDLE" '
  { added = ($3 - $2) * 1024 / 1e6; if (added > worst_added) worst_added = added
    ratio = $4 / first; if (ratio > worst_ratio) worst_ratio = ratio }
  END {
    limit = 25 * n / 5000
    a = worst_added <= limit ? "holds" : "missed"
    r = worst_ratio <= 1.2 ? "holds" : "missed"
    printf "Targets: added RSS with %d idle connections ≤ %.1f MB (25 MB per 5,000): %s (largest %.1f MB); RSS after close within 20%% of the first idle figure (%.1f MB): %s (largest ratio %.2f).\n", n, limit, a, worst_added, first * 1024 / 1e6, r, worst_ratio
  }' "$WORK/rounds"
