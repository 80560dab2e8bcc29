//! The exceptions: `shardforge.Error` and one subclass per
//! [`ErrorKind`], so that Python code branches on the same coarse classes
//! as retries and exit codes do. Messages are the Rust errors' own.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use sf_manifest::{Classified, ErrorKind};

pyo3::create_exception!(
    shardforge,
    Error,
    PyException,
    "Base of every error ShardForge raises. `kind` names the class of failure (config, routing, data, conflict, unavailable, gate, internal); `retryable` is true for `unavailable` alone."
);
pyo3::create_exception!(
    shardforge,
    ConfigError,
    Error,
    "Bad settings or arguments (a key of the wrong type for the snapshot's encoding, an unknown SQLite mode, a closed reader): fix the call."
);
pyo3::create_exception!(
    shardforge,
    RoutingError,
    Error,
    "A key or routing context could not be routed (a value out of range, a CEL evaluation error)."
);
pyo3::create_exception!(
    shardforge,
    DataError,
    Error,
    "Stored data is malformed, missing or unsupported (no `_CURRENT`, a corrupt manifest, a shard whose checksum does not match)."
);
pyo3::create_exception!(
    shardforge,
    ConflictError,
    Error,
    "A conditional write lost a race: someone else changed the object first."
);
pyo3::create_exception!(
    shardforge,
    UnavailableError,
    Error,
    "Storage could not be reached or failed; often transient, worth retrying."
);
pyo3::create_exception!(
    shardforge,
    GateError,
    Error,
    "A validation gate refused to publish a build."
);
pyo3::create_exception!(
    shardforge,
    InternalError,
    Error,
    "A bug or a broken invariant inside ShardForge."
);

/// Every exception class with the `kind` it stands for (`None`: the base).
fn classes(py: Python<'_>) -> [(Bound<'_, pyo3::types::PyType>, Option<ErrorKind>); 8] {
    [
        (py.get_type::<Error>(), None),
        (py.get_type::<ConfigError>(), Some(ErrorKind::Config)),
        (py.get_type::<RoutingError>(), Some(ErrorKind::Routing)),
        (py.get_type::<DataError>(), Some(ErrorKind::Data)),
        (py.get_type::<ConflictError>(), Some(ErrorKind::Conflict)),
        (py.get_type::<UnavailableError>(), Some(ErrorKind::Unavailable)),
        (py.get_type::<GateError>(), Some(ErrorKind::Gate)),
        (py.get_type::<InternalError>(), Some(ErrorKind::Internal)),
    ]
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Config => "config",
        ErrorKind::Routing => "routing",
        ErrorKind::Data => "data",
        ErrorKind::Conflict => "conflict",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Gate => "gate",
        ErrorKind::Internal => "internal",
    }
}

/// Adds the classes to the module, each with its `kind` and `retryable`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for (class, kind) in classes(m.py()) {
        class.setattr("kind", kind.map(kind_name))?;
        class.setattr("retryable", kind.is_some_and(ErrorKind::is_retryable))?;
        m.add(class.name()?, class)?;
    }
    Ok(())
}

/// The Python exception of a ShardForge error: the class of its kind, the
/// message as the error prints it.
pub(crate) fn to_py<E: Classified>(e: E) -> PyErr {
    let message = e.to_string();
    match e.kind() {
        ErrorKind::Config => ConfigError::new_err(message),
        ErrorKind::Routing => RoutingError::new_err(message),
        ErrorKind::Data => DataError::new_err(message),
        ErrorKind::Conflict => ConflictError::new_err(message),
        ErrorKind::Unavailable => UnavailableError::new_err(message),
        ErrorKind::Gate => GateError::new_err(message),
        ErrorKind::Internal => InternalError::new_err(message),
    }
}
