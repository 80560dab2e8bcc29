"""The root of the reference library's errors, shared by the compat
readers (``shardforge.compat``) and writer functions
(``shardforge._compat_write``), so that both raise the same classes."""

from __future__ import annotations

__all__ = ["ConfigValidationError", "ShardyfusionError"]


class ShardyfusionError(Exception):
    """Base of the reference's errors; `retryable` says whether a retry may help."""

    retryable: bool = False


class ConfigValidationError(ShardyfusionError):
    """Bad configuration or arguments."""
