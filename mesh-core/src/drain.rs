//! Graceful shutdown: one signal that every listener and connection of a process watches.
//! Once it is given, HTTP/2 connections send GOAWAY (their clients open new connections
//! elsewhere, the streams already open finish) and the process waits for what it carries.

use tokio::sync::watch;

/// Gives the signal. Dropping it without giving it never signals.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Watches for the signal; cheap to clone, one per connection.
#[derive(Clone, Debug)]
pub struct Watch(watch::Receiver<bool>);

/// A trigger and the watch it signals.
pub fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Watch(rx))
}

impl Trigger {
    /// Starts draining: every watch resolves, now and from now on.
    pub fn start(&self) {
        self.0.send_replace(true);
    }

    pub fn watch(&self) -> Watch {
        Watch(self.0.subscribe())
    }
}

impl Watch {
    /// A watch that never signals, for servers nothing drains.
    pub fn never() -> Self {
        let (trigger, watch) = channel();
        // The receiver keeps the last value; the sender going away is not a signal.
        drop(trigger);
        watch
    }

    /// Resolves once draining has started (at once if it already has).
    pub async fn signalled(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|draining| *draining).await.is_err() {
            // The trigger was dropped without a signal: never.
            std::future::pending::<()>().await;
        }
    }

    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }
}

/// Waits until `carried()` (what is still in flight) is 0, `deadline` has passed, or
/// `stop_now` resolves (a second signal); says which in the log.
pub async fn wait_carried(
    carried: impl Fn() -> usize,
    deadline: std::time::Duration,
    stop_now: impl Future<Output = ()>,
) {
    let started = std::time::Instant::now();
    tokio::pin!(stop_now);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop_now => {
                tracing::info!("asked again: stopping without waiting");
                return;
            }
        }
        let left = carried();
        if left == 0 {
            tracing::info!(after_ms = started.elapsed().as_millis() as u64, "drained");
            return;
        }
        if started.elapsed() >= deadline {
            tracing::warn!(left, "drain deadline reached: closing what is still open");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signals_every_watch_once_started() {
        let (trigger, watch) = channel();
        let late = trigger.watch();
        assert!(!watch.is_draining());
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(20), watch.signalled()).await;
        assert!(pending.is_err(), "signalled before the trigger");
        trigger.start();
        watch.signalled().await;
        late.signalled().await;
        assert!(late.is_draining());
    }

    #[tokio::test]
    async fn never_signals() {
        let watch = Watch::never();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), watch.signalled()).await;
        assert!(waited.is_err());
    }
}
