#!/usr/bin/env bash
# Mutation testing of the modules whose logic is the promises: sf-manifest's
# publish (manifest_store.rs), GC (gc.rs) and checksum modules, and
# sf-router. cargo-mutants changes one operator or body at a time and runs
# those crates' unit tests; a mutant they do not catch ("missed") is a
# change to the logic no test notices. docs/development.md records the
# last result and why each survivor is harmless.
#
#   ./scripts/mutants.sh [extra cargo-mutants arguments]
#   ./scripts/mutants.sh --file manifest/src/publish/gc.rs   (one module)
#
# It installs cargo-mutants (the version below, from crates.io) into
# .cache/cargo-mutants if missing. Too slow for CI on two cores (each
# mutant is a rebuild); run it when these modules change. Results go to
# .cache/mutants.out/ (outcomes.json, missed.txt, caught.txt, ...).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VERSION="26.2.0"
TOOL="$ROOT/.cache/cargo-mutants"
if ! "$TOOL/bin/cargo-mutants" mutants --version 2>/dev/null | grep -qF "$VERSION"; then
  echo "[mutants.sh] installing cargo-mutants $VERSION into $TOOL" >&2
  cargo install --locked --root "$TOOL" --version "$VERSION" cargo-mutants
fi
export PATH="$TOOL/bin:$PATH"

# cargo-mutants builds a copy of the tree; a target directory of its own
# (kept between runs) keeps its rebuilds from invalidating the shared one.
export CARGO_TARGET_DIR="${SHARDFORGE_MUTANTS_TARGET:-$HOME/.cache/shardforge-mutants-target}"
FILES=(
  --file manifest/src/publish/manifest_store.rs
  --file manifest/src/publish/gc.rs
  --file manifest/src/format/checksum.rs
  --file 'router/src/**/*.rs'
)
# Given --file arguments replace the default set (one module at a time).
case " $* " in *" --file "* | *" -f "*) FILES=() ;; esac
exec cargo mutants \
  --package sf-manifest --package sf-router ${FILES[@]+"${FILES[@]}"} \
  --test-package sf-manifest --test-package sf-router \
  --output "$ROOT/.cache" \
  "$@"
