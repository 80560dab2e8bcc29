//! # sf-python: ShardForge for Python
//!
//! The native part of the `shardforge` Python package (built by maturin
//! from `python/pyproject.toml`, imported as `shardforge._native` and
//! re-exported by `shardforge/__init__.py`). It links the Rust crates
//! directly, no subprocess and no HTTP:
//!
//! - `shardforge.Reader` wraps [`sf_reader::Reader`]: `get`, `multi_get`,
//!   `search`, `info`, `shards`, `health`, `history`, `refresh`, `close`,
//!   and a context manager, its calls blocking the calling thread with
//!   the GIL released;
//! - `shardforge.AsyncReader`, the same reader for asyncio: `open`, `get`,
//!   `multi_get`, `search`, `history`, `refresh` and `close` are awaitables,
//!   Rust futures on the module's runtime resolved into the event loop
//!   (`awaitable`: an exit hook keeps the runtime's threads from touching a
//!   finalizing interpreter), with no thread per call;
//! - `shardforge.Error` and one subclass per [`sf_manifest::ErrorKind`]
//!   (`ConfigError`, `RoutingError`, `DataError`, `ConflictError`,
//!   `UnavailableError`, `GateError`, `InternalError`), with the Rust
//!   error's message;
//! - `shardforge.write` and `shardforge.write_job` (`write.rs`, wrapped by
//!   `shardforge/_write.py`): the embedded build of `sf-write`, on an Arrow
//!   stream (`__arrow_c_stream__`), an iterable of `(key, value)` pairs or
//!   a job file, through [`sf_writer::job::build_table`] and
//!   [`sf_warehouse::run_job`], with the GIL released while it runs.
//!
//! ```text
//!  Python thread ── get/multi_get ──▶ convert keys (GIL held)
//!                                      │ release the GIL
//!                                      ▼
//!                      block_on(the module's one tokio runtime) ──▶ sf_reader::Reader
//!                                      │ take the GIL back
//!                                      ▼
//!                              bytes / None ──▶ Python
//! ```
//!
//! The GIL is released around every lookup batch, search, refresh, history
//! listing and open, so other Python threads run while ShardForge reads.
//! A single `get` whose shard is open and local skips the runtime
//! ([`sf_reader::Reader::get_now`]): a shard in memory answers with the GIL
//! held (well under a microsecond, less than releasing it costs), a
//! downloaded file on the calling thread with the GIL released;
//! the reader is `Send + Sync` and its Python class is frozen, so one
//! instance serves many threads. One multi-threaded tokio runtime per
//! process, started on first use, runs every reader's I/O and background
//! refresh.
//!
//! The crate is never a Rust dependency: it builds only the extension
//! module (a `cdylib` with PyO3's `extension-module` feature, whose
//! interpreter symbols are resolved when Python loads it), so it has no
//! Rust test target; `python/tests` tests the installed package, and
//! `scripts/test.sh` builds and runs them. PyO3's macros expand to no
//! `unsafe` the crate has to allow: the workspace's `unsafe_code = "deny"`
//! holds here too. See `docs/python.md`.

use pyo3::prelude::*;

mod arrow_stream;
mod async_reader;
mod awaitable;
mod bench;
mod convert;
mod errors;
mod reader;
mod runtime;
mod write;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<reader::PyReader>()?;
    m.add_class::<async_reader::PyAsyncReader>()?;
    runtime::share_with_asyncio();
    errors::register(m)?;
    awaitable::register_exit_hook(m)?;
    m.add_function(wrap_pyfunction!(bench::time_rust_gets, m)?)?;
    m.add_function(wrap_pyfunction!(bench::time_rust_multi_gets, m)?)?;
    m.add_function(wrap_pyfunction!(write::write, m)?)?;
    m.add_function(wrap_pyfunction!(write::write_job, m)?)?;
    Ok(())
}
