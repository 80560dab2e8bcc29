//! Timings of the Rust reader under a Python `Reader`, for
//! `python/bench/read_bench.py`: the lookups the Python calls make, timed
//! in Rust, in the same process, on the same open shards. They are the
//! ceiling the Python figures are compared with (what the boundary
//! costs). Underscored: not part of the package's API.

use std::time::Instant;

use pyo3::prelude::*;
use sf_manifest::Key;
use sf_reader::Inline;

use crate::errors::to_py;
use crate::reader::PyReader;
use crate::runtime::block_on;

/// Nanoseconds of each `get` of `keys`: `how` is `"async"` (the async
/// `Reader::get`, every lookup awaited inside one `block_on`, as a Rust
/// service on the runtime calls it) or `"now"` (`Reader::get_now` on this
/// thread, falling back to `get` when it cannot answer).
#[pyfunction]
#[pyo3(name = "_time_rust_gets")]
pub(crate) fn time_rust_gets(
    py: Python<'_>,
    reader: &Bound<'_, PyReader>,
    keys: Vec<i64>,
    how: &str,
) -> PyResult<Vec<u64>> {
    let reader = reader.get().inner.clone();
    let keys: Vec<Key> = keys.into_iter().map(Key::Int).collect();
    let inline = match how {
        "async" => None,
        "now" => Some(Inline::LocalFiles),
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "how is \"async\" or \"now\", not {other:?}"
            )));
        }
    };
    py.detach(|| {
        let mut out = Vec::with_capacity(keys.len());
        match inline {
            None => block_on(async {
                for key in &keys {
                    let t = Instant::now();
                    let v = reader.get(key).await.map_err(to_py)?;
                    out.push(t.elapsed().as_nanos() as u64);
                    std::hint::black_box(v);
                }
                Ok::<_, PyErr>(())
            })?,
            Some(inline) => {
                for key in &keys {
                    let t = Instant::now();
                    let v = match reader.get_now(key, None, inline) {
                        Some(v) => v,
                        None => block_on(reader.get(key)),
                    }
                    .map_err(to_py)?;
                    out.push(t.elapsed().as_nanos() as u64);
                    std::hint::black_box(v);
                }
            }
        }
        Ok(out)
    })
}

/// Nanoseconds of each `multi_get` of `batches`, awaited inside one
/// `block_on`.
#[pyfunction]
#[pyo3(name = "_time_rust_multi_gets")]
pub(crate) fn time_rust_multi_gets(
    py: Python<'_>,
    reader: &Bound<'_, PyReader>,
    batches: Vec<Vec<i64>>,
) -> PyResult<Vec<u64>> {
    let reader = reader.get().inner.clone();
    let batches: Vec<Vec<Key>> = batches
        .into_iter()
        .map(|b| b.into_iter().map(Key::Int).collect())
        .collect();
    py.detach(|| {
        block_on(async {
            let mut out = Vec::with_capacity(batches.len());
            for batch in &batches {
                let t = Instant::now();
                let v = reader.multi_get(batch).await.map_err(to_py)?;
                out.push(t.elapsed().as_nanos() as u64);
                std::hint::black_box(v);
            }
            Ok(out)
        })
    })
}
