"""The reference library's reader API over ShardForge's reader.

A service written against the reference's readers switches by changing
its import::

    from shardforge.compat import ShardedReader, ConcurrentShardedReader, AsyncShardedReader

The classes take the reference's keyword arguments (``s3_prefix``,
``local_root``, ``current_pointer_key``, ``reader_factory``, ...), have its
methods with its return types (``multi_get`` returns a dict in first-seen
order with duplicates collapsed, ``refresh()`` returns a bool and keeps
the served snapshot when the new manifest is malformed, ``health()``
returns a ``ReaderHealth``) and raise its exception classes, subclassing
the same built-ins. Underneath is ``shardforge.Reader`` (or
``AsyncReader``): shards open lazily, checksums are checked, and every
reader is safe to share between threads.

Where ShardForge behaves differently on purpose (``health().manifest_age``
is the served manifest's age, not the reader's; a rate limiter is never
asked for more tokens than it holds, so it cannot hang), the names stay
and docs/python.md ("Migrating from the reference") lists each difference.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import enum
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from . import _native
from . import _compat_write
from ._compat_errors import ConfigValidationError, ShardyfusionError

# The reference's writer functions and config objects, on shardforge.write.
from ._compat_write import *  # noqa: E402,F401,F403

__all__ = [
    "AdaptiveSqliteReaderFactory",
    "AsyncAdaptiveSqliteReaderFactory",
    "AsyncShardedReader",
    "AsyncSlateDbReaderFactory",
    "AsyncSqliteRangeReaderFactory",
    "AsyncSqliteReaderFactory",
    "BridgeTimeoutError",
    "ConcurrentShardedReader",
    "ConfigValidationError",
    "DbAdapterError",
    "KeyEncoding",
    "ManifestBuildError",
    "ManifestParseError",
    "ManifestStoreError",
    "MetricEvent",
    "PoolExhaustedError",
    "PublishCurrentError",
    "PublishManifestError",
    "ReaderHealth",
    "ReaderStateError",
    "S3TransientError",
    "ShardAssignmentError",
    "ShardCoverageError",
    "ShardDetail",
    "ShardHashAlgorithm",
    "ShardWriteError",
    "ShardedReader",
    "ShardingStrategy",
    "ShardyfusionError",
    "SlateDbReaderFactory",
    "SnapshotInfo",
    "SqliteRangeReaderFactory",
    "SqliteReaderFactory",
    "ThreadSafeTokenBucket",
    "TokenBucket",
    "UnknownRoutingTokenError",
    "make_async_sqlite_reader_factory",
    "make_sqlite_reader_factory",
]
__all__ += [name for name in _compat_write.__all__ if name not in __all__]

KeyInput = Union[int, str, bytes]

_log = logging.getLogger("shardforge.compat")

# ---------------------------------------------------------------------------
# Exceptions: the reference's names, bases and `retryable` flags.
# ---------------------------------------------------------------------------


class ShardAssignmentError(ShardyfusionError):
    """A row could not be assigned to a shard."""


class ShardCoverageError(ShardyfusionError):
    """A build's shards do not cover what the routing needs."""


class DbAdapterError(ShardyfusionError):
    """A shard could not be read."""


class BridgeTimeoutError(ShardyfusionError):
    """A call across the sync/async bridge timed out."""

    retryable = True


class ManifestBuildError(ShardyfusionError):
    """A manifest could not be built."""


class PublishManifestError(ShardyfusionError):
    """A manifest could not be uploaded."""

    retryable = True


class PublishCurrentError(ShardyfusionError):
    """`_CURRENT` could not be written; `manifest_ref` names the uploaded manifest."""

    retryable = True

    def __init__(self, message: str = "", *, manifest_ref: Optional[str] = None) -> None:
        super().__init__(message)
        self.manifest_ref = manifest_ref


class ManifestParseError(ShardyfusionError):
    """A manifest is malformed."""


class ReaderStateError(ShardyfusionError):
    """The reader cannot serve: closed, not opened, or nothing published."""


class PoolExhaustedError(ShardyfusionError):
    """No pooled shard reader was free in time (never raised here: see docs/python.md)."""

    retryable = True


class ManifestStoreError(ShardyfusionError):
    """The manifest store failed."""

    retryable = True


class ShardWriteError(ShardyfusionError):
    """A shard could not be written."""

    retryable = True


class S3TransientError(ShardyfusionError):
    """Storage failed or could not be reached; often transient."""

    retryable = True


class UnknownRoutingTokenError(ValueError):
    """Categorical CEL routing gave a token the snapshot was not built with."""


# ---------------------------------------------------------------------------
# Enums and result types.
# ---------------------------------------------------------------------------


class _StrEnum(str, enum.Enum):
    @classmethod
    def from_value(cls, value: Any) -> "_StrEnum":
        if isinstance(value, cls):
            return value
        return cls(str(value).lower())

    def __str__(self) -> str:
        return str(self.value)


class KeyEncoding(_StrEnum):
    """How a snapshot stores its keys."""

    U64BE = "u64be"
    U32BE = "u32be"
    UTF8 = "utf8"
    RAW = "raw"


class ShardingStrategy(_StrEnum):
    """How a snapshot routes keys to shards."""

    HASH = "hash"
    CEL = "cel"


class ShardHashAlgorithm(_StrEnum):
    """The hash of hash routing."""

    XXH3_64 = "xxh3_64"


class MetricEvent(_StrEnum):
    """The reader events a `metrics_collector` receives (`emit(event, payload)`)."""

    READER_INITIALIZED = "reader.initialized"
    READER_GET = "reader.get"
    READER_MULTI_GET = "reader.multi_get"
    READER_REFRESHED = "reader.refreshed"
    READER_CLOSED = "reader.closed"
    RATE_LIMITER_THROTTLED = "rate_limiter.throttled"
    RATE_LIMITER_DENIED = "rate_limiter.denied"


def _frozen(cls):
    # slots=True needs Python 3.10; the package supports 3.9.
    if sys.version_info >= (3, 10):
        return dataclass(frozen=True, slots=True)(cls)
    return dataclass(frozen=True)(cls)


@_frozen
class SnapshotInfo:
    """The served snapshot (`snapshot_info()`)."""

    run_id: str
    num_dbs: int
    sharding: ShardingStrategy
    created_at: _dt.datetime
    manifest_ref: str
    row_count: int = 0
    key_encoding: KeyEncoding = KeyEncoding.U64BE
    hash_algorithm: ShardHashAlgorithm = ShardHashAlgorithm.XXH3_64


@_frozen
class ShardDetail:
    """One shard of the served snapshot (`shard_details()`)."""

    db_id: int
    row_count: int
    min_key: Union[int, float, str, bytes, None]
    max_key: Union[int, float, str, bytes, None]
    db_url: Optional[str]


@_frozen
class ReaderHealth:
    """The reader's state (`health()`). `manifest_age` is the served
    manifest's age (since its `created_at`), not the reader's."""

    status: str
    manifest_ref: str
    manifest_age: _dt.timedelta
    num_shards: int
    is_closed: bool


# ---------------------------------------------------------------------------
# Rate limiters: the reference's token buckets, without the hang.
# ---------------------------------------------------------------------------


class TokenBucket:
    """A token bucket of `rate` tokens per second, holding at most `rate`
    (it starts full). `acquire(n)` blocks until `n` tokens were taken;
    unlike the reference's, an `n` above the capacity is taken in
    installments instead of waiting forever. Not thread-safe: see
    `ThreadSafeTokenBucket`."""

    def __init__(self, rate: float, metrics_collector: Any = None, limiter_type: str = "ops") -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self._rate = float(rate)
        self._tokens = float(rate)
        self._last = time.monotonic()
        self._metrics = metrics_collector
        self._limiter_type = limiter_type

    @property
    def rate(self) -> float:
        return self._rate

    def _replenish(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._last) * self._rate)
        self._last = now

    def _take(self, tokens: float) -> float:
        """Takes `tokens` (at most the capacity) if there; else the seconds to wait."""
        self._replenish()
        if self._tokens >= tokens:
            self._tokens -= tokens
            return 0.0
        return (tokens - self._tokens) / self._rate

    def _throttled(self, wait: float) -> None:
        if self._metrics is not None:
            self._metrics.emit(
                MetricEvent.RATE_LIMITER_THROTTLED, {"wait_seconds": wait, "limiter_type": self._limiter_type}
            )

    def acquire(self, tokens: int = 1) -> None:
        for part in _installments(tokens, self._rate):
            while True:
                wait = self._take(part)
                if wait == 0.0:
                    break
                self._throttled(wait)
                time.sleep(wait)

    def try_acquire(self, tokens: int = 1) -> bool:
        """Takes `tokens` now if the bucket holds them; never blocks."""
        if tokens > self._rate:
            return False
        return self._take(tokens) == 0.0

    async def acquire_async(self, tokens: int = 1) -> None:
        for part in _installments(tokens, self._rate):
            while True:
                wait = self._take(part)
                if wait == 0.0:
                    break
                self._throttled(wait)
                await asyncio.sleep(wait)


class ThreadSafeTokenBucket(TokenBucket):
    """`TokenBucket` behind a lock, for readers shared by threads."""

    def __init__(self, rate: float, metrics_collector: Any = None, limiter_type: str = "ops") -> None:
        super().__init__(rate, metrics_collector, limiter_type)
        self._lock = threading.Lock()

    def _take(self, tokens: float) -> float:
        with self._lock:
            return super()._take(tokens)


def _installments(tokens: int, capacity: Optional[float]) -> List[int]:
    """`tokens` as parts of at most `capacity` (a bucket never holds more)."""
    if tokens <= 0:
        return []
    if capacity is None or not capacity >= 1 or tokens <= capacity:
        return [tokens]
    step = int(math.floor(capacity))
    parts = [step] * (tokens // step)
    if tokens % step:
        parts.append(tokens % step)
    return parts


def _capacity(limiter: Any) -> Optional[float]:
    """The most tokens `limiter` can hold, when it says: the reference's
    `TokenBucket` keeps its rate (= its capacity) in `_rate`."""
    for name in ("capacity", "rate", "_capacity", "_rate"):
        value = getattr(limiter, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def _acquire(limiter: Any, tokens: int) -> None:
    for part in _installments(tokens, _capacity(limiter)):
        limiter.acquire(part)


async def _acquire_async(limiter: Any, tokens: int) -> None:
    take = getattr(limiter, "acquire_async", None)
    for part in _installments(tokens, _capacity(limiter)):
        if take is not None:
            await take(part)
        else:
            await asyncio.to_thread(limiter.acquire, part)


# ---------------------------------------------------------------------------
# Reader factories: the reference's SQLite mode choice, by name.
# ---------------------------------------------------------------------------


class _ModeFactory:
    """A reader factory of the reference, standing for a read mode: the
    arguments it takes are accepted and not used (ShardForge tunes its
    modes by its own settings; see docs/reading.md)."""

    mode = "auto"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.options = kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


class SqliteReaderFactory(_ModeFactory):
    """Download mode: each shard's file is fetched into the cache and read locally."""

    mode = "download"


class SqliteRangeReaderFactory(_ModeFactory):
    """Range mode: shards are read by HTTP range requests, nothing downloaded."""

    mode = "range"


class AdaptiveSqliteReaderFactory(_ModeFactory):
    """Auto mode: ShardForge chooses download or range by the shards' sizes."""

    mode = "auto"


class SlateDbReaderFactory(_ModeFactory):
    """SlateDB shards: read natively whatever the mode."""

    mode = "auto"


class AsyncSqliteReaderFactory(SqliteReaderFactory):
    """Download mode, for `AsyncShardedReader`."""


class AsyncSqliteRangeReaderFactory(SqliteRangeReaderFactory):
    """Range mode, for `AsyncShardedReader`."""


class AsyncAdaptiveSqliteReaderFactory(AdaptiveSqliteReaderFactory):
    """Auto mode, for `AsyncShardedReader`."""


class AsyncSlateDbReaderFactory(SlateDbReaderFactory):
    """SlateDB shards, for `AsyncShardedReader`."""


_MODES = ("download", "range", "auto", "memory")


def make_sqlite_reader_factory(*, mode: str = "download", **kwargs: Any) -> _ModeFactory:
    """The factory of SQLite read mode `mode` ("download", "range", "auto" or "memory")."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
    factory = _ModeFactory(**kwargs)
    factory.mode = mode
    return factory


def make_async_sqlite_reader_factory(*, mode: str = "download", **kwargs: Any) -> _ModeFactory:
    """`make_sqlite_reader_factory` for `AsyncShardedReader`."""
    return make_sqlite_reader_factory(mode=mode, **kwargs)


# The reference's factory classes, when the caller passes its own objects.
_MODE_BY_CLASS = {
    "SqliteReaderFactory": "download",
    "AsyncSqliteReaderFactory": "download",
    "SqliteRangeReaderFactory": "range",
    "AsyncSqliteRangeReaderFactory": "range",
    "AdaptiveSqliteReaderFactory": "auto",
    "AsyncAdaptiveSqliteReaderFactory": "auto",
    "SlateDbReaderFactory": "auto",
    "AsyncSlateDbReaderFactory": "auto",
}


def _sqlite_mode(reader_factory: Any) -> str:
    if reader_factory is None:
        return "auto"
    if isinstance(reader_factory, str):
        if reader_factory not in _MODES:
            raise ValueError(f"reader_factory mode must be one of {', '.join(_MODES)}, got {reader_factory!r}")
        return reader_factory
    if isinstance(reader_factory, _ModeFactory):
        return reader_factory.mode
    mode = _MODE_BY_CLASS.get(type(reader_factory).__name__)
    if mode is None:
        raise ConfigValidationError(
            f"reader_factory {type(reader_factory).__name__} is not supported: ShardForge reads shards "
            f"natively; pass a read mode ({', '.join(_MODES)}) or one of the SQLite factories"
        )
    return mode


# ---------------------------------------------------------------------------
# Storage: s3_connection_options, credential_provider and slate_env_file as
# object_store options.
# ---------------------------------------------------------------------------


def _seconds(v: Any) -> str:
    if hasattr(v, "total_seconds"):
        v = v.total_seconds()
    return f"{float(v)}s"


def _storage_options(
    s3_connection_options: Optional[Mapping[str, Any]],
    credential_provider: Any,
    slate_env_file: Optional[str],
) -> Dict[str, str]:
    out: Dict[str, str] = {}
    if slate_env_file is not None:
        env_keys = {
            "AWS_ACCESS_KEY_ID": "aws_access_key_id",
            "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
            "AWS_SESSION_TOKEN": "aws_session_token",
            "AWS_REGION": "aws_region",
            "AWS_DEFAULT_REGION": "aws_region",
            "AWS_ENDPOINT": "aws_endpoint",
            "AWS_ENDPOINT_URL": "aws_endpoint",
            "AWS_ENDPOINT_URL_S3": "aws_endpoint",
            "AWS_ALLOW_HTTP": "aws_allow_http",
        }
        with open(slate_env_file, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#") or "=" not in line:
                    continue
                if line.startswith("export "):
                    line = line[len("export "):]
                name, _, value = line.partition("=")
                name, value = name.strip(), value.strip().strip("'\"")
                if name in env_keys:
                    out[env_keys[name]] = value
    opts = dict(s3_connection_options or {})
    endpoint = opts.get("endpoint_url")
    if endpoint:
        out["aws_endpoint"] = str(endpoint)
        if str(endpoint).startswith("http://"):
            out["aws_allow_http"] = "true"
    if opts.get("region_name"):
        out["aws_region"] = str(opts["region_name"])
    style = opts.get("addressing_style")
    if style == "path":
        out["aws_virtual_hosted_style_request"] = "false"
    elif style == "virtual":
        out["aws_virtual_hosted_style_request"] = "true"
    if opts.get("verify_ssl") is False:
        out["allow_invalid_certificates"] = "true"
    if opts.get("connect_timeout") is not None:
        out["connect_timeout"] = _seconds(opts["connect_timeout"])
    if opts.get("read_timeout") is not None:
        out["timeout"] = _seconds(opts["read_timeout"])
    if opts.get("max_attempts") is not None:
        out["max_retries"] = str(max(0, int(opts["max_attempts"]) - 1))
    if credential_provider is not None:
        creds = credential_provider.resolve()
        for attr, key in (
            ("access_key_id", "aws_access_key_id"),
            ("secret_access_key", "aws_secret_access_key"),
            ("session_token", "aws_session_token"),
        ):
            value = getattr(creds, attr, None)
            if value:
                out[key] = str(value)
    return out


# ---------------------------------------------------------------------------
# Errors: ShardForge's exceptions as the reference's.
# ---------------------------------------------------------------------------

_CLOSED = "Reader is closed"


def _key_problem(key: Any, encoding: str) -> Optional[Exception]:
    """The reference's exception for a key that does not fit `encoding`
    (routing first, then the encoding, as the reference checks them)."""
    if not isinstance(key, (int, str, bytes, bytearray)):
        return ValueError(f"Unsupported key type for hashing: {type(key)!r}")
    if isinstance(key, int) and not -(1 << 63) <= key < 1 << 64:
        return ValueError(f"Integer key {key} out of range [{-(1 << 63)}, {(1 << 63) - 1}]")
    if encoding in ("u64be", "u32be"):
        width = 8 if encoding == "u64be" else 4
        if isinstance(key, (bytes, bytearray)):
            if len(key) != width:
                return ValueError(f"{encoding} key bytes must have length {width}")
            return None
        if not isinstance(key, int):
            return ValueError(f"{encoding} key encoding requires integer lookup keys")
        if key < 0 or key >= 1 << (8 * width):
            return ConfigValidationError(f"{encoding} encoding requires value in [0, 2^{8 * width}-1]")
        return None
    if not isinstance(key, (str, bytes, bytearray)):
        return ConfigValidationError(f"{encoding} encoding expects str or bytes key, got {type(key)!r}")
    return None


def _coerced(key: Any) -> Any:
    """A key the native reader refused by type, as the reference would take
    it (`True` is the integer 1, a bytearray its bytes); None when none."""
    if isinstance(key, bool):
        return int(key)
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    return None


def _translate(e: BaseException, *, closed: bool, keys: Iterable[Any] = (), encoding: str = "") -> BaseException:
    """The reference's exception for a ShardForge failure `e`."""
    if closed:
        return ReaderStateError(_CLOSED)
    if isinstance(e, (TypeError, ValueError, _native.DataError, _native.RoutingError)):
        for k in keys:
            problem = _key_problem(k, encoding)
            if problem is not None:
                return problem
    if isinstance(e, (TypeError, ValueError)) and not isinstance(e, _native.Error):
        return ValueError(str(e))
    message = str(e)
    if isinstance(e, _native.ConfigError):
        if "is closed" in message:
            return ReaderStateError(_CLOSED)
        return ConfigValidationError(message)
    if isinstance(e, _native.DataError):
        if message.startswith("no _CURRENT"):
            return ReaderStateError("CURRENT pointer not found")
        if "needed for routing is missing" in message:
            return ValueError(f"Multi-column CEL sharding requires routing_context: {message}")
        if "manifest" in message:
            return ManifestParseError(message)
        return DbAdapterError(message)
    if isinstance(e, _native.RoutingError):
        return ValueError(message)
    if isinstance(e, _native.UnavailableError):
        return S3TransientError(message)
    if isinstance(e, _native.Error):
        return ShardyfusionError(message)
    return e


# ---------------------------------------------------------------------------
# Conversions of the native reader's reports.
# ---------------------------------------------------------------------------


def _timestamp(text: str) -> _dt.datetime:
    # RFC 3339 in UTC, e.g. 2026-11-20T23:48:07.686971Z (fromisoformat takes
    # a "Z" from Python 3.11 on only).
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return _dt.datetime.fromisoformat(text)


def _bound(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("hex:"):
        return bytes.fromhex(value[4:])
    return value


def _snapshot_info(info: Mapping[str, Any]) -> SnapshotInfo:
    return SnapshotInfo(
        run_id=info["run_id"],
        num_dbs=info["num_dbs"],
        sharding=ShardingStrategy.from_value(info["sharding"]),
        created_at=_timestamp(info["created_at"]),
        manifest_ref=info["manifest_ref"],
        row_count=info["row_count"],
        key_encoding=KeyEncoding.from_value(info["key_encoding"]),
        hash_algorithm=ShardHashAlgorithm.from_value(info.get("hash_algorithm") or "xxh3_64"),
    )


def _shard_details(num_dbs: int, shards: Sequence[Mapping[str, Any]]) -> List[ShardDetail]:
    by_id = {s["db_id"]: s for s in shards}
    out = []
    for db_id in range(num_dbs):
        s = by_id.get(db_id)
        if s is None:
            out.append(ShardDetail(db_id=db_id, row_count=0, min_key=None, max_key=None, db_url=None))
        else:
            out.append(
                ShardDetail(
                    db_id=db_id,
                    row_count=s["row_count"],
                    min_key=_bound(s.get("min_key")),
                    max_key=_bound(s.get("max_key")),
                    db_url=s.get("db_url"),
                )
            )
    return out


def _health(native: Any, closed: bool, staleness_threshold: Optional[_dt.timedelta]) -> ReaderHealth:
    if closed:
        return ReaderHealth("unhealthy", "", _dt.timedelta(0), 0, True)
    report = native.health()
    age = _dt.timedelta(seconds=round(max(0.0, report["snapshot_age_seconds"]), 2))
    status = "healthy"
    if staleness_threshold is not None and age > staleness_threshold:
        status = "degraded"
    return ReaderHealth(status, report["manifest_ref"], age, native.info()["num_dbs"], False)


# ---------------------------------------------------------------------------
# The readers.
# ---------------------------------------------------------------------------


def _current_url(s3_prefix: str, current_pointer_key: str) -> str:
    if not isinstance(s3_prefix, str) or not s3_prefix:
        raise ValueError(f"Invalid S3 URL: {s3_prefix!r}")
    if current_pointer_key.strip("/") != "_CURRENT":
        raise ConfigValidationError(
            f"current_pointer_key {current_pointer_key!r} is not supported: ShardForge's pointer is always _CURRENT"
        )
    return f"{s3_prefix.rstrip('/')}/{current_pointer_key.lstrip('/')}"


def _check_common(manifest_store: Any, max_fallback_attempts: int) -> None:
    if manifest_store is not None:
        raise ConfigValidationError(
            "manifest_store is not supported: ShardForge reads _CURRENT and the manifests under s3_prefix itself"
        )
    if not isinstance(max_fallback_attempts, int) or max_fallback_attempts < 0:
        raise ValueError(f"max_fallback_attempts must be >= 0, got {max_fallback_attempts!r}")


def _native_kwargs(
    *,
    local_root: Optional[str],
    reader_factory: Any,
    slate_env_file: Optional[str],
    credential_provider: Any,
    s3_connection_options: Optional[Mapping[str, Any]],
    max_fallback_attempts: int,
    max_concurrency: Optional[int] = None,
) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = {
        "cache_dir": local_root,
        "sqlite_mode": _sqlite_mode(reader_factory),
        "history_fallback": max_fallback_attempts > 0,
    }
    options = _storage_options(s3_connection_options, credential_provider, slate_env_file)
    if options:
        kwargs["storage_options"] = options
    if max_concurrency is not None:
        kwargs["max_concurrency"] = max_concurrency
    return kwargs


def _opening_error(e: BaseException, max_fallback_attempts: int) -> BaseException:
    translated = _translate(e, closed=False)
    if isinstance(translated, ManifestParseError) and max_fallback_attempts > 0:
        return ReaderStateError("No valid manifest found after fallback")
    return translated


class ShardedReader:
    """The reference's `ShardedReader` over `shardforge.Reader`.

    Keyword arguments as the reference's: `s3_prefix` (any URL ShardForge
    reads: `s3://`, `gs://`, `az://`, `file://` or a local folder) and
    `current_pointer_key` name `_CURRENT`; `local_root` is the cache folder;
    `reader_factory` chooses the SQLite read mode (a mode name or one of the
    SQLite factories). Unlike the reference's, this reader is safe to share
    between threads, and shards open on first use rather than all at start.
    """

    _metadata_after_close = True

    def __init__(
        self,
        *,
        s3_prefix: str,
        local_root: Optional[str] = None,
        manifest_store: Any = None,
        current_pointer_key: str = "_CURRENT",
        reader_factory: Any = None,
        slate_env_file: Optional[str] = None,
        credential_provider: Any = None,
        s3_connection_options: Optional[Mapping[str, Any]] = None,
        max_workers: Optional[int] = None,
        max_fallback_attempts: int = 3,
        metrics_collector: Any = None,
        rate_limiter: Any = None,
    ) -> None:
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        _check_common(manifest_store, max_fallback_attempts)
        self._closed = True  # until opened, for __del__ and close()
        kwargs = _native_kwargs(
            local_root=local_root,
            reader_factory=reader_factory,
            slate_env_file=slate_env_file,
            credential_provider=credential_provider,
            s3_connection_options=s3_connection_options,
            max_fallback_attempts=max_fallback_attempts,
        )
        try:
            self._native = _native.Reader(_current_url(s3_prefix, current_pointer_key), **kwargs)
        except _native.Error as e:
            raise _opening_error(e, max_fallback_attempts) from e
        self._closed = False
        self._encoding = self._native.key_encoding
        self._get = self._native.get
        self._metrics = metrics_collector
        self._rate_limiter = rate_limiter
        self._plain = metrics_collector is None and rate_limiter is None
        self._emit(MetricEvent.READER_INITIALIZED, {})

    # -- lookups ---------------------------------------------------------

    def get(self, key: KeyInput, *, routing_context: Optional[Dict[str, object]] = None) -> Optional[bytes]:
        """The value of `key`, or None (a miss, or an unknown categorical CEL token)."""
        if self._plain and routing_context is None:
            try:
                return self._get(key)
            except Exception as e:
                return self._get_failed(e, key, None)
        return self._get_slow(key, routing_context)

    def _get_slow(self, key: KeyInput, routing_context: Optional[Dict[str, object]]) -> Optional[bytes]:
        if self._closed:
            raise ReaderStateError(_CLOSED)
        if self._rate_limiter is not None:
            _acquire(self._rate_limiter, 1)
        started = time.perf_counter()
        try:
            value = self._get(key, routing_context=routing_context)
        except Exception as e:
            value = self._get_failed(e, key, routing_context)
        self._emit(
            MetricEvent.READER_GET,
            {"duration_ms": int((time.perf_counter() - started) * 1000), "found": value is not None},
        )
        return value

    def _get_failed(self, e: Exception, key: Any, routing_context: Any) -> Optional[bytes]:
        again = None if self._closed else _coerced(key)
        if again is not None:
            try:
                return self._get(again, routing_context=routing_context)
            except Exception as e2:
                e = e2
        raise _translate(e, closed=self._closed, keys=(key,), encoding=self._encoding) from e

    def multi_get(
        self, keys: Sequence[KeyInput], *, routing_context: Optional[Dict[str, object]] = None
    ) -> Dict[KeyInput, Optional[bytes]]:
        """The values of `keys` as a dict in first-seen order, duplicates
        collapsed, None for each miss; every value from one snapshot."""
        if self._closed:
            raise ReaderStateError(_CLOSED)
        key_list = list(keys)
        if self._rate_limiter is not None:
            _acquire(self._rate_limiter, len(key_list))
        started = time.perf_counter()
        unique = list(dict.fromkeys(key_list))
        try:
            values = self._native.multi_get(unique, routing_context=routing_context)
        except Exception as e:
            values = self._multi_get_failed(e, unique, routing_context)
        out = dict(zip(unique, values))
        self._emit(
            MetricEvent.READER_MULTI_GET,
            {"duration_ms": int((time.perf_counter() - started) * 1000), "num_keys": len(key_list)},
        )
        return out

    def _multi_get_failed(self, e: Exception, unique: List[Any], routing_context: Any) -> List[Optional[bytes]]:
        if not self._closed and any(_coerced(k) is not None for k in unique):
            fixed = [k if _coerced(k) is None else _coerced(k) for k in unique]
            try:
                return self._native.multi_get(fixed, routing_context=routing_context)
            except Exception as e2:
                e = e2
        raise _translate(e, closed=self._closed, keys=unique, encoding=self._encoding) from e

    # -- snapshot -----------------------------------------------------------

    def refresh(self) -> bool:
        """Reads `_CURRENT` and swaps to the snapshot it names: True when the
        reader now serves another manifest, False when it had not moved or
        its new manifest is malformed (the served snapshot stays)."""
        if self._closed:
            raise ReaderStateError(_CLOSED)
        try:
            changed = self._native.refresh()
        except _native.Error as e:
            changed = _refresh_failed(e, self._closed)
        self._emit(MetricEvent.READER_REFRESHED, {"changed": changed})
        return changed

    def _check_metadata(self) -> None:
        if self._closed and not self._metadata_after_close:
            raise ReaderStateError(_CLOSED)

    @property
    def key_encoding(self) -> KeyEncoding:
        return KeyEncoding.from_value(self._encoding)

    def snapshot_info(self) -> SnapshotInfo:
        self._check_metadata()
        return _snapshot_info(self._native.info())

    def shard_details(self) -> List[ShardDetail]:
        """Every shard of the served snapshot, `num_dbs` entries (empty ones
        with `row_count` 0 and no `db_url`)."""
        self._check_metadata()
        return _shard_details(self._native.info()["num_dbs"], self._native.shards())

    def route_key(self, key: KeyInput, *, routing_context: Optional[Dict[str, object]] = None) -> int:
        """The db_id of the shard `key` routes to; an unknown categorical
        token raises `UnknownRoutingTokenError` (a `ValueError`)."""
        self._check_metadata()
        try:
            db_id = self._native.route_key(key, routing_context=routing_context)
        except Exception as e:
            raise _translate(e, closed=False, keys=(key,), encoding=self._encoding) from e
        if db_id is None:
            raise UnknownRoutingTokenError(f"key {key!r} routes to a categorical token the snapshot does not have")
        return db_id

    def shard_for_key(self, key: KeyInput, *, routing_context: Optional[Dict[str, object]] = None) -> ShardDetail:
        """The shard `key` routes to (a `ShardDetail`, where the reference
        returns its manifest row)."""
        return self.shard_details()[self.route_key(key, routing_context=routing_context)]

    def shards_for_keys(self, keys: Sequence[KeyInput]) -> Dict[KeyInput, ShardDetail]:
        details = self.shard_details()
        return {k: details[self.route_key(k)] for k in keys}

    def health(self, *, staleness_threshold: Optional[_dt.timedelta] = None) -> ReaderHealth:
        """"healthy", "degraded" (the served manifest is older than
        `staleness_threshold`) or "unhealthy" (closed)."""
        return _health(self._native, self._closed, staleness_threshold)

    # -- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """Stops serving; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._native.close()
        self._emit(MetricEvent.READER_CLOSED, {"num_handles": 0})

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _emit(self, event: MetricEvent, payload: Dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.emit(event, payload)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._native.current_url!r}, closed={self._closed})"


def _refresh_failed(e: BaseException, closed: bool) -> bool:
    translated = _translate(e, closed=closed)
    if isinstance(translated, (ManifestParseError, DbAdapterError)):
        _log.warning("refresh kept the served snapshot: %s", e)
        return False
    raise translated from e


class ConcurrentShardedReader(ShardedReader):
    """The reference's thread-safe reader. Every ShardForge reader is safe
    to share between threads, so `thread_safety` ("lock" or "pool") and
    `pool_checkout_timeout` are checked as the reference checks them and
    change nothing; `PoolExhaustedError` is never raised. After `close()`,
    `snapshot_info`, `shard_details` and `route_key` raise
    `ReaderStateError`, as the reference's do."""

    _metadata_after_close = False

    def __init__(
        self,
        *,
        s3_prefix: str,
        local_root: Optional[str] = None,
        manifest_store: Any = None,
        current_pointer_key: str = "_CURRENT",
        reader_factory: Any = None,
        slate_env_file: Optional[str] = None,
        credential_provider: Any = None,
        s3_connection_options: Optional[Mapping[str, Any]] = None,
        max_workers: Optional[int] = None,
        thread_safety: str = "lock",
        pool_checkout_timeout: _dt.timedelta = _dt.timedelta(seconds=30),
        max_fallback_attempts: int = 3,
        metrics_collector: Any = None,
        rate_limiter: Any = None,
    ) -> None:
        if thread_safety not in ("lock", "pool"):
            raise ValueError(f"thread_safety must be 'lock' or 'pool', got {thread_safety!r}")
        if pool_checkout_timeout.total_seconds() <= 0:
            raise ValueError("pool_checkout_timeout must be > 0")
        self.thread_safety = thread_safety
        super().__init__(
            s3_prefix=s3_prefix,
            local_root=local_root,
            manifest_store=manifest_store,
            current_pointer_key=current_pointer_key,
            reader_factory=reader_factory,
            slate_env_file=slate_env_file,
            credential_provider=credential_provider,
            s3_connection_options=s3_connection_options,
            max_workers=max_workers,
            max_fallback_attempts=max_fallback_attempts,
            metrics_collector=metrics_collector,
            rate_limiter=rate_limiter,
        )
        self._close_lock = threading.Lock()

    def close(self) -> None:
        with self._close_lock:
            super().close()


_NOT_OPEN = "Reader not yet initialized (use open())"


class AsyncShardedReader:
    """The reference's asyncio reader over `shardforge.AsyncReader`.

    `AsyncShardedReader(...)` does no I/O; `await AsyncShardedReader.open(...)`
    (the same keyword arguments) returns an opened reader::

        async with await AsyncShardedReader.open(s3_prefix=..., local_root=...) as reader:
            value = await reader.get(42)

    `get`, `multi_get`, `refresh` and `close` are coroutines; the others
    answer at once. The lookups are Rust futures on the package's runtime,
    no thread per call.
    """

    def __init__(
        self,
        *,
        s3_prefix: str,
        local_root: Optional[str] = None,
        manifest_store: Any = None,
        current_pointer_key: str = "_CURRENT",
        reader_factory: Any = None,
        slate_env_file: Optional[str] = None,
        credential_provider: Any = None,
        s3_connection_options: Optional[Mapping[str, Any]] = None,
        max_concurrency: Optional[int] = None,
        max_fallback_attempts: int = 3,
        metrics_collector: Any = None,
        rate_limiter: Any = None,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        _check_common(manifest_store, max_fallback_attempts)
        self._url = _current_url(s3_prefix, current_pointer_key)
        self._max_fallback_attempts = max_fallback_attempts
        self._kwargs = _native_kwargs(
            local_root=local_root,
            reader_factory=reader_factory,
            slate_env_file=slate_env_file,
            credential_provider=credential_provider,
            s3_connection_options=s3_connection_options,
            max_fallback_attempts=max_fallback_attempts,
            max_concurrency=max_concurrency,
        )
        self._metrics = metrics_collector
        self._rate_limiter = rate_limiter
        self._native: Any = None
        self._encoding = ""
        self._closed = False

    @classmethod
    async def open(cls, **kwargs: Any) -> "AsyncShardedReader":
        """Opens a reader: reads `_CURRENT` and the manifest."""
        reader = cls(**kwargs)
        try:
            reader._native = await _native.AsyncReader.open(reader._url, **reader._kwargs)
        except _native.Error as e:
            raise _opening_error(e, reader._max_fallback_attempts) from e
        reader._encoding = reader._native.key_encoding
        reader._emit(MetricEvent.READER_INITIALIZED, {})
        return reader

    def _opened(self) -> Any:
        if self._native is None:
            raise ReaderStateError(_NOT_OPEN)
        if self._closed:
            raise ReaderStateError(_CLOSED)
        return self._native

    async def get(self, key: KeyInput, *, routing_context: Optional[Dict[str, object]] = None) -> Optional[bytes]:
        native = self._opened()
        if self._rate_limiter is not None:
            await _acquire_async(self._rate_limiter, 1)
        started = time.perf_counter()
        try:
            value = await native.get(key, routing_context=routing_context)
        except Exception as e:
            again = _coerced(key)
            if again is None or self._closed:
                raise _translate(e, closed=self._closed, keys=(key,), encoding=self._encoding) from e
            try:
                value = await native.get(again, routing_context=routing_context)
            except Exception as e2:
                raise _translate(e2, closed=self._closed, keys=(key,), encoding=self._encoding) from e2
        self._emit(
            MetricEvent.READER_GET,
            {"duration_ms": int((time.perf_counter() - started) * 1000), "found": value is not None},
        )
        return value

    async def multi_get(
        self, keys: Sequence[KeyInput], *, routing_context: Optional[Dict[str, object]] = None
    ) -> Dict[KeyInput, Optional[bytes]]:
        native = self._opened()
        key_list = list(keys)
        if self._rate_limiter is not None:
            await _acquire_async(self._rate_limiter, len(key_list))
        started = time.perf_counter()
        unique = list(dict.fromkeys(key_list))
        fixed = [k if _coerced(k) is None else _coerced(k) for k in unique]
        try:
            values = await native.multi_get(fixed, routing_context=routing_context)
        except Exception as e:
            raise _translate(e, closed=self._closed, keys=unique, encoding=self._encoding) from e
        self._emit(
            MetricEvent.READER_MULTI_GET,
            {"duration_ms": int((time.perf_counter() - started) * 1000), "num_keys": len(key_list)},
        )
        return dict(zip(unique, values))

    async def refresh(self) -> bool:
        native = self._opened()
        try:
            changed = await native.refresh()
        except _native.Error as e:
            changed = _refresh_failed(e, self._closed)
        self._emit(MetricEvent.READER_REFRESHED, {"changed": changed})
        return changed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._native is not None:
            await self._native.close()
            self._emit(MetricEvent.READER_CLOSED, {"num_handles": 0})

    @property
    def key_encoding(self) -> KeyEncoding:
        if self._native is None:
            raise ReaderStateError(_NOT_OPEN)
        return KeyEncoding.from_value(self._encoding)

    def snapshot_info(self) -> SnapshotInfo:
        return _snapshot_info(self._opened().info())

    def shard_details(self) -> List[ShardDetail]:
        native = self._opened()
        return _shard_details(native.info()["num_dbs"], native.shards())

    def route_key(self, key: KeyInput, *, routing_context: Optional[Dict[str, object]] = None) -> int:
        native = self._opened()
        try:
            db_id = native.route_key(key, routing_context=routing_context)
        except Exception as e:
            raise _translate(e, closed=False, keys=(key,), encoding=self._encoding) from e
        if db_id is None:
            raise UnknownRoutingTokenError(f"key {key!r} routes to a categorical token the snapshot does not have")
        return db_id

    def shard_for_key(self, key: KeyInput, *, routing_context: Optional[Dict[str, object]] = None) -> ShardDetail:
        return self.shard_details()[self.route_key(key, routing_context=routing_context)]

    def shards_for_keys(self, keys: Sequence[KeyInput]) -> Dict[KeyInput, ShardDetail]:
        details = self.shard_details()
        return {k: details[self.route_key(k)] for k in keys}

    def health(self, *, staleness_threshold: Optional[_dt.timedelta] = None) -> ReaderHealth:
        if self._native is None:
            raise ReaderStateError(_NOT_OPEN)
        return _health(self._native, self._closed, staleness_threshold)

    async def __aenter__(self) -> "AsyncShardedReader":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _emit(self, event: MetricEvent, payload: Dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.emit(event, payload)

    def __repr__(self) -> str:
        return f"AsyncShardedReader({self._url!r}, opened={self._native is not None}, closed={self._closed})"
