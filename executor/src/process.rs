//! What the scheduler and executor processes share: the signals that stop
//! them and the host they tell others to reach them at.

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
