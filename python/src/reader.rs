//! `shardforge.Reader`: [`sf_reader::Reader`] for Python.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use sf_manifest::{DbId, Key};
use sf_reader::vector::VectorId;
use sf_reader::{ReaderSettings, RefreshOutcome, SearchOptions, SqliteMode};

use crate::convert;
use crate::errors::to_py;
use crate::runtime::block_on;

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
    inner: sf_reader::Reader,
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
        let builder = sf_reader::Reader::builder(current_url)
            .with_settings(settings)
            .with_storage_options(options);
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
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = convert::key(key)?;
        let context = routing_context.map(convert::routing_context).transpose()?;
        let reader = &self.inner;
        let found = py
            .detach(|| {
                block_on(async {
                    match &context {
                        None => reader.get(&key).await,
                        Some(c) => reader.get_with_context(&key, c).await,
                    }
                })
            })
            .map_err(to_py)?;
        Ok(convert::value(py, found.as_deref()))
    }

    /// The values of `keys`, in their order (None for a miss), all from one snapshot.
    #[pyo3(signature = (keys, *, routing_context = None))]
    fn multi_get<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        routing_context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let keys = convert::keys(keys)?;
        let context = routing_context.map(convert::routing_context).transpose()?;
        let reader = &self.inner;
        let found = py
            .detach(|| {
                block_on(async {
                    match context {
                        None => reader.multi_get(&keys).await,
                        Some(c) => {
                            let items: Vec<(Key, _)> = keys.into_iter().map(|k| (k, c.clone())).collect();
                            reader.multi_get_with_context(&items).await
                        }
                    }
                })
            })
            .map_err(to_py)?;
        PyList::new(py, found.iter().map(|v| convert::value(py, v.as_deref())))
    }

    /// The `top_k` stored vectors nearest `query`, nearest first.
    #[pyo3(signature = (query, *, top_k = 10, num_probes = None, shard_ids = None, routing_context = None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        query: Vec<f32>,
        top_k: usize,
        num_probes: Option<u32>,
        shard_ids: Option<Vec<u32>>,
        routing_context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let options = SearchOptions {
            top_k,
            num_probes,
            shard_ids: shard_ids.map(|ids| ids.into_iter().map(DbId).collect()),
            routing_context: routing_context.map(convert::routing_context).transpose()?,
        };
        let reader = &self.inner;
        let results = py.detach(|| block_on(reader.search(&query, &options))).map_err(to_py)?;
        let hits = PyList::empty(py);
        for hit in &results.hits {
            let d = PyDict::new(py);
            match &hit.id {
                VectorId::Int(i) => d.set_item("id", i)?,
                VectorId::Str(s) => d.set_item("id", s)?,
            }
            d.set_item("score", hit.score)?;
            d.set_item(
                "payload",
                match &hit.payload {
                    Some(p) => convert::json_value(py, p)?,
                    None => py.None().into_bound(py),
                },
            )?;
            d.set_item("db_id", hit.db_id.0)?;
            d.set_item("run_id", &results.run_id)?;
            hits.append(d)?;
        }
        Ok(hits)
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
            None => std::time::Duration::from_secs(24 * 3600),
        };
        convert::report(py, &self.inner.health(max_age))
    }

    /// The prefix's manifests, newest first.
    fn history<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let reader = &self.inner;
        let entries = py.detach(|| block_on(reader.history())).map_err(to_py)?;
        let out = PyList::empty(py);
        for e in entries {
            let d = PyDict::new(py);
            d.set_item("offset", e.offset)?;
            d.set_item("run_id", e.run_id.as_str())?;
            d.set_item("published_at", e.published_at.to_rfc3339_offset())?;
            d.set_item("manifest_ref", e.manifest_ref)?;
            out.append(d)?;
        }
        Ok(out)
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
        self.inner.health(std::time::Duration::MAX).is_closed
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
