#!/usr/bin/env bash
# Real-client check: OpenAI's Codex CLI and Anthropic's Claude Code, fully
# offline, against `deepseek_proxy --demo` (the gateway in front of its
# built-in fake DeepSeek). Checks that each agent succeeds, and that each
# refusal (bad key, model not allowed, daily quota, busy token) makes the
# agent stop (or retry) the way the gateway intends. See tests/agents/README.md.
#
#   bash tests/agents/run.sh            # from the repo root
#
# Environment:
#   AGENTS_DIR    where the two npm packages are installed (cached between runs)
#                 default: $HOME/.cache/deepseek_proxy-agents
#   GATEWAY_BIN   the gateway binary (default target/debug/deepseek_proxy; built if missing)
#   AGENTS_KEEP=1 keep the work dir (gateway log, agent outputs) and print its path
set -euo pipefail
cd "$(dirname "$0")/../.."

CODEX_VERSION=0.171.0
CLAUDE_VERSION=2.1.197
AGENTS_DIR=${AGENTS_DIR:-${HOME:-/tmp}/.cache/deepseek_proxy-agents}
GATEWAY_BIN=${GATEWAY_BIN:-target/debug/deepseek_proxy}
T_START=$(date +%s)

# ---------------------------------------------------------------- install --
for tool in node npm curl timeout; do
  command -v "$tool" >/dev/null || { echo "tests/agents/run.sh needs $tool (node 20 + npm)" >&2; exit 1; }
done
pkg_version() {
  local f="$AGENTS_DIR/node_modules/$1/package.json"
  [ -f "$f" ] && node -p "require(process.argv[1]).version" "$f" 2>/dev/null || true
}
if [ "$(pkg_version @openai/codex)" != "$CODEX_VERSION" ] ||
   [ "$(pkg_version @anthropic-ai/claude-code)" != "$CLAUDE_VERSION" ]; then
  echo "installing @openai/codex@$CODEX_VERSION @anthropic-ai/claude-code@$CLAUDE_VERSION into $AGENTS_DIR"
  mkdir -p "$AGENTS_DIR"
  npm install --no-audit --no-fund --loglevel=error --prefix "$AGENTS_DIR" \
    "@openai/codex@$CODEX_VERSION" "@anthropic-ai/claude-code@$CLAUDE_VERSION" </dev/null
fi
BIN="$AGENTS_DIR/node_modules/.bin"
echo "codex:  $("$BIN/codex" --version </dev/null 2>&1 | tail -n1)"
echo "claude: $("$BIN/claude" --version </dev/null 2>&1 | tail -n1)"

# ---------------------------------------------------------------- gateway --
if [ ! -x "$GATEWAY_BIN" ]; then
  cargo build --quiet
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/agents.XXXXXX")
LOG="$WORK/gateway.log"
GATEWAY=""
HOLDER=""
WATCHER=""
cleanup() {
  [ -n "$WATCHER" ] && kill "$WATCHER" 2>/dev/null || true
  [ -n "$HOLDER" ] && kill "$HOLDER" 2>/dev/null || true
  [ -n "$GATEWAY" ] && kill "$GATEWAY" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "${AGENTS_KEEP:-}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

cat > "$WORK/config.toml" <<'TOML'
[server]
host = "127.0.0.1"
port = 0
[auth]
jwt_secret = ""
[[auth.users]]
username = "admin"
password = "admin123"
role = "admin"
[[auth.users]]
username = "flashonly"
password = "flash123"
models = ["deepseek-flash"]
[[auth.users]]
username = "capped"
password = "capped123"
tokens_per_day = 1
[[auth.users]]
username = "busy"
password = "busy123"
[storage]
sqlite_path = ":memory:"
TOML
env -u OPENAI_API_KEY -u DEEPSEEK_API_KEY "$GATEWAY_BIN" --demo --config "$WORK/config.toml" \
  >"$WORK/stdout" 2>"$LOG" </dev/null &
GATEWAY=$!
URL=""
for _ in $(seq 1 100); do
  URL=$(sed -n 's/^deepseek_proxy listening on \(http:[^ ]*\)$/\1/p' "$WORK/stdout")
  [ -n "$URL" ] && break
  sleep 0.1
done
if [ -z "$URL" ]; then
  echo "the gateway did not start:" >&2
  cat "$WORK/stdout" "$LOG" >&2
  exit 1
fi
echo "gateway: $URL"

login() {
  curl -sS --max-time 10 "$URL/auth/login" -H 'content-type: application/json' \
    -d "{\"username\":\"$1\",\"password\":\"$2\"}" |
    sed -n 's/.*"token" *: *"\([^"]*\)".*/\1/p'
}
ADMIN=$(login admin admin123)
FLASH=$(login flashonly flash123)
CAPPED=$(login capped capped123)
BUSY=$(login busy busy123)
BADKEY="not-a-gateway-token"
for t in ADMIN FLASH CAPPED BUSY; do
  if [ -z "${!t}" ]; then echo "login failed for $t" >&2; tail -n 20 "$LOG" >&2; exit 1; fi
done

# ------------------------------------------------------------- harness ----
PASSED=0
FAILED=0
RC=0 SECS=0 OUT="" MARK=0

# What the gateway answers to a bare request (no agent): one summary line, and
# the error message in $PROBE_MSG.
probe() { # route key model
  local route=$1 key=$2 model=$3 body hdr
  if [ "$route" = anthropic ]; then
    body="{\"model\":\"$model\",\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"
    curl -sS --max-time 10 -D "$WORK/probe.h" -o "$WORK/probe.b" "$URL/anthropic/v1/messages" \
      -H "x-api-key: $key" -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' -d "$body" || true
  else
    body="{\"model\":\"$model\",\"input\":\"hi\"}"
    curl -sS --max-time 10 -D "$WORK/probe.h" -o "$WORK/probe.b" "$URL/v1/responses" \
      -H "authorization: Bearer $key" -H 'content-type: application/json' -d "$body" || true
  fi
  hdr=$(tr -d '\r' < "$WORK/probe.h" | awk '
    NR==1 {s=$2} tolower($1)=="retry-after:" {ra=$2} tolower($1)=="x-should-retry:" {sr=$2}
    END {printf "%s retry-after=%s x-should-retry=%s", s, (ra==""?"-":ra), (sr==""?"-":sr)}')
  PROBE_MSG=$(node -e '
    const b = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const e = b.error || {};
    console.log(JSON.stringify({type: e.type, code: e.code, resets_at: e.resets_at}) + "\t" + (e.message || ""));
  ' "$WORK/probe.b" 2>/dev/null || echo "?	")
  echo "   gateway: $hdr ${PROBE_MSG%%	*}"
  PROBE_MSG=${PROBE_MSG#*	}
}

# The gateway's access-log lines for model requests since $MARK.
gw_requests() { # path
  sleep 0.3
  tail -n +"$((MARK + 1))" "$LOG" | grep ' request ' | grep -F " path=$1 " |
    sed -n 's/.* status=\([0-9]*\).*/\1/p' | tr '\n' ' ' | sed 's/ $//'
}

# The same requests as "status@seconds since the first" (log time = when each ended).
gw_timeline() { # path
  tail -n +"$((MARK + 1))" "$LOG" | grep ' request ' | grep -F " path=$1 " | awk '
    { split(substr($1, 12, 15), t, ":"); x = t[1] * 3600 + t[2] * 60 + t[3]
      if (NR == 1) x0 = x
      match($0, / status=[0-9]+/); st = substr($0, RSTART + 8, RLENGTH - 8)
      printf "%s%s@%.1fs", (NR > 1 ? " " : ""), st, x - x0 }'
}

# Runs an agent under `timeout` with a clean environment; sets RC, SECS, OUT.
run_claude() { # tag key limit [claude args...]
  local tag=$1 key=$2 limit=$3; shift 3
  local home="$WORK/home-$tag"
  mkdir -p "$home/work"
  OUT="$WORK/$tag.out"
  MARK=$(wc -l < "$LOG")
  local t0; t0=$(date +%s%N)
  RC=0
  (cd "$home/work" && env -i PATH="$BIN:$PATH" HOME="$home" TERM=dumb LANG=C.UTF-8 SHELL=/bin/bash \
      USER="${USER:-ci}" ${CI:+CI="$CI"} NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost \
      ANTHROPIC_BASE_URL="$URL/anthropic" ANTHROPIC_API_KEY="$key" \
      CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_TELEMETRY=1 DISABLE_AUTOUPDATER=1 \
      DISABLE_ERROR_REPORTING=1 \
      timeout -k 5 "$limit" claude -p "$@" </dev/null >"$OUT" 2>&1) || RC=$?
  SECS=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN {printf "%.1f", (b - a) / 1e9}')
}
run_codex() { # tag key model limit [codex exec args...]
  local tag=$1 key=$2 model=$3 limit=$4; shift 4
  local home="$WORK/home-$tag"
  mkdir -p "$home/codex" "$home/work"
  cat > "$home/codex/config.toml" <<TOML
model = "$model"
model_provider = "gw"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false

[model_providers.gw]
name = "deepseek_proxy"
base_url = "$URL/v1"
wire_api = "responses"
env_key = "GW_KEY"
TOML
  OUT="$WORK/$tag.out"
  MARK=$(wc -l < "$LOG")
  local t0; t0=$(date +%s%N)
  RC=0
  (cd "$home/work" && env -i PATH="$BIN:$PATH" HOME="$home" CODEX_HOME="$home/codex" TERM=dumb \
      LANG=C.UTF-8 SHELL=/bin/bash USER="${USER:-ci}" ${CI:+CI="$CI"} \
      NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost GW_KEY="$key" \
      timeout -k 5 "$limit" codex exec --skip-git-repo-check "$@" </dev/null >"$OUT" 2>&1) || RC=$?
  SECS=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN {printf "%.1f", (b - a) / 1e9}')
}

# need <why>: records a failed expectation; finish <case> <path> prints PASS/FAIL.
WHY=""
need() { WHY="${WHY:+$WHY; }$*"; }
finish() { # case gateway-path
  local statuses; statuses=$(gw_requests "$2")
  local n=0; [ -n "$statuses" ] && n=$(wc -w <<<"$statuses")
  local info="rc=$RC, $n request(s) on $2: [$(gw_timeline "$2")]"
  if [ -z "$WHY" ]; then
    echo "PASS $1 (${SECS}s) $info"
    PASSED=$((PASSED + 1))
  else
    echo "FAIL $1: $WHY (${SECS}s) $info"
    FAILED=$((FAILED + 1))
  fi
  local seen
  if [ "$RC" = 0 ]; then seen=$(grep -m1 -F 'fake DeepSeek' "$OUT" | cut -c1-120)
  else seen=$(grep -v -e '^[[:space:]]*$' "$OUT" | grep -iv -e 'bubblewrap' -e 'fallback metadata' |
    awk '!seen[$0]++' | tail -n 2 | cut -c1-300 | paste -sd'|' -)
  fi
  echo "   user sees: $seen"
  if [ -n "$WHY" ]; then echo "   --- output tail:"; tail -n 15 "$OUT" | sed 's/^/   | /'; fi
  WHY=""
}
secs_le() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a <= b)}'; }
has() { grep -qiF -- "$1" "$OUT"; }
prefix() { printf '%s' "${1:0:30}"; }
no_login_flow() {
  if grep -qiE 'Please run /login|codex login|sign in with chatgpt|oauth|open.*browser' "$OUT"; then
    need "mentions an interactive login flow"
  fi
}
count_is() { # path expected
  local s; s=$(gw_requests "$1"); local n=0; [ -n "$s" ] && n=$(wc -w <<<"$s")
  [ "$n" = "$2" ] || need "expected $2 request(s) on $1, gateway logged $n [$s]"
}

A=/anthropic/v1/messages
R=/v1/responses

# ---------------------------------------------------------------- cases ----
echo
echo "== a. success"
run_claude claude-ok "$ADMIN" 90 "say hi"
[ "$RC" = 0 ] || need "exit $RC"
has "fake DeepSeek" || need "the reply text is missing"
finish claude-success $A
run_codex codex-ok "$ADMIN" deepseek-flash 90 "say hi"
[ "$RC" = 0 ] || need "exit $RC"
has "fake DeepSeek" || need "the reply text is missing"
finish codex-success $R

echo
echo "== b. bad key"
probe anthropic "$BADKEY" claude-opus-4-8
MSG=$(prefix "$PROBE_MSG")
run_claude claude-badkey "$BADKEY" 60 "say hi"
[ "$RC" != 0 ] || need "exit 0"
secs_le "$SECS" 15 || need "took longer than 15 s"
has "$MSG" || need "our message ('$MSG…') is not shown"
no_login_flow
finish claude-bad-key $A
probe responses "$BADKEY" deepseek-flash
MSG=$(prefix "$PROBE_MSG")
run_codex codex-badkey "$BADKEY" deepseek-flash 60 "say hi"
[ "$RC" != 0 ] || need "exit 0"
secs_le "$SECS" 20 || need "took longer than 20 s"
has "$MSG" || need "our message ('$MSG…') is not shown"
no_login_flow
finish codex-bad-key $R

echo
echo "== c. model not allowed (user flashonly)"
probe anthropic "$FLASH" claude-opus-4-8
MSG=$(prefix "$PROBE_MSG")
run_claude claude-model "$FLASH" 60 "say hi"
[ "$RC" != 0 ] || need "exit 0"
secs_le "$SECS" 10 || need "took longer than 10 s"
has "$MSG" || need "our message ('$MSG…') is not shown"
count_is $A 1
finish claude-model-not-allowed $A
probe responses "$FLASH" deepseek-v4-pro
MSG=$(prefix "$PROBE_MSG")
run_codex codex-model "$FLASH" deepseek-v4-pro 60 "say hi"
[ "$RC" != 0 ] || need "exit 0"
secs_le "$SECS" 20 || need "took longer than 20 s"
has "$MSG" || need "our message ('$MSG…') is not shown"
finish codex-model-not-allowed $R

echo
echo "== d. daily quota used up (user capped, tokens_per_day = 1)"
probe anthropic "$CAPPED" claude-opus-4-8
MSG=$(prefix "$PROBE_MSG")
run_claude claude-quota "$CAPPED" 60 "say hi"
[ "$RC" != 0 ] || need "exit 0"
secs_le "$SECS" 10 || need "took longer than 10 s"
has "$MSG" || need "our message ('$MSG…') is not shown"
count_is $A 1
finish claude-quota $A
probe responses "$CAPPED" deepseek-flash
MSG=$(prefix "$PROBE_MSG")
# Codex words usage_limit_reached itself ("You've hit your usage limit. Try
# again at HH:MM."); a 429 with a long Retry-After would make it sleep instead.
run_codex codex-quota "$CAPPED" deepseek-flash 40 "say hi"
[ "$RC" != 0 ] || need "exit 0"
[ "$RC" != 124 ] || need "killed by timeout (slept on Retry-After?)"
secs_le "$SECS" 20 || need "took longer than 20 s"
has "usage limit" || has "$MSG" || need "neither Codex's usage-limit text nor our message is shown"
finish codex-quota $R

echo
echo "== e. busy token (slot held by a streamed request on the same token; released after two 429s)"
# The holder streams 300 words 200 ms apart (60 s at most); a watcher kills it (the gateway frees the
# slot at once when its client goes away) as soon as the gateway has logged two
# 429s on the agent's route, so the agent is refused, retries on Retry-After: 1
# and then succeeds, whatever the machine's speed.
hold() { # path: start the holder and its watcher
  local mark; mark=$(wc -l < "$LOG")
  rm -f "$WORK/holder.out"
  curl -sSN --max-time 60 "$URL/v1/chat/completions" -H "authorization: Bearer $BUSY" \
    -H 'content-type: application/json' \
    -d "{\"model\":\"deepseek-flash\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hold\"}],\"_fake\":{\"chunks\":300,\"chunk_delay_ms\":200,\"reply\":\"$(printf 'hold %.0s' $(seq 300))\"}}" \
    >"$WORK/holder.out" 2>&1 &
  HOLDER=$!
  for _ in $(seq 1 50); do [ -s "$WORK/holder.out" ] && break; sleep 0.1; done
  (
    for _ in $(seq 1 600); do
      n=$(tail -n +"$((mark + 1))" "$LOG" | grep ' request ' | grep -F " path=$1 " | grep -c ' status=429 ' || true)
      [ "$n" -ge 2 ] && break
      sleep 0.05
    done
    kill "$HOLDER" 2>/dev/null || true
  ) &
  WATCHER=$!
}
unhold() {
  kill "$WATCHER" "$HOLDER" 2>/dev/null || true
  wait "$WATCHER" "$HOLDER" 2>/dev/null || true
  HOLDER=""
}
busy_check() { # path
  local s; s=$(gw_requests "$1")
  [[ " $s " == *" 429 "* ]] || need "no 429 was logged (the slot was not held when the agent asked)"
  [[ "$s" == *200 ]] || need "the last request did not succeed"
}
hold $A
run_claude claude-busy "$BUSY" 60 "say hi"
unhold
[ "$RC" = 0 ] || need "exit $RC"
has "fake DeepSeek" || need "the reply text is missing"
busy_check $A
finish claude-busy-retry $A
hold $R
run_codex codex-busy "$BUSY" deepseek-flash 60 "say hi"
unhold
[ "$RC" = 0 ] || need "exit $RC"
has "fake DeepSeek" || need "the reply text is missing"
busy_check $R
finish codex-busy-retry $R

echo
echo "total $(($(date +%s) - T_START))s"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
