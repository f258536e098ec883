#!/usr/bin/env bash
# The console's browser tests: Playwright for Python driving Debian's
# headless Chromium against `deepseek_proxy --demo`. Written for a fresh
# Debian machine as root with no stdin; installs what it needs. Playwright's
# own browser download is never used (`playwright install` cannot work here).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
/usr/bin/chromium --version

PY=$(command -v python3 || command -v python)
VENV="${TMPDIR:-/tmp}/deepseek_proxy_console_venv"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check playwright pytest openai

cargo build --quiet
BIN="${CARGO_TARGET_DIR:-target}/debug/deepseek_proxy"

WORK=$(mktemp -d)
cat >"$WORK/config.toml" <<'TOML'
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
username = "user1"
password = "pass123"
[storage]
sqlite_path = ":memory:"
TOML
env -u OPENAI_API_KEY -u DEEPSEEK_API_KEY "$BIN" --demo --config "$WORK/config.toml" \
  >"$WORK/stdout" 2>"$WORK/gateway.log" &
GATEWAY=$!
cleanup() {
  kill "$GATEWAY" 2>/dev/null || true
  wait "$GATEWAY" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

URL=""
for _ in $(seq 1 100); do
  URL=$(sed -n 's/^deepseek_proxy listening on \(http:[^ ]*\)$/\1/p' "$WORK/stdout")
  [ -n "$URL" ] && break
  kill -0 "$GATEWAY" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$URL" ]; then
  echo "the gateway did not start:" >&2
  cat "$WORK/stdout" "$WORK/gateway.log" >&2
  exit 1
fi

mkdir -p target/console-shots
status=0
CONSOLE_BASE_URL="$URL" CONSOLE_SHOTS="$PWD/target/console-shots" \
  "$VENV/bin/python" -m pytest -p no:cacheprovider -q tests/console "$@" || status=$?
if [ "$status" -ne 0 ]; then
  # 5 is "no tests collected": a failure too.
  echo "console tests failed (pytest exit $status); the gateway's log:" >&2
  tail -n 50 "$WORK/gateway.log" >&2
  exit 1
fi
echo "screenshots in target/console-shots/"
