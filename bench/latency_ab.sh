#!/usr/bin/env bash
# Latency at concurrency 1, hot, of two gateway builds side by side (BENCHMARKS.md,
# issue 15): the fake, the bare proxy and both builds (production defaults: access
# log at info, SQLite ledger with its journal, metrics, quotas) run at once, and
#   bench/latency_ab.sh ROUNDS BIN_A BIN_B
# runs `wrk -t1 -c1 -d3s --latency` on each in turn, ROUNDS times, printing
# "round peer p50 p99 requests/s" per block. Needs wrk and python3.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: bench/latency_ab.sh ROUNDS BIN_A BIN_B" >&2; exit 2; }
ROUNDS=$1; A=$(realpath "$2"); B=$(realpath "$3")
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "latency_ab.sh: needs wrk (apt-get install wrk)" >&2; exit 2; }
cargo build --release --quiet -p fake_deepseek -p bench
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
fp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
FAKE=$(fp); PA=$(fp); PB=$(fp)
target/release/fake_deepseek --addr "127.0.0.1:$FAKE" --key sk-lat >/dev/null 2>&1 &
target/release/bare_proxy 127.0.0.1:0 "http://127.0.0.1:$FAKE" > $W/bare.out 2>&1 &
sleep 0.5; BARE=$(awk '/listening on/ {print $3}' $W/bare.out)
for n in a b; do
  port=$PA; [ $n = b ] && port=$PB
  mkdir -p $W/$n
  cat > $W/$n/gw.toml <<T
[server]
host = "127.0.0.1"
port = $port
[auth]
jwt_secret = "$(printf 'b%.0s' $(seq 40))"
[[auth.users]]
username = "u"
password = "pw"
[deepseek]
api_key = "sk-lat"
base_url = "http://127.0.0.1:$FAKE/v1"
[quotas]
requests_per_minute = 1000000
tokens_per_day = 1000000000000
max_concurrent = 64
budget_per_month = 1000000
[storage]
sqlite_path = "$W/$n/usage.db"
T
done
RUST_LOG=info $A --config $W/a/gw.toml >/dev/null 2>$W/a/log &
RUST_LOG=info $B --config $W/b/gw.toml >/dev/null 2>$W/b/log &
for p in $PA $PB; do for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$p/healthz" && break; sleep 0.1; done; done
lua() { # $1 token or key
cat > $2 <<L
request = function()
  return wrk.format("POST", "/v1/chat/completions",
    {["Authorization"] = "Bearer $1", ["Content-Type"] = "application/json"},
    '{"model":"deepseek-flash","stream":false,"thinking":{"type":"disabled"},"messages":[{"role":"user","content":"hi"}]}')
end
L
}
for n in a b; do
  port=$PA; [ $n = b ] && port=$PB
  tok=$(curl -s "http://127.0.0.1:$port/auth/login" -H 'content-type: application/json' -d '{"username":"u","password":"pw"}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["token"])')
  lua "$tok" $W/$n.lua
done
lua sk-lat $W/bare.lua
run() { wrk -t1 -c1 -d3s --latency -s $2 "$1" | awk -v name=$3 -v r=$4 '/^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Requests\/sec/ {rps=$2} END {print r, name, p50, p99, rps}'; }
for n in a b; do wrk -t1 -c1 -d1s -s $W/$n.lua "http://127.0.0.1:$([ $n = a ] && echo $PA || echo $PB)" >/dev/null; done
for r in $(seq $ROUNDS); do
  run "http://127.0.0.1:$FAKE" $W/bare.lua direct $r
  run "$BARE" $W/bare.lua bare $r
  run "http://127.0.0.1:$PA" $W/a.lua A $r
  run "http://127.0.0.1:$PB" $W/b.lua B $r
done
