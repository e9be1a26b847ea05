//! What the agent's and the waypoint's `main` share: their runtime and their shutdown signal.

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
