"""ShardForge for Python: read sharded key-value snapshots in process.

``Reader`` serves ``get`` and ``multi_get`` from a published snapshot with
ShardForge's Rust reader (lazy shard opens, checksum checks, background
refresh); the GIL is released around every read, and one reader may be
shared by many threads. ``AsyncReader`` is the same reader for asyncio
(``reader = await AsyncReader.open(url)``; its lookups are coroutines on
the package's Rust runtime, no thread per call). Failures raise ``Error`` or one of its subclasses,
one per class of failure (``ConfigError``, ``RoutingError``, ``DataError``,
``ConflictError``, ``UnavailableError``, ``GateError``, ``InternalError``).

See docs/python.md in the ShardForge repository.
"""

from ._native import (
    AsyncReader,
    ConfigError,
    ConflictError,
    DataError,
    Error,
    GateError,
    InternalError,
    Reader,
    RoutingError,
    UnavailableError,
    __version__,
)

__all__ = [
    "AsyncReader",
    "ConfigError",
    "ConflictError",
    "DataError",
    "Error",
    "GateError",
    "InternalError",
    "Reader",
    "RoutingError",
    "UnavailableError",
    "__version__",
]

# Building snapshots: write, write_job (see _write.py).
from ._write import ArgumentError, WriteResult, write, write_job  # noqa: E402

__all__ += ["ArgumentError", "WriteResult", "write", "write_job"]
