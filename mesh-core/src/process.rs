//! What the binaries' `main` share: their log, their runtime and their shutdown signal.

/// Logs to stderr, filtered by `AMBIT_LOG` (`info` by default). Colours only on a terminal:
/// `kubectl logs` and log collectors get plain text.
pub fn init_logging() {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("AMBIT_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// A current-thread runtime for one worker (its tasks wake each other without crossing
/// threads: measured faster than a one-worker multi-thread runtime on the HBONE path), else a
/// multi-thread runtime with `workers` threads.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        0 | 1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    builder.enable_all().build()
}

/// Resolves on SIGTERM (a rollout) or SIGINT; never when the signals cannot be watched.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
