//! Rust futures as asyncio awaitables, completed from the runtime.
//!
//! The runtime's thread that finishes a future attaches to Python to
//! resolve its asyncio future (`loop.call_soon_threadsafe`). A thread that
//! tries to attach after the interpreter began finalizing is ended by
//! CPython in the middle of Rust code, which aborts the process; and the
//! resolving call runs Python code, which may hand the GIL to the main
//! thread mid-way (whose `asyncio.run` can then return and the program
//! exit). So every resolution is counted while it runs, and an `atexit`
//! hook waits (GIL released, a few seconds at most) until none is: the
//! runtime's threads are done with Python before finalization starts.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;

/// Futures spawned and not yet resolved (their Python side included).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// How long the exit hook waits for resolutions in flight.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Resolves `fut` with `value` (`ok`) or the exception `value`, unless it
/// is already done (cancelled meanwhile); run by the event loop.
#[pyfunction]
fn resolve(fut: &Bound<'_, PyAny>, ok: bool, value: &Bound<'_, PyAny>) -> PyResult<()> {
    if fut.call_method0("done")?.extract::<bool>()? {
        return Ok(());
    }
    if ok {
        fut.call_method1("set_result", (value,))?;
    } else {
        fut.call_method1("set_exception", (value,))?;
    }
    Ok(())
}

/// An asyncio future of the running event loop, resolved with `fut`'s
/// output when it completes on the runtime. A cancelled asyncio future
/// does not stop the Rust one (lookups are short); its result is dropped.
pub(crate) fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let py_fut = event_loop.call_method0("create_future")?;
    let resolver = wrap_pyfunction!(resolve, py)?.into_any().unbind();
    let (event_loop, target) = (event_loop.unbind(), py_fut.clone().unbind());
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    crate::runtime::spawn(async move {
        let result = fut.await;
        Python::attach(move |py| {
            let (ok, value) = match result.and_then(|v| v.into_py_any(py)) {
                Ok(v) => (true, v),
                Err(e) => (false, e.into_value(py).into_any()),
            };
            // Fails only when the loop is closed: nobody awaits any more.
            let _ = event_loop
                .bind(py)
                .call_method1("call_soon_threadsafe", (resolver, target, ok, value));
            // `event_loop`, `target` and the value are released here, attached.
        });
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    });
    Ok(py_fut)
}

/// The `atexit` hook: waits, with the GIL released, until no resolution is
/// in flight, for [`EXIT_WAIT`] at most.
#[pyfunction]
fn wait_for_resolutions(py: Python<'_>) {
    py.detach(|| {
        let deadline = Instant::now() + EXIT_WAIT;
        while IN_FLIGHT.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// Registers the exit hook with `atexit`.
pub(crate) fn register_exit_hook(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let hook = wrap_pyfunction!(wait_for_resolutions, m)?;
    m.py().import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}
