"""shardforge.AsyncReader over the installed package: the same reads as
coroutines, many at once on one event loop, on files and S3."""

import asyncio
import threading

import pytest

import shardforge
from conftest import FIXTURES


def test_open_is_the_only_way_in(tmp_path):
    with pytest.raises(shardforge.ConfigError) as e:
        shardforge.AsyncReader()
    assert "AsyncReader.open" in str(e.value)

    async def missing():
        await shardforge.AsyncReader.open(str(tmp_path / "nothing" / "_CURRENT"))

    with pytest.raises(shardforge.DataError) as e:
        asyncio.run(missing())
    assert "no _CURRENT" in str(e.value)


def test_reference_fixture_through_asyncio(cache_dir):
    url = str(FIXTURES / "sqlite-bucket-golden" / "hash_int" / "_CURRENT")

    async def main():
        async with await shardforge.AsyncReader.open(url, cache_dir=cache_dir) as r:
            assert r.key_encoding == "u64be"
            assert await r.get(3) == b"v2-3"
            assert await r.get(999) is None
            assert await r.multi_get([0, 42, 1]) == [b"v2-0", None, b"v2-1"]
            assert [h["run_id"] for h in await r.history()] == ["goldenrun0005", "goldenrun0001"]
            assert await r.refresh() is False
            assert r.info()["run_id"] == "goldenrun0005"
        return r

    r = asyncio.run(main())
    assert r.closed


def test_many_concurrent_gets_refresh_and_close(builder, prefix, cache_dir):
    rows = 300
    url = builder.build(prefix, rows=rows, run_id="async-1", tag="x")

    async def main():
        r = await shardforge.AsyncReader.open(url, cache_dir=cache_dir)
        python_threads = threading.active_count()
        values = await asyncio.gather(*(r.get(k) for k in range(rows + 20)))
        assert values == [f"x-{k}".encode() for k in range(rows)] + [None] * 20
        batches = await asyncio.gather(*(r.multi_get(list(range(k, rows, 7))) for k in range(7)))
        for k, batch in enumerate(batches):
            assert batch == [f"x-{i}".encode() for i in range(k, rows, 7)]
        # The awaitables ran on the package's Rust runtime: no Python
        # thread was started for them (as asyncio.to_thread would).
        assert threading.active_count() == python_threads

        # Errors come back through the awaitable, as the sync reader raises them.
        with pytest.raises(shardforge.DataError):
            await r.get("not-an-int")
        with pytest.raises(TypeError):
            await r.get(1.5)

        await asyncio.to_thread(builder.build, prefix, rows=rows, run_id="async-2", tag="y")
        assert await r.get(1) == b"x-1"
        assert await r.refresh() is True
        assert await r.multi_get([1, 2]) == [b"y-1", b"y-2"]
        assert r.info()["run_id"] == "async-2"

        await r.close()
        assert r.closed
        with pytest.raises(shardforge.ConfigError) as e:
            await r.get(1)
        assert "is closed" in str(e.value)
        with pytest.raises(shardforge.ConfigError):
            await r.refresh()

    asyncio.run(main())
