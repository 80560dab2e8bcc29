#!/usr/bin/env bash
# Fails when the dependency graph holds a second copy of a crate that must
# be unique: two `arrow` or `object_store` versions would mean two
# incompatible RecordBatch or ObjectStore types across the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dups="$(cargo tree --workspace -d -e normal --depth 0 --prefix none --format '{p}' \
  | grep -E '^(arrow|arrow-[a-z]+|object_store|datafusion|parquet) ' | sed 's/ (\*)//' | sort -u || true)"
if [ -n "$dups" ]; then
  echo "duplicate versions in the dependency graph (cargo tree -d):" >&2
  echo "$dups" >&2
  exit 1
fi
echo "dependency graph: one arrow, one object_store, one datafusion, one parquet"
