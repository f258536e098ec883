#!/usr/bin/env bash
# Latency at concurrency 1, hot, of two gateway builds side by side (BENCHMARKS.md,
# issue 15): the fake, the bare proxy and both builds (production defaults: access
# log at info, SQLite ledger with its journal, metrics, quotas) run at once, and
#   bench/latency_ab.sh ROUNDS BIN_A BIN_B
# runs `wrk -t1 -c1 -d3s --latency` on each in turn, ROUNDS times, printing
# "round peer p50 p99 requests/s" per block. BENCH_STATE=redis puts both
# builds' state in the Redis at 127.0.0.1:6379 (a key prefix each).
# Needs wrk and python3.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: bench/latency_ab.sh ROUNDS BIN_A BIN_B" >&2; exit 2; }
ROUNDS=$1; A=$(realpath "$2"); B=$(realpath "$3")
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "latency_ab.sh: needs wrk (apt-get install wrk)" >&2; exit 2; }
cargo build --release --quiet -p fake_deepseek -p bench
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
. bench/lib.sh
FAKE=$(free_port); PA=$(free_port); PB=$(free_port)
target/release/fake_deepseek --addr "127.0.0.1:$FAKE" --key "$BENCH_KEY" >/dev/null 2>&1 &
target/release/bare_proxy 127.0.0.1:0 "http://127.0.0.1:$FAKE" > $W/bare.out 2>&1 &
mkdir -p $W/a $W/b
gateway_toml $W/a $PA $FAKE 1
gateway_toml $W/b $PB $FAKE 1
if [ "${BENCH_STATE:-memory}" = redis ]; then
  for n in a b; do
    printf '[state]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:6379"\nkey_prefix = "ab%s%s:"\n' $$ $n >> $W/$n/gw.toml
  done
fi
RUST_LOG=info $A --config $W/a/gw.toml >/dev/null 2>$W/a/log &
RUST_LOG=info $B --config $W/b/gw.toml >/dev/null 2>$W/b/log &
wait_healthy $PA; wait_healthy $PB
BARE=$(awk '/listening on/ {print $3}' $W/bare.out)
chat_lua $W/a.lua "http://127.0.0.1:$PA" 1
chat_lua $W/b.lua "http://127.0.0.1:$PB" 1
chat_lua $W/bare.lua "" 0
run() { wrk -t1 -c1 -d3s --latency -s $2 "$1" | awk -v name=$3 -v r=$4 '/^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Requests\/sec/ {rps=$2} END {print r, name, p50, p99, rps}'; }
for n in a b; do wrk -t1 -c1 -d1s -s $W/$n.lua "http://127.0.0.1:$([ $n = a ] && echo $PA || echo $PB)" >/dev/null; done
for r in $(seq $ROUNDS); do
  run "http://127.0.0.1:$FAKE" $W/bare.lua direct $r
  run "$BARE" $W/bare.lua bare $r
  run "http://127.0.0.1:$PA" $W/a.lua A $r
  run "http://127.0.0.1:$PB" $W/b.lua B $r
done
