#!/usr/bin/env bash
# Writes the man page of every ShardForge program (section 1, roff) into
# $CARGO_TARGET_DIR/man, or the folder given. The pages are generated from
# the programs' own flag definitions (each program's hidden `--man-page
# DIR`), so they never drift from `--help`.
#
#   scripts/man.sh                 # builds the programs (debug), pages in <target>/man
#   scripts/man.sh --release       # the same from a release build
#   scripts/man.sh OUTDIR          # pages in OUTDIR
#   SHARDFORGE_BIN_DIR=DIR scripts/man.sh OUTDIR   # programs already built in DIR
#
# Read one with `man -l <target>/man/sf-write.1`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=debug
build=(cargo build -p sf-cli --bins)
if [ "${1:-}" = "--release" ]; then
  profile=release
  build+=(--release)
  shift
fi

target="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}"
out="${1:-$target/man}"
bins="${SHARDFORGE_BIN_DIR:-}"
if [ -z "$bins" ]; then
  "${build[@]}"
  bins="$target/$profile"
fi

mkdir -p "$out"
for program in sf-write sf-read sf-sql sf-serve sf-scheduler sf-executor; do
  "$bins/$program" --man-page "$out" >/dev/null
done
echo "man pages of sf-write, sf-read, sf-sql, sf-serve, sf-scheduler and sf-executor in $out"
