#!/usr/bin/env bash
# Instructions per request of a gateway build, counted by callgrind: unlike
# CPU time, the same on a busy machine as on an idle one, so small changes
# show (BENCHMARKS.md, issue 15). The fake and the gateway (production
# defaults: access log at info, SQLite ledger with its journal, metrics,
# quotas) run, the gateway under `valgrind --tool=callgrind`; after a 5 s
# warm-up the counters are zeroed, `wrk -t1 -c1 -d20s` runs, and the
# instructions of every thread are divided by the requests served.
#
#   bench/instructions.sh GATEWAY_BIN [LABEL] [PROFILE_OUT]
#
# PROFILE_OUT keeps the callgrind file (`callgrind_annotate --inclusive=yes`).
# BENCH_STATE=redis puts the gateway's state in the Redis at
# 127.0.0.1:6379 (a key prefix of its own) instead of memory.
# BENCH_PEER=bare-job counts the bare proxy doing the gateway's job instead
# (GATEWAY_BIN is then target/release/bare_proxy, run with `BARE_JOB`):
# the floor of the same work, in the same units; BENCH_PEER=bare, the bare
# proxy forwarding alone.
# Needs valgrind, wrk and python3.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bench/instructions.sh GATEWAY_BIN [LABEL] [PROFILE_OUT]" >&2; exit 2; }
BIN=$(realpath "$1"); NAME=${2:-gateway}; KEEP=${3:-}
cd "$(dirname "$0")/.."
for tool in valgrind callgrind_control wrk; do
  command -v $tool >/dev/null || { echo "instructions.sh: needs $tool" >&2; exit 2; }
done
cargo build --release --quiet -p fake_deepseek
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
. bench/lib.sh
FAKE=$(free_port); P=$(free_port)
target/release/fake_deepseek --addr "127.0.0.1:$FAKE" --key "$BENCH_KEY" >/dev/null 2>&1 &
gateway_toml $W $P $FAKE 1
if [ "${BENCH_STATE:-memory}" = redis ]; then
  printf '[state]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:6379"\nkey_prefix = "instr%s:"\n' $$ >> $W/gw.toml
fi
if [ "${BENCH_PEER:-gateway}" = bare ]; then
  chat_lua $W/r.lua "" 0   # the fake's own key, passed through
  J=$(free_port)
  valgrind --tool=callgrind --callgrind-out-file=$W/cg.out $BIN "127.0.0.1:$J" "http://127.0.0.1:$FAKE" >$W/job.out 2>$W/log &
  VG=$!; P=$J
  for _ in $(seq 1200); do grep -q 'listening on' $W/job.out && break; sleep 0.1; done
elif [ "${BENCH_PEER:-gateway}" = bare-job ]; then
  # The gateway logs its user in for the token; bare-job takes its tokens.
  RUST_LOG=warn target/release/deepseek_proxy --config $W/gw.toml >/dev/null 2>&1 &
  GW=$!
  wait_healthy $P
  chat_lua $W/r.lua "http://127.0.0.1:$P" 1
  kill $GW; wait $GW 2>/dev/null || true
  mkdir $W/job; J=$(free_port)
  BARE_JOB=$W/job BARE_JWT_SECRET=$BENCH_JWT_SECRET BARE_UPSTREAM_KEY=$BENCH_KEY \
    valgrind --tool=callgrind --callgrind-out-file=$W/cg.out $BIN "127.0.0.1:$J" "http://127.0.0.1:$FAKE" >$W/job.out 2>$W/log &
  VG=$!; P=$J
  for _ in $(seq 1200); do grep -q 'listening on' $W/job.out && break; sleep 0.1; done
else
  RUST_LOG=info valgrind --tool=callgrind --callgrind-out-file=$W/cg.out $BIN --config $W/gw.toml >/dev/null 2>$W/log &
  VG=$!
  wait_healthy $P 120   # valgrind starts slowly
  chat_lua $W/r.lua "http://127.0.0.1:$P" 1
fi
wrk -t1 -c1 -d5s -s $W/r.lua "http://127.0.0.1:$P" >/dev/null
sleep 1.5   # the ledger's writer flushes once a second
callgrind_control -z $VG >/dev/null
out=$(wrk -t1 -c1 -d20s -s $W/r.lua "http://127.0.0.1:$P")
sleep 1.5
callgrind_control -d $VG >/dev/null
sleep 1
n=$(awk '/requests in/ {print $1}' <<<"$out")
bad=$(awk '/Non-2xx/ {print $5}' <<<"$out")
ir=$(cat $W/cg.out.* 2>/dev/null | awk '/^totals:/ {s+=$2} END {print s}')
echo "$NAME requests=$n non2xx=${bad:-0} Ir=$ir Ir/request=$((ir / n))"
kill $VG; wait $VG 2>/dev/null || true
if [ -n "$KEEP" ]; then cp "$W"/cg.out.1 "$KEEP"; fi
rm -rf $W
