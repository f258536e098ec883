#!/usr/bin/env bash
# The SQLite floor of one ledger row (BENCHMARKS.md, issue 15): floor.c
# writes rows shaped like the gateway's through SQLite's C API, into a
# database the gateway itself created (its schema and indexes), with the
# same SQLite amalgamation the gateway links (from libsqlite3-sys).
#
#   bench/sqlite_floor/run.sh [RUNS] [EXTRA_SQL]
#
# Prints CPU (user + sys) per row for RUNS runs of 100,000 rows in a row on
# one file, so the table grows. PER_TX=N sets the rows per transaction
# (500, as the gateway writes). EXTRA_SQL runs after opening (for example
# "PRAGMA synchronous=NORMAL"). Needs gcc.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/libsqlite3-sys-0.30.*/sqlite3 | head -1)
cargo build --release --quiet -p deepseek_proxy
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
gcc -O2 -DSQLITE_DEFAULT_FOREIGN_KEYS=1 -DSQLITE_ENABLE_API_ARMOR -DSQLITE_THREADSAFE=1 \
  -DSQLITE_USE_URI -DHAVE_USLEEP=1 -DHAVE_ISNAN -DSQLITE_ENABLE_COLUMN_METADATA \
  -DSQLITE_ENABLE_DBSTAT_VTAB -DSQLITE_ENABLE_FTS3 -DSQLITE_ENABLE_FTS5 -DSQLITE_ENABLE_JSON1 \
  -DSQLITE_ENABLE_MEMORY_MANAGEMENT -DSQLITE_ENABLE_RTREE -DSQLITE_ENABLE_STAT4 \
  -DSQLITE_ENABLE_UNLOCK_NOTIFY -I"$SRC" bench/sqlite_floor/floor.c "$SRC/sqlite3.c" \
  -o "$W/floor" -lpthread -ldl -lm
cat >"$W/gw.toml" <<T
[auth]
jwt_secret = "$(printf 'b%.0s' $(seq 40))"
[[auth.users]]
username = "u"
password = "pw"
[deepseek]
api_key = "sk-floor"
[storage]
sqlite_path = "$W/usage.db"
T
# `usage` opens the ledger: the schema is created and migrated.
target/release/deepseek_proxy usage --config "$W/gw.toml" >/dev/null
for _ in $(seq "$RUNS"); do
  "$W/floor" "$W/usage.db" 100000 ${2:+"$2"}
done
