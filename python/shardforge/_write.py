"""Building snapshots from Python: ``write``, ``write_job`` and ``WriteResult``.

Both run the embedded build of ``sf-write`` in process (routing, shard
writes, retries, checksums, validation gates, the publish of the manifest
and ``_CURRENT``). The keyword arguments of ``write`` mirror the job file's
sections (docs/configuration.md); they are checked before anything is read
or written, and a bad one raises ``ArgumentError`` (a ``ConfigError`` and a
``ValueError``) naming it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from . import _native
from ._native import ConfigError

__all__ = ["ArgumentError", "WriteResult", "write", "write_job"]

ProgressCallback = Callable[[str, int, Optional[int]], Any]


class ArgumentError(ConfigError, ValueError):
    """A bad argument of ``write`` or ``write_job`` (or a job key it sets):
    raised before anything is written. ``argument`` names it."""

    argument: Optional[str] = None


@dataclass(frozen=True)
class WriteResult:
    """What a build did.

    ``outcome`` is ``"built"`` (a snapshot was published),
    ``"already_published"`` (the run id was published before; nothing was
    built, as ``sf-write`` does without ``--rebuild``) or ``"unchanged"``
    (a table job with mode ``ignore`` whose table exists).
    ``manifest_url`` is the published manifest; ``current_url`` the
    ``_CURRENT`` a ``Reader`` opens. ``shard_rows[i]`` is the rows of shard
    ``i`` (by db id) as the manifest records them. ``times`` holds the
    phases in seconds: ``plan`` (schema, routing, the routing check),
    ``write`` (all shards), ``publish`` (checksums, gates, manifest,
    ``_CURRENT``, cleanup), ``total``, and the shard tasks' ``input``,
    ``build_sum`` and ``upload_sum``, ``verify`` and ``cleanup``.
    """

    outcome: str
    prefix: str
    run_id: Optional[str] = None
    manifest_url: Optional[str] = None
    rows: int = 0
    duplicates: int = 0
    bytes: int = 0
    num_dbs: int = 0
    shards_written: int = 0
    shard_rows: Optional[List[int]] = None
    retries: int = 0
    gates: List[str] = field(default_factory=list)
    times: Dict[str, Optional[float]] = field(default_factory=dict)
    message: Optional[str] = None

    @property
    def current_url(self) -> str:
        """The ``_CURRENT`` of the prefix, as ``Reader`` takes it."""
        return self.prefix.rstrip("/") + "/_CURRENT"

    @property
    def num_shards(self) -> int:
        """Shards of the snapshot (``num_dbs``)."""
        return self.num_dbs


# Job keys (as error messages name them) to the argument that sets them,
# most specific first.
_ARGUMENT_OF = [
    ("routing.num_dbs", "num_dbs"),
    ("routing", "routing"),
    ("key_col", "key"),
    ("key_encoding", "key_encoding"),
    ("value", "value"),
    ("output.prefix", "prefix"),
    ("output.backend", "backend"),
    ("output.run_id", "run_id"),
    ("output.sqlite", "sqlite"),
    ("output.slatedb", "slatedb"),
    ("output", "prefix"),
    ("write", "write"),
    ("storage", "storage_options"),
    ("validate", "validate"),
    ("retention", "retention"),
    ("vector", "vector"),
]


def _argument_error(e: ConfigError) -> ArgumentError:
    message = str(e)
    argument = None
    for key, arg in _ARGUMENT_OF:
        if message.startswith(key) or f" {key}" in message or f"`{key}" in message:
            argument = arg
            break
    text = f"argument {argument!r}: {message}" if argument else message
    err = ArgumentError(text)
    err.argument = argument
    return err


def _bad(argument: str, why: str) -> ArgumentError:
    err = ArgumentError(f"argument {argument!r}: {why}")
    err.argument = argument
    return err


def _section(argument: str, value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _bad(argument, f"is a dict of the job file's [{argument}] keys, not {type(value).__name__}")
    return dict(value)


def _is_arrow(data: Any) -> bool:
    return hasattr(data, "__arrow_c_stream__")


def _arrowable(data: Any) -> Any:
    """``data`` itself when it exports an Arrow stream; a pandas DataFrame
    through PyArrow; else ``None`` (an iterable of pairs, or nothing)."""
    if _is_arrow(data):
        return data
    module = type(data).__module__ or ""
    if module.startswith("pandas") and type(data).__name__ == "DataFrame":
        import pyarrow  # noqa: PLC0415 (only for pandas input)

        return pyarrow.Table.from_pandas(data, preserve_index=False)
    # A DuckDB relation of older DuckDB versions: its Arrow reader.
    if module.startswith("duckdb") and hasattr(data, "fetch_record_batch"):
        return data.fetch_record_batch()
    return None


def _progress(progress: Union[None, bool, ProgressCallback]) -> Tuple[Optional[ProgressCallback], Callable[[], None]]:
    """The callback the build calls, and what to call when it ends."""
    if progress is None or progress is False:
        return None, lambda: None
    if callable(progress):
        return progress, lambda: None
    if progress is not True:
        raise _bad("progress", "is a callable, True or None")
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415 (optional)
    except ImportError:
        last = [""]

        def lines(phase: str, done: int, total: Optional[int]) -> None:
            text = f"{phase}: {done}/{total} shards" if total else phase
            if text != last[0]:
                last[0] = text
                print(f"shardforge: {text}", file=sys.stderr)

        return lines, lambda: None
    bar = tqdm(total=None, unit="shard", desc="shardforge")

    def update(phase: str, done: int, total: Optional[int]) -> None:
        bar.set_description(f"shardforge: {phase}", refresh=False)
        if total is not None:
            if bar.total != total:
                bar.reset(total=total)
            bar.n = done
        bar.refresh()

    return update, bar.close


def _result(d: Dict[str, Any]) -> WriteResult:
    return WriteResult(**d)


def write(
    data: Any,
    *,
    key: Optional[str] = None,
    prefix: str,
    num_dbs: Optional[int] = None,
    backend: str = "sqlite",
    value: Union[None, str, Sequence[str], Mapping[str, Any]] = None,
    routing: Union[None, str, Mapping[str, Any]] = None,
    key_encoding: Optional[str] = None,
    run_id: Optional[str] = None,
    validate: Optional[Mapping[str, Any]] = None,
    write: Optional[Mapping[str, Any]] = None,
    storage_options: Optional[Mapping[str, str]] = None,
    sqlite: Optional[Mapping[str, Any]] = None,
    slatedb: Optional[Mapping[str, Any]] = None,
    vector: Optional[Mapping[str, Any]] = None,
    retention: Optional[Mapping[str, Any]] = None,
    rebuild: bool = False,
    force: bool = False,
    progress: Union[None, bool, ProgressCallback] = None,
) -> WriteResult:
    """Builds a snapshot of ``data`` under ``prefix`` and publishes it.

    ``data`` is anything that exports the Arrow C stream interface
    (``__arrow_c_stream__``: a PyArrow ``Table`` or ``RecordBatchReader``,
    a Polars ``DataFrame``, a DuckDB result; a pandas ``DataFrame`` goes
    through PyArrow), or an iterable of ``(key, value)`` pairs (keys all
    ``int``, all ``str`` or all ``bytes``; values ``bytes`` or ``str``,
    stored as their UTF-8). The Arrow stream is read from Rust, zero-copy,
    with the GIL released; pairs are read with the GIL, a batch at a time.

    The build is ``sf-write``'s, and the keyword arguments are its job
    file's keys (docs/configuration.md):

    - ``key``: the key column (``key_col``; default ``"key"`` for pairs);
    - ``prefix``: the snapshot prefix (``[output] prefix``): a local path
      or an ``s3://``, ``gs://``, ``az://`` or ``file://`` URL;
    - ``num_dbs``: shards (``[routing] num_dbs``); omit it with
      ``routing={"max_keys_per_shard": N}`` or a categorical CEL routing;
    - ``backend``: ``"sqlite"`` or ``"slatedb"``;
    - ``value``: a column name (its bytes are the value: ``binary_col``),
      a list of column names (a JSON object of them: ``json_cols``), or the
      ``[value]`` section as a dict; default: pairs' values, or every column
      but the key as one JSON object (the job file's default);
    - ``routing``: the ``[routing]`` section as a dict, or a CEL expression
      as text (``"region"`` with ``{"columns": ...}`` needs the dict form);
    - ``key_encoding``: ``"u64be"``, ``"u32be"``, ``"utf8"`` or ``"raw"``;
    - ``run_id``: the run id (default a random one); a run id published
      before builds nothing unless ``rebuild=True``;
    - ``validate``, ``write``, ``sqlite``, ``slatedb``, ``vector``,
      ``retention``: those sections as dicts;
    - ``storage_options``: object_store options for the prefix (as
      ``Reader`` takes them); credentials come from the environment;
    - ``force``: publish even when validation gates fail (recorded);
    - ``progress``: a callable ``progress(phase, done, total)``, called on
      this thread as each phase starts (``(phase, 0, None)``) and, while
      shards are written, with the shards done of ``total`` at most every
      0.2 s; or ``True`` for a ``tqdm`` bar (lines on stderr without
      tqdm).

    Returns a ``WriteResult``. A bad argument raises ``ArgumentError``
    before anything is written; a failed build raises the ``Error``
    subclass of its class (``DataError``: bad input; ``ConflictError``:
    another publisher won; ``UnavailableError``: storage failed after
    retries; ``GateError``: a validation gate refused the build), and
    leaves the previous snapshot serving.
    """
    if not isinstance(prefix, str) or not prefix:
        raise _bad("prefix", "is the snapshot prefix: a local path or a URL")
    if num_dbs is not None and (isinstance(num_dbs, bool) or not isinstance(num_dbs, int) or num_dbs < 1):
        raise _bad("num_dbs", f"is a positive int, not {num_dbs!r}")
    if backend not in ("sqlite", "slatedb"):
        raise _bad("backend", f'is "sqlite" or "slatedb", not {backend!r}')
    if run_id is not None and not isinstance(run_id, str):
        raise _bad("run_id", f"is a str, not {type(run_id).__name__}")
    if key is not None and (not isinstance(key, str) or not key):
        raise _bad("key", "is the name of the key column")
    callback, close = _progress(progress)
    source = _arrowable(data)
    pairs = source is None
    if pairs:
        if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
            raise _bad(
                "data",
                "exports an Arrow stream (__arrow_c_stream__: PyArrow, Polars, pandas, DuckDB) "
                f"or is an iterable of (key, value) pairs, not {type(data).__name__}",
            )
        source = data
        if value is not None:
            raise _bad("value", "is not for (key, value) pairs: their values are stored as they are")
        key = key or "key"
        value_section: Dict[str, Any] = {"binary_col": "value"}
    else:
        if key is None:
            raise _bad("key", "names the key column of the data (required)")
        if value is None:
            value_section = {}
        elif isinstance(value, str):
            value_section = {"binary_col": value}
        elif isinstance(value, Mapping):
            value_section = dict(value)
        elif isinstance(value, Sequence) and all(isinstance(c, str) for c in value):
            value_section = {"json_cols": list(value)}
        else:
            raise _bad("value", "is a column name, a list of column names or the [value] section as a dict")
    if isinstance(routing, str):
        routing_section: Dict[str, Any] = {"strategy": "cel", "expr": routing}
    else:
        routing_section = _section("routing", routing)
    if num_dbs is not None:
        if "num_dbs" in routing_section:
            raise _bad("num_dbs", "is given twice: as num_dbs and in routing")
        routing_section["num_dbs"] = num_dbs
    output: Dict[str, Any] = {"prefix": prefix, "backend": backend}
    if run_id is not None:
        output["run_id"] = run_id
    if sqlite is not None:
        output["sqlite"] = _section("sqlite", sqlite)
    if slatedb is not None:
        output["slatedb"] = _section("slatedb", slatedb)
    job: Dict[str, Any] = {
        "key_col": key,
        "value": value_section,
        "routing": routing_section,
        "output": output,
        "write": _section("write", write),
        "validate": _section("validate", validate),
        "storage": {str(k): str(v) for k, v in _section("storage_options", storage_options).items()},
    }
    if key_encoding is not None:
        job["key_encoding"] = key_encoding
    if vector is not None:
        job["vector"] = _section("vector", vector)
    if retention is not None:
        job["retention"] = _section("retention", retention)
    try:
        text = json.dumps(job)
    except (TypeError, ValueError) as e:
        raise _bad("write", f"a section holds a value a job file cannot: {e}") from None
    try:
        return _result(
            _native._write(source, text, pairs=pairs, rebuild=bool(rebuild), force=bool(force), progress=callback)
        )
    except ArgumentError:
        raise
    except ConfigError as e:
        raise _argument_error(e) from None
    finally:
        close()


def _override_pairs(overrides: Optional[Mapping[str, Any]]) -> List[Tuple[str, str]]:
    """``{"routing.num_dbs": 16}`` or ``{"routing": {"num_dbs": 16}}`` as
    ``SF_ROUTING__NUM_DBS=16``."""
    out: List[Tuple[str, str]] = []

    def text(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return json.dumps(list(v))
        return str(v)

    def walk(path: List[str], v: Any) -> None:
        if isinstance(v, Mapping):
            for k, item in v.items():
                walk(path + str(k).split("."), item)
        else:
            out.append(("SF_" + "__".join(p.upper() for p in path), text(v)))

    if overrides is None:
        return out
    if not isinstance(overrides, Mapping):
        raise _bad("overrides", "is a dict of job keys to values")
    walk([], overrides)
    return out


def write_job(
    path: Union[str, "os.PathLike[str]"],
    *,
    overrides: Optional[Mapping[str, Any]] = None,
    rebuild: bool = False,
    force: bool = False,
    progress: Union[None, bool, ProgressCallback] = None,
) -> WriteResult:
    """Runs the job file at ``path`` as ``sf-write --config path`` does
    (embedded; a job that names a cluster is refused), and returns the same
    ``WriteResult`` as ``write``.

    The process's ``SF_<SECTION>__<KEY>`` variables override the file's
    keys as they do for ``sf-write``; ``overrides`` then override keys by
    their dotted names (``{"routing.num_dbs": 16}`` or ``{"routing":
    {"num_dbs": 16}}``). ``rebuild``, ``force`` and ``progress`` are
    ``sf-write``'s ``--rebuild`` and ``--force`` and ``write``'s
    ``progress``. A bad job file raises ``ArgumentError``.
    """
    env = _override_pairs(overrides)
    callback, close = _progress(progress)
    try:
        return _result(
            _native._write_job(
                os.fspath(path), env, rebuild=bool(rebuild), force=bool(force), progress=callback
            )
        )
    except ConfigError as e:
        raise _argument_error(e) from None
    finally:
        close()
