"""shardforge.compat: the reference's reader API over ShardForge's reader.
The reference's fixtures (tests/data/shardyfusion-v4) read with the
reference's semantics, on files and on S3; errors, refresh on a malformed
manifest, rate limiters, metrics, read modes, threads and asyncio."""

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import os
import shutil
import threading
import time
import urllib.parse
import urllib.request

import pytest

from shardforge import compat
from shardforge.compat import (
    AsyncShardedReader,
    ConcurrentShardedReader,
    ConfigValidationError,
    KeyEncoding,
    ReaderStateError,
    ShardedReader,
    ShardingStrategy,
    ShardyfusionError,
    UnknownRoutingTokenError,
)
from conftest import FIXTURES, s3_prefix, upload_tree

READ = json.loads((FIXTURES / "expected.json").read_text())["read"]
GOLDEN = FIXTURES / "sqlite-bucket-golden"


def want(v):
    return None if v is None else v["__bytes__"].encode()


@pytest.fixture(params=["file", "s3"])
def golden_prefix(request):
    """The prefix of a reference fixture: its folder, or a copy on S3."""

    def prefix(name):
        if request.param == "file":
            return str(GOLDEN / name)
        url = s3_prefix(f"compat-{name}")
        upload_tree(GOLDEN / name, url)
        return url

    return prefix


@pytest.mark.parametrize("cls", [ShardedReader, ConcurrentShardedReader])
def test_reference_fixture_with_the_reference_semantics(golden_prefix, cache_dir, cls):
    reader = cls(s3_prefix=golden_prefix("hash_int"), local_root=cache_dir)
    with reader as r:
        assert r.key_encoding is KeyEncoding.U64BE and r.key_encoding == "u64be"
        assert r.get(3) == want(READ["hash_int_get_3"])
        assert r.get(999) is None
        # First-seen order, duplicates collapsed, misses as None.
        got = r.multi_get([5, 1, 99, 5, 0, 1])
        assert list(got) == [5, 1, 99, 0]
        assert got == {5: b"v2-5", 1: b"v2-1", 99: None, 0: b"v2-0"}
        multi = READ["hash_int_multi"]
        assert r.multi_get([int(k) for k in multi]) == {int(k): want(v) for k, v in multi.items()}
        assert r.multi_get([]) == {}
        # The reference takes True as the integer 1.
        assert r.get(True) == b"v2-1"

        info = r.snapshot_info()
        assert isinstance(info, compat.SnapshotInfo)
        assert info.run_id == "goldenrun0005" and info.num_dbs == 4 and info.row_count == 10
        assert info.sharding is ShardingStrategy.HASH
        assert info.key_encoding is KeyEncoding.U64BE
        assert info.hash_algorithm == "xxh3_64"
        assert info.created_at == dt.datetime(2026, 11, 20, 23, 48, 7, 686971, tzinfo=dt.timezone.utc)
        assert f"manifest_ref='{info.manifest_ref}'" in READ["hash_int_info"]
        with pytest.raises(AttributeError):
            info.run_id = "x"  # frozen

        details = r.shard_details()
        assert [d.db_id for d in details] == [0, 1, 2, 3]
        assert sum(d.row_count for d in details) == 10
        for d in details:
            assert isinstance(d, compat.ShardDetail)
            if d.row_count:
                assert d.db_url and isinstance(d.min_key, int) and d.min_key <= d.max_key
        for k, db in READ["hash_int_route"].items():
            assert r.route_key(int(k)) == db, k
            assert r.shard_for_key(int(k)).db_id == db

        health = r.health()
        assert isinstance(health, compat.ReaderHealth)
        assert (health.status, health.is_closed, health.num_shards) == ("healthy", False, 4)
        assert health.manifest_ref == info.manifest_ref
        # The served manifest's age (built 2026-11-20), not the reader's.
        assert health.manifest_age > dt.timedelta(seconds=1)
        assert r.health(staleness_threshold=dt.timedelta(seconds=1)).status == "degraded"
        assert r.health(staleness_threshold=dt.timedelta(days=36500)).status == "healthy"
        assert r.refresh() is False

    # After close: lookups and refresh raise ReaderStateError; metadata
    # still answers on ShardedReader and raises on the concurrent reader.
    for call in (lambda: reader.get(3), lambda: reader.multi_get([1, 2]), reader.refresh):
        with pytest.raises(ReaderStateError, match="Reader is closed"):
            call()
    assert reader.health() == compat.ReaderHealth("unhealthy", "", dt.timedelta(0), 0, True)
    if cls is ShardedReader:
        assert reader.snapshot_info().run_id == "goldenrun0005"
        assert len(reader.shard_details()) == 4 and reader.route_key(3) == 1
    else:
        for call in (reader.snapshot_info, reader.shard_details, lambda: reader.route_key(3)):
            with pytest.raises(ReaderStateError):
                call()
    reader.close()  # idempotent


def test_reference_fixtures_str_and_cel(golden_prefix, cache_dir):
    with ShardedReader(s3_prefix=golden_prefix("hash_str"), local_root=cache_dir, reader_factory="range") as r:
        assert r.key_encoding is KeyEncoding.UTF8
        gets = READ["hash_str_range_get"]
        assert r.multi_get(list(gets) * 2) == {k: want(v) for k, v in gets.items()}
        for k, db in READ["hash_str_route"].items():
            assert r.route_key(k) == db
        # A key of the wrong type: the reference's exception class.
        with pytest.raises(ConfigValidationError):
            r.get(3)

    with ShardedReader(s3_prefix=golden_prefix("cel_direct"), local_root=cache_dir) as r:
        assert r.snapshot_info().sharding is ShardingStrategy.CEL
        keys = [int(k) for k in READ["cel_direct_get"]]
        assert r.multi_get(keys) == {int(k): want(v) for k, v in READ["cel_direct_get"].items()}
        for k, db in READ["cel_direct_route"].items():
            assert r.route_key(int(k)) == db

    region = lambda k: ["eu", "us", "ap"][k % 3]  # noqa: E731
    with ShardedReader(s3_prefix=golden_prefix("cel_cat"), local_root=cache_dir) as r:
        for k, v in READ["cel_cat_get_ctx"].items():
            assert r.get(int(k), routing_context={"region": region(int(k))}) == want(v)
        # An unknown token: a miss for get and multi_get, an error for route_key.
        assert r.get(4, routing_context={"region": "mars"}) is None
        assert r.multi_get([4, 5, 4], routing_context={"region": "mars"}) == {4: None, 5: None}
        with pytest.raises(UnknownRoutingTokenError) as e:
            r.route_key(4, routing_context={"region": "mars"})
        assert isinstance(e.value, ValueError)
        eu = r.multi_get(list(range(9)), routing_context={"region": "eu"})
        assert eu == {k: (want(READ["cel_cat_get_ctx"][str(k)]) if region(k) == "eu" else None) for k in range(9)}
        # Multi-column CEL without a routing context: a ValueError, as the reference raises.
        with pytest.raises(ValueError):
            r.get(4)


def test_key_errors_are_the_references(cache_dir):
    with ShardedReader(s3_prefix=str(GOLDEN / "hash_int"), local_root=cache_dir) as r:
        cases = [
            ("3", ValueError, "u64be key encoding requires integer lookup keys"),
            (b"abc", ValueError, "u64be key bytes must have length 8"),
            (-1, ConfigValidationError, "u64be"),
            (3.5, ValueError, "Unsupported key type"),
        ]
        for key, cls, text in cases:
            for call in (lambda: r.get(key), lambda: r.multi_get([1, key])):
                with pytest.raises(cls) as e:
                    call()
                assert text in str(e.value)
                # Plain ValueErrors stay plain, as the reference's are.
                assert isinstance(e.value, ShardyfusionError) == (cls is ConfigValidationError)
        with pytest.raises(ValueError):
            r.get(2**64)
        assert r.get((3).to_bytes(8, "big")) == b"v2-3"
        assert r.get(bytearray((3).to_bytes(8, "big"))) == b"v2-3"


def test_constructor_checks_and_open_errors(tmp_path, cache_dir):
    good = str(GOLDEN / "hash_int")
    with pytest.raises(ValueError):
        ShardedReader(s3_prefix=good, local_root=cache_dir, max_workers=0)
    with pytest.raises(ValueError):
        ConcurrentShardedReader(s3_prefix=good, local_root=cache_dir, thread_safety="none")
    with pytest.raises(ValueError):
        ConcurrentShardedReader(s3_prefix=good, local_root=cache_dir, pool_checkout_timeout=dt.timedelta(0))
    with pytest.raises(ConfigValidationError):
        ShardedReader(s3_prefix=good, local_root=cache_dir, manifest_store=object())
    with pytest.raises(ConfigValidationError):
        ShardedReader(s3_prefix=good, local_root=cache_dir, reader_factory=lambda **kw: None)
    with pytest.raises(ValueError):
        ShardedReader(s3_prefix=good, local_root=cache_dir, reader_factory="fast")
    with pytest.raises(ReaderStateError, match="CURRENT pointer not found"):
        ShardedReader(s3_prefix=str(tmp_path / "nothing"), local_root=cache_dir)
    # ShardForge's pointer is always _CURRENT: another name is refused, not misread.
    with pytest.raises(ConfigValidationError, match="current_pointer_key"):
        ShardedReader(s3_prefix=good, local_root=cache_dir, current_pointer_key="_POINTER")
    with ShardedReader(s3_prefix=good + "/", local_root=cache_dir, current_pointer_key="_CURRENT") as r:
        assert r.get(3) == b"v2-3"


@pytest.mark.parametrize(
    "factory, opened_as",
    [
        ("download", "sqlite-download"),
        ("memory", "sqlite-memory"),
        (compat.SqliteReaderFactory(mmap_size=1 << 20), "sqlite-download"),
        (compat.SqliteRangeReaderFactory(page_cache_pages=64), "sqlite-range"),
        (compat.make_sqlite_reader_factory(mode="range"), "sqlite-range"),
        (compat.AdaptiveSqliteReaderFactory(), "sqlite-download"),
    ],
)
def test_reader_factory_chooses_the_sqlite_mode(cache_dir, factory, opened_as):
    with ShardedReader(s3_prefix=str(GOLDEN / "hash_int"), local_root=cache_dir, reader_factory=factory) as r:
        assert r.get(3) == b"v2-3"
        opened = [s["opened_as"] for s in r._native.shards() if s["opened_as"]]
        assert opened == [opened_as]


def test_a_reference_factory_object_is_taken_by_its_class_name(cache_dir):
    # The reference's own factory objects, as a migrating service passes them.
    SqliteRangeReaderFactory = type("SqliteRangeReaderFactory", (), {})
    with ShardedReader(
        s3_prefix=str(GOLDEN / "hash_int"), local_root=cache_dir, reader_factory=SqliteRangeReaderFactory()
    ) as r:
        assert r.get(3) == b"v2-3"
        assert [s["opened_as"] for s in r._native.shards() if s["opened_as"]] == ["sqlite-range"]


def put_signed(url, body):
    """PUT `body` at an s3:// URL with an AWS SigV4 signature (the test
    server refuses unsigned overwrites), with the environment's keys."""
    endpoint = os.environ["AWS_ENDPOINT"]
    region = os.environ.get("AWS_REGION", "us-east-1")
    key_id, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    path = "/" + urllib.parse.quote(url[len("s3://"):])
    host = urllib.parse.urlsplit(endpoint).netloc
    now = dt.datetime.now(dt.timezone.utc)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    digest = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": digest, "x-amz-date": stamp}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        ["PUT", path, "", "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, digest]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = f"AWS4{secret}".encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(endpoint + path, data=body, method="PUT")
    for name, value in headers.items():
        if name != "host":
            req.add_header(name, value)
    req.add_header(
        "Authorization", f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200, r.status


def copy_fixture(tmp_path, name="hash_int"):
    folder = tmp_path / f"copy-{name}"
    shutil.copytree(GOLDEN / name, folder)
    return folder


def point_current_at_a_broken_manifest(folder):
    """Writes a manifest that is not a SQLite database and points _CURRENT at it."""
    ref = "manifests/2026-11-21T00:00:00.000000Z_run_id=broken/manifest"
    (folder / ref).parent.mkdir(parents=True)
    (folder / ref).write_bytes(b"this is not a manifest")
    current = json.loads((folder / "_CURRENT").read_text())
    old = dict(current)
    current.update(manifest_ref=f"s3://golden/hash_int/{ref}", run_id="broken")
    (folder / "_CURRENT").write_text(json.dumps(current))
    return old


@pytest.mark.parametrize("where", ["file", "s3"])
def test_refresh_returns_false_and_keeps_serving_on_a_malformed_manifest(tmp_path, cache_dir, where):
    folder = copy_fixture(tmp_path)
    prefix = str(folder)
    if where == "s3":
        prefix = s3_prefix("compat-broken")
        upload_tree(folder, prefix)
    events = []
    collector = type("Collector", (), {"emit": lambda self, event, payload: events.append((event, payload))})()
    with ShardedReader(s3_prefix=prefix, local_root=cache_dir, metrics_collector=collector) as r:
        assert r.get(3) == b"v2-3"
        old = point_current_at_a_broken_manifest(folder)
        if where == "s3":
            # The broken manifest is a new object; _CURRENT an overwrite, which
            # the test server takes signed only.
            broken = "manifests/2026-11-21T00:00:00.000000Z_run_id=broken/manifest"
            put_signed(f"{prefix}/{broken}", (folder / broken).read_bytes())
            put_signed(f"{prefix}/_CURRENT", (folder / "_CURRENT").read_bytes())
        assert r.refresh() is False
        assert r.snapshot_info().run_id == "goldenrun0005"
        assert r.get(3) == b"v2-3"
        assert r.multi_get([3, 4]) == {3: b"v2-3", 4: b"v2-4"}
        # _CURRENT back on a good manifest: unchanged, False again.
        (folder / "_CURRENT").write_text(json.dumps(old))
        if where == "s3":
            put_signed(f"{prefix}/_CURRENT", (folder / "_CURRENT").read_bytes())
        assert r.refresh() is False
    names = [e.value for e, _ in events]
    assert names[0] == "reader.initialized" and names[-1] == "reader.closed"
    assert [p for e, p in events if e.value == "reader.refreshed"] == [{"changed": False}] * 2
    gets = [p for e, p in events if e.value == "reader.get"]
    assert len(gets) == 2 and all(p["found"] is True and p["duration_ms"] >= 0 for p in gets)
    assert [p["num_keys"] for e, p in events if e.value == "reader.multi_get"] == [2]


def test_open_on_a_malformed_manifest(tmp_path, cache_dir):
    folder = copy_fixture(tmp_path)
    point_current_at_a_broken_manifest(folder)
    # With fallback (the default), the history's newest good manifest serves.
    with ShardedReader(s3_prefix=str(folder), local_root=cache_dir) as r:
        assert r.snapshot_info().run_id == "goldenrun0005"
        assert r.get(3) == b"v2-3"
    # Without, the reference's ManifestParseError.
    with pytest.raises(compat.ManifestParseError):
        ShardedReader(s3_prefix=str(folder), local_root=cache_dir, max_fallback_attempts=0)


def test_refresh_swaps_to_a_new_build(builder, prefix, cache_dir):
    builder.build(prefix, rows=30, run_id="cp-1", tag="one")
    with ShardedReader(s3_prefix=prefix, local_root=cache_dir) as r:
        assert r.get(7) == b"one-7"
        builder.build(prefix, rows=30, run_id="cp-2", tag="two")
        assert r.get(7) == b"one-7"
        assert r.refresh() is True
        assert r.get(7) == b"two-7" and r.snapshot_info().run_id == "cp-2"
        assert r.refresh() is False


class RecordingLimiter:
    """The reference's limiter shape: a `_rate` capacity and a blocking
    `acquire`, which never returns when asked for more than it holds (as
    the reference's TokenBucket does): here it raises instead."""

    def __init__(self, rate):
        self._rate = rate
        self.calls = []

    def acquire(self, tokens=1):
        if tokens > self._rate:
            raise AssertionError(f"acquire({tokens}) above the capacity {self._rate} would hang")
        self.calls.append(tokens)

    async def acquire_async(self, tokens=1):
        self.acquire(tokens)


def test_a_rate_limiter_is_honoured_without_hanging(cache_dir):
    limiter = RecordingLimiter(4)
    with ShardedReader(s3_prefix=str(GOLDEN / "hash_int"), local_root=cache_dir, rate_limiter=limiter) as r:
        assert r.get(3) == b"v2-3"
        assert r.multi_get(list(range(10))) == {k: f"v2-{k}".encode() for k in range(10)}
    # One token per get, len(keys) per multi_get, never above the capacity.
    assert limiter.calls == [1, 4, 4, 2]

    # The package's own token bucket paces a batch above its rate.
    bucket = compat.ThreadSafeTokenBucket(20)
    with ShardedReader(s3_prefix=str(GOLDEN / "hash_int"), local_root=cache_dir, rate_limiter=bucket) as r:
        start = time.monotonic()
        assert len(r.multi_get(list(range(10)) * 5)) == 10  # 50 tokens: 20 at hand, 30 more at 20/s
        took = time.monotonic() - start
    assert 1.2 < took < 10, took

    async def main():
        limiter = RecordingLimiter(3)
        reader = await AsyncShardedReader.open(
            s3_prefix=str(GOLDEN / "hash_int"), local_root=cache_dir, rate_limiter=limiter
        )
        async with reader as r:
            assert await r.get(1) == b"v2-1"
            assert len(await r.multi_get(list(range(7)))) == 7
        return limiter.calls

    assert asyncio.run(main()) == [1, 3, 3, 1]


@pytest.mark.parametrize("mode", ["download", "memory"])
def test_threads_get_while_refresh_swaps(builder, tmp_path, cache_dir, mode):
    """Single gets (the path that answers on the calling thread when the
    shard is open) from many threads while refreshes swap the snapshot:
    every answer is one of the builds' values, never a miss or an error."""
    prefix = str(tmp_path / "swap")
    rows = 64
    builder.build(prefix, rows=rows, run_id="t-a", tag="a")
    r = ConcurrentShardedReader(s3_prefix=prefix, local_root=cache_dir, thread_safety="pool", reader_factory=mode)
    stop = threading.Event()
    failures, seen, counts = [], set(), [0] * 4

    def worker(n):
        try:
            k = n
            while not stop.is_set():
                v = r.get(k)
                if v is None or v.split(b"-")[1] != str(k).encode():
                    failures.append((k, v))
                seen.add(v.split(b"-")[0] if v else None)
                counts[n] += 1
                k = (k + 4) % rows
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        for i, tag in enumerate(["b", "a", "b"]):
            builder.build(prefix, rows=rows, run_id=f"t-{i}-{tag}", tag=tag)
            assert r.refresh() is True
            assert r.get(1) == f"{tag}-1".encode()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures[:3]
    assert all(c > 0 for c in counts) and seen == {b"a", b"b"}

    # Closing while threads read: each sees values, then ReaderStateError.
    results = []

    def until_closed():
        for _ in range(1_000_000):
            try:
                r.get(3)
            except ReaderStateError as e:
                results.append(e)
                return
        results.append("never closed")

    threads = [threading.Thread(target=until_closed) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    r.close()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 3 and all(isinstance(e, ReaderStateError) for e in results), results


def test_async_reader_open_idiom_and_many_concurrent_gets(builder, prefix, cache_dir):
    rows = 500
    builder.build(prefix, rows=rows, run_id="as-1", tag="x")

    async def main():
        unopened = AsyncShardedReader(s3_prefix=prefix, local_root=cache_dir)
        with pytest.raises(ReaderStateError, match="use open"):
            await unopened.get(1)
        with pytest.raises(ReaderStateError):
            unopened.snapshot_info()

        async with await AsyncShardedReader.open(s3_prefix=prefix, local_root=cache_dir, max_concurrency=8) as r:
            assert r.key_encoding is KeyEncoding.U64BE
            # A few thousand gets at once on one event loop.
            keys = [k % (rows + 50) for k in range(3000)]
            values = await asyncio.wait_for(asyncio.gather(*(r.get(k) for k in keys)), timeout=120)
            assert values == [f"x-{k}".encode() if k < rows else None for k in keys]
            batches = await asyncio.gather(*(r.multi_get([k, k, k + 1, 10_000]) for k in range(0, 100, 10)))
            for k, got in zip(range(0, 100, 10), batches):
                assert got == {k: f"x-{k}".encode(), k + 1: f"x-{k + 1}".encode(), 10_000: None}
            assert r.snapshot_info().run_id == "as-1"
            assert len(r.shard_details()) == 4
            assert r.route_key(7) in range(4)
            assert r.health().status == "healthy"
            with pytest.raises(ValueError):
                await r.get("seven")
            await asyncio.to_thread(builder.build, prefix, rows=rows, run_id="as-2", tag="y")
            assert await r.refresh() is True
            assert await r.get(3) == b"y-3"
        with pytest.raises(ReaderStateError, match="Reader is closed"):
            await r.get(3)
        with pytest.raises(ReaderStateError):
            r.snapshot_info()
        assert r.health().is_closed
        await r.close()

    asyncio.run(main())


def test_s3_connection_options_and_credentials(monkeypatch, cache_dir):
    """The reference's connection options and credential provider reach the
    store: with the environment's endpoint and keys removed, only they
    can."""
    import os

    endpoint = os.environ["AWS_ENDPOINT"]
    prefix = s3_prefix("compat-options")
    upload_tree(GOLDEN / "hash_int", prefix)
    for name in ("AWS_ENDPOINT", "AWS_ALLOW_HTTP", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_VIRTUAL_HOSTED_STYLE_REQUEST"):
        monkeypatch.delenv(name, raising=False)

    class Provider:
        def resolve(self):
            return type("S3Credentials", (), {"access_key_id": "testing", "secret_access_key": "testing",
                                              "session_token": None})()

    options = {"endpoint_url": endpoint, "region_name": "us-east-1", "addressing_style": "path",
               "connect_timeout": 5, "read_timeout": dt.timedelta(seconds=30), "max_attempts": 3}
    with ShardedReader(s3_prefix=prefix, local_root=cache_dir, s3_connection_options=options,
                       credential_provider=Provider()) as r:
        assert r.get(3) == b"v2-3"
