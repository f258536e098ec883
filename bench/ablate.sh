#!/usr/bin/env bash
# The ablation table of BENCHMARKS.md (issue 15): the gateway's CPU per
# request with each piece of per-request work switched off in turn.
#
#   bench/ablate.sh [ROUNDS]        # default 3 rounds; ~15 s per row and round
#
# Builds the gateway with `--features ablation` (into target/ablation, never
# the binary you run) and the fake DeepSeek, starts the fake, then for each
# round and each row starts a fresh gateway (memory state, SQLite ledger with
# its journal, quotas for every user, the access log at info into a file),
# logs in 1,000 users, warms up for 2 s, and runs `wrk -t1 -c32 -d5s`
# rotating the 1,000 tokens over `POST /v1/chat/completions`. CPU per request
# is utime + stime of the gateway's threads over the requests wrk completed,
# split into tokio's workers and SQLite's threads. Rows alternate within a
# round, so the machine's drift spreads over all of them. Needs wrk
# (`apt-get install wrk`) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
command -v wrk >/dev/null || { echo "ablate.sh: needs wrk (apt-get install wrk)" >&2; exit 2; }

CARGO_TARGET_DIR=target/ablation cargo build --release --quiet --features ablation -p deepseek_proxy
cargo build --release --quiet -p fake_deepseek
GW=target/ablation/release/deepseek_proxy
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

. bench/lib.sh
FAKE_PORT=$(free_port)
GW_PORT=$(free_port)
target/release/fake_deepseek --addr "127.0.0.1:$FAKE_PORT" --key "$BENCH_KEY" >/dev/null 2>&1 &
gateway_toml "$WORK" "$GW_PORT" "$FAKE_PORT" 1000

# CPU ticks by thread name (tokio-rt-worker, sqlx-sqlite-wor, ...).
ticks() {
  for t in /proc/"$1"/task/*; do
    echo "$(tr ' ' _ <"$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
  done | awk '{a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}

row() {
  rm -f "$WORK"/usage.db*
  DSP_ABLATE="$1" RUST_LOG=info "$GW" --config "$WORK/gw.toml" >/dev/null 2>"$WORK/gw.log" &
  local pid=$!
  wait_healthy "$GW_PORT"
  chat_lua "$WORK/tokens.lua" "http://127.0.0.1:$GW_PORT" 1000
  wrk -t1 -c32 -d2s -s "$WORK/tokens.lua" "http://127.0.0.1:$GW_PORT" >/dev/null
  ticks "$pid" >"$WORK/t0"
  local out
  out=$(wrk -t1 -c32 -d5s -s "$WORK/tokens.lua" "http://127.0.0.1:$GW_PORT")
  ticks "$pid" >"$WORK/t1"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local requests non2xx
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  join "$WORK/t0" "$WORK/t1" | awk -v n="$requests" -v bad="${non2xx:-0}" -v part="$1" -v round="$2" '
    { d = ($3 - $2) * 10000 / n; total += d; if ($1 ~ /sqlite/) sqlite += d; else if ($1 ~ /tokio/) tokio += d }
    END { printf "| %s | %s | %.1f | %.1f | %.1f | %.0f | %s |\n", round, part, total, tokio, sqlite, n / 5, bad }'
}

PARTS="none access_log ledger metrics quota slot jwt active request_id headers tap layers"
ALL=$(tr ' ' ',' <<<"${PARTS#none }")
echo "| round | switched off | CPU µs/request | tokio workers | SQLite threads | requests/s | non-2xx |"
echo "|---|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  for part in $PARTS "$ALL"; do
    row "$part" "$round"
  done
done
