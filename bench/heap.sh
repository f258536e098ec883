#!/usr/bin/env bash
# Where the memory of 1,000 streams goes: a heap profile of the memory
# gateway and of `bare-wide` (the bare proxy with the gateway's backlog),
# each at the moment its heap peaked during `bench --streams`.
#
#   bench/heap.sh [TOP]      # TOP allocation sites of each (default 12)
#
# heaptrack sees glibc's malloc only, so the gateway is built without
# mimalloc (`--no-default-features`, into target/glibc; the bare proxy uses
# glibc already). The bench ends its peers with SIGKILL, which would lose a
# profile: each peer runs under a wrapper that the bench may kill, while
# heaptrack and the program run on in a session of their own; once the
# bench is done, the program gets a SIGTERM and heaptrack is waited for.
# Timings (and the bench's RSS figures, which are the wrapper's) mean
# nothing under heaptrack; the heap's peak does. Divide by the stream count
# for bytes per stream (BENCHMARKS.md, issue 15's tenth round). The
# profiles stay in target/heap/<time>/. Needs heaptrack
# (`apt-get install heaptrack`).
set -euo pipefail
cd "$(dirname "$0")/.."
TOP=${1:-12}
command -v heaptrack >/dev/null || { echo "heap.sh: needs heaptrack (apt-get install heaptrack)" >&2; exit 2; }

CARGO_TARGET_DIR=target/glibc cargo build --release --quiet --no-default-features -p deepseek_proxy
cargo build --release --quiet -p bench
OUT=$PWD/target/heap/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"

# Stops every profiled program (found by its session, which is the one
# `setsid` made), then waits for heaptrack to write its file.
stop() {
  local f sid n
  for f in "$OUT"/*.sid; do
    [ -e "$f" ] || continue
    sid=$(cat "$f")
    pkill -TERM -s "$sid" -x deepseek_proxy || true
    pkill -TERM -s "$sid" -x bare_proxy || true
  done
  for f in "$OUT"/*.sid; do
    [ -e "$f" ] || continue
    sid=$(cat "$f")
    n=0
    while pgrep -s "$sid" >/dev/null && [ "$n" -lt 300 ]; do sleep 0.2; n=$((n + 1)); done
    pkill -KILL -s "$sid" 2>/dev/null || true
    rm -f "$f"
  done
}
trap stop EXIT

# One wrapper per program; a profile is named after the peer it is. The
# bench's one-shot calls (`hash-password`) run unprofiled: heaptrack's
# messages would be read as their output.
wrapper() { # NAME_RULE BINARY
  cat <<EOF
#!/bin/sh
case "\$1" in hash-password) exec "$2" "\$@" ;; esac
$1
setsid heaptrack -o "$OUT/\$name.\$\$" "$2" "\$@" &
echo \$! >"$OUT/\$name.\$\$.sid"
wait
EOF
}
wrapper 'case "$*" in *memory.toml*) name=memory ;; *redis.toml*) name=redis ;; *) name=gateway ;; esac' \
  "$PWD/target/glibc/release/deepseek_proxy" >"$OUT/gateway"
wrapper 'if [ -n "${BARE_JOB:-}" ]; then name=bare-job; elif [ $# -ge 3 ]; then name=bare-wide; else name=bare; fi' \
  "$PWD/target/release/bare_proxy" >"$OUT/bare"
chmod +x "$OUT/gateway" "$OUT/bare"

BENCH_GATEWAY_BIN="$OUT/gateway" BENCH_BARE_BIN="$OUT/bare" \
  target/release/bench --streams >/dev/null
stop

for peer in memory bare-wide; do
  file=$(ls "$OUT/$peer".* 2>/dev/null | head -1 || true)
  [ -n "$file" ] || { echo "heap.sh: no profile of $peer in $OUT" >&2; exit 1; }
  echo "== $peer ($file)"
  heaptrack_print -f "$file" --print-peaks 0 --print-allocators 0 --print-temporary 0 \
    --print-leaks 0 | grep "peak heap memory consumption"
  # Each site: its share of the peak, and under it the calls (and their
  # stacks) that made it.
  heaptrack_print -f "$file" --print-peaks 1 --print-allocators 0 --print-temporary 0 \
    --print-leaks 0 -n "$TOP" | awk '/^PEAK MEMORY/{p=1} p' | grep -E "peak memory consumed|consumed over" -A1
done
