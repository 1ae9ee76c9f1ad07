#!/usr/bin/env python3
"""The fleet-shared token cache, measured: token requests per token lifetime for a fleet of
N bearerd processes sharing one Redis, and what a Redis round trip adds to a local miss.

    python3 benches/shared_cache.py            (needs redis-server; BIN=path/to/bearerd,
                                                default target/release/bearerd, built if missing)

For each N (FLEETS, default "1 4 16"): a redis-server on a free loopback port (no
persistence), a token endpoint answering after DELAY seconds (default 0.2) with 5 s tokens,
an upstream answering 200, and N bearerd processes sharing the Redis (expiry_skew 0s,
refresh_before 1s). CLIENTS threads (default 16) send requests round-robin over the fleet
for DURATION seconds (default 20). Prints the token requests per 5 s lifetime for the whole
fleet, and the failed requests (should be 0).

Then, MISSES times (default 100), a fresh bearerd whose first `bench` request is a local
miss that Redis answers (the token is there), after one `warmup` request (another config,
also answered from Redis) has opened its Redis connection: that first request's time less
the second's (a local hit) is what the Redis round trip adds; prints its median and p99.
Stops every process it starts by PID.
"""
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN", os.path.join(ROOT, "target", "release", "bearerd"))
FLEETS = [int(n) for n in os.environ.get("FLEETS", "1 4 16").split()]
DURATION = float(os.environ.get("DURATION", "20"))
DELAY = float(os.environ.get("DELAY", "0.2"))
CLIENTS = int(os.environ.get("CLIENTS", "16"))
MISSES = int(os.environ.get("MISSES", "100"))
LIFETIME = 5
PROCESSES = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, **kwargs):
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kwargs)
    PROCESSES.append(process)
    return process


def stop(process):
    process.kill()
    process.wait()
    PROCESSES.remove(process)


def serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Tokens(http.server.BaseHTTPRequestHandler):
    count = 0
    lock = threading.Lock()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with Tokens.lock:
            Tokens.count += 1
            n = Tokens.count
        time.sleep(DELAY)
        self.reply(json.dumps({"access_token": "bench-%d" % n, "token_type": "Bearer", "expires_in": LIFETIME}))

    def reply(self, text):
        body = text.encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Upstream(Tokens):
    def do_GET(self):
        self.reply("ok")


def redis_server(directory):
    port = free_port()
    process = start(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", directory],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return process, port
        except OSError:
            time.sleep(0.02)
    sys.exit("redis-server did not answer")


def bearerd(directory, name, redis_port, tokens_port):
    proxy, admin = free_port(), free_port()
    config = os.path.join(directory, name + ".yaml")
    with open(config, "w") as f:
        f.write(f"""listen: 127.0.0.1:{proxy}
admin_listen: 127.0.0.1:{admin}
shared_cache:
  redis: redis://127.0.0.1:{redis_port}
  key_file: {directory}/cache-key
  prefix: bench
auth_configs:
  - id: bench
    token_url: http://127.0.0.1:{tokens_port}/token
    client_id: bench
    client_secret: bench-secret
    allowed_hosts: [127.0.0.1]
    expiry_skew: 0s
    refresh_before: 1s
  - id: warmup
    token_url: http://127.0.0.1:{tokens_port}/token
    client_id: warmup
    client_secret: bench-secret
    allowed_hosts: [127.0.0.1]
    expiry_skew: 0s
    refresh_before: 1s
""")
    process = start([BIN, "run", "--config", config], stderr=subprocess.DEVNULL,
                    env={**os.environ, "RUST_LOG": "error"})
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1).read()
            return process, proxy
        except OSError:
            time.sleep(0.02)
    sys.exit("bearerd did not start")


def get(proxy, upstream_port, config="bench"):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy}"}))
    request = urllib.request.Request(f"http://127.0.0.1:{upstream_port}/", headers={"x-auth-config": config})
    started = time.perf_counter()
    try:
        with opener.open(request, timeout=10) as response:
            response.read()
            ok = response.status == 200
    except OSError:
        ok = False
    return ok, time.perf_counter() - started


def steady(n, directory, tokens_port, upstream_port):
    redis, redis_port = redis_server(directory)
    fleet = [bearerd(directory, f"b{i}", redis_port, tokens_port) for i in range(n)]
    Tokens.count = 0
    failed = [0]
    stop_at = time.time() + DURATION

    def client(i):
        j = i
        while time.time() < stop_at:
            ok, _ = get(fleet[j % n][1], upstream_port)
            if not ok:
                failed[0] += 1
            j += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    per_lifetime = Tokens.count / (DURATION / LIFETIME)
    print(f"N={n:<3} token requests {Tokens.count:>4} in {DURATION:.0f}s = {per_lifetime:.2f} per {LIFETIME}s "
          f"lifetime for the fleet; failed requests {failed[0]}")
    for process, _ in fleet:
        stop(process)
    return redis, redis_port


def misses(directory, redis_port, tokens_port, upstream_port):
    warm, warm_proxy = bearerd(directory, "warm", redis_port, tokens_port)
    added = []
    for i in range(MISSES):
        # Keeps the shared tokens refreshed ahead, so every fresh process finds them.
        get(warm_proxy, upstream_port)
        get(warm_proxy, upstream_port, "warmup")
        process, proxy = bearerd(directory, f"m{i}", redis_port, tokens_port)
        before = Tokens.count
        # Opens the Redis connection, so the miss below pays a round trip, not a connect.
        get(proxy, upstream_port, "warmup")
        ok1, miss = get(proxy, upstream_port)
        ok2, hit = get(proxy, upstream_port)
        stop(process)
        # Only misses that Redis answered (no token request meanwhile) count.
        if ok1 and ok2 and Tokens.count == before:
            added.append(miss - hit)
    stop(warm)
    added.sort()
    if added:
        median, p99 = added[len(added) // 2], added[min(len(added) - 1, int(len(added) * 0.99))]
        print(f"local miss answered by Redis, {len(added)} fresh processes: adds median "
              f"{median * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms over a local hit")


def main():
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    tokens, upstream = serve(Tokens), serve(Upstream)
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, "cache-key"), "wb") as f:
            f.write(os.urandom(32))
        try:
            for n in FLEETS:
                redis, redis_port = steady(n, directory, tokens.server_address[1], upstream.server_address[1])
                if n == FLEETS[-1]:
                    misses(directory, redis_port, tokens.server_address[1], upstream.server_address[1])
                stop(redis)
        finally:
            for process in list(PROCESSES):
                stop(process)


if __name__ == "__main__":
    main()
