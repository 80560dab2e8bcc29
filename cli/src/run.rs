//! What every program does around its work: logging to stderr, a
//! multi-thread runtime, and the error printed as `<program>: <message>`
//! with the exit code of its kind.

use std::future::Future;
use std::io::IsTerminal;

use crate::exit::{self, Failure};

/// Logs to stderr with `filter`: the `--log` flag or `RUST_LOG` when given,
/// else `default`. Ballista logs through the `log` crate; those records
/// arrive here too.
pub fn init_logging(flag: Option<&str>, default: &str) {
    let filter = flag
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Runs `work` on a multi-thread runtime. `Ok` holds the success code the
/// work returned; `Err` the exit code of its failure, which was printed to
/// stderr as `<name>: <error and causes>`.
pub fn run_cli<F>(name: &str, work: F) -> Result<u8, u8>
where
    F: Future<Output = Result<u8, Failure>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return Err(exit::FAILED);
        }
    };
    let outcome = runtime.block_on(work);
    // Work the program gave up on (a lookup abandoned after sf-serve's
    // grace period, stuck in storage) must not hold the exit: blocking
    // tasks still running after a moment are left to the process's end.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match outcome {
        Ok(code) => Ok(code),
        Err(f) => {
            eprintln!("{name}: {}", f.message());
            tracing::debug!(kind = %f.kind(), "{name} failed");
            Err(f.exit_code())
        }
    }
}

/// The exit status of [`run_cli`]'s outcome.
pub fn exit_code(outcome: Result<u8, u8>) -> std::process::ExitCode {
    match outcome {
        Ok(code) | Err(code) => std::process::ExitCode::from(code),
    }
}
