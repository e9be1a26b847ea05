//! The data path's threads. Each worker runs a single-threaded runtime, and a downstream
//! connection lives on one worker from accept to close, together with every task it spawns
//! (its HBONE streams, the upstream connections its requests open). Tasks that wake each
//! other then never cross threads, as with Envoy's and HAProxy's workers; the control plane
//! (configuration, certificates, metrics and admin endpoints) runs on the main thread.
//!
//! Why not tokio's work-stealing runtime: in `ambit-l7-bench --proxy-threads 2` on two shared
//! cores, the waypoint served 21-24k requests per second per core with a two-worker
//! work-stealing runtime, and 43-46k with these two workers (as many as with one thread).
//! Stealing moved an HTTP/2 connection's task and its streams' tasks apart, so frames
//! crossed threads and woke parked ones.

use std::{
    cell::Cell,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{net::TcpStream, runtime::Handle};

use crate::counted::Counted;

thread_local! {
    /// The worker this thread is, if it is one.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker the calling thread is (`None` off the data path, e.g. in tests or on the main
/// thread).
pub fn current() -> Option<usize> {
    CURRENT.get()
}

pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    runtime: Handle,
    /// Downstream connections it serves now: a new one goes to the least loaded worker.
    connections: Arc<AtomicUsize>,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut workers = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    CURRENT.set(Some(index));
                    runtime.block_on(std::future::pending::<()>());
                })?;
            workers.push(Worker {
                runtime: handle,
                connections: Arc::default(),
            });
        }
        Ok(Workers { workers })
    }

    /// Serves a newly accepted connection with `serve`, on the worker that serves the fewest.
    pub fn assign<F, Fut>(&self, tcp: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // The socket moves to the worker's own event loop: it leaves this one here and is
        // registered there.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(error) => {
                tracing::warn!(%error, "accepted connection could not be handed to a worker");
                return;
            }
        };
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.connections.load(Ordering::Acquire))
            .expect("at least one worker");
        let serving = Counted::take(Some(worker.connections.clone()));
        worker.runtime.spawn(async move {
            let _serving = serving;
            match TcpStream::from_std(tcp) {
                Ok(tcp) => serve(tcp).await,
                Err(error) => tracing::warn!(%error, "worker could not take a connection"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::{io::AsyncReadExt as _, net::TcpListener};

    use super::*;

    /// A connection goes to the worker serving the fewest, and is served on that worker's
    /// thread until it closes.
    #[test]
    fn connections_go_to_the_least_loaded_worker() {
        let workers = Workers::start(2).expect("worker threads");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (seen_tx, seen) = std::sync::mpsc::channel();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let mut clients = Vec::new();
            for n in 0..3 {
                if n == 2 {
                    // The first client leaves: its worker is the least loaded again.
                    drop(clients.remove(0));
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while workers.workers[0].connections.load(Ordering::Acquire) > 0 {
                        assert!(Instant::now() < deadline, "worker 0 still counts it");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                clients.push(TcpStream::connect(addr).await.expect("connect"));
                let (tcp, _) = listener.accept().await.expect("accept");
                let seen = seen_tx.clone();
                workers.assign(tcp, move |mut tcp| async move {
                    let _ = seen.send((n, current()));
                    let _ = tcp.read(&mut [0; 1]).await;
                });
            }
        });
        // Workers run on threads of their own: they may start serving in any order.
        let mut seen: Vec<_> = (0..3)
            .map(|_| seen.recv_timeout(Duration::from_secs(5)).expect("served"))
            .collect();
        seen.sort();
        assert_eq!(seen, [(0, Some(0)), (1, Some(1)), (2, Some(0))]);
    }
}
