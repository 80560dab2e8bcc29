#!/usr/bin/env python3
"""Shows that the guarantee tests bite: each breaks when its promise does.

docs/GUARANTEES.md names, in its fourth column, the sabotage switch that
breaks each promise (`sabotage.<name>`; the switches are listed in
manifest/src/publish/failpoint.rs and compiled only with the `failpoints`
feature). For every switch this runs the tests of every row naming it with
SHARDFORGE_SABOTAGE=<name>, and fails unless each of those tests fails. It
prints a table: switch, promise, test, bitten.

  scripts/bite.py --static        the table is consistent with the code
                                  (no test is run); `check-guarantees.sh`
  scripts/bite.py [--only NAME]   the bite itself, under the running
                                  emulators of `scripts/test.sh
                                  --with-servers` (`check-guarantees.sh
                                  --bite` starts it so)

Static rules: every row of the central sections (CENTRAL) names a switch;
every switch named exists in SWITCHES and is placed in the code
(`sabotaged("<name>")`); every switch of SWITCHES is named by a row; at
least MIN_SWITCHES switches are named.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "GUARANTEES.md"
FAILPOINT = ROOT / "manifest" / "src" / "publish" / "failpoint.rs"
CENTRAL = ["Publishing", "Deleting", "Isolation", "Checksums", "Refreshing"]
MIN_SWITCHES = 15
FEATURES = os.environ.get("SHARDFORGE_TEST_FEATURES", "sf-cli/failpoints")
# A sabotaged test that neither passes nor fails within this is a test
# without a bounded wait: reported as hung, which fails the check.
TIMEOUT_SECS = int(os.environ.get("SHARDFORGE_BITE_TIMEOUT", "900"))

TEST_REF = re.compile(r"`([A-Za-z0-9_./-]+\.rs)::([A-Za-z0-9_]+)`")
SWITCH_REF = re.compile(r"`sabotage\.([a-z0-9-]+)`")


class Row:
    def __init__(self, section: str, line: int, promise: str, tests: list[tuple[str, str]], switches: list[str]):
        self.section = section
        self.line = line
        self.promise = promise
        self.tests = tests
        self.switches = switches


def rows() -> list[Row]:
    out = []
    section = ""
    for number, line in enumerate(DOC.read_text().splitlines(), 1):
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if not line.startswith("|") or line.startswith(("| Promise", "|---", "| ---")):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        tests = TEST_REF.findall(cells[2]) if len(cells) > 2 else []
        switches = SWITCH_REF.findall(cells[3]) if len(cells) > 3 else []
        out.append(Row(section, number, cells[0], tests, switches))
    return out


def known_switches() -> list[str]:
    text = FAILPOINT.read_text()
    body = text[text.index("pub const SWITCHES") :]
    body = body[: body.index("];")]
    return re.findall(r'\(\s*"([a-z0-9-]+)",', body)


def placed_switches() -> set[str]:
    placed = set()
    for path in ROOT.glob("*/src/**/*.rs"):
        if path == FAILPOINT:
            continue
        placed.update(re.findall(r'sabotaged\("([a-z0-9-]+)"\)', path.read_text()))
    return placed


def static_check(table: list[Row]) -> list[str]:
    problems = []
    known = known_switches()
    placed = placed_switches()
    named = set()
    for section in CENTRAL:
        if not any(r.section == section for r in table):
            problems.append(f"{DOC.name}: no section '## {section}' with rows")
    for r in table:
        where = f"{DOC.name}:{r.line}"
        if r.section in CENTRAL and not r.switches:
            problems.append(f"{where}: a row of '{r.section}' names no `sabotage.<switch>`")
        for s in r.switches:
            named.add(s)
            if s not in known:
                problems.append(f"{where}: sabotage.{s} is not in failpoint::SWITCHES")
            elif s not in placed:
                problems.append(f"{where}: sabotage.{s} is placed nowhere in the code")
        if r.switches and not r.tests:
            problems.append(f"{where}: a row with a switch names no test")
    for s in known:
        if s not in named:
            problems.append(f"failpoint::SWITCHES has {s}, which no row of {DOC.name} names")
        if s not in placed:
            problems.append(f"failpoint::SWITCHES has {s}, which the code never asks for")
    if len(named) < MIN_SWITCHES:
        problems.append(f"{DOC.name} names {len(named)} switches; at least {MIN_SWITCHES} are wanted")
    return problems


def target_of(file: str) -> tuple[list[str], str]:
    """The cargo target arguments of a test file and its module path."""
    top, rest = file.split("/", 1)
    if rest.startswith("it/"):
        return ["--test", "it"], rest[len("it/") :].removesuffix(".rs").replace("/", "::")
    if rest.startswith("tests/"):
        return ["--test", rest[len("tests/") :].removesuffix(".rs")], ""
    module = rest.removeprefix("src/").removesuffix(".rs")
    module = re.sub(r"(^|/)(lib|main|mod)$", "", module)
    return ["--lib"], module.replace("/", "::")


RESULT = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", re.M)


def run_group(switch: str, target: list[str], wanted: list[tuple[str, str]]) -> dict:
    """Runs the tests `wanted` ((module, name)) of one target with the
    switch on; their outcomes by (module, name): failed, passed, missing or hung."""
    # Names alone: a unit test's path holds its `mod tests`; the results
    # are matched to their module below.
    filters = sorted({n for _, n in wanted})
    # --workspace: the features (and so the artifacts) of the suite's own
    # build; the target arguments pick the test binaries.
    cmd = ["cargo", "test", "--workspace", *target, "--features", FEATURES, "--", *filters]
    env = dict(os.environ, SHARDFORGE_SABOTAGE=switch, RUST_BACKTRACE="0")
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECS)
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        return {w: "hung" for w in wanted}
    results = RESULT.findall(output)
    out = {}
    for module, name in wanted:
        mine = [
            outcome
            for path, outcome in results
            if (path == name or path.endswith("::" + name)) and (not module or path.startswith(module + "::"))
        ]
        if not mine:
            out[(module, name)] = "missing"
            print(f"  {' '.join(target)}: no result for {module}::{name}; output:\n{output[-3000:]}", file=sys.stderr)
        else:
            out[(module, name)] = "failed" if all(o == "FAILED" for o in mine) else "passed"
    return out


def bite(table: list[Row], only: set[str]) -> int:
    by_switch: dict[str, list[tuple[Row, str, str]]] = {}
    for r in table:
        for s in r.switches:
            for file, name in r.tests:
                by_switch.setdefault(s, []).append((r, file, name))
    report = []
    bad = 0
    for switch in sorted(by_switch):
        if only and switch not in only:
            continue
        started = time.monotonic()
        groups: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        refs = {}
        for r, file, name in by_switch[switch]:
            target, module = target_of(file)
            key = tuple(target)
            if (module, name) not in groups.setdefault(key, []):
                groups[key].append((module, name))
            refs.setdefault((module, name), (r, f"{file}::{name}"))
        outcomes = {}
        for target, wanted in groups.items():
            outcomes.update(run_group(switch, list(target), wanted))
        took = time.monotonic() - started
        for key, (r, ref) in refs.items():
            outcome = outcomes[key]
            bitten = outcome == "failed"
            bad += not bitten
            report.append((switch, r.promise, ref, "yes" if bitten else f"NO ({outcome})"))
        print(f"sabotage.{switch}: {len(refs)} tests in {took:.0f} s", file=sys.stderr, flush=True)

    width = max((len(s) for s, *_ in report), default=6) + len("sabotage.")
    print(f"\n{'switch':<{width}}  bitten  test  (promise)")
    for switch, promise, ref, bitten in report:
        short = promise if len(promise) <= 70 else promise[:67] + "..."
        print(f"{'sabotage.' + switch:<{width}}  {bitten:<6}  {ref}  ({short})")
    total = len(report)
    print(f"\n{total - bad} of {total} sabotaged tests failed as they must")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--static", action="store_true", help="check the table against the code; run nothing")
    parser.add_argument("--only", action="append", default=[], help="bite with this switch only (repeatable)")
    args = parser.parse_args()
    table = rows()
    problems = static_check(table)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    if args.static:
        named = {s for r in table for s in r.switches}
        print(f"{DOC.name}: {len(named)} sabotage switches named, each placed in the code", file=sys.stderr)
        return 0
    return bite(table, set(args.only))


if __name__ == "__main__":
    sys.exit(main())
