#!/usr/bin/env bash
# The quickstart: builds a snapshot of the bundled example data (1,000 users
# from a CSV file) into 4 SQLite shards under examples/quickstart/out/users
# with the embedded engine, shows what was written, and reads it back with
# sf-read (a point lookup, a multi-get, the snapshot's shards).
#
#   ./scripts/quickstart.sh
#
# The first run compiles ShardForge (several minutes on a small machine).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="examples/quickstart/out/users"

cargo build --quiet -p sf-cli --bin sf-write --bin sf-read
BIN="$(cargo metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo target)/debug"

echo "== sf-write --config examples/quickstart/job.toml"
"$BIN/sf-write" --config examples/quickstart/job.toml

echo
echo "== what was written under $OUT"
find "$OUT" -type f | sed "s|^$OUT/||" | sort
echo
echo "== _CURRENT"
cat "$OUT/_CURRENT"; echo
echo
echo "== sf-read --current-url $OUT get 42"
"$BIN/sf-read" --current-url "$OUT" --cache-dir examples/quickstart/out/.cache get 42
echo "== sf-read --current-url $OUT multiget 1 2 999999"
"$BIN/sf-read" --current-url "$OUT" --cache-dir examples/quickstart/out/.cache --output jsonl multiget 1 2 999999
echo "== sf-read --current-url $OUT --output table shards"
"$BIN/sf-read" --current-url "$OUT" --cache-dir examples/quickstart/out/.cache --output table shards
