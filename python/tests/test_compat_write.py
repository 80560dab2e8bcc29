"""The reference's writer functions (shardforge._compat_write, re-exported
by shardforge.compat): its config objects and BuildResult over
shardforge.write, checked against the reference's own write of the same
rows (tests/data/shardyfusion-v4/expected.json)."""

import json
from datetime import timedelta

import pytest

import shardforge
import shardforge.compat
from conftest import FIXTURES
from shardforge._compat_write import (
    CelShardedWriteConfig,
    ConfigValidationError,
    HashShardedWriteConfig,
    HashShardingConfig,
    KeyValueWriteConfig,
    PythonRecordInput,
    PythonWriteOptions,
    RetryConfig,
    WriterOutputConfig,
    WriterStorageConfig,
    write_cel_sharded,
    write_hash_sharded,
)

EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def records(n=10):
    return [{"id": i, "payload": f"v-{i}".encode()} for i in range(n)]


INPUT = PythonRecordInput(key_fn=lambda r: r["id"], value_fn=lambda r: r["payload"])


def test_hash_sharded_matches_the_references_own_write(prefix, cache_dir):
    """The reference wrote keys 0..9 into 4 shards (its golden hash_int
    fixture): the same shards hold the same keys here."""
    config = HashShardedWriteConfig(num_dbs=4, s3_prefix=prefix, output=WriterOutputConfig(run_id="compat-1"))
    result = write_hash_sharded(records(), config, INPUT, PythonWriteOptions(parallel=True))
    want = EXPECTED["write"]["hash_int"]
    assert result.run_id == "compat-1"
    assert isinstance(result.manifest_ref, str) and "compat-1" in result.manifest_ref
    assert result.stats.num_winners == want["stats"]["num_winners"]
    assert result.stats.rows_written == want["stats"]["rows_written"]
    got = [(w.db_id, w.row_count, w.min_key, w.max_key) for w in result.winners]
    assert got == [(w["db_id"], w["row_count"], w["min_key"], w["max_key"]) for w in want["winners"]]
    assert result.stats.durations.total_ms >= result.stats.durations.write_ms >= 0
    with shardforge.Reader(f"{prefix}/_CURRENT", cache_dir=cache_dir) as reader:
        assert reader.multi_get(list(range(11))) == [f"v-{i}".encode() for i in range(10)] + [None]
        routes = EXPECTED["read"]["hash_int_route"]
        assert {str(s["db_id"]) for s in reader.shards()} == {str(v) for v in routes.values()}


def test_nested_configs_and_retry_settings(tmp_path, cache_dir):
    config = HashShardedWriteConfig(
        sharding=HashShardingConfig(max_keys_per_shard=300),
        storage=WriterStorageConfig(s3_prefix=str(tmp_path / "snap")),
        kv=KeyValueWriteConfig(key_encoding="u64be", batch_size=1000),
        retry=None,
    )
    result = write_hash_sharded(records(1000), config, INPUT)
    assert len(result.winners) == 4 and sum(w.row_count for w in result.winners) == 1000
    with shardforge.Reader(str(tmp_path / "snap" / "_CURRENT"), cache_dir=cache_dir) as reader:
        assert reader.get(999) == b"v-999"
    flat = HashShardedWriteConfig(num_dbs=2, s3_prefix=str(tmp_path / "flat"), shard_retry=RetryConfig(2, timedelta(milliseconds=50)))
    assert write_hash_sharded(records(), flat, INPUT).stats.rows_written == 10


def test_cel_sharded_categorical_and_direct(tmp_path, cache_dir):
    rows = [{"id": i, "region": ["ap", "eu", "us"][i % 3], "payload": f"c{i}".encode()} for i in range(30)]
    inp = PythonRecordInput(key_fn=lambda r: r["id"], value_fn=lambda r: r["payload"], columns_fn=lambda r: {"region": r["region"]})
    config = CelShardedWriteConfig(
        cel_expr="region", cel_columns={"region": "string"}, routing_values=["ap", "eu", "us"], s3_prefix=str(tmp_path / "cat")
    )
    result = write_cel_sharded(rows, config, inp)
    assert [(w.db_id, w.row_count) for w in result.winners] == [(0, 10), (1, 10), (2, 10)]
    with shardforge.Reader(str(tmp_path / "cat" / "_CURRENT"), cache_dir=cache_dir) as reader:
        assert reader.get(4, routing_context={"region": "eu"}) == b"c4"
    direct = CelShardedWriteConfig(cel_expr="key % 2", cel_columns={"key": "int"}, s3_prefix=str(tmp_path / "direct"))
    result = write_cel_sharded(records(10), direct, INPUT)
    assert [(w.db_id, w.row_count) for w in result.winners] == [(0, 5), (1, 5)]


def test_config_errors_are_the_references():
    with pytest.raises(ConfigValidationError):
        HashShardedWriteConfig(num_dbs=2, s3_prefix="s3://b/p", storage=WriterStorageConfig(s3_prefix="s3://b/q"))
    with pytest.raises(ConfigValidationError):
        HashShardedWriteConfig(s3_prefix="s3://b/p")
    with pytest.raises(ConfigValidationError):
        CelShardedWriteConfig(cel_expr="", cel_columns={}, s3_prefix="s3://b/p")
    # The reference's class, the same the compat readers raise.
    assert ConfigValidationError is shardforge.compat.ConfigValidationError
    assert issubclass(ConfigValidationError, shardforge.compat.ShardyfusionError)
    with pytest.raises(ConfigValidationError):
        write_hash_sharded(records(), HashShardedWriteConfig(num_dbs=2), INPUT)
    with pytest.raises(ConfigValidationError):
        write_hash_sharded(records(), HashShardedWriteConfig(num_dbs=2, s3_prefix="/tmp/x", key_encoding="u128"), INPUT)
