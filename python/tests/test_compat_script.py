"""A script written against the reference's reader API, run unchanged
against shardforge.compat: on a ShardForge snapshot built by sf-write and
on a reference fixture, both on S3.

`read_everything` is what a reference user writes; the one line that
differs from their script is the import below, where they have
`from shardyfusion import AsyncShardedReader, ConcurrentShardedReader,
ShardedReader` and `from shardyfusion.sqlite_adapter import
AsyncSqliteReaderFactory, SqliteReaderFactory` (shardforge.compat holds
every name in one module)."""

import asyncio
import json
import os
from datetime import timedelta

from shardforge.compat import (
    AsyncShardedReader,
    AsyncSqliteReaderFactory,
    ConcurrentShardedReader,
    ShardedReader,
    SqliteReaderFactory,
)
from conftest import FIXTURES, s3_prefix, upload_tree


def read_everything(s3_prefix, local_root, s3_connection_options, keys, reader_class=ShardedReader):
    """Every reader call a service makes, with plain values out."""
    out = {}
    factory = SqliteReaderFactory(s3_connection_options=s3_connection_options)
    with reader_class(
        s3_prefix=s3_prefix,
        local_root=local_root,
        reader_factory=factory,
        s3_connection_options=s3_connection_options,
        max_workers=2,
    ) as reader:
        out["get"] = {k: reader.get(k) for k in keys}
        out["multi_get"] = reader.multi_get(keys + keys[:3])
        out["multi_get_order"] = list(out["multi_get"])
        out["refresh"] = reader.refresh()
        health = reader.health(staleness_threshold=timedelta(days=36500))
        out["health"] = (health.status, health.manifest_ref, health.num_shards, health.is_closed)
        info = reader.snapshot_info()
        out["info"] = {
            "run_id": info.run_id,
            "num_dbs": info.num_dbs,
            "sharding": info.sharding.value,
            "row_count": info.row_count,
            "key_encoding": info.key_encoding.value,
            "hash_algorithm": info.hash_algorithm.value,
            "manifest_ref": info.manifest_ref,
            "created_at": info.created_at.isoformat(),
        }
        out["shards"] = [(d.db_id, d.row_count, d.min_key, d.max_key) for d in reader.shard_details()]
        out["routes"] = {k: reader.route_key(k) for k in keys}
        out["key_encoding"] = reader.key_encoding.value
    out["closed_health"] = reader.health().status

    async def read_async():
        factory = AsyncSqliteReaderFactory(s3_connection_options=s3_connection_options)
        async with await AsyncShardedReader.open(
            s3_prefix=s3_prefix,
            local_root=local_root,
            reader_factory=factory,
            s3_connection_options=s3_connection_options,
        ) as reader:
            gets = await asyncio.gather(*(reader.get(k) for k in keys))
            return {
                "get": dict(zip(keys, gets)),
                "multi_get": await reader.multi_get(keys + keys[:3]),
                "refresh": await reader.refresh(),
                "run_id": reader.snapshot_info().run_id,
            }

    out["async"] = asyncio.run(read_async())
    return out


def connection_options():
    return {"endpoint_url": os.environ["AWS_ENDPOINT"], "region_name": "us-east-1", "addressing_style": "path"}


def check_consistent(out, keys):
    """What must hold whatever the snapshot."""
    assert out["multi_get"] == out["get"]
    assert out["multi_get_order"] == list(dict.fromkeys(keys))
    assert out["refresh"] is False
    assert out["health"][0] == "healthy" and out["health"][3] is False
    assert out["health"][1] == out["info"]["manifest_ref"]
    assert out["health"][2] == out["info"]["num_dbs"] == len(out["shards"])
    assert sum(s[1] for s in out["shards"]) == out["info"]["row_count"]
    assert out["closed_health"] == "unhealthy"
    assert out["async"]["get"] == out["get"] and out["async"]["multi_get"] == out["get"]
    assert out["async"]["refresh"] is False and out["async"]["run_id"] == out["info"]["run_id"]
    # Each found key routes to a shard whose bounds hold it.
    for k, db in out["routes"].items():
        db_id, rows, lo, hi = out["shards"][db]
        if out["get"][k] is not None:
            assert rows > 0 and lo <= k <= hi, (k, out["shards"][db])


def test_the_script_on_a_reference_snapshot_on_s3(tmp_path):
    read = json.loads((FIXTURES / "expected.json").read_text())["read"]
    prefix = s3_prefix("script-reference")
    upload_tree(FIXTURES / "sqlite-bucket-golden" / "hash_int", prefix)
    keys = [3, 999, 0, 1, 2, 42, 7]
    for cls in (ShardedReader, ConcurrentShardedReader):
        out = read_everything(prefix, str(tmp_path / cls.__name__), connection_options(), keys, cls)
        check_consistent(out, keys)
        assert out["get"] == {k: (f"v2-{k}".encode() if k < 10 else None) for k in keys}
        assert out["get"][3] == read["hash_int_get_3"]["__bytes__"].encode()
        for k in keys:
            if str(k) in read["hash_int_route"]:
                assert out["routes"][k] == read["hash_int_route"][str(k)], k
        for field in ("run_id", "num_dbs", "row_count", "manifest_ref"):
            assert f"{field}={out['info'][field]!r}" in read["hash_int_info"], field
        assert out["info"]["created_at"] == "2026-11-20T23:48:07.686971+00:00"
        assert (out["info"]["sharding"], out["key_encoding"], out["info"]["hash_algorithm"]) == (
            "hash",
            "u64be",
            "xxh3_64",
        )


def test_the_script_on_a_shardforge_snapshot_on_s3(builder, tmp_path):
    prefix = s3_prefix("script-shardforge")
    builder.build(prefix, rows=120, run_id="script-run", tag="sf")
    keys = [5, 119, 120, 0, 77, 5000]
    out = read_everything(prefix, str(tmp_path / "cache"), connection_options(), keys)
    check_consistent(out, keys)
    assert out["get"] == {k: (f"sf-{k}".encode() if k < 120 else None) for k in keys}
    assert out["info"]["run_id"] == "script-run" and out["info"]["row_count"] == 120
    assert (out["info"]["sharding"], out["key_encoding"], out["info"]["num_dbs"]) == ("hash", "u64be", 4)
