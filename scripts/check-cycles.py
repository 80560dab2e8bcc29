#!/usr/bin/env python3
"""Fails when a source file imports a file that imports it back.

Within each crate of the workspace, a file `a.rs` depends on `b.rs` when it
names an item of `b.rs` by path (`use crate::b::X`, `super::b::f()`,
`crate::b::{X, Y}`), including a parent that re-exports from a child
(`pub use child::X` in `mod.rs`) and a child that reaches into its parent
(`use super::X` where X lives in `mod.rs`). Module declarations alone
(`mod b;`) are not dependencies. The check lists every strongly connected
group of files, with the edges that close it, and exits 1 if there is one.

    scripts/check-cycles.py [ROOT]
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
PATH = re.compile(r"\b(crate|super|self)((?:::\w+)*)(::\{)?")
INLINE_MOD = re.compile(r"\bmod\s+(\w+)\s*\{")


def module_of(src, f):
    parts = list(f.relative_to(src).with_suffix("").parts)
    if parts and parts[0] == "bin":
        return None
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip(text):
    """Comments and string literals out, keeping lines and braces of code."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == '"' or (c == "r" and re.match(r'r#*"', text[i:]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_"))):
            m = re.match(r'r(#*)"', text[i:])
            if m:
                end = '"' + m.group(1)
                j = text.find(end, i + len(m.group(0)))
                i = n if j < 0 else j + len(end)
            else:
                j = i + 1
                while j < n and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                i = j + 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:]):
            i += len(re.match(r"'(\\.|[^\\'])'", text[i:]).group(0))
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def brace_group(text, start):
    depth, i = 1, start
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start : i - 1]


def expand(group):
    """`a, b::{c, d}, e as f` -> [[a], [b, c], [b, d], [e]]."""
    items, depth, cur = [], 0, ""
    for ch in group:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    items.append(cur)
    out = []
    for item in items:
        item = item.strip()
        if "{" not in item:
            item = item.split(" as ")[0].strip()
        if not item:
            continue
        if "{" in item:
            head = [p for p in item[: item.index("{")].split("::") if p]
            for rest in expand(item[item.index("{") + 1 : item.rindex("}")]):
                out.append(head + rest)
        else:
            out.append([p for p in item.split("::") if p and p != "self"])
    return out


USE = re.compile(r"(?:\bpub(?:\([^)]*\))?\s+)?\buse\s+([^;]+);")
MOD_DECL = re.compile(r"\bmod\s+(\w+)\s*;")


def crate_edges(src):
    files = {}
    for f in sorted(src.rglob("*.rs")):
        m = module_of(src, f)
        if m is not None:
            files[m] = f
    texts = {m: strip(f.read_text()) for m, f in files.items()}
    children = {m: set(MOD_DECL.findall(texts[m])) for m in files}
    # Re-exports: `pub use a::b::X;` in module m makes `m::X` name `a::b::X`.
    reexports = {m: {} for m in files}
    for m, text in texts.items():
        for um in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
            for item in expand(um.group(1)):
                if not item:
                    continue
                raw = um.group(1)
                alias = None
                for part in re.split(r"[,{}]", raw):
                    part = part.strip()
                    if " as " in part and part.split(" as ")[0].strip().split("::")[-1] == item[-1]:
                        alias = part.split(" as ")[1].strip()
                reexports[m][alias or item[-1]] = item

    def absolute(path, ctx):
        """A path as written in module ctx -> segments from the crate root."""
        if not path:
            return None
        head = path[0]
        if head == "crate":
            return path[1:]
        if head == "self":
            return list(ctx) + path[1:]
        if head == "super":
            base = list(ctx)
            rest = path
            while rest and rest[0] == "super":
                base = base[:-1]
                rest = rest[1:]
            return base + rest
        if tuple(ctx) in children and head in children[tuple(ctx)]:
            return list(ctx) + path
        return None

    def resolve(segs, depth=0):
        """Segments from the root -> the file that defines the item."""
        cur = ()
        i = 0
        while i < len(segs):
            nxt = cur + (segs[i],)
            if nxt in files:
                cur = nxt
                i += 1
                continue
            target = reexports.get(cur, {}).get(segs[i])
            if target is not None and depth < 16:
                full = absolute(target, cur)
                # A re-export of another crate's item is no file of ours.
                return None if full is None else resolve(full + segs[i + 1 :], depth + 1)
            break
        return cur

    edges = {m: set() for m in files}
    for m, text in texts.items():
        # Inline modules (`mod tests { .. }`) shift what `self` and `super`
        # mean inside them.
        spans = []
        for im in INLINE_MOD.finditer(text):
            body_start = im.end()
            body = brace_group(text, body_start)
            spans.append((body_start, body_start + len(body), im.group(1)))

        def context(pos):
            ctx = list(m)
            for s, e, name in spans:
                if s <= pos < e:
                    ctx.append(name)
            return ctx

        refs = []
        for pm in PATH.finditer(text):
            root, rest, brace = pm.group(1), pm.group(2), pm.group(3)
            if not rest and not brace:
                # `pub(crate)`, `&self`: a keyword, not a path.
                continue
            segs = [root] + [p for p in rest.split("::") if p]
            if brace:
                for item in expand(brace_group(text, pm.end())):
                    refs.append((segs + item, pm.start()))
            else:
                refs.append((segs, pm.start()))
        # A child module named in code: `child::f()`, `child::Type`.
        for cm in re.finditer(r"(?<![\w:])(\w+)((?:::\w+)+)", text):
            if cm.group(1) in children.get(m, ()):
                refs.append(([cm.group(1)] + [p for p in cm.group(2).split("::") if p], cm.start()))
        # Relative uses of a child module: `use child::X;`, `pub use child::{..}`.
        for um in USE.finditer(text):
            body = um.group(1).strip()
            if body.startswith(("crate", "super", "self", "::")):
                continue
            for item in expand(body):
                refs.append((item, um.start()))
        for segs, pos in refs:
            full = absolute(segs, context(pos))
            if full is None:
                continue
            o = resolve(full)
            if o is not None and o != m and o in files:
                edges[m].add(o)
    return files, edges


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(100000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def self_test():
    """The check on a crate built to have exactly the circles it must find."""
    import tempfile

    files = {
        "lib.rs": "mod a;\nmod b;\nmod p;\nmod q;\npub use a::Thing;\npub(crate) fn helper() {}\n",
        # a <-> b through a re-export at the root, written as crate::Thing.
        "a.rs": "pub struct Thing;\npub(crate) fn f() { crate::b::g() }\n",
        "b.rs": "use crate::Thing;\npub(crate) fn g() { let _ = Thing; }\n",
        # p/mod.rs <-> p/c.rs: the parent calls its child by path, the child
        # uses an item the parent defines.
        "p/mod.rs": "mod c;\npub(crate) struct Shared;\npub(crate) fn run() { c::go() }\n",
        "p/c.rs": "use super::Shared;\npub(crate) fn go() { let _ = Shared; }\n",
        # q re-exports its child and the child imports nothing back; its
        # tests reach `super::*`: no circle.
        "q/mod.rs": "mod d;\npub use d::D;\n",
        "q/d.rs": "pub struct D;\n#[cfg(test)]\nmod tests {\n    use super::*;\n    fn t(_: D) {}\n}\n",
    }
    with tempfile.TemporaryDirectory() as root:
        src = pathlib.Path(root) / "src"
        for name, text in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_text(text)
        found = {frozenset(g) for g in cycles(crate_edges(src)[1])}
    want = {frozenset({("a",), ("b",)}), frozenset({("p",), ("p", "c")})}
    if found != want:
        show = lambda groups: sorted(sorted("::".join(m) or "lib" for m in g) for g in groups)  # noqa: E731
        print(f"check-cycles self-test: expected circles {show(want)}, found {show(found)}", file=sys.stderr)
        return False
    return True


def main():
    if not self_test():
        return 2
    found = 0
    crates = sorted(d for d in ROOT.iterdir() if (d / "Cargo.toml").is_file() and (d / "src").is_dir())
    for crate in crates:
        files, edges = crate_edges(crate / "src")
        for group in cycles(edges):
            found += 1
            names = [str(files[g].relative_to(ROOT)) for g in group]
            print(f"import circle in {crate.name}: " + " <-> ".join(names), file=sys.stderr)
            for g in group:
                back = sorted(str(files[h].relative_to(ROOT)) for h in edges[g] if h in group)
                print(f"    {files[g].relative_to(ROOT)} imports {', '.join(back)}", file=sys.stderr)
    if found:
        print(f"{found} import circle(s) between source files", file=sys.stderr)
        return 1
    print(f"no import circles between the source files of {len(crates)} crates", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
