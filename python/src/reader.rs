//! `shardforge.Reader`: [`sf_reader::Reader`] for Python, its calls
//! blocking the calling thread with the GIL released.

use std::path::PathBuf;

use pyo3::prelude::*;
use sf_manifest::{DbId, Key};
use sf_reader::{Inline, ReaderBuilder, ReaderSettings, RefreshOutcome, RoutingContext, SearchOptions, SqliteMode};

use crate::convert::{self, Found, FoundMany, History, Hits};
use crate::errors::to_py;
use crate::runtime::block_on;

/// The builder of a reader from the constructor's arguments, shared by
/// `Reader` and `AsyncReader`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn builder(
    current_url: String,
    cache_dir: Option<PathBuf>,
    sqlite_mode: &str,
    refresh_interval: Option<&Bound<'_, PyAny>>,
    storage_options: Option<&Bound<'_, PyAny>>,
    cache_max_bytes: Option<u64>,
    max_concurrency: Option<usize>,
    memory_limit_bytes: Option<u64>,
    verify_checksums: bool,
    history_fallback: bool,
) -> PyResult<ReaderBuilder> {
    let defaults = ReaderSettings::default();
    let settings = ReaderSettings {
        cache_dir,
        cache_max_bytes,
        refresh_interval: refresh_interval
            .map(|d| convert::duration("refresh_interval", d))
            .transpose()?,
        sqlite_mode: sqlite_mode.parse::<SqliteMode>().map_err(to_py)?,
        max_concurrency: max_concurrency.unwrap_or(defaults.max_concurrency),
        memory_limit_bytes: memory_limit_bytes.unwrap_or(defaults.memory_limit_bytes),
        verify_checksums,
        history_fallback,
        ..defaults
    };
    let options = convert::storage_options(storage_options)?;
    Ok(sf_reader::Reader::builder(current_url)
        .with_settings(settings)
        .with_storage_options(options))
}

/// A routing context argument, if given.
pub(crate) fn context(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<RoutingContext>> {
    obj.map(convert::routing_context).transpose()
}

/// A search's options from its keyword arguments.
pub(crate) fn search_options(
    top_k: usize,
    num_probes: Option<u32>,
    shard_ids: Option<Vec<u32>>,
    routing_context: Option<&Bound<'_, PyAny>>,
    filter: Option<String>,
) -> PyResult<SearchOptions> {
    Ok(SearchOptions {
        top_k,
        num_probes,
        shard_ids: shard_ids.map(|ids| ids.into_iter().map(DbId).collect()),
        routing_context: context(routing_context)?,
        filter,
    })
}

/// One key's lookup, with or without a routing context.
pub(crate) async fn get(reader: &sf_reader::Reader, key: &Key, context: Option<&RoutingContext>) -> PyResult<Found> {
    let found = match context {
        None => reader.get(key).await,
        Some(c) => reader.get_with_context(key, c).await,
    };
    found.map(Found).map_err(to_py)
}

/// Many keys' lookups, all with the same routing context when one is given.
pub(crate) async fn multi_get(
    reader: &sf_reader::Reader,
    keys: Vec<Key>,
    context: Option<RoutingContext>,
) -> PyResult<FoundMany> {
    let found = match context {
        None => reader.multi_get(&keys).await,
        Some(c) => {
            let items: Vec<(Key, RoutingContext)> = keys.into_iter().map(|k| (k, c.clone())).collect();
            reader.multi_get_with_context(&items).await
        }
    };
    found.map(FoundMany).map_err(to_py)
}

/// The default `max_age` of `health()`, as `sf-read health`'s.
pub(crate) const DEFAULT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A reader of one snapshot prefix, by the URL of its `_CURRENT`
/// (`s3://`, `gs://`, `az://`, `file://` or a local path).
///
/// Opening reads `_CURRENT` and the manifest; shards open lazily, once
/// each, on first use. The GIL is released around the open and every
/// read, and one reader may be shared by many threads. Use it as a
/// context manager, or call `close()`.
//
// Frozen (no `&mut self` method), so Python threads share one instance
// without a borrow check; `sf_reader::Reader` is `Send + Sync`.
#[pyclass(module = "shardforge", name = "Reader", frozen)]
#[derive(Debug)]
pub(crate) struct PyReader {
    pub(crate) inner: sf_reader::Reader,
}

#[pymethods]
impl PyReader {
    #[new]
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
    fn new(
        py: Python<'_>,
        current_url: String,
        cache_dir: Option<PathBuf>,
        sqlite_mode: &str,
        refresh_interval: Option<&Bound<'_, PyAny>>,
        storage_options: Option<&Bound<'_, PyAny>>,
        cache_max_bytes: Option<u64>,
        max_concurrency: Option<usize>,
        memory_limit_bytes: Option<u64>,
        verify_checksums: bool,
        history_fallback: bool,
    ) -> PyResult<Self> {
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
        // The open reads `_CURRENT` and the manifest: other threads run meanwhile.
        let inner = py.detach(|| block_on(builder.build())).map_err(to_py)?;
        Ok(PyReader { inner })
    }

    /// The value of `key`, or None.
    #[pyo3(signature = (key, *, routing_context = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        routing_context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Found> {
        let key = convert::key(key)?;
        let context = context(routing_context)?;
        let reader = &self.inner;
        // A shard in memory answers in well under a microsecond: with the
        // GIL held, no hand-off. A downloaded file is read on this thread
        // with the GIL released (SQLite may wait on the disk); anything
        // else (a shard to open, range reads) waits on the runtime.
        if let Some(found) = reader.get_now(&key, context.as_ref(), Inline::Memory) {
            return found.map(Found).map_err(to_py);
        }
        py.detach(|| match reader.get_now(&key, context.as_ref(), Inline::LocalFiles) {
            Some(found) => found.map(Found).map_err(to_py),
            None => block_on(get(reader, &key, context.as_ref())),
        })
    }

    /// The db_id of the shard `key` routes to in the served snapshot, or
    /// None for an unknown categorical token (a CEL snapshot whose routing
    /// gives a value it was not built with). Reads nothing.
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

    /// The values of `keys`, in their order (None for a miss), all from one snapshot.
    #[pyo3(signature = (keys, *, routing_context = None))]
    fn multi_get<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        routing_context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<FoundMany> {
        let keys = convert::keys(keys)?;
        let context = context(routing_context)?;
        let reader = &self.inner;
        py.detach(|| block_on(multi_get(reader, keys, context)))
    }

    /// The `top_k` stored vectors nearest `query`, nearest first.
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
    ) -> PyResult<Hits> {
        let options = search_options(top_k, num_probes, shard_ids, routing_context, filter)?;
        let reader = &self.inner;
        let results = py.detach(|| block_on(reader.search(&query, &options))).map_err(to_py)?;
        Ok(Hits(results))
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

    /// The prefix's manifests, newest first.
    fn history(&self, py: Python<'_>) -> PyResult<History> {
        let reader = &self.inner;
        let entries = py.detach(|| block_on(reader.history())).map_err(to_py)?;
        Ok(History(entries))
    }

    /// Reads `_CURRENT` and swaps to the snapshot it names; True when the
    /// reader now serves another manifest.
    fn refresh(&self, py: Python<'_>) -> PyResult<bool> {
        let reader = &self.inner;
        let outcome = py.detach(|| block_on(reader.refresh())).map_err(to_py)?;
        Ok(matches!(outcome, RefreshOutcome::Swapped { .. }))
    }

    /// Stops the background refresh and refuses further reads.
    fn close(&self, py: Python<'_>) {
        let reader = &self.inner;
        py.detach(|| crate::runtime::enter(|| reader.close()));
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

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "shardforge.Reader({:?}, run_id={:?})",
            self.inner.current_url(),
            self.inner.info().run_id.as_str()
        )
    }
}
