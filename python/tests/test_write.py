"""shardforge.write and shardforge.write_job over the installed package:
snapshots built in process from PyArrow, pandas, Polars and plain pairs, on
files and on S3, read back row by row with shardforge.Reader and with the
real sf-read; bad arguments refused before anything is published."""

import json
import os
import pathlib
import subprocess

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import shardforge
from conftest import required_env, s3_prefix

ROWS = 1000


def rows(n=ROWS):
    return [(i, f"value-{i}".encode() * (1 + i % 3)) for i in range(n)]


def arrow_table(n=ROWS):
    pairs = rows(n)
    return pa.table(
        {
            "id": pa.array([k for k, _ in pairs], pa.int64()),
            "payload": pa.array([v for _, v in pairs], pa.binary()),
        }
    )


def read_all(current_url, keys, cache_dir):
    with shardforge.Reader(current_url, cache_dir=cache_dir) as reader:
        return reader.multi_get(list(keys))


def assert_every_row(result, expected, cache_dir):
    assert result.outcome == "built"
    assert result.rows == len(expected)
    assert sum(result.shard_rows) == len(expected)
    assert len(result.shard_rows) == result.num_dbs
    keys = [k for k, _ in expected]
    got = read_all(result.current_url, keys + ["missing" if isinstance(keys[0], str) else 10**9], cache_dir)
    assert got[:-1] == [v for _, v in expected]
    assert got[-1] is None


def current_exists(prefix):
    """Whether the prefix has a _CURRENT (on files or S3): whether a
    reader opens it."""
    if not prefix.startswith("s3://"):
        return (pathlib.Path(prefix) / "_CURRENT").exists()
    try:
        shardforge.Reader(f"{prefix}/_CURRENT").close()
        return True
    except shardforge.DataError:
        return False


def test_write_from_a_pyarrow_table(prefix, cache_dir):
    seen = []
    result = shardforge.write(
        arrow_table(),
        key="id",
        value="payload",
        prefix=prefix,
        num_dbs=4,
        run_id="arrow-1",
        progress=lambda phase, done, total: seen.append((phase, done, total)),
    )
    assert result.run_id == "arrow-1"
    assert result.manifest_url and result.num_dbs == 4 and result.shards_written == 4
    assert result.prefix == prefix
    for phase in ("plan", "write", "publish", "total"):
        assert result.times[phase] >= 0
    assert result.times["total"] >= result.times["write"]
    assert_every_row(result, rows(), cache_dir)
    # The progress callback saw the phases, and the shards done of 4 at the end.
    phases = [p for p, _, _ in seen]
    assert "writing shards" in phases and "verifying and publishing" in phases, seen
    assert ("writing shards", 4, 4) in seen, seen
    assert all(t in (None, 4) for _, _, t in seen)


def test_write_from_a_record_batch_reader_in_several_batches(prefix, cache_dir):
    table = arrow_table()
    batches = table.to_batches(max_chunksize=97)
    assert len(batches) > 5
    reader = pa.RecordBatchReader.from_batches(table.schema, iter(batches))
    result = shardforge.write(reader, key="id", value="payload", prefix=prefix, num_dbs=3)
    assert_every_row(result, rows(), cache_dir)


def test_write_from_a_polars_dataframe(tmp_path, cache_dir):
    pairs = [(f"user-{i}", f"v{i}".encode()) for i in range(ROWS)]
    df = pl.DataFrame({"name": [k for k, _ in pairs], "blob": [v for _, v in pairs]})
    result = shardforge.write(df, key="name", value="blob", prefix=str(tmp_path / "snap"), num_dbs=5)
    assert_every_row(result, pairs, cache_dir)


def test_write_from_a_pandas_dataframe_with_json_values(tmp_path, cache_dir):
    df = pd.DataFrame({"id": list(range(ROWS)), "name": [f"n{i}" for i in range(ROWS)], "score": [i * 0.5 for i in range(ROWS)]})
    result = shardforge.write(df, key="id", value=["name", "score"], prefix=str(tmp_path / "snap"), num_dbs=2)
    assert result.rows == ROWS
    with shardforge.Reader(result.current_url, cache_dir=cache_dir) as reader:
        for i in (0, 1, 499, 999):
            assert json.loads(reader.get(i)) == {"name": f"n{i}", "score": i * 0.5}


def test_write_from_an_iterable_of_pairs(prefix, cache_dir):
    pairs = rows(40_000)  # more than one batch of pairs
    result = shardforge.write((p for p in pairs), prefix=prefix, num_dbs=4)
    assert_every_row(result, pairs, cache_dir)
    text = [(f"k{i}", f"v{i}") for i in range(100)]
    result = shardforge.write(text, prefix=prefix, num_dbs=2, key_encoding="utf8")
    assert_every_row(result, [(k, v.encode()) for k, v in text], cache_dir)


def test_write_with_cel_routing(tmp_path, cache_dir):
    table = pa.table({"id": list(range(100)), "region": ["eu" if i % 2 else "us" for i in range(100)], "v": [b"x"] * 100})
    result = shardforge.write(
        table,
        key="id",
        value="v",
        prefix=str(tmp_path / "snap"),
        routing={"strategy": "cel", "expr": "region", "columns": {"region": "string"}},
    )
    assert result.num_dbs == 2 and sorted(result.shard_rows) == [50, 50]


def test_a_snapshot_of_write_reads_the_same_through_sf_read(tmp_path):
    result = shardforge.write(arrow_table(), key="id", value="payload", prefix=str(tmp_path / "snap"), num_dbs=4)
    keys = [0, 1, 7, 500, 999, 5000]
    sf_read = pathlib.Path(required_env("SHARDFORGE_BIN_DIR")) / "sf-read"
    done = subprocess.run(
        [str(sf_read), "--current-url", result.current_url, "--cache-dir", str(tmp_path / "c"), "--value-format", "hex", "--output", "jsonl", "multiget"]
        + [str(k) for k in keys],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == len(keys), done.stdout
    expected = dict(rows())
    for line, k in zip(lines, keys):
        assert str(line["key"]) == str(k), line
        want = expected.get(k)
        got = line.get("value")
        assert (bytes.fromhex(got) if got is not None else None) == want, line


def test_bad_arguments_raise_before_anything_is_published(prefix):
    table = arrow_table(10)
    cases = [
        (dict(key="id", num_dbs=0), "num_dbs"),
        (dict(key="id", num_dbs=2, backend="leveldb"), "backend"),
        (dict(num_dbs=2), "key"),
        (dict(key="nope", num_dbs=2), "key"),
        (dict(key="id", num_dbs=2, value="nope"), "value"),
        (dict(key="id", num_dbs=2, routing={"strategy": "cel"}), "routing"),
        (dict(key="id", num_dbs=2, routing={"bogus": 1}), "routing"),
        (dict(key="id", num_dbs=2, validate={"min_rowz": 1}), "validate"),
        (dict(key="id", num_dbs=2, write={"batch_size": "many"}), "write"),
        (dict(key="id", num_dbs=2, key_encoding="u128"), "key_encoding"),
        (dict(key="id", num_dbs=2, run_id="no/slashes"), "run_id"),
    ]
    for kwargs, argument in cases:
        with pytest.raises(shardforge.ArgumentError) as e:
            shardforge.write(table, prefix=prefix, **kwargs)
        assert isinstance(e.value, ValueError) and isinstance(e.value, shardforge.ConfigError)
        assert e.value.argument == argument, (kwargs, str(e.value))
        assert repr(argument) in str(e.value), str(e.value)
    with pytest.raises(shardforge.ArgumentError):
        shardforge.write(42, prefix=prefix, num_dbs=2)
    with pytest.raises(TypeError):
        shardforge.write([("a", 1)], prefix=prefix, num_dbs=2)
    assert not current_exists(prefix)


def test_a_failing_gate_publishes_nothing(tmp_path):
    prefix = str(tmp_path / "snap")
    with pytest.raises(shardforge.GateError):
        shardforge.write(arrow_table(10), key="id", value="payload", prefix=prefix, num_dbs=2, validate={"min_rows": 100})
    assert not current_exists(prefix)


def test_a_generator_error_is_raised_as_itself(tmp_path):
    def gen():
        yield (1, b"a")
        raise RuntimeError("the source broke")

    prefix = str(tmp_path / "snap")
    with pytest.raises(RuntimeError, match="the source broke"):
        shardforge.write(gen(), prefix=prefix, num_dbs=2)
    assert not current_exists(prefix)


class HostileStream:
    """Claims the Arrow stream interface and returns what it is given."""

    def __init__(self, make):
        self.make = make

    def __arrow_c_stream__(self, requested_schema=None):
        return self.make()


def named_capsule(name):
    """A capsule of another interface (a schema's name, a null-free
    pointer to a small buffer): what a confused producer could return."""
    import ctypes

    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    buffer = ctypes.create_string_buffer(64)
    named_capsule.keep = (buffer, name)
    return new(ctypes.addressof(buffer), name, None)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: 42, "not a capsule"),
        (lambda: named_capsule(b"arrow_schema"), "arrow_schema"),
        (lambda: (_ for _ in ()).throw(OSError("the producer broke")), "the producer broke"),
    ],
    ids=["an-int", "a-schema-capsule", "a-raising-method"],
)
def test_a_hostile_arrow_stream_is_one_clear_error(tmp_path, make, message):
    prefix = str(tmp_path / "snap")
    with pytest.raises(Exception, match=message):
        shardforge.write(HostileStream(make), key="id", prefix=prefix, num_dbs=2)
    assert not current_exists(prefix)
    # The process is unharmed: the next build succeeds.
    assert shardforge.write(arrow_table(10), key="id", value="payload", prefix=prefix, num_dbs=2).rows == 10


def test_a_stream_that_fails_midway_publishes_nothing(tmp_path):
    table = arrow_table(100)

    def batches():
        yield from table.to_batches(max_chunksize=10)[:3]
        raise ValueError("the upstream query failed")

    reader = pa.RecordBatchReader.from_batches(table.schema, batches())
    prefix = str(tmp_path / "snap")
    with pytest.raises(Exception, match="the upstream query failed"):
        shardforge.write(reader, key="id", value="payload", prefix=prefix, num_dbs=2)
    assert not current_exists(prefix)


def test_a_published_run_id_is_not_built_again(tmp_path):
    prefix = str(tmp_path / "snap")
    first = shardforge.write(arrow_table(), key="id", value="payload", prefix=prefix, num_dbs=2, run_id="r1")
    again = shardforge.write(arrow_table(5), key="id", value="payload", prefix=prefix, num_dbs=2, run_id="r1")
    assert again.outcome == "already_published" and again.rows == first.rows == ROWS
    rebuilt = shardforge.write(arrow_table(5), key="id", value="payload", prefix=prefix, num_dbs=2, run_id="r1", rebuild=True)
    assert rebuilt.outcome == "built" and rebuilt.rows == 5


def test_write_job_runs_a_job_file_as_sf_write_does(tmp_path, cache_dir):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "rows.csv").write_text("id,payload\n" + "".join(f"{i},p{i}\n" for i in range(100)))
    prefix = tmp_path / "snap"
    (folder / "job.toml").write_text(
        'key_col = "id"\n[input]\nformat = "csv"\npath = "rows.csv"\n[value]\nbinary_col = "payload"\n'
        f'[routing]\nnum_dbs = 2\n[output]\nprefix = "{prefix}"\n'
    )
    seen = []
    result = shardforge.write_job(
        folder / "job.toml",
        overrides={"routing.num_dbs": 3, "output": {"run_id": "job-1"}},
        progress=lambda *a: seen.append(a),
    )
    assert result.outcome == "built" and result.run_id == "job-1" and result.num_dbs == 3
    assert result.rows == 100 and sum(result.shard_rows) == 100
    assert read_all(result.current_url, [0, 99, 100], cache_dir) == [b"p0", b"p99", None]
    assert any(p == "writing shards" for p, _, _ in seen)
    with pytest.raises(shardforge.ArgumentError):
        shardforge.write_job(folder / "job.toml", overrides={"routing.num_dbz": 3})
    with pytest.raises(shardforge.ArgumentError):
        shardforge.write_job(folder / "missing.toml")


def test_write_releases_the_gil(tmp_path):
    """Another Python thread runs while a build of a PyArrow table runs."""
    import threading

    stop = threading.Event()
    ticks = [0]

    def spin():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        before = ticks[0]
        shardforge.write(arrow_table(20_000), key="id", value="payload", prefix=str(tmp_path / "snap"), num_dbs=4)
        during = ticks[0] - before
    finally:
        stop.set()
        t.join()
    assert during > 1000, during


def test_s3_storage_options_reach_the_writer():
    prefix = s3_prefix("storage-options")
    result = shardforge.write(
        arrow_table(10),
        key="id",
        value="payload",
        prefix=prefix,
        num_dbs=1,
        storage_options={"endpoint": os.environ["AWS_ENDPOINT"], "allow_http": "true"},
    )
    assert result.rows == 10 and current_exists(prefix)
