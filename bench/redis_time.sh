#!/usr/bin/env bash
# Redis's own time per request on the gateway's Redis path (BENCHMARKS.md,
# issue 15), apart from the load on the machine:
#   bench/redis_time.sh [GATEWAY_BIN] [REQUESTS]
# starts the fake and the gateway with Redis state (production defaults:
# the bench's quotas, SQLite ledger), records with MONITOR the scripts one
# chat request runs (its EVALSHAs), then replays that request's scripts
# REQUESTS times (default 5000) one after another from one connection, each
# time with a new owner and the current clock, and prints Redis's time per
# request from INFO commandstats (so the wire and the client do not count),
# with each quota switched off in turn; the same for the bare proxy's
# `SET NX PX` and `DEL` (bare_redis); and what an empty script costs.
# Run it on a quiet machine: commandstats counts wall time, and a preempted
# Redis counts the wait. Needs python3 and redis-cli.
set -euo pipefail
GW=$(realpath "${1:-target/release/deepseek_proxy}")
N=${2:-5000}
cd "$(dirname "$0")/.."
cargo build --release --quiet -p fake_deepseek
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
. bench/lib.sh
FAKE=$(free_port); P=$(free_port)
target/release/fake_deepseek --addr "127.0.0.1:$FAKE" --key "$BENCH_KEY" >/dev/null 2>&1 &
gateway_toml $W $P $FAKE 1
printf '[state]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:6379"\nkey_prefix = "rt%s:"\n' $$ >> $W/gw.toml
RUST_LOG=warn $GW --config $W/gw.toml >/dev/null 2>$W/log &
wait_healthy $P
TOKEN=$(curl -fs -H 'content-type: application/json' -d '{"username":"user0","password":"pw0"}' \
  http://127.0.0.1:$P/auth/login | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
chat() {
  curl -fs -o /dev/null -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d '{"model":"deepseek-flash","stream":false,"thinking":{"type":"disabled"},"messages":[{"role":"user","content":"hi"}]}' \
    http://127.0.0.1:$P/v1/chat/completions
}
chat; chat
timeout 1 redis-cli monitor >$W/monitor &
sleep 0.3; chat; sleep 0.8
grep -i '"evalsha"' $W/monitor | grep "rt$$:" >$W/scripts
python3 - $W/scripts $N <<'PY'
import shlex, socket, sys, time
scripts = [shlex.split(line.split("]", 1)[1])[1:] for line in open(sys.argv[1])]
n = int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", 6379))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
f = s.makefile("rb")
def read():
    line = f.readline()
    if line[:1] == b"*":
        return [read() for _ in range(int(line[1:]))]
    if line[:1] == b"$":
        k = int(line[1:])
        return None if k < 0 else f.read(k + 2)[:-2]
    if line[:1] == b"-":
        sys.exit(f"redis: {line.decode().strip()}")
    return line.strip()
def cmd(*args):
    s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args))
    return read()
print("scripts per request: " + ", ".join(f"EVALSHA with {a[1]} keys" for a in scripts))
def usec(command):
    stats = cmd("INFO", "commandstats").decode()
    line = next(l for l in stats.splitlines() if l.startswith(f"cmdstat_{command}:"))
    return int(line.split("usec=")[1].split(",")[0])
# Each quota switched off in turn, in enter's ARGV (after its own three:
# now, owner, rpm, concurrency, tokens, ..., budget at 3 + 9) and in
# settle's (owner, token delta, spend delta, key spend delta, running).
variants = {
    "all quotas on": ({}, {}),
    "requests_per_minute off": ({5: "0"}, {}),
    "max_concurrent off": ({6: "0"}, {4: "0"}),
    "tokens_per_day off": ({7: "0"}, {1: ""}),
    "budget_per_month off": ({12: "0"}, {2: ""}),
    "every quota off": ({5: "0", 6: "0", 7: "0", 12: "0"}, {1: "", 2: "", 4: "0"}),
}
for name, (enter_off, settle_off) in variants.items():
    cmd("CONFIG", "RESETSTAT")
    for i in range(n):
        owner, now = "%032x" % (0xbe7c0000000 + i), str(int(time.time() * 1000))
        for a in scripts:
            sha, nkeys = a[0], int(a[1])
            keys, argv = a[2:2 + nkeys], list(a[2 + nkeys:])
            argv[0] = owner  # every script's ARGV[1] is the owner
            if nkeys >= 6:  # enter: then the admission's own now and owner
                argv[3], argv[4] = now, owner
                for j, v in enter_off.items():
                    argv[j] = v
            elif nkeys == 4:
                for j, v in settle_off.items():
                    argv[j] = v
            cmd("EVALSHA", sha, str(nkeys), *keys, *argv)
    print(f"redis_us_per_request {usec('evalsha') / n:5.1f}  {name}")
# The floor in the same run: the bare proxy's two commands (bare_redis).
cmd("CONFIG", "RESETSTAT")
for i in range(n):
    key, owner = "%sbare:%d" % (scripts[0][2].split(":")[0] + ":", i % 64), "%032x" % i
    cmd("SET", key, owner, "NX", "PX", "15000")
    cmd("DEL", key)
print(f"bare_redis_us_per_request {(usec('set') + usec('del')) / n:.1f} (SET NX PX, DEL)")
# What a script costs before it does anything: `return 1`, with no keys or
# arguments and with each of this request's scripts' keys and arguments.
noop = cmd("SCRIPT", "LOAD", "return 1").decode()
for label, a in [("no keys or arguments", ["0"])] + [
        (f"the keys and arguments of script {j + 1}", a[1:]) for j, a in enumerate(scripts)]:
    cmd("CONFIG", "RESETSTAT")
    for i in range(n):
        cmd("EVALSHA", noop, *a)
    print(f"noop_script_us {usec('evalsha') / n:4.1f}  (return 1, {label})")
PY
