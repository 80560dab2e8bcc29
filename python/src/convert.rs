//! Python values to ShardForge's and back: keys, routing contexts,
//! durations, storage options, and the reader's serialisable reports
//! (as plain dicts, the same fields `sf-read --output json` prints).

use std::time::Duration;

use bytes::Bytes;

use pyo3::IntoPyObjectExt;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};
use serde_json::Value;
use sf_manifest::{HistoryEntry, Key, StorageOptions};
use sf_reader::vector::VectorId;
use sf_reader::{ContextValue, RoutingContext, SearchResults};

/// A key as Python gives it: `int`, `str` or `bytes`. Whether it suits
/// the snapshot's encoding (integers for `u64be`/`u32be`, text or bytes
/// for `utf8`/`raw`) is the reader's to say.
pub(crate) fn key(obj: &Bound<'_, PyAny>) -> PyResult<Key> {
    if let Ok(b) = obj.downcast::<PyBytes>() {
        return Ok(Key::Bytes(b.as_bytes().to_vec()));
    }
    if obj.is_instance_of::<PyString>() {
        return Ok(Key::Str(obj.extract()?));
    }
    // bool is an int to Python; a True key is far more likely a mistake.
    if obj.is_instance_of::<PyInt>() && !obj.is_instance_of::<PyBool>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Key::Int(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Key::UInt(u));
        }
        return Err(PyValueError::new_err(format!(
            "integer key {obj} is outside [-2**63, 2**64)"
        )));
    }
    Err(PyTypeError::new_err(format!(
        "a key is int, str or bytes, not {}",
        obj.get_type().name()?
    )))
}

/// The keys of a `multi_get`: any iterable but a `str` or `bytes` (whose
/// items would be taken for keys one character at a time).
pub(crate) fn keys(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Key>> {
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(
            "multi_get takes a list of keys, not one str or bytes",
        ));
    }
    let mut out = Vec::with_capacity(obj.len().unwrap_or(0));
    for item in obj.try_iter()? {
        out.push(key(&item?)?);
    }
    Ok(out)
}

/// A routing context: a dict of column name to int, float, bool, str or bytes.
pub(crate) fn routing_context(obj: &Bound<'_, PyAny>) -> PyResult<RoutingContext> {
    let dict = obj
        .downcast::<PyDict>()
        .map_err(|_| PyTypeError::new_err("routing_context is a dict of column name to value"))?;
    let mut out = RoutingContext::new();
    for (name, value) in dict.iter() {
        let name: String = name.extract()?;
        let value = if value.is_instance_of::<PyBool>() {
            ContextValue::Bool(value.extract()?)
        } else if value.is_instance_of::<PyInt>() {
            match value.extract::<i64>() {
                Ok(i) => ContextValue::Int(i),
                Err(_) => ContextValue::UInt(value.extract()?),
            }
        } else if value.is_instance_of::<PyFloat>() {
            ContextValue::Double(value.extract()?)
        } else if value.is_instance_of::<PyString>() {
            ContextValue::Str(value.extract()?)
        } else if let Ok(b) = value.downcast::<PyBytes>() {
            ContextValue::Bytes(b.as_bytes().to_vec())
        } else {
            return Err(PyTypeError::new_err(format!(
                "routing context value of {name:?} is int, float, bool, str or bytes, not {}",
                value.get_type().name()?
            )));
        };
        out.insert(name, value);
    }
    Ok(out)
}

/// A duration: seconds (int or float), a `datetime.timedelta`, or text as
/// the job files write it (`"30s"`, `"5m"`).
pub(crate) fn duration(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let seconds: f64 = if obj.is_instance_of::<PyString>() {
        let text: String = obj.extract()?;
        return sf_reader::duration::parse_duration(&text).map_err(crate::errors::to_py);
    } else if obj.hasattr("total_seconds")? {
        obj.call_method0("total_seconds")?.extract()?
    } else if obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyFloat>() {
        obj.extract()?
    } else {
        return Err(PyTypeError::new_err(format!(
            "{what} is seconds, a timedelta or text such as \"30s\", not {}",
            obj.get_type().name()?
        )));
    };
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| PyValueError::new_err(format!("{what} of {seconds} seconds is not a duration")))
}

/// Storage options: a dict of `str` to `str` by object_store's key names.
pub(crate) fn storage_options(obj: Option<&Bound<'_, PyAny>>) -> PyResult<StorageOptions> {
    let mut out = StorageOptions::new();
    let Some(obj) = obj else { return Ok(out) };
    let dict = obj
        .downcast::<PyDict>()
        .map_err(|_| PyTypeError::new_err("storage_options is a dict of str to str"))?;
    for (k, v) in dict.iter() {
        let k: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err("storage_options keys are str"))?;
        // Values are never echoed: they may be secrets.
        let v: String = v
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("storage option {k:?} is a str")))?;
        out.insert(k, v);
    }
    Ok(out)
}

/// A value found, or `None`.
pub(crate) fn value<'py>(py: Python<'py>, v: Option<&[u8]>) -> Bound<'py, PyAny> {
    match v {
        Some(bytes) => PyBytes::new(py, bytes).into_any(),
        None => py.None().into_bound(py),
    }
}

/// A serialisable report as plain Python values (dicts, lists, str, int,
/// float, bool, None).
pub(crate) fn report<'py, T: serde::Serialize>(py: Python<'py>, report: &T) -> PyResult<Bound<'py, PyAny>> {
    let json = serde_json::to_value(report)
        .map_err(|e| crate::errors::InternalError::new_err(format!("a report does not serialise: {e}")))?;
    json_value(py, &json)
}

pub(crate) fn json_value<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => b.into_bound_py_any(py)?,
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_bound_py_any(py)?
            } else if let Some(u) = n.as_u64() {
                u.into_bound_py_any(py)?
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_bound_py_any(py)?
            }
        }
        Value::String(s) => s.into_bound_py_any(py)?,
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json_value(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, item) in map {
                dict.set_item(k, json_value(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// A value found (`bytes`) or a miss (`None`), converted when the GIL is
/// at hand (after a blocking call, or when an awaitable completes).
pub(crate) struct Found(pub(crate) Option<Bytes>);

impl<'py> IntoPyObject<'py> for Found {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        Ok(value(py, self.0.as_deref()))
    }
}

/// The values of a `multi_get`, as a list.
pub(crate) struct FoundMany(pub(crate) Vec<Option<Bytes>>);

impl<'py> IntoPyObject<'py> for FoundMany {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        Ok(PyList::new(py, self.0.iter().map(|v| value(py, v.as_deref())))?.into_any())
    }
}

/// A search's hits: dicts of `id`, `score`, `payload`, `db_id`, `run_id`.
pub(crate) struct Hits(pub(crate) SearchResults);

impl<'py> IntoPyObject<'py> for Hits {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let hits = PyList::empty(py);
        for hit in &self.0.hits {
            let d = PyDict::new(py);
            match &hit.id {
                VectorId::Int(i) => d.set_item("id", i)?,
                VectorId::Str(s) => d.set_item("id", s)?,
            }
            d.set_item("score", hit.score)?;
            let payload = match &hit.payload {
                Some(p) => json_value(py, p)?,
                None => py.None().into_bound(py),
            };
            d.set_item("payload", payload)?;
            d.set_item("db_id", hit.db_id.0)?;
            d.set_item("run_id", &self.0.run_id)?;
            hits.append(d)?;
        }
        Ok(hits.into_any())
    }
}

/// A prefix's history: dicts of `offset`, `run_id`, `published_at`, `manifest_ref`.
pub(crate) struct History(pub(crate) Vec<HistoryEntry>);

impl<'py> IntoPyObject<'py> for History {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let out = PyList::empty(py);
        for e in self.0 {
            let d = PyDict::new(py);
            d.set_item("offset", e.offset)?;
            d.set_item("run_id", e.run_id.as_str())?;
            d.set_item("published_at", e.published_at.to_rfc3339_offset())?;
            d.set_item("manifest_ref", e.manifest_ref)?;
            out.append(d)?;
        }
        Ok(out.into_any())
    }
}
