//! What the scheduler and executor processes share: logging, the runtime,
//! and the signals that stop them.

use std::io::IsTerminal;
use std::process::ExitCode;

/// Logs to stderr with `filter` (or `RUST_LOG` when `filter` is `None`).
/// Ballista logs through the `log` crate; those records arrive here too.
pub(crate) fn init_logging(filter: Option<&str>, default: &str) {
    let filter = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Runs `main` on a multi-threaded runtime and turns its outcome into an
/// exit code: 0, 2 for bad arguments, 1 otherwise.
pub(crate) fn block_on<F>(name: &str, main: F) -> ExitCode
where
    F: std::future::Future<Output = sf_writer::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            tracing::error!("{e}");
            ExitCode::from(crate::write_cli::exit_code(&e))
        }
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub(crate) async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The host other processes should use to reach a service bound to
/// `bind_host`, unless told otherwise.
pub(crate) fn default_external_host(bind_host: &str) -> String {
    match bind_host {
        "0.0.0.0" | "::" | "[::]" => "localhost".to_string(),
        other => other.to_string(),
    }
}
