#!/usr/bin/env bash
# Checks docs/GUARANTEES.md against the tree: every row of its tables
# names at least one test as `path/to/file.rs::test_name`, and every test
# named exists there as a test function (#[test], #[tokio::test] or a
# test inside proptest!). A renamed or deleted test fails CI until the
# table follows it. The sabotage switches of the table's fourth column
# are checked against the code by `scripts/bite.py --static`.
#
#   ./scripts/check-guarantees.sh          the table against the tree
#   ./scripts/check-guarantees.sh --bite   and then, for every sabotage
#       switch, the tests naming its promise run with the switch on and
#       must each fail (scripts/bite.py under scripts/test.sh's emulators)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DOC=docs/GUARANTEES.md
status=0
fail() { printf '%s: %s\n' "$DOC" "$*" >&2; status=1; }

rows=0
while IFS= read -r row; do
  case "$row" in
    "| Promise"*|"|---"*|"| ---"*) continue ;;
  esac
  rows=$((rows + 1))
  if ! grep -qE '`[A-Za-z0-9_./-]+\.rs::[A-Za-z0-9_]+`' <<<"$row"; then
    fail "a row names no test: $row"
  fi
done < <(grep -E '^\|' "$DOC")
[ "$rows" -gt 0 ] || fail "no table rows"

tests=0
while IFS= read -r ref; do
  tests=$((tests + 1))
  file="${ref%::*}"
  name="${ref##*::}"
  if [ ! -f "$file" ]; then
    fail "$ref: there is no file $file"
    continue
  fi
  # The function, and a test attribute within the three lines above it.
  if ! grep -B3 -E "^\s*(pub )?(async )?fn ${name}\s*[(<]" "$file" | grep -qE '#\[(tokio::)?test'; then
    fail "$ref: no test function ${name} in $file"
  fi
done < <(grep -oE '`[A-Za-z0-9_./-]+\.rs::[A-Za-z0-9_]+`' "$DOC" | tr -d '`' | sort -u)

if [ "$status" -eq 0 ]; then
  printf '%s: %d promises, %d tests named, all present\n' "$DOC" "$rows" "$tests" >&2
fi
python3 scripts/bite.py --static || status=1
[ "$status" -eq 0 ] || exit "$status"

case "${1:-}" in
  "") ;;
  --bite) exec ./scripts/test.sh --with-servers python3 scripts/bite.py ;;
  *) printf 'usage: %s [--bite]\n' "$0" >&2; exit 2 ;;
esac
