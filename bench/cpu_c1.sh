#!/usr/bin/env bash
# CPU per request at concurrency 1 (BENCHMARKS.md, issue 15): the fake, the
# bare proxy and a gateway (production defaults: access log at info, SQLite
# ledger with its journal, metrics, quotas) run at once, and
#   bench/cpu_c1.sh [ROUNDS] [GATEWAY_BIN]
# runs `wrk -t1 -c1 -d4s --latency` on the gateway and on the bare proxy in
# turn, ROUNDS times (default 3), printing each one's p50 and its CPU
# (utime + stime of all its threads) per request, and the fake's. Where the
# CPU per request is about the whole latency, the time goes to idling and
# waking, not to work. BENCH_STATE=redis puts the gateway's state in the
# Redis at 127.0.0.1:6379 (a key prefix of its own), and adds two peers: the
# same gateway build with memory state (gateway_memory), and the bare proxy
# making the two round trips the gateway's Redis path keeps on a request's
# way (bare_redis, `BARE_REDIS_URL`): the Redis path's floor on this stack.
# The bare proxy doing the gateway's job (bare_job, `BARE_JOB`, with the
# gateway's tokens) runs in both: the floor of the same work.
# Needs wrk and python3.
set -euo pipefail
ROUNDS=${1:-3}
GW=$(realpath "${2:-target/release/deepseek_proxy}")
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "cpu_c1.sh: needs wrk (apt-get install wrk)" >&2; exit 2; }
cargo build --release --quiet -p fake_deepseek -p bench
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
. bench/lib.sh
FAKE=$(free_port); P=$(free_port)
target/release/fake_deepseek --addr "127.0.0.1:$FAKE" --key "$BENCH_KEY" >/dev/null 2>&1 &
FAKE_PID=$!
target/release/bare_proxy 127.0.0.1:0 "http://127.0.0.1:$FAKE" >$W/bare.out 2>&1 &
BARE_PID=$!
BARE_JOB=$W/job BARE_JWT_SECRET=$BENCH_JWT_SECRET BARE_UPSTREAM_KEY=$BENCH_KEY \
  target/release/bare_proxy 127.0.0.1:0 "http://127.0.0.1:$FAKE" >$W/bare_job.out 2>&1 &
BARE_JOB_PID=$!
gateway_toml $W $P $FAKE 1
PEERS="gateway bare bare_job"
if [ "${BENCH_STATE:-memory}" = redis ]; then
  mkdir $W/mem; PM=$(free_port); gateway_toml $W/mem $PM $FAKE 1
  RUST_LOG=info $GW --config $W/mem/gw.toml >/dev/null 2>$W/mem/log &
  MEM_PID=$!
  printf '[state]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:6379"\nkey_prefix = "c1%s:"\n' $$ >> $W/gw.toml
  BARE_REDIS_URL=redis://127.0.0.1:6379 target/release/bare_proxy 127.0.0.1:0 "http://127.0.0.1:$FAKE" >$W/bare_redis.out 2>&1 &
  BARE_REDIS_PID=$!
  PEERS="gateway gateway_memory bare bare_redis bare_job"
fi
RUST_LOG=info $GW --config $W/gw.toml >/dev/null 2>$W/log &
GW_PID=$!
wait_healthy $P
BARE=$(awk '/listening on/ {print $3}' $W/bare.out)
BARE_JOB_URL=$(awk '/listening on/ {print $3}' $W/bare_job.out)
chat_lua $W/gw.lua "http://127.0.0.1:$P" 1
chat_lua $W/bare.lua "" 0
if [ -n "${MEM_PID:-}" ]; then
  wait_healthy $PM
  chat_lua $W/mem.lua "http://127.0.0.1:$PM" 1
  for _ in $(seq 50); do grep -q 'listening on' $W/bare_redis.out && break; sleep 0.1; done
  BARE_REDIS=$(awk '/listening on/ {print $3}' $W/bare_redis.out)
fi
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
# With perf installed, also the peer's context switches per request
# (counted over the run, idle switches included), and its FUTEX_WAKE_PRIVATE
# calls: mostly a parked tokio worker woken by another (also a contended
# lock released; not the worker parked in epoll, woken through an eventfd).
cswitches() {
  command -v perf >/dev/null && perf stat -e context-switches \
    -e syscalls:sys_enter_futex --filter 'op == 129' -x, -o $W/cs -p $1 -- sleep 4 2>/dev/null
}
echo "round peer p50 cpu_us_per_request fake_cpu_us_per_request context_switches_per_request futex_wakes_per_request"
for r in $(seq $ROUNDS); do
  for peer in $PEERS; do
    case $peer in
      gateway) pid=$GW_PID; url=http://127.0.0.1:$P; lua=$W/gw.lua ;;
      gateway_memory) pid=$MEM_PID; url=http://127.0.0.1:$PM; lua=$W/mem.lua ;;
      bare) pid=$BARE_PID; url=$BARE; lua=$W/bare.lua ;;
      bare_redis) pid=$BARE_REDIS_PID; url=$BARE_REDIS; lua=$W/bare.lua ;;
      bare_job) pid=$BARE_JOB_PID; url=$BARE_JOB_URL; lua=$W/gw.lua ;;
    esac
    wrk -t1 -c1 -d1s -s $lua $url >/dev/null
    c0=$(ticks $pid); f0=$(ticks $FAKE_PID)
    rm -f $W/cs; cswitches $pid & PERF=$!
    out=$(wrk -t1 -c1 -d4s --latency -s $lua $url)
    c1=$(ticks $pid); f1=$(ticks $FAKE_PID)
    wait $PERF || true
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    p50=$(awk '/^ +50%/ {print $2}' <<<"$out")
    cs=$(awk -F, -v n=$n '/context-switches/ {printf "%.1f", $1 / n}' $W/cs 2>/dev/null || true)
    fw=$(awk -F, -v n=$n '/sys_enter_futex/ {printf "%.2f", $1 / n}' $W/cs 2>/dev/null || true)
    echo "$r $peer $p50 $(( (c1 - c0) * 10000 * 1000 / n / 1000 )) $(( (f1 - f0) * 10000 * 1000 / n / 1000 )) ${cs:--} ${fw:--}"
  done
done
