//! `shardforge.AsyncReader`: [`sf_reader::Reader`] for asyncio. Every
//! lookup is a Rust future on the module's tokio runtime, awaited from
//! Python as an asyncio future (pyo3-async-runtimes): no thread per call,
//! and the GIL is held only to convert keys and values.

use std::path::PathBuf;

use pyo3::prelude::*;
use sf_reader::RefreshOutcome;

use crate::awaitable::awaitable;
use crate::convert::{self, History, Hits};
use crate::errors::to_py;
use crate::reader::{DEFAULT_MAX_AGE, builder, context, get, multi_get, search_options};

/// A reader of one snapshot prefix for asyncio: `get`, `multi_get`,
/// `search`, `history`, `refresh` and `close` are coroutines.
///
/// Open it with `reader = await AsyncReader.open(current_url, ...)` (the
/// same arguments as `Reader`), or `async with await AsyncReader.open(...)
/// as reader:`. One reader serves any number of concurrent tasks, and
/// threads.
//
// Frozen: the awaitables hold clones of the inner reader (cheap, shared
// state), never a borrow of the Python object.
#[pyclass(module = "shardforge", name = "AsyncReader", frozen)]
#[derive(Debug)]
pub(crate) struct PyAsyncReader {
    inner: sf_reader::Reader,
}

#[pymethods]
impl PyAsyncReader {
    #[new]
    fn new() -> PyResult<Self> {
        Err(crate::errors::ConfigError::new_err(
            "open an AsyncReader with `await AsyncReader.open(current_url, ...)`",
        ))
    }

    /// Opens a reader (reads `_CURRENT` and the manifest); awaitable.
    #[staticmethod]
    #[pyo3(signature = (
        current_url,
        *,
        cache_dir = None,
        sqlite_mode = "auto",
        refresh_interval = None,
        storage_options = None,
        cache_max_bytes = None,
        max_concurrency = None,
        memory_limit_bytes = None,
        verify_checksums = true,
        history_fallback = true,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn open<'py>(
        py: Python<'py>,
        current_url: String,
        cache_dir: Option<PathBuf>,
        sqlite_mode: &str,
        refresh_interval: Option<&Bound<'py, PyAny>>,
        storage_options: Option<&Bound<'py, PyAny>>,
        cache_max_bytes: Option<u64>,
        max_concurrency: Option<usize>,
        memory_limit_bytes: Option<u64>,
        verify_checksums: bool,
        history_fallback: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let builder = builder(
            current_url,
            cache_dir,
            sqlite_mode,
            refresh_interval,
            storage_options,
            cache_max_bytes,
            max_concurrency,
            memory_limit_bytes,
            verify_checksums,
            history_fallback,
        )?;
        awaitable(py, async move {
            let inner = builder.build().await.map_err(to_py)?;
            Ok(PyAsyncReader { inner })
        })
    }

    /// The value of `key`, or None; awaitable.
    #[pyo3(signature = (key, *, routing_context = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        routing_context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = convert::key(key)?;
        let context = context(routing_context)?;
        let reader = self.inner.clone();
        awaitable(py, async move { get(&reader, &key, context.as_ref()).await })
    }

    /// The db_id of the shard `key` routes to in the served snapshot, or
    /// None for an unknown categorical token. Reads nothing: not awaitable.
    #[pyo3(signature = (key, *, routing_context = None))]
    fn route_key<'py>(
        &self,
        key: &Bound<'py, PyAny>,
        routing_context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<u32>> {
        let key = convert::key(key)?;
        let context = context(routing_context)?;
        let route = self.inner.route(&key, context.as_ref()).map_err(to_py)?;
        Ok(route.db_id.map(|d| d.0))
    }

    /// The values of `keys`, in their order (None for a miss), all from
    /// one snapshot; awaitable.
    #[pyo3(signature = (keys, *, routing_context = None))]
    fn multi_get<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        routing_context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let keys = convert::keys(keys)?;
        let context = context(routing_context)?;
        let reader = self.inner.clone();
        awaitable(py, async move { multi_get(&reader, keys, context).await })
    }

    /// The `top_k` stored vectors nearest `query`, nearest first; awaitable.
    #[pyo3(signature = (query, *, top_k = 10, num_probes = None, shard_ids = None, routing_context = None, filter = None))]
    #[allow(clippy::too_many_arguments, reason = "one parameter per Python keyword argument")]
    fn search<'py>(
        &self,
        py: Python<'py>,
        query: Vec<f32>,
        top_k: usize,
        num_probes: Option<u32>,
        shard_ids: Option<Vec<u32>>,
        routing_context: Option<&Bound<'py, PyAny>>,
        filter: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = search_options(top_k, num_probes, shard_ids, routing_context, filter)?;
        let reader = self.inner.clone();
        awaitable(py, async move {
            let results = reader.search(&query, &options).await.map_err(to_py)?;
            Ok(Hits(results))
        })
    }

    /// The prefix's manifests, newest first; awaitable.
    fn history<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let reader = self.inner.clone();
        awaitable(py, async move {
            let entries = reader.history().await.map_err(to_py)?;
            Ok(History(entries))
        })
    }

    /// Reads `_CURRENT` and swaps to the snapshot it names; True when the
    /// reader now serves another manifest; awaitable.
    fn refresh<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let reader = self.inner.clone();
        awaitable(py, async move {
            let outcome = reader.refresh().await.map_err(to_py)?;
            Ok(matches!(outcome, RefreshOutcome::Swapped { .. }))
        })
    }

    /// Stops the background refresh and refuses further reads; awaitable.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let reader = self.inner.clone();
        awaitable(py, async move {
            reader.close();
            Ok(())
        })
    }

    /// The served snapshot, as a dict.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        convert::report(py, &self.inner.info())
    }

    /// The shards of the served snapshot (empty ones are not listed).
    fn shards<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        convert::report(py, &self.inner.shards())
    }

    /// Whether the served snapshot is younger than `max_age` (default 24 hours).
    #[pyo3(signature = (max_age = None))]
    fn health<'py>(&self, py: Python<'py>, max_age: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let max_age = match max_age {
            Some(d) => convert::duration("max_age", d)?,
            None => DEFAULT_MAX_AGE,
        };
        convert::report(py, &self.inner.health(max_age))
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.health(DEFAULT_MAX_AGE).is_closed
    }

    /// The snapshot's key encoding: "u64be", "u32be", "utf8" or "raw".
    #[getter]
    fn key_encoding(&self) -> String {
        self.inner.key_encoding().to_string()
    }

    /// The URL of the prefix's `_CURRENT`.
    #[getter]
    fn current_url(&self) -> &str {
        self.inner.current_url()
    }

    fn __aenter__<'py>(slf: Py<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, async move { Ok(slf) })
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__<'py>(&self, py: Python<'py>, _exc: &Bound<'py, pyo3::types::PyTuple>) -> PyResult<Bound<'py, PyAny>> {
        let reader = self.inner.clone();
        awaitable(py, async move {
            reader.close();
            Ok(false)
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "shardforge.AsyncReader({:?}, run_id={:?})",
            self.inner.current_url(),
            self.inner.info().run_id.as_str()
        )
    }
}
