//! The one tokio runtime of the process, owned by the module: every
//! reader's I/O, shard opens and background refresh run on it, and Python
//! threads wait on it with the GIL released.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime, started on first use. Its worker threads are the cores'
/// count (tokio's default); blocking work (SQLite reads, file hashing)
/// goes to tokio's blocking pool.
fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("shardforge")
            .build()
            // Without a runtime nothing works; this fails only when the
            // process cannot start threads at all.
            .expect("starting the shardforge tokio runtime")
    })
}

/// Makes the runtime the one pyo3-async-runtimes runs `AsyncReader`'s
/// futures on (its own default would be a second runtime).
pub(crate) fn share_with_asyncio() {
    // Already set only when the module is initialised again in the same
    // process (a second interpreter): the runtime is the same one then.
    let _ = pyo3_async_runtimes::tokio::init_with_runtime(runtime());
}

/// Runs `future` to completion on the runtime, from a Python thread (never
/// one of the runtime's own).
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// Runs `f` inside the runtime's context, for synchronous calls that may
/// spawn or abort tasks.
pub(crate) fn enter<R>(f: impl FnOnce() -> R) -> R {
    let _guard = runtime().enter();
    f()
}

/// Runs `future` as a task of the runtime (a build a Python thread waits
/// for while it reports progress).
pub(crate) fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime().spawn(future)
}
