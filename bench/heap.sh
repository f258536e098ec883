#!/usr/bin/env bash
# Where the memory of 1,000 streams goes: a heap profile of the memory
# gateway and of `bare-wide` (the bare proxy with the gateway's backlog),
# each at the moment its heap peaked during `bench --streams`.
#
#   bench/heap.sh [TOP]      # TOP allocation sites of each (default 12)
#
# heaptrack sees glibc's malloc only, so the gateway is built without
# mimalloc (`--no-default-features`, into target/glibc; the bare proxy uses
# glibc already). Each profiled process is started in a session of its own
# (`setsid`): the bench ends its peers with SIGKILL, which would lose the
# profile, so they outlive it here and get a SIGTERM afterwards. Needs
# heaptrack (`apt-get install heaptrack`). Timings under heaptrack mean
# nothing; the heap's peak does. Divide by the stream count for bytes per
# stream (BENCHMARKS.md, issue 15's tenth round).
set -euo pipefail
cd "$(dirname "$0")/.."
TOP=${1:-12}
command -v heaptrack >/dev/null || { echo "heap.sh: needs heaptrack (apt-get install heaptrack)" >&2; exit 2; }

CARGO_TARGET_DIR=target/glibc cargo build --release --quiet --no-default-features -p deepseek_proxy
cargo build --release --quiet -p bench
OUT=$(mktemp -d)
trap 'pkill -TERM -f "$OUT/" 2>/dev/null || true' EXIT

# One wrapper per program; a profile is named after the peer it is.
cat >"$OUT/gateway" <<EOF
#!/bin/sh
case "\$*" in *memory.toml*) name=memory ;; *redis.toml*) name=redis ;; *) name=gateway ;; esac
setsid heaptrack -o "$OUT/\$name.\$\$" "$PWD/target/glibc/release/deepseek_proxy" "\$@" &
wait
EOF
cat >"$OUT/bare" <<EOF
#!/bin/sh
if [ -n "\${BARE_JOB:-}" ]; then name=bare-job; elif [ \$# -ge 3 ]; then name=bare-wide; else name=bare; fi
setsid heaptrack -o "$OUT/\$name.\$\$" "$PWD/target/release/bare_proxy" "\$@" &
wait
EOF
chmod +x "$OUT/gateway" "$OUT/bare"

BENCH_GATEWAY_BIN="$OUT/gateway" BENCH_BARE_BIN="$OUT/bare" \
  target/release/bench --streams >/dev/null
# The profiled processes are still running: stop them so heaptrack writes out.
pkill -TERM -f "target/glibc/release/deepseek_proxy --config /tmp/deepseek_proxy_bench" || true
pkill -TERM -f "target/release/bare_proxy 127.0.0.1:0" || true
sleep 10

for peer in memory bare-wide; do
  file=$(ls "$OUT/$peer".*.zst* 2>/dev/null | head -1)
  [ -n "$file" ] || { echo "heap.sh: no profile of $peer" >&2; exit 1; }
  echo "== $peer"
  heaptrack_print -f "$file" --print-peaks 0 --print-allocators 0 --print-temporary 0 \
    --print-leaks 0 --print-histogram /dev/null | grep "peak heap memory consumption"
  # Each site: its share of the peak, and under it the calls (and their
  # stacks) that made it.
  heaptrack_print -f "$file" --print-peaks 1 --print-allocators 0 --print-temporary 0 \
    --print-leaks 0 -n "$TOP" | awk '/^PEAK MEMORY/{p=1} p' | grep -E "peak memory consumed|consumed over" -A1
done
