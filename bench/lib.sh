# Shared by bench's shell scripts (ablate.sh, latency_ab.sh, instructions.sh):
# source it after `cd` to the repository root.

# The key the fake DeepSeek is started with (`--key`).
BENCH_KEY=sk-bench
# The gateways' `jwt_secret`, and the bare-job peer's (`BARE_JWT_SECRET`),
# so that one's tokens are valid at the other.
BENCH_JWT_SECRET=$(printf 'b%.0s' $(seq 40))

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# gateway_toml DIR PORT FAKE_PORT USERS: writes DIR/gw.toml, the gateway with
# the production defaults the benchmarks measure (SQLite ledger in DIR with
# its journal, quotas and a budget for every user, none reached), users
# user0..user<USERS-1> with passwords pw0.., in front of the fake.
gateway_toml() {
  python3 - "$@" "$BENCH_KEY" "$BENCH_JWT_SECRET" <<'PY'
import sys
work, port, fake, n, key, secret = sys.argv[1:]
users = "".join(f'[[auth.users]]\nusername = "user{i}"\npassword = "pw{i}"\n' for i in range(int(n)))
open(f"{work}/gw.toml", "w").write(f'''[server]
host = "127.0.0.1"
port = {port}
max_connections = 50000
[auth]
jwt_secret = "{secret}"
login_max_failures_per_ip_per_minute = 1000000
{users}
[deepseek]
api_key = "{key}"
base_url = "http://127.0.0.1:{fake}/v1"
[quotas]
requests_per_minute = 1000000
tokens_per_day = 1000000000000
max_concurrent = 64
budget_per_month = 1000000
[storage]
sqlite_path = "{work}/usage.db"
''')
PY
}

# chat_lua OUT BASE USERS: logs users user0..user<USERS-1> in at the gateway
# at BASE and writes wrk's script OUT, which posts a small non-stream chat
# request, rotating over their tokens. With USERS = 0, the bearer is
# $BENCH_KEY (for the fake itself, or the bare proxy in front of it).
chat_lua() {
  python3 - "$@" "$BENCH_KEY" <<'PY'
import json, sys, urllib.request
out, base, n, key = sys.argv[1:]
tokens = []
for i in range(int(n)):
    body = json.dumps({"username": f"user{i}", "password": f"pw{i}"}).encode()
    req = urllib.request.Request(base + "/auth/login", data=body, headers={"content-type": "application/json"})
    tokens.append(json.load(urllib.request.urlopen(req))["token"])
tokens = tokens or [key]
open(out, "w").write("tokens = {" + ",".join('"%s"' % t for t in tokens) + "}\n" + '''
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/v1/chat/completions",
    {["Authorization"] = "Bearer " .. tokens[(counter % #tokens) + 1], ["Content-Type"] = "application/json"},
    '{"model":"deepseek-flash","stream":false,"thinking":{"type":"disabled"},"messages":[{"role":"user","content":"hi"}]}')
end
''')
PY
}

# wait_healthy PORT [SECONDS]: until the gateway on PORT answers /healthz
# (at most SECONDS, default 10).
wait_healthy() {
  for _ in $(seq $((${2:-10} * 10))); do
    curl -fs -o /dev/null "http://127.0.0.1:$1/healthz" && return 0
    sleep 0.1
  done
  echo "no gateway on port $1" >&2
  return 1
}
