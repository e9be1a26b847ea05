//! Stopping without loss. The agent stops accepting in one of two ways: it hands its pods'
//! listeners to a successor (nothing is refused), or it is told to stop with none (its pods
//! stay captured and fail closed until an agent returns). Either way the connections it
//! carries go on until they end or the drain deadline passes, and its HBONE connections are
//! sent GOAWAY so their clients open new ones (to the successor).

use std::time::Duration;

use tokio::sync::watch;

use crate::app::State;

/// Counts SIGTERM and SIGINT: the first asks to stop, the second to stop at once.
#[derive(Clone)]
pub struct Signals(watch::Receiver<usize>);

impl Signals {
    /// Watches the signals from now on (a task of its own).
    pub fn watch() -> Self {
        let (tx, rx) = watch::channel(0);
        tokio::spawn(async move {
            loop {
                mesh_core::process::shutdown_signal().await;
                tx.send_modify(|count| *count += 1);
                if tx.is_closed() {
                    return;
                }
            }
        });
        Self(rx)
    }

    /// Resolves once `count` signals have come.
    pub async fn received(&self, count: usize) {
        let mut rx = self.0.clone();
        if rx.wait_for(|n| *n >= count).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub fn count(&self) -> usize {
        *self.0.borrow()
    }
}

/// Waits until the connections the agent carries have ended, `deadline` has passed, or a
/// second signal asks to stop at once.
pub async fn carried(state: &State, deadline: Duration, signals: &Signals) {
    let carried = state.connections.len();
    if carried == 0 {
        return;
    }
    tracing::info!(
        carried,
        deadline_secs = deadline.as_secs(),
        "draining: carried connections go on until they end"
    );
    mesh_core::drain::wait_carried(|| state.connections.len(), deadline, signals.received(2)).await;
}
