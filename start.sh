#!/usr/bin/env sh
# Starts deepseek_proxy with ./config.toml. Without a key in OPENAI_API_KEY,
# DEEPSEEK_API_KEY or config.toml, it starts in --demo mode (fake DeepSeek).
set -eu
cd "$(dirname "$0")"
if [ -z "${OPENAI_API_KEY:-}${DEEPSEEK_API_KEY:-}" ] && ! grep -Eq '^api_key *= *"[^"]+"' config.toml; then
  echo "No DeepSeek key found: starting in --demo mode." >&2
  exec cargo run --release -- --demo "$@"
fi
exec cargo run --release -- "$@"
