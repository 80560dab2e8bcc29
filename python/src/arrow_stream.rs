//! Importing an Arrow C stream (`__arrow_c_stream__`) from Python.
//!
//! PyArrow tables and readers, Polars and pandas frames and DuckDB results
//! all export their rows through the Arrow PyCapsule interface: a method
//! `__arrow_c_stream__()` that returns a capsule named
//! `"arrow_array_stream"` holding a pointer to an `ArrowArrayStream`
//! struct of the Arrow C data interface. [`stream_reader`] takes that
//! struct over (the producer's callbacks then belong to the reader) and
//! hands back arrow's own [`ArrowArrayStreamReader`].
//!
//! The package does this here rather than through arrow's `pyarrow`
//! feature, because that feature makes arrow itself, and so DataFusion and
//! Ballista above it, depend on PyO3: every change of the Python
//! interpreter PyO3 is configured for (a virtual environment's, the
//! system's) would then rebuild the whole query stack. Here only this crate
//! sees PyO3.
//!
//! # Why this module has `unsafe`
//!
//! A capsule is an opaque pointer: Rust cannot know what it points to. The
//! one `unsafe` call reads the struct behind it, which is sound because the
//! capsule's name is checked first to be `"arrow_array_stream"`, the name
//! the interface reserves for a pointer to a valid `ArrowArrayStream`. The
//! workspace denies `unsafe_code`; this module is one of its few audited
//! exceptions (docs/development.md lists them), kept to that one read.

#![allow(unsafe_code)]

use arrow::ffi_stream::{ArrowArrayStreamReader, FFI_ArrowArrayStream};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods};

/// The capsule name the Arrow PyCapsule interface gives a stream.
const STREAM_CAPSULE: &str = "arrow_array_stream";

/// Reads `data`'s Arrow stream: calls its `__arrow_c_stream__()`, checks
/// the capsule it returns, and moves the stream out of it. A value without
/// the method, a method that raises, a capsule of another name, or a
/// stream whose schema cannot be imported is a Python exception; the
/// capsule is left released (its destructor then does nothing), never
/// half-owned.
pub(crate) fn stream_reader(data: &Bound<'_, PyAny>) -> PyResult<ArrowArrayStreamReader> {
    if !data.hasattr("__arrow_c_stream__")? {
        return Err(PyTypeError::new_err(format!(
            "a {} has no __arrow_c_stream__ method",
            data.get_type().name()?
        )));
    }
    let capsule = data.call_method0("__arrow_c_stream__")?;
    let capsule = capsule.downcast::<PyCapsule>().map_err(|_| {
        PyTypeError::new_err(format!(
            "__arrow_c_stream__ returned a {}, not a capsule",
            capsule.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })?;
    let name = capsule.name()?.map(|n| n.to_string_lossy().into_owned());
    if name.as_deref() != Some(STREAM_CAPSULE) {
        return Err(PyTypeError::new_err(format!(
            "__arrow_c_stream__ returned a capsule named {name:?}, not {STREAM_CAPSULE:?}"
        )));
    }
    let pointer = capsule.pointer().cast::<FFI_ArrowArrayStream>();
    if pointer.is_null() {
        return Err(PyValueError::new_err("__arrow_c_stream__ returned an empty capsule"));
    }
    // SAFETY: the capsule is named "arrow_array_stream", which the Arrow
    // PyCapsule interface reserves for a non-null pointer to a valid
    // `ArrowArrayStream`, and it is non-null (checked above). `from_raw`
    // moves the struct out and leaves a released one behind, so the
    // capsule's destructor (which releases a stream it still owns) does
    // nothing, and the producer's callbacks are called once, by the reader.
    let stream = unsafe { FFI_ArrowArrayStream::from_raw(pointer) };
    ArrowArrayStreamReader::try_new(stream)
        .map_err(|e| PyValueError::new_err(format!("the Arrow stream's schema: {e}")))
}
