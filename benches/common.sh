# Shared by benches/load.sh and benches/callgrind.sh (sourced, not run): the work directory
# and the processes to stop, and the nginx upstream, token endpoint, bearerd config and wrk
# script both benchmarks use. The caller sets BEARERD, ADMIN and UPSTREAM (ports) first.

# Exits unless every named command is installed.
need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$(basename "$0"): $tool is not installed" >&2; exit 1; }
  done
}

# A temporary WORK directory, and PIDS, every process started, stopped by PID on exit.
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.3
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_http() { # url [seconds, 10]: wait for any HTTP answer
  for _ in $(seq 1 $((${2:-10} * 50))); do
    curl -s -o /dev/null --max-time 1 "$1" && return 0
    sleep 0.02
  done
  echo "$(basename "$0"): $1 did not answer" >&2
  return 1
}

nginx_conf() { # name, server block
  cat <<CONF
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid $WORK/$1.pid;
error_log $WORK/$1-error.log warn;
events { worker_connections 30000; }
http {
  access_log off;
  client_body_temp_path $WORK/$1-body;
  proxy_temp_path $WORK/$1-proxy;
  fastcgi_temp_path $WORK/$1-fastcgi;
  uwsgi_temp_path $WORK/$1-uwsgi;
  scgi_temp_path $WORK/$1-scgi;
  keepalive_requests 1000000;
  $2
}
CONF
}

# The upstream: nginx answering a fixed 200 on UPSTREAM.
upstream_conf() {
  nginx_conf upstream "server { listen 127.0.0.1:$UPSTREAM; location / { return 200 'ok'; } }"
}

# A token endpoint: `python3 "$WORK/tokens.py" PORT DELAY` answers every POST after DELAY
# seconds with a new 1-hour token, and a GET with the number of token requests so far.
cat > "$WORK/tokens.py" <<'PY'
import http.server, json, sys, time
delay = float(sys.argv[2])
count = 0
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global count
        count += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(delay)
        body = json.dumps({"access_token": "bench-token-%d" % count, "token_type": "Bearer", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        body = str(count).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
PY

bearerd_config() { # token endpoint port
  cat <<YAML
listen: 127.0.0.1:$BEARERD
admin_listen: 127.0.0.1:$ADMIN
config_watch_interval: 0s
auth_configs:
  - id: bench
    token_url: http://127.0.0.1:$1/token
    client_id: bench
    client_secret: bench-secret
routes:
  - match: { host: 127.0.0.1 }
    auth_config: bench
YAML
}

# wrk's script for requests through a proxy: absolute-form, as an HTTP_PROXY client sends it.
cat > "$WORK/proxy.lua" <<LUA
local absolute
init = function(args)
  absolute = wrk.format("GET", "http://127.0.0.1:$UPSTREAM/", { Host = "127.0.0.1:$UPSTREAM" })
end
request = function() return absolute end
LUA
