"""Write throughput from Python: shardforge.write of a PyArrow table against
sf-write on the same rows (from Parquet: the ceiling, the same build without
Python) and, when a Python with the reference library is given, the
reference's Python writer (write_hash_sharded, SQLite shards) on the same
rows, all three to the S3 test server.

    ./scripts/test.sh --with-servers .venv/bin/python python/bench/write_bench.py \\
        --sf-write "$HOME/.cache/shardforge-target/release/sf-write" \\
        --reference-python /path/to/venv-with-the-reference/bin/python

(test.sh starts the S3 server and exports AWS_ENDPOINT, the keys and the
bucket.) --rows keys (a bijective scramble of 0..rows, so distinct and in
no order), 100-byte values, --shards SQLite shards, hash routing. Each
round runs every writer once, in turn, into a fresh prefix; the best of
--rounds is kept, by wall time, with the CPU seconds of the writer's own
process (the S3 server's are nobody's). Install the package built with
`maturin build --release` for figures worth recording
(docs/performance.md).
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

VALUE_LEN = 100
MASK = (1 << 63) - 1
# Odd, so multiplying by it modulo 2**63 is a bijection: distinct keys.
SCRAMBLE = 0x9E3779B97F4A7C15


def key_of(i):
    return (i * SCRAMBLE) & MASK


def value_of(k):
    v = f"value-{k:019}-".encode()
    return v + b"x" * (VALUE_LEN - len(v))


def cpu_seconds(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


REFERENCE_CHILD = r"""
import json, resource, sys, time
from shardyfusion.config import HashShardedWriteConfig, PythonRecordInput
from shardyfusion.sqlite_adapter import SqliteFactory
from shardyfusion.writer.python import write_hash_sharded
sys.path.insert(0, ARGS_DIR)
from write_bench import key_of, value_of
args = json.load(sys.stdin)
opts = {"endpoint_url": args["endpoint"], "region_name": "us-east-1", "addressing_style": "path"}
rows = [(key_of(i), value_of(key_of(i))) for i in range(args["rows"])]
config = HashShardedWriteConfig(
    num_dbs=args["shards"], s3_prefix=args["prefix"], s3_connection_options=opts,
    adapter_factory=SqliteFactory(emit_sidecar=False, s3_connection_options=opts),
)
record = PythonRecordInput(key_fn=lambda r: r[0], value_fn=lambda r: r[1])
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
c0, t0 = cpu(), time.perf_counter()
result = write_hash_sharded(rows, config, record)
wall, used = time.perf_counter() - t0, cpu() - c0
json.dump({"wall_s": wall, "cpu_s": used, "rows": sum(w.row_count for w in result.winners)}, sys.stdout)
"""


def run_shardforge(table, prefix, shards):
    import shardforge

    c0, t0 = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    result = shardforge.write(table, key="id", value="payload", prefix=prefix, num_dbs=shards)
    wall, cpu = time.perf_counter() - t0, cpu_seconds(resource.RUSAGE_SELF) - c0
    assert result.rows == table.num_rows, result
    return {"wall_s": wall, "cpu_s": cpu, "rows": result.rows, "phases_s": result.times}


def run_sf_write(sf_write, job_dir, prefix, shards):
    job = job_dir / "job.toml"
    job.write_text(
        'key_col = "id"\n[input]\nformat = "parquet"\npath = "rows.parquet"\n'
        '[value]\nbinary_col = "payload"\n'
        f'[routing]\nstrategy = "hash"\nnum_dbs = {shards}\n'
        f'[output]\nprefix = "{prefix}"\nbackend = "sqlite"\n'
    )
    c0, t0 = cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(
        [sf_write, "--config", "job.toml", "--progress", "off", "--json"],
        cwd=job_dir,
        capture_output=True,
        text=True,
        check=True,
    )
    wall, cpu = time.perf_counter() - t0, cpu_seconds(resource.RUSAGE_CHILDREN) - c0
    report = json.loads(done.stdout)
    return {"wall_s": wall, "cpu_s": cpu, "rows": report.get("rows")}


def run_reference(python, prefix, rows, shards):
    here = pathlib.Path(__file__).resolve().parent
    done = subprocess.run(
        [python, "-c", REFERENCE_CHILD.replace("ARGS_DIR", repr(str(here)))],
        input=json.dumps({"endpoint": os.environ["AWS_ENDPOINT"], "prefix": prefix, "rows": rows, "shards": shards}),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the reference writer failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def best(runs):
    return min(runs, key=lambda r: r["wall_s"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sf-write", required=True, help="the sf-write binary (release build)")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reference-python", help="a Python with the reference library installed")
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    import shardforge

    keys = [key_of(i) for i in range(a.rows)]
    table = pa.table({"id": pa.array(keys, pa.int64()), "payload": pa.array([value_of(k) for k in keys], pa.binary())})
    work = pathlib.Path(tempfile.mkdtemp(prefix="sf-pywbench-"))
    pq.write_table(table, work / "rows.parquet")
    bucket = os.environ["SHARDFORGE_TEST_S3_BUCKET"]
    stamp = int(time.time())

    runs = {"shardforge.write": [], "sf-write": [], "reference": []}
    for r in range(a.rounds):
        base = f"s3://{bucket}/pywbench-{stamp}-{r}"
        runs["shardforge.write"].append(run_shardforge(table, f"{base}/python", a.shards))
        runs["sf-write"].append(run_sf_write(a.sf_write, work, f"{base}/cli", a.shards))
        if a.reference_python:
            runs["reference"].append(run_reference(a.reference_python, f"{base}/reference", a.rows, a.shards))
        print(json.dumps({"round": r, **{k: v[-1] for k, v in runs.items() if v}}), flush=True)

    figures = {"rows": a.rows, "shards": a.shards, "rounds": a.rounds, "package": shardforge.__version__}
    for name, rs in runs.items():
        if rs:
            b = best(rs)
            figures[name] = {**b, "rows_per_s": a.rows / b["wall_s"], "rows_per_cpu_s": a.rows / b["cpu_s"]}
    sfw, cli = figures["shardforge.write"], figures["sf-write"]
    figures["python_vs_sf_write"] = sfw["rows_per_s"] / cli["rows_per_s"]
    if "reference" in figures:
        ref = figures["reference"]
        figures["python_vs_reference_wall"] = sfw["rows_per_s"] / ref["rows_per_s"]
        figures["python_vs_reference_cpu"] = sfw["rows_per_cpu_s"] / ref["rows_per_cpu_s"]
    print(json.dumps(figures, indent=2))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
