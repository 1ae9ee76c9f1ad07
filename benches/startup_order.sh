#!/usr/bin/env bash
# Rewrites src/startup.order: the functions of the bearerd binary that start-up runs, which
# the release link lays out together (build.rs says why).
#
#   bash benches/startup_order.sh      (needs valgrind and curl; Debian: apt-get install valgrind)
#
# Builds the release binary with its symbols, starts it under callgrind twice (a plain
# config, and one with interception on, a TLS route and an extra root, as benches/load.sh
# runs them), each until /readyz answers and a second after, and writes every function of
# the binary that ran, by its linker name, one per line, sorted. Nothing is asked of the
# token endpoint: an idle bearerd has fetched nothing yet. Starts and stops everything by
# PID; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

BEARERD=18193 ADMIN=18194 UPSTREAM=18195
source benches/common.sh
need valgrind curl openssl python3

echo "building bearerd (release, with symbols)..." >&2
BEARERD_KEEP_SYMBOLS=1 timeout 1800 cargo build --release --locked --quiet
BIN=$PWD/target/release/bearerd

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=order \
  -keyout "$WORK/root-key.pem" -out "$WORK/root.pem" 2>/dev/null
bearerd_config 1 > "$WORK/plain.yaml"
{
  echo "tls:"
  echo "  ca_file: $WORK/root.pem"
  echo "intercept:"
  echo "  ca_bundle_out: $WORK/bundle.pem"
  bearerd_config 1 | sed '/^routes:/q'
  echo "  - match: { host: localhost }"
  echo "    auth_config: bench"
  echo "    upstream_tls: true"
  echo "    intercept: true"
} > "$WORK/intercept.yaml"

for config in plain intercept; do
  RUST_LOG=warn valgrind --tool=callgrind --demangle=no --callgrind-out-file="$WORK/$config.out" \
    "$BIN" --config "$WORK/$config.yaml" 2>"$WORK/$config.log" &
  pid=$!
  PIDS+=("$pid")
  ready=
  for _ in $(seq 1 600); do
    if curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN/readyz"; then ready=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$ready" ] || { echo "startup_order.sh: bearerd ($config) did not get ready:" >&2; cat "$WORK/$config.log" >&2; exit 1; }
  sleep 1
  kill -TERM "$pid"
  timeout 60 tail --pid="$pid" -f /dev/null
done

# A callgrind file names each object (ob=, cob=) and function (fn=, cfn=) once, by number,
# and by number alone after that; a fn= line is a function that ran in the current ob=.
python3 - "$BIN" "$WORK/plain.out" "$WORK/intercept.out" > src/startup.order <<'PY'
import re, sys
binary, names = sys.argv[1], set()
for path in sys.argv[2:]:
    objects, functions, current = {}, {}, None
    for line in open(path, errors="replace"):
        found = re.match(r"(c?ob|c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if not found:
            continue
        kind, number, name = found.groups()
        table = objects if kind.endswith("ob") else functions
        if name:
            table[number] = name
        if kind == "ob":
            current = objects.get(number)
        elif kind == "fn" and current == binary:
            # callgrind marks a recursion level with 'N; below main and unnamed code are not symbols.
            name = re.sub(r"'\d+$", "", functions[number])
            if not name.startswith(("0x", "(")):
                names.add(name)
for name in sorted(names):
    print(name)
PY
echo "src/startup.order: $(wc -l < src/startup.order) functions" >&2
