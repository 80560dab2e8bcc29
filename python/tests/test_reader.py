"""shardforge.Reader over the installed package: snapshots built by the real
sf-write on files and on S3, and the reference's fixtures with their
expected answers (tests/data/shardyfusion-v4/expected.json)."""

import json
import threading
import time

import pytest

import shardforge
from conftest import FIXTURES, s3_prefix, upload_tree

EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
READ = EXPECTED["read"]


def want(v):
    """A value of expected.json: {"__bytes__": text} or null."""
    return None if v is None else v["__bytes__"].encode()


@pytest.fixture(params=["file", "s3"])
def golden(request):
    """The URL of a reference fixture's _CURRENT: the folder as it is, or
    a copy on S3."""

    def url(name):
        folder = FIXTURES / "sqlite-bucket-golden" / name
        if request.param == "file":
            return str(folder / "_CURRENT")
        prefix = s3_prefix(f"golden-{name}")
        upload_tree(folder, prefix)
        return f"{prefix}/_CURRENT"

    return url


def test_package_exports_the_reader_and_the_error_hierarchy():
    assert shardforge.__version__
    kinds = {
        shardforge.ConfigError: "config",
        shardforge.RoutingError: "routing",
        shardforge.DataError: "data",
        shardforge.ConflictError: "conflict",
        shardforge.UnavailableError: "unavailable",
        shardforge.GateError: "gate",
        shardforge.InternalError: "internal",
    }
    for cls, kind in kinds.items():
        assert issubclass(cls, shardforge.Error) and cls is not shardforge.Error
        assert cls.kind == kind
        assert cls.retryable == (kind == "unavailable")
    assert issubclass(shardforge.Error, Exception)
    assert shardforge.Error.kind is None


@pytest.mark.parametrize("mode", ["download", "range", "memory"])
def test_reference_fixture_hash_int(golden, cache_dir, mode):
    url = golden("hash_int")
    with shardforge.Reader(url, cache_dir=cache_dir, sqlite_mode=mode) as r:
        assert r.key_encoding == "u64be"
        assert r.get(3) == want(READ["hash_int_get_3"])
        assert r.get(999) is want(READ["hash_int_get_999"]) is None
        multi = READ["hash_int_multi"]
        assert r.multi_get([int(k) for k in multi]) == [want(v) for v in multi.values()]
        # 8 big-endian bytes are the same key as the integer.
        assert r.get((3).to_bytes(8, "big")) == want(READ["hash_int_get_3"])
        info = r.info()
        text = READ["hash_int_info"]
        assert f"run_id='{info['run_id']}'" in text
        assert f"num_dbs={info['num_dbs']}" in text
        assert f"manifest_ref='{info['manifest_ref']}'" in text
        assert f"row_count={info['row_count']}" in text
        assert info["created_at"] == "2026-11-20T23:48:07.686971Z"
        history = r.history()
        assert [h["run_id"] for h in history] == ["goldenrun0005", "goldenrun0001"]
        assert [h["offset"] for h in history] == [0, 1]
        assert r.refresh() is False


def test_reference_fixtures_str_and_cel(golden, cache_dir):
    with shardforge.Reader(golden("hash_str"), cache_dir=cache_dir, sqlite_mode="range") as r:
        assert r.key_encoding == "utf8"
        gets = READ["hash_str_range_get"]
        for k, v in gets.items():
            assert r.get(k) == want(v), k
            assert r.get(k.encode()) == want(v), k
        assert r.multi_get(list(gets)) == [want(v) for v in gets.values()]

    with shardforge.Reader(golden("cel_direct"), cache_dir=cache_dir) as r:
        for k, v in READ["cel_direct_get"].items():
            key = int(k) if r.key_encoding in ("u64be", "u32be") else k
            assert r.get(key) == want(v), k

    region = lambda k: ["eu", "us", "ap"][k % 3]  # noqa: E731
    with shardforge.Reader(golden("cel_cat"), cache_dir=cache_dir) as r:
        for k, v in READ["cel_cat_get_ctx"].items():
            k = int(k)
            assert r.get(k, routing_context={"region": region(k)}) == want(v), k
            other = next(x for x in ["eu", "us", "ap"] if x != region(k))
            assert r.get(k, routing_context={"region": other}) is None
        # An unknown categorical token is a miss.
        assert r.get(4, routing_context={"region": "mars"}) is want(READ["cel_cat_unknown_token"])
        keys = list(range(9))
        got = r.multi_get(keys, routing_context={"region": "eu"})
        assert got == [want(READ["cel_cat_get_ctx"][str(k)]) if region(k) == "eu" else None for k in keys]
        with pytest.raises(shardforge.DataError) as e:
            r.get(4)
        assert 'column "region" needed for routing is missing' in str(e.value)


def test_get_and_multi_get_on_a_built_snapshot(builder, prefix, cache_dir):
    url = builder.build(prefix, rows=200, run_id="py-one", tag="one")
    r = shardforge.Reader(url, cache_dir=cache_dir)
    try:
        assert r.current_url.endswith("/_CURRENT")
        assert r.get(7) == b"one-7"
        assert r.get(200) is None
        keys = [5, 1, 999, 5, 0]
        # Input order, duplicates kept, misses as None.
        assert r.multi_get(keys) == [b"one-5", b"one-1", None, b"one-5", b"one-0"]
        assert r.multi_get((k for k in [3, 4])) == [b"one-3", b"one-4"]
        assert r.multi_get([]) == []
        info = r.info()
        assert (info["run_id"], info["num_dbs"], info["row_count"]) == ("py-one", 4, 200)
        assert sum(s["row_count"] for s in r.shards()) == 200
        health = r.health()
        assert health["status"] == "healthy" and not health["is_closed"]
        assert health["run_id"] == "py-one"
        # A snapshot built moments ago is stale for a zero max age.
        assert r.health(max_age=0)["status"] == "stale"
        assert r.health(max_age="1h")["max_age_seconds"] == 3600
    finally:
        r.close()


def test_keys_by_encoding_and_errors(builder, tmp_path, cache_dir):
    ints = shardforge.Reader(builder.build(str(tmp_path / "ints"), rows=20, run_id="i", tag="i"), cache_dir=cache_dir)
    strs = shardforge.Reader(
        builder.build(str(tmp_path / "strs"), rows=20, run_id="s", tag="s", key_col="name"), cache_dir=cache_dir
    )
    assert (ints.key_encoding, strs.key_encoding) == ("u64be", "utf8")
    assert strs.get("user-3") == b"s-3" and strs.get(b"user-3") == b"s-3"
    assert strs.get("user-99") is None
    # A key of the wrong kind for the encoding is the reader's error, with its message.
    with pytest.raises(shardforge.DataError) as e:
        ints.get("user-3")
    assert str(e.value) == 'key for key encoding u64be: expected an integer (or 8 bytes), got text "user-3"'
    with pytest.raises(shardforge.DataError) as e:
        ints.get(-1)
    assert "u64be keys must be at least 0" in str(e.value)
    with pytest.raises(shardforge.DataError):
        ints.get(b"abc")
    with pytest.raises(shardforge.DataError):
        ints.multi_get([1, "two"])
    with pytest.raises(shardforge.DataError):
        strs.get(3)
    # Python-side mistakes are Python's own exceptions.
    with pytest.raises(TypeError):
        ints.get(3.0)
    with pytest.raises(TypeError):
        ints.get(True)
    with pytest.raises(TypeError):
        strs.multi_get("user-1")
    with pytest.raises(ValueError):
        ints.get(2**64)
    with pytest.raises(TypeError):
        ints.get(1, routing_context=[("a", 1)])
    ints.close()
    strs.close()


def test_open_errors(tmp_path, cache_dir):
    with pytest.raises(shardforge.DataError) as e:
        shardforge.Reader(str(tmp_path / "nothing" / "_CURRENT"), cache_dir=cache_dir)
    assert "no _CURRENT" in str(e.value)
    with pytest.raises(shardforge.ConfigError) as e:
        shardforge.Reader(str(tmp_path / "_CURRENT"), sqlite_mode="fast")
    assert "sqlite_mode" in str(e.value)
    with pytest.raises(shardforge.ConfigError):
        shardforge.Reader(str(tmp_path / "_CURRENT"), refresh_interval=0.001)
    with pytest.raises(TypeError):
        shardforge.Reader(str(tmp_path / "_CURRENT"), storage_options={"aws_region": 1})
    with pytest.raises(TypeError):
        shardforge.Reader(str(tmp_path / "_CURRENT"), refresh_interval=[1])


def test_errors_after_close(builder, prefix, cache_dir):
    url = builder.build(prefix, rows=10, run_id="closing", tag="c")
    with shardforge.Reader(url, cache_dir=cache_dir) as r:
        assert r.get(1) == b"c-1"
        assert not r.closed
    assert r.closed
    for call in (lambda: r.get(1), lambda: r.multi_get([1, 2]), r.refresh):
        with pytest.raises(shardforge.ConfigError) as e:
            call()
        assert "is closed" in str(e.value)
    # What the reader knows without reading still answers.
    assert r.info()["run_id"] == "closing"
    assert r.health()["is_closed"] is True
    r.close()  # idempotent


def test_refresh_swaps_to_a_new_build(builder, prefix, cache_dir):
    url = builder.build(prefix, rows=50, run_id="py-first", tag="first")
    with shardforge.Reader(url, cache_dir=cache_dir) as r:
        assert r.get(10) == b"first-10"
        assert r.refresh() is False
        builder.build(prefix, rows=60, run_id="py-second", tag="second")
        # Nothing moves until a refresh.
        assert r.get(10) == b"first-10" and r.get(55) is None
        assert r.refresh() is True
        assert r.info()["run_id"] == "py-second"
        assert r.multi_get([10, 55]) == [b"second-10", b"second-55"]
        assert [h["run_id"] for h in r.history()] == ["py-second", "py-first"]
        assert r.health()["refresh"]["last_success"] is not None


def test_background_refresh_follows_current(builder, tmp_path, cache_dir):
    prefix = str(tmp_path / "bg")
    url = builder.build(prefix, rows=20, run_id="bg-1", tag="bg1")
    with shardforge.Reader(url, cache_dir=cache_dir, refresh_interval=0.05) as r:
        assert r.get(1) == b"bg1-1"
        builder.build(prefix, rows=20, run_id="bg-2", tag="bg2")
        deadline = time.monotonic() + 30
        while r.get(1) != b"bg2-1":
            assert time.monotonic() < deadline, "the background refresh never swapped"
            time.sleep(0.02)
        assert r.info()["run_id"] == "bg-2"


def test_threads_read_while_refresh_swaps(builder, prefix, cache_dir):
    rows = 100
    url = builder.build(prefix, rows=rows, run_id="swap-a", tag="a")
    r = shardforge.Reader(url, cache_dir=cache_dir)
    stop = threading.Event()
    failures = []
    reads = [0] * 4
    tags_seen = set()

    def reader_thread(n):
        keys = list(range(n, rows, 4))
        try:
            while not stop.is_set():
                values = r.multi_get(keys)
                # One multi_get reads one snapshot: every value has one tag.
                tags = {v.split(b"-")[0] for v in values}
                if len(tags) != 1 or None in values:
                    failures.append(values)
                    return
                tags_seen.update(tags)
                one = r.get(keys[0])
                if one is None or one.split(b"-")[0] not in (b"a", b"b"):
                    failures.append(one)
                    return
                reads[n] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=reader_thread, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        swaps = 0
        for i, tag in enumerate(["b", "a", "b"]):
            builder.build(prefix, rows=rows, run_id=f"swap-{i}-{tag}", tag=tag)
            assert r.refresh() is True
            swaps += 1
            assert r.get(0) == f"{tag}-0".encode()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures[:3]
    assert swaps == 3 and all(n > 0 for n in reads), reads
    assert tags_seen == {b"a", b"b"}
    r.close()


def test_the_gil_is_released_during_a_lookup_batch(builder, tmp_path, cache_dir):
    """A thread running pure Python code makes progress while another is
    inside a long multi_get. With the GIL held for the whole call, the
    spinner would get no turn inside the call (a native call is never
    preempted by Python's switch interval)."""
    url = builder.build(str(tmp_path / "gil"), rows=2000, run_id="gil", tag="g")
    with shardforge.Reader(url, cache_dir=cache_dir, sqlite_mode="download") as r:
        keys = list(range(2000))
        assert r.multi_get(keys)[1999] == b"g-1999"  # shards open, pages cached
        batch = keys * 40
        ticks = []
        done = threading.Event()

        def spin():
            n = 0
            while not done.is_set():
                n += 1
                if n % 200 == 0:
                    ticks.append(time.perf_counter())

        spinner = threading.Thread(target=spin)
        spinner.start()
        try:
            time.sleep(0.05)  # the spinner is running
            start = time.perf_counter()
            values = r.multi_get(batch)
            end = time.perf_counter()
        finally:
            done.set()
            spinner.join(timeout=30)
        assert len(values) == len(batch) and values[-1] == b"g-1999"
        took = end - start
        assert took > 0.05, f"the batch took {took:.3f}s: too short to tell"
        # The middle half of the call is the Rust lookup (keys are converted
        # before it and values after it, with the GIL held).
        lo, hi = start + took / 4, end - took / 4
        inside = sum(1 for t in ticks if lo <= t <= hi)
        assert inside >= 5, f"the spinner ran {inside} times in the middle of a {took:.3f}s multi_get"
