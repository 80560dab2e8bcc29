"""Read latency from Python: shardforge.Reader in download and memory mode
against the Rust reader under it (timed in Rust, in the same process, on
the same open shards: the ceiling) and, when a Python with the reference
library is given, the reference's ShardedReader on the same files.

    ./scripts/test.sh --with-servers .cache/pyvenv/bin/python python/bench/read_bench.py \\
        --sf-write "$HOME/.cache/shardforge-target/release/sf-write" \\
        --reference-python /path/to/venv-with-the-reference/bin/python

(test.sh starts the S3 server and exports AWS_ENDPOINT and the bucket; the
reference reads only from S3.) It builds a snapshot of --rows keys in
--shards SQLite shards (100-byte values) with sf-write on S3, then for
each reader: warms it (every shard downloaded and open, or loaded), times
--gets single gets of random keys in alternating rounds of 10,000 (the
Python call, the Rust `get` awaited on the runtime, and the Rust `get_now`
the Python call uses), and --rounds multi_gets of 1,000 random keys.
Install the package built with `maturin build --release` for figures
worth recording (docs/performance.md).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

VALUE_LEN = 100


def value_of(k):
    v = f"value-{k:012}-".encode()
    return v + b"x" * (VALUE_LEN - len(v))


def lcg_keys(n, rows, seed=42):
    """The keys of the Rust read bench: an LCG, no dependency."""
    out, s = [], seed
    for _ in range(n):
        s = (s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append((s >> 20) % rows)
    return out


def pct(samples_ns, q):
    s = sorted(samples_ns)
    return s[min(len(s) - 1, int(len(s) * q))]


def summary(samples_ns):
    return {"p50_us": pct(samples_ns, 0.5) / 1e3, "p99_us": pct(samples_ns, 0.99) / 1e3, "n": len(samples_ns)}


def build(sf_write, prefix, rows, shards, work):
    job = work / "job"
    job.mkdir(parents=True, exist_ok=True)
    with open(job / "rows.csv", "w") as f:
        f.write("id,payload\n")
        for k in range(rows):
            f.write(f"{k},{value_of(k).decode()}\n")
    (job / "job.toml").write_text(
        'key_col = "id"\n[input]\nformat = "csv"\npath = "rows.csv"\n'
        '[value]\nbinary_col = "payload"\n'
        f'[routing]\nstrategy = "hash"\nnum_dbs = {shards}\n'
        f'[output]\nprefix = "{prefix}"\nbackend = "sqlite"\n'
    )
    t = time.perf_counter()
    env = dict(os.environ, SF_OUTPUT__RUN_ID="pybench")
    subprocess.run([sf_write, "--config", "job.toml", "--progress", "off"], cwd=job, env=env, check=True)
    print(f"built {rows} keys in {shards} shards with sf-write in {time.perf_counter() - t:.1f} s", flush=True)
    (job / "rows.csv").unlink()


def bench_shardforge(url, mode, cache, keys, batches):
    import shardforge
    from shardforge import _native

    r = shardforge.Reader(url, cache_dir=str(cache), sqlite_mode=mode)
    rows = r.info()["row_count"]
    t = time.perf_counter()
    for start in range(0, rows, 70_000):
        r.multi_get(list(range(start, min(rows, start + 70_000), 7)))
    warm = time.perf_counter() - t
    assert r.get(keys[0]) == value_of(keys[0])
    clock = time.perf_counter_ns
    py, rust_async, rust_now, floor = [], [], [], []
    get = r.get
    for i in range(0, len(keys), 10_000):
        chunk = keys[i : i + 10_000]
        for k in chunk:
            t0 = clock()
            get(k)
            py.append(clock() - t0)
        for _ in chunk[:1000]:
            t0 = clock()
            floor.append(clock() - t0)
        rust_async += _native._time_rust_gets(r, chunk, "async")
        rust_now += _native._time_rust_gets(r, chunk, "now")
    py_multi = []
    for b in batches:
        t0 = clock()
        r.multi_get(b)
        py_multi.append(clock() - t0)
    rust_multi = _native._time_rust_multi_gets(r, batches)
    opened = sorted({s["opened_as"] for s in r.shards() if s["opened_as"]})
    r.close()
    return {
        "mode": mode,
        "opened_as": opened,
        "warm_s": warm,
        "python_get": summary(py),
        "rust_get_async": summary(rust_async),
        "rust_get_now": summary(rust_now),
        "timer_floor_ns": pct(floor, 0.5),
        "python_multi_get_1000": summary(py_multi),
        "rust_multi_get_1000": summary(rust_multi),
        "python_gets_per_s": len(py) / (sum(py) / 1e9),
    }


REFERENCE_CHILD = r"""
import json, sys, tempfile, time
from shardyfusion import ShardedReader
from shardyfusion.sqlite_adapter import SqliteReaderFactory
args = json.load(sys.stdin)
opts = {"endpoint_url": args["endpoint"], "region_name": "us-east-1", "addressing_style": "path"}
t = time.perf_counter()
r = ShardedReader(s3_prefix=args["prefix"], local_root=tempfile.mkdtemp(),
                  reader_factory=SqliteReaderFactory(s3_connection_options=opts), s3_connection_options=opts)
opened = time.perf_counter() - t
keys, batches = args["keys"], args["batches"]
rows = r.snapshot_info().row_count
for start in range(0, rows, 70_000):
    r.multi_get(list(range(start, min(rows, start + 70_000), 7)))
assert r.get(keys[0]) is not None
clock = time.perf_counter_ns
gets = []
for k in keys:
    t0 = clock(); r.get(k); gets.append(clock() - t0)
multi = []
for b in batches:
    t0 = clock(); r.multi_get(b); multi.append(clock() - t0)
r.close()
json.dump({"open_s": opened, "gets": gets, "multi": multi}, sys.stdout)
"""


def bench_reference(python, prefix, keys, batches):
    done = subprocess.run(
        [python, "-c", REFERENCE_CHILD],
        input=json.dumps({"endpoint": os.environ["AWS_ENDPOINT"], "prefix": prefix, "keys": keys, "batches": batches}),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    out = json.loads(done.stdout)
    return {
        "open_s": out["open_s"],
        "python_get": summary(out["gets"]),
        "python_multi_get_1000": summary(out["multi"]),
        "python_gets_per_s": len(out["gets"]) / (sum(out["gets"]) / 1e9),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sf-write", required=True, help="the sf-write binary (release build)")
    p.add_argument("--prefix", help="snapshot prefix (default: a fresh one in the test bucket)")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--gets", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=200, help="multi_gets of 1,000 keys")
    p.add_argument("--reference-python", help="a Python with the reference library installed")
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="sf-pybench-"))
    prefix = a.prefix or f"s3://{os.environ['SHARDFORGE_TEST_S3_BUCKET']}/pybench-{int(time.time())}"
    if a.prefix is None:
        build(a.sf_write, prefix, a.rows, a.shards, work)
    url = f"{prefix}/_CURRENT"
    keys = lcg_keys(a.gets, a.rows)
    batch_keys = lcg_keys(a.rounds * 1000, a.rows, seed=7)
    batches = [batch_keys[i : i + 1000] for i in range(0, len(batch_keys), 1000)]

    import shardforge

    figures = {"rows": a.rows, "shards": a.shards, "package": shardforge.__version__, "readers": []}
    cache = work / "cache"
    for mode in ("download", "memory"):
        f = bench_shardforge(url, mode, cache, keys, batches)
        figures["readers"].append(f)
        print(json.dumps(f), flush=True)
    if a.reference_python:
        f = bench_reference(a.reference_python, prefix, keys, batches)
        figures["reference"] = f
        print(json.dumps({"reference": f}), flush=True)

    print()
    print(f"{'':34}{'get p50':>10}{'get p99':>10}{'multi_get(1000) p50':>22}{'p99':>10}")
    for f in figures["readers"]:
        for name, g, m in (
            (f"python, {f['mode']}", f["python_get"], f["python_multi_get_1000"]),
            (f"rust get_now, {f['mode']}", f["rust_get_now"], None),
            (f"rust get (async), {f['mode']}", f["rust_get_async"], f["rust_multi_get_1000"]),
        ):
            multi = f"{m['p50_us'] / 1e3:>19.3f} ms{m['p99_us'] / 1e3:>7.3f} ms" if m else ""
            print(f"{name:34}{g['p50_us']:>7.2f} us{g['p99_us']:>7.2f} us{multi}")
    ref = figures.get("reference")
    if ref and "error" not in ref:
        print(
            f"{'reference ShardedReader':34}{ref['python_get']['p50_us']:>7.2f} us{ref['python_get']['p99_us']:>7.2f} us"
            f"{ref['python_multi_get_1000']['p50_us'] / 1e3:>19.3f} ms{ref['python_multi_get_1000']['p99_us'] / 1e3:>7.3f} ms"
        )
        for f in figures["readers"]:
            print(
                f"gets/s, {f['mode']} against the reference: "
                f"{f['python_gets_per_s'] / ref['python_gets_per_s']:.1f}x"
            )
    elif ref:
        print("reference failed:", ref["error"])
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
