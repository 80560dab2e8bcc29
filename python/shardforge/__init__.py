"""ShardForge for Python: read sharded key-value snapshots in process.

``Reader`` serves ``get`` and ``multi_get`` from a published snapshot with
ShardForge's Rust reader (lazy shard opens, checksum checks, background
refresh); the GIL is released around every read, and one reader may be
shared by many threads. Failures raise ``Error`` or one of its subclasses,
one per class of failure (``ConfigError``, ``RoutingError``, ``DataError``,
``ConflictError``, ``UnavailableError``, ``GateError``, ``InternalError``).

See docs/python.md in the ShardForge repository.
"""

from ._native import (
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
