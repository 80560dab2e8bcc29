"""Type stubs of the native module (the Rust crate sf-python)."""

from datetime import timedelta
from os import PathLike
from types import TracebackType
from typing import Any, Awaitable, Iterable, List, Literal, Mapping, Optional, Type, TypedDict, Union

__version__: str

Key = Union[int, str, bytes]
"""A key: ``int`` for ``u64be``/``u32be`` snapshots, ``str`` or ``bytes``
for ``utf8``/``raw`` ones (``bytes`` of the encoded width also for integer
encodings)."""

ContextValue = Union[int, float, bool, str, bytes]
Duration = Union[int, float, timedelta, str]
"""Seconds, a ``timedelta``, or text as job files write it (``"30s"``, ``"5m"``)."""
SqliteMode = Literal["auto", "download", "range", "memory"]

class RefreshStatus(TypedDict):
    last_attempt: Optional[str]
    last_success: Optional[str]
    last_error: Optional[str]
    consecutive_failures: int

class SnapshotInfo(TypedDict, total=False):
    run_id: str
    num_dbs: int
    sharding: str
    created_at: str
    manifest_ref: str
    row_count: int
    key_encoding: str
    hash_algorithm: str
    shards_in_manifest: int
    shards_open: int
    published_at: Optional[str]
    loaded_at: str
    pinned: bool
    degraded: str

class ShardInfo(TypedDict, total=False):
    db_id: int
    row_count: int
    min_key: Any
    max_key: Any
    db_url: Optional[str]
    resolved_url: Optional[str]

class Health(TypedDict, total=False):
    status: Literal["healthy", "stale"]
    manifest_ref: str
    run_id: str
    snapshot_age_seconds: float
    max_age_seconds: float
    num_shards: int
    is_closed: bool
    refresh: RefreshStatus
    degraded: str

class HistoryEntry(TypedDict):
    offset: int
    run_id: str
    published_at: str
    manifest_ref: str

class SearchHit(TypedDict):
    id: Union[int, str]
    score: float
    payload: Any
    db_id: int
    run_id: str

class Reader:
    """A reader of one snapshot prefix, by the URL of its ``_CURRENT``
    (``s3://``, ``gs://``, ``az://``, ``file://`` or a local path).

    Opening reads ``_CURRENT`` and the manifest; shards open lazily, once
    each, on first use. The GIL is released around the open and every
    read. One instance may be shared by many threads. Use as a context
    manager, or call ``close()``.
    """

    def __init__(
        self,
        current_url: str,
        *,
        cache_dir: Optional[Union[str, PathLike[str]]] = None,
        sqlite_mode: SqliteMode = "auto",
        refresh_interval: Optional[Duration] = None,
        storage_options: Optional[Mapping[str, str]] = None,
        cache_max_bytes: Optional[int] = None,
        max_concurrency: Optional[int] = None,
        memory_limit_bytes: Optional[int] = None,
        verify_checksums: bool = True,
        history_fallback: bool = True,
    ) -> None: ...
    def get(self, key: Key, *, routing_context: Optional[Mapping[str, ContextValue]] = None) -> Optional[bytes]:
        """The value of ``key``, or ``None`` when the snapshot does not hold it."""
    def multi_get(
        self, keys: Iterable[Key], *, routing_context: Optional[Mapping[str, ContextValue]] = None
    ) -> List[Optional[bytes]]:
        """The values of ``keys`` in input order (``None`` for a miss), all from one snapshot."""
    def search(
        self,
        query: Iterable[float],
        *,
        top_k: int = 10,
        num_probes: Optional[int] = None,
        shard_ids: Optional[Iterable[int]] = None,
        routing_context: Optional[Mapping[str, ContextValue]] = None,
        filter: Optional[str] = None,
    ) -> List[SearchHit]:
        """The ``top_k`` stored vectors nearest ``query``, nearest first (vector snapshots);
        ``filter`` is a CEL predicate over the payload's fields, applied before the top-k cut."""
    def route_key(self, key: Key, *, routing_context: Optional[Mapping[str, ContextValue]] = None) -> Optional[int]:
        """The db_id of the shard `key` routes to, or None for an unknown categorical token; reads nothing."""
    def info(self) -> SnapshotInfo:
        """The served snapshot."""
    def shards(self) -> List[ShardInfo]:
        """The served snapshot's non-empty shards, by ``db_id``."""
    def health(self, max_age: Optional[Duration] = None) -> Health:
        """Whether the served snapshot is younger than ``max_age`` (default 24 hours)."""
    def history(self) -> List[HistoryEntry]:
        """The prefix's manifests, newest first."""
    def refresh(self) -> bool:
        """Swaps to the snapshot ``_CURRENT`` names now; ``True`` when it changed.
        On failure the served snapshot stays and the error is raised."""
    def close(self) -> None:
        """Stops the background refresh and refuses further reads (``ConfigError``)."""
    @property
    def closed(self) -> bool: ...
    @property
    def key_encoding(self) -> Literal["u64be", "u32be", "utf8", "raw"]: ...
    @property
    def current_url(self) -> str: ...
    def __enter__(self) -> "Reader": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

class AsyncReader:
    """The reader for asyncio: open it with ``await AsyncReader.open(...)``
    (the arguments of ``Reader``); ``get``, ``multi_get``, ``search``,
    ``history``, ``refresh`` and ``close`` are awaitables running on the
    package's Rust runtime (no thread per call). One reader serves any
    number of concurrent tasks. ``async with await AsyncReader.open(...) as r:``
    closes it on exit. Calling ``AsyncReader(...)`` raises ``ConfigError``.
    """

    @staticmethod
    def open(
        current_url: str,
        *,
        cache_dir: Optional[Union[str, PathLike[str]]] = None,
        sqlite_mode: SqliteMode = "auto",
        refresh_interval: Optional[Duration] = None,
        storage_options: Optional[Mapping[str, str]] = None,
        cache_max_bytes: Optional[int] = None,
        max_concurrency: Optional[int] = None,
        memory_limit_bytes: Optional[int] = None,
        verify_checksums: bool = True,
        history_fallback: bool = True,
    ) -> Awaitable["AsyncReader"]: ...
    def get(
        self, key: Key, *, routing_context: Optional[Mapping[str, ContextValue]] = None
    ) -> Awaitable[Optional[bytes]]: ...
    def multi_get(
        self, keys: Iterable[Key], *, routing_context: Optional[Mapping[str, ContextValue]] = None
    ) -> Awaitable[List[Optional[bytes]]]: ...
    def search(
        self,
        query: Iterable[float],
        *,
        top_k: int = 10,
        num_probes: Optional[int] = None,
        shard_ids: Optional[Iterable[int]] = None,
        routing_context: Optional[Mapping[str, ContextValue]] = None,
        filter: Optional[str] = None,
    ) -> Awaitable[List[SearchHit]]: ...
    def history(self) -> Awaitable[List[HistoryEntry]]: ...
    def refresh(self) -> Awaitable[bool]: ...
    def close(self) -> Awaitable[None]: ...
    def route_key(self, key: Key, *, routing_context: Optional[Mapping[str, ContextValue]] = None) -> Optional[int]: ...
    def info(self) -> SnapshotInfo: ...
    def shards(self) -> List[ShardInfo]: ...
    def health(self, max_age: Optional[Duration] = None) -> Health: ...
    @property
    def closed(self) -> bool: ...
    @property
    def key_encoding(self) -> Literal["u64be", "u32be", "utf8", "raw"]: ...
    @property
    def current_url(self) -> str: ...
    def __aenter__(self) -> Awaitable["AsyncReader"]: ...
    def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Awaitable[bool]: ...

class Error(Exception):
    """Base of every error ShardForge raises."""

    kind: Optional[str]
    retryable: bool

class ConfigError(Error): ...
class RoutingError(Error): ...
class DataError(Error): ...
class ConflictError(Error): ...
class UnavailableError(Error): ...
class GateError(Error): ...
class InternalError(Error): ...

# Benchmark hooks (python/bench/read_bench.py): the Rust reader under a
# Reader, timed in Rust; nanoseconds per call. Not part of the API.
def _time_rust_gets(reader: Reader, keys: List[int], how: Literal["async", "now"]) -> List[int]: ...
def _time_rust_multi_gets(reader: Reader, batches: List[List[int]]) -> List[int]: ...

# Building snapshots: the native part of shardforge.write and
# shardforge.write_job (python/shardforge/_write.py holds the typed,
# documented functions and WriteResult).

def _write(
    data: Any,
    job: str,
    *,
    pairs: bool,
    rebuild: bool,
    force: bool,
    progress: Optional[Any] = None,
) -> dict:
    """Builds and publishes a snapshot of ``data`` (an Arrow stream, or with
    ``pairs`` an iterable of ``(key, value)`` pairs) with the job whose
    sections ``job`` holds as JSON; the GIL is released while it runs.
    Returns the fields of a ``WriteResult``."""

def _write_job(
    path: Union[str, "PathLike[str]"],
    overrides: List[Any],
    *,
    rebuild: bool,
    force: bool,
    progress: Optional[Any] = None,
) -> dict:
    """Runs the job file at ``path`` as ``sf-write --config`` does, with
    ``overrides`` as ``(SF_SECTION__KEY, value)`` pairs after the
    environment's. Returns the fields of a ``WriteResult``."""
