"""The reference's plain-Python writer functions on ShardForge's build.

``write_hash_sharded`` and ``write_cel_sharded`` take the reference's
arguments (an iterable of records, a ``HashShardedWriteConfig`` or
``CelShardedWriteConfig`` with its nested or flat fields, a
``PythonRecordInput`` of callbacks, ``PythonWriteOptions``) and return its
``BuildResult``; the build itself is ``shardforge.write``'s (the embedded
``sf-write`` build: routing in Rust, sorted shards, checksums, gates).
``shardforge.compat`` re-exports these names.

Differences, where ShardForge keeps the names and does better or other:

- the prefix may be a local path or any object-store URL, not only
  ``s3://bucket/prefix``;
- the default backend is SQLite; an ``adapter_factory`` whose class name
  mentions SlateDB selects SlateDB shards; other factories, custom manifest
  stores and run registries are Python objects the Rust build cannot call,
  and are refused with ``ConfigValidationError``;
- ``max_writes_per_second``/``max_write_bytes_per_second`` limit each shard
  attempt (the reference shares one bucket across the process's shards);
- ``parallel`` and the queue, shared-memory and buffering options are
  accepted and ignored: the build is parallel and bounded on its own;
- keys are sorted within each shard; duplicates keep the last row and are
  counted in ``rows_written`` as the reference counts them;
- metrics collectors are not called.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from ._compat_errors import ConfigValidationError
from ._write import ArgumentError, write

__all__ = [
    "BuildDurations",
    "BuildResult",
    "BuildStats",
    "BufferingOptions",
    "CelShardedWriteConfig",
    "CelShardingConfig",
    "ConfigValidationError",
    "HashShardedWriteConfig",
    "HashShardingConfig",
    "KeyValueWriteConfig",
    "KvWriteRateLimitConfig",
    "PythonRecordInput",
    "PythonWriteOptions",
    "RequiredShardMeta",
    "RetryConfig",
    "SharedMemoryOptions",
    "WriterLifecycleConfig",
    "WriterManifestConfig",
    "WriterObservabilityConfig",
    "WriterOutputConfig",
    "WriterRetryConfig",
    "WriterStorageConfig",
    "write_cel_sharded",
    "write_hash_sharded",
]


# --- the reference's config objects (same names, fields and defaults) ---


@dataclass
class RetryConfig:
    max_retries: int = 3
    initial_backoff: timedelta = timedelta(seconds=1)
    backoff_multiplier: float = 2.0


@dataclass
class WriterStorageConfig:
    s3_prefix: str = ""
    credential_provider: Any = None
    s3_connection_options: Optional[Mapping[str, Any]] = None


@dataclass
class WriterOutputConfig:
    run_id: Optional[str] = None
    db_path_template: str = "db={db_id:05d}"
    shard_prefix: str = "shards"
    run_registry_prefix: str = "runs"
    local_root: str = field(default_factory=lambda: f"{tempfile.gettempdir()}/shardyfusion")


@dataclass
class WriterManifestConfig:
    store: Any = None
    custom_manifest_fields: Dict[str, Any] = field(default_factory=dict)
    credential_provider: Any = None
    s3_connection_options: Optional[Mapping[str, Any]] = None


@dataclass
class KeyValueWriteConfig:
    key_encoding: Any = "u64be"
    batch_size: int = 50_000
    adapter_factory: Any = None
    profile_value_sizes_for_page_size: bool = False


@dataclass
class HashShardingConfig:
    num_dbs: Optional[int] = None
    max_keys_per_shard: Optional[int] = None


@dataclass
class CelShardingConfig:
    cel_expr: str = ""
    cel_columns: Dict[str, str] = field(default_factory=dict)
    routing_values: Optional[List[Any]] = None
    infer_routing_values_from_data: bool = False


@dataclass
class WriterRetryConfig:
    shard_retry: Optional[RetryConfig] = None


@dataclass
class KvWriteRateLimitConfig:
    max_writes_per_second: Optional[float] = None
    max_write_bytes_per_second: Optional[float] = None


@dataclass
class WriterObservabilityConfig:
    metrics_collector: Any = None


@dataclass
class WriterLifecycleConfig:
    run_registry: Any = None


@dataclass
class SharedMemoryOptions:
    max_total_bytes: int = 256 * 1024 * 1024
    max_bytes_per_worker: int = 32 * 1024 * 1024


@dataclass
class BufferingOptions:
    max_total_batched_items: Optional[int] = None
    max_total_batched_bytes: Optional[int] = None


@dataclass
class PythonWriteOptions:
    parallel: bool = False
    max_queue_size: int = 100
    shared_memory: SharedMemoryOptions = field(default_factory=SharedMemoryOptions)
    buffering: BufferingOptions = field(default_factory=BufferingOptions)


@dataclass
class PythonRecordInput:
    key_fn: Callable[[Any], Any]
    value_fn: Callable[[Any], bytes]
    columns_fn: Optional[Callable[[Any], Optional[Dict[str, Any]]]] = None
    vector_fn: Optional[Callable[[Any], Any]] = None


# Flat aliases of the nested sections: (section, its class, its field).
_FLAT = {
    "s3_prefix": ("storage", WriterStorageConfig, "s3_prefix"),
    "credential_provider": ("storage", WriterStorageConfig, "credential_provider"),
    "s3_connection_options": ("storage", WriterStorageConfig, "s3_connection_options"),
    "key_encoding": ("kv", KeyValueWriteConfig, "key_encoding"),
    "batch_size": ("kv", KeyValueWriteConfig, "batch_size"),
    "adapter_factory": ("kv", KeyValueWriteConfig, "adapter_factory"),
    "metrics_collector": ("observability", WriterObservabilityConfig, "metrics_collector"),
    "run_registry": ("lifecycle", WriterLifecycleConfig, "run_registry"),
    "shard_retry": ("retry", WriterRetryConfig, "shard_retry"),
    "max_writes_per_second": ("rate_limits", KvWriteRateLimitConfig, "max_writes_per_second"),
    "max_write_bytes_per_second": ("rate_limits", KvWriteRateLimitConfig, "max_write_bytes_per_second"),
    "vector_spec": ("vector", None, None),
}
_SECTIONS = {
    "storage": WriterStorageConfig,
    "output": WriterOutputConfig,
    "manifest": WriterManifestConfig,
    "kv": KeyValueWriteConfig,
    "retry": WriterRetryConfig,
    "rate_limits": KvWriteRateLimitConfig,
    "observability": WriterObservabilityConfig,
    "lifecycle": WriterLifecycleConfig,
}


class BaseShardedWriteConfig:
    """The reference's base write config: nested sections (``storage``,
    ``output``, ``manifest``, ``kv``, ``retry``, ``rate_limits``,
    ``observability``, ``lifecycle``, ``vector``) or their flat aliases
    (``s3_prefix``, ``key_encoding``, ``batch_size``, ...), never both."""

    def __init__(self, *, shard_id_col: str = "_shard_id", vector: Any = None, **kwargs: Any) -> None:
        self.shard_id_col = shard_id_col
        self.vector = vector
        nested = {name: kwargs.pop(name, None) for name in _SECTIONS}
        flat = {name: kwargs.pop(name) for name in list(kwargs) if name in _FLAT}
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(kwargs))}")
        given = {name for name, value in nested.items() if value is not None}
        for name, value in flat.items():
            section, cls, attr = _FLAT[name]
            if section == "vector":
                if vector is not None:
                    raise ConfigValidationError("vector and vector_spec are both set")
                self.vector = value
                continue
            if section in given:
                raise ConfigValidationError(f"{name} is set both flat and in {section}")
            if nested[section] is None:
                nested[section] = cls()
            setattr(nested[section], attr, value)
        for name, cls in _SECTIONS.items():
            setattr(self, name, nested[name] if nested[name] is not None else cls())

    @property
    def s3_prefix(self) -> str:
        return self.storage.s3_prefix

    @property
    def key_encoding(self) -> Any:
        return self.kv.key_encoding

    @property
    def batch_size(self) -> int:
        return self.kv.batch_size


class HashShardedWriteConfig(BaseShardedWriteConfig):
    """Hash sharding: ``num_dbs`` or ``max_keys_per_shard`` (exactly one),
    flat or as ``sharding=HashShardingConfig(...)``."""

    def __init__(
        self,
        *,
        sharding: Optional[HashShardingConfig] = None,
        num_dbs: Optional[int] = None,
        max_keys_per_shard: Optional[int] = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if sharding is not None and (num_dbs is not None or max_keys_per_shard is not None):
            raise ConfigValidationError("sharding is set with num_dbs or max_keys_per_shard")
        self.sharding = sharding or HashShardingConfig(num_dbs=num_dbs, max_keys_per_shard=max_keys_per_shard)
        if (self.sharding.num_dbs is None) == (self.sharding.max_keys_per_shard is None):
            raise ConfigValidationError("exactly one of num_dbs and max_keys_per_shard must be set")

    @property
    def num_dbs(self) -> Optional[int]:
        return self.sharding.num_dbs


class CelShardedWriteConfig(BaseShardedWriteConfig):
    """CEL sharding: ``cel_expr`` over ``cel_columns``, categorical with
    ``routing_values`` (or inferred from the data), else direct (the
    expression's value is the shard id)."""

    def __init__(
        self,
        *,
        sharding: Optional[CelShardingConfig] = None,
        cel_expr: Optional[str] = None,
        cel_columns: Optional[Dict[str, str]] = None,
        routing_values: Optional[List[Any]] = None,
        infer_routing_values_from_data: bool = False,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        flat = cel_expr is not None or cel_columns is not None or routing_values is not None or infer_routing_values_from_data
        if sharding is not None and flat:
            raise ConfigValidationError("sharding is set with flat CEL fields")
        self.sharding = sharding or CelShardingConfig(
            cel_expr=cel_expr or "",
            cel_columns=dict(cel_columns or {}),
            routing_values=routing_values,
            infer_routing_values_from_data=infer_routing_values_from_data,
        )
        if not self.sharding.cel_expr or not self.sharding.cel_columns:
            raise ConfigValidationError("cel_expr and cel_columns are required")


# --- the reference's result object ---


@dataclass
class BuildDurations:
    sharding_ms: int = 0
    write_ms: int = 0
    manifest_ms: int = 0
    total_ms: int = 0


@dataclass
class BuildStats:
    durations: BuildDurations = field(default_factory=BuildDurations)
    num_attempt_results: int = 0
    num_winners: int = 0
    rows_written: int = 0


@dataclass
class RequiredShardMeta:
    db_id: int
    db_url: Optional[str]
    attempt: Optional[int]
    row_count: int
    db_bytes: Optional[int] = None
    min_key: Any = None
    max_key: Any = None
    checkpoint_id: Optional[str] = None
    writer_info: Dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildResult:
    run_id: str
    winners: List[RequiredShardMeta]
    manifest_ref: str
    stats: BuildStats
    run_record_ref: Optional[str] = None


# --- the functions ---


def _value(v: Any) -> Any:
    return getattr(v, "value", v)


def _storage_options(config: BaseShardedWriteConfig) -> Dict[str, str]:
    out: Dict[str, str] = {}
    options = dict(config.storage.s3_connection_options or {})
    if options.get("endpoint_url"):
        out["endpoint"] = str(options["endpoint_url"])
        if str(options["endpoint_url"]).startswith("http://"):
            out["allow_http"] = "true"
    if options.get("region_name"):
        out["region"] = str(options["region_name"])
    if options.get("addressing_style") == "virtual":
        out["virtual_hosted_style_request"] = "true"
    provider = config.storage.credential_provider
    if provider is not None:
        creds = provider.resolve()
        out["access_key_id"] = creds.access_key_id
        out["secret_access_key"] = creds.secret_access_key
        if getattr(creds, "session_token", None):
            out["token"] = creds.session_token
    return out


def _common(config: BaseShardedWriteConfig) -> Dict[str, Any]:
    """``shardforge.write``'s arguments from the reference's config."""
    if config.manifest.store is not None:
        raise ConfigValidationError("manifest.store: ShardForge publishes to the prefix itself; a Python manifest store cannot be used")
    if config.lifecycle.run_registry is not None:
        raise ConfigValidationError("run_registry: ShardForge writes its run records under the prefix; a Python run registry cannot be used")
    if config.vector is not None:
        raise ConfigValidationError("vector: use shardforge.write with vector={...} for vector snapshots")
    if config.manifest.custom_manifest_fields:
        raise ConfigValidationError("custom_manifest_fields are not written by ShardForge's build")
    if config.kv.profile_value_sizes_for_page_size:
        raise ConfigValidationError("profile_value_sizes_for_page_size is not supported")
    factory = config.kv.adapter_factory
    backend = "sqlite"
    if factory is not None:
        name = type(factory).__name__.lower()
        if "slate" in name:
            backend = "slatedb"
        elif "sqlite" not in name:
            raise ConfigValidationError(f"adapter_factory {type(factory).__name__}: only SQLite and SlateDB shards are built")
    prefix = config.storage.s3_prefix
    if not prefix:
        raise ConfigValidationError("s3_prefix is required")
    write_section: Dict[str, Any] = {"batch_size": int(config.kv.batch_size)}
    if config.rate_limits.max_writes_per_second is not None:
        write_section["max_writes_per_second"] = float(config.rate_limits.max_writes_per_second)
    if config.rate_limits.max_write_bytes_per_second is not None:
        write_section["max_write_bytes_per_second"] = float(config.rate_limits.max_write_bytes_per_second)
    retry = config.retry.shard_retry
    if retry is not None:
        write_section["shard_retries"] = int(retry.max_retries)
        write_section["retry_backoff_ms"] = int(retry.initial_backoff.total_seconds() * 1000)
    return {
        "prefix": prefix,
        "backend": backend,
        "key_encoding": str(_value(config.kv.key_encoding)),
        "run_id": config.output.run_id,
        "write": write_section,
        "storage_options": _storage_options(config),
    }


def _build_result(result: Any, storage_options: Dict[str, str]) -> BuildResult:
    from ._native import Reader

    winners: List[RequiredShardMeta] = []
    with Reader(result.current_url, storage_options=storage_options or None) as reader:
        for s in reader.shards():
            if s.get("row_count", 0) > 0:
                winners.append(
                    RequiredShardMeta(
                        db_id=s["db_id"],
                        db_url=s.get("db_url"),
                        attempt=None,
                        row_count=s["row_count"],
                        min_key=s.get("min_key"),
                        max_key=s.get("max_key"),
                    )
                )
    times = result.times or {}

    def ms(name: str) -> int:
        return int(round((times.get(name) or 0.0) * 1000))

    return BuildResult(
        run_id=result.run_id,
        winners=winners,
        manifest_ref=result.manifest_url,
        stats=BuildStats(
            durations=BuildDurations(sharding_ms=ms("plan"), write_ms=ms("write"), manifest_ms=ms("publish"), total_ms=ms("total")),
            num_attempt_results=result.shards_written + result.retries,
            num_winners=len(winners),
            rows_written=result.rows + result.duplicates,
        ),
    )


def _pairs(records: Iterable[Any], input: PythonRecordInput) -> Iterable[Any]:
    for record in records:
        yield input.key_fn(record), input.value_fn(record)


def _write(records: Iterable[Any], config: BaseShardedWriteConfig, **kwargs: Any) -> BuildResult:
    args = _common(config)
    args.update(kwargs)
    try:
        result = write(records, **args)
    except ArgumentError as e:
        raise ConfigValidationError(str(e)) from None
    return _build_result(result, args["storage_options"])


def write_hash_sharded(
    records: Iterable[Any],
    config: HashShardedWriteConfig,
    input: PythonRecordInput,
    options: Optional[PythonWriteOptions] = None,
) -> BuildResult:
    """Writes ``records`` hash-sharded (xxh3 of each ``input.key_fn(record)``)
    into ``config.num_dbs`` shards (or as many as ``max_keys_per_shard``
    needs), each value ``input.value_fn(record)``, and publishes the
    snapshot. Returns the reference's ``BuildResult``."""
    routing: Dict[str, Any] = {}
    if config.sharding.max_keys_per_shard is not None:
        routing["max_keys_per_shard"] = int(config.sharding.max_keys_per_shard)
    return _write(_pairs(records, input), config, num_dbs=config.sharding.num_dbs, routing=routing)


_CEL_ARROW = {
    "int": "int64",
    "uint": "uint64",
    "string": "string",
    "bytes": "binary",
    "double": "float64",
    "bool": "bool_",
}


def write_cel_sharded(
    records: Iterable[Any],
    config: CelShardedWriteConfig,
    input: PythonRecordInput,
    options: Optional[PythonWriteOptions] = None,
) -> BuildResult:
    """Writes ``records`` routed by ``config.cel_expr`` over the columns
    ``input.columns_fn(record)`` returns (``{"key": key}`` without one):
    categorical with ``routing_values`` (or values inferred from the data),
    else direct. Needs PyArrow (the routing columns travel as an Arrow
    stream). Returns the reference's ``BuildResult``."""
    import pyarrow as pa

    cel = config.sharding
    columns = [c for c in cel.cel_columns if c != "key"]
    unknown = [t for t in cel.cel_columns.values() if str(t) not in _CEL_ARROW]
    if unknown:
        raise ConfigValidationError(f"cel_columns types are {', '.join(_CEL_ARROW)}, not {unknown}")

    def rows() -> Iterable[Dict[str, Any]]:
        for record in records:
            key = input.key_fn(record)
            row = {"key": key, "value": input.value_fn(record)}
            extra = input.columns_fn(record) if input.columns_fn is not None else None
            extra = extra if extra is not None else {"key": key}
            for c in columns:
                row[c] = extra.get(c)
            yield row

    it = iter(rows())
    first = next(it, None)
    key_type = pa.int64()
    if first is not None and isinstance(first["key"], str):
        key_type = pa.string()
    elif first is not None and isinstance(first["key"], (bytes, bytearray)):
        key_type = pa.binary()
    schema = pa.schema(
        [("key", key_type), ("value", pa.binary())]
        + [(c, getattr(pa, _CEL_ARROW[str(cel.cel_columns[c])])()) for c in columns]
    )

    def batches() -> Iterable[Any]:
        chunk = [first] if first is not None else []
        for row in it:
            chunk.append(row)
            if len(chunk) >= 16_384:
                yield pa.RecordBatch.from_pylist(chunk, schema=schema)
                chunk = []
        if chunk:
            yield pa.RecordBatch.from_pylist(chunk, schema=schema)

    routing: Dict[str, Any] = {
        "strategy": "cel",
        "expr": cel.cel_expr,
        "columns": {str(k): str(v) for k, v in cel.cel_columns.items()},
    }
    if cel.routing_values is not None:
        routing["routing_values"] = list(cel.routing_values)
        routing["mode"] = "categorical"
    elif cel.infer_routing_values_from_data:
        routing["mode"] = "categorical"
    else:
        routing["mode"] = "direct"
    reader = pa.RecordBatchReader.from_batches(schema, batches())
    return _write(reader, config, key="key", value="value", routing=routing)
