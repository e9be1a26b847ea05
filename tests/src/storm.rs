//! A connection storm: many short connections to one pod from several clients, timed one by
//! one, so that a test can check none was refused and the rate held from first to last, and
//! the benchmark can report both.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{testbed::Pod, traffic::read_greeting};

/// What a storm did.
#[derive(Debug)]
pub struct Storm {
    /// When each successful connection completed, from the start, in order.
    pub completed: Vec<Duration>,
    /// How many connections failed, and the first few errors.
    pub failed: usize,
    pub errors: Vec<String>,
}

impl Storm {
    /// Connections per second in each tenth of the storm (by connection count).
    pub fn decile_rates(&self) -> Vec<f64> {
        let n = self.completed.len();
        if n < 10 {
            return Vec::new();
        }
        (0..10)
            .map(|d| {
                let (first, last) = (d * n / 10, (d + 1) * n / 10 - 1);
                let start = if first == 0 {
                    Duration::ZERO
                } else {
                    self.completed[first - 1]
                };
                let span = (self.completed[last] - start).as_secs_f64().max(1e-6);
                (last + 1 - first) as f64 / span
            })
            .collect()
    }

    pub fn elapsed(&self) -> Duration {
        self.completed.last().copied().unwrap_or_default()
    }
}

/// `total` connections to `target`, spread over `clients_per_pod` threads in each of `pods`;
/// each connection reads the echo server's greeting, echoes one byte and closes (the client
/// closes first, so the agents' sockets to the app are the ones left in TIME_WAIT).
pub fn storm(pods: &[&Pod], clients_per_pod: usize, target: SocketAddr, total: usize) -> Storm {
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let completed = Mutex::new(Vec::with_capacity(total));
    let errors = Mutex::new((0usize, Vec::new()));
    let one = || -> Result<()> {
        let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        read_greeting(&mut stream)?;
        stream.write_all(b"x")?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)?;
        Ok(())
    };
    std::thread::scope(|scope| {
        for pod in pods {
            for _ in 0..clients_per_pod {
                scope.spawn(|| {
                    let run = || {
                        while next.fetch_add(1, Ordering::Relaxed) < total {
                            match one() {
                                Ok(()) => completed
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push(started.elapsed()),
                                Err(error) => {
                                    let mut errors =
                                        errors.lock().unwrap_or_else(|p| p.into_inner());
                                    errors.0 += 1;
                                    if errors.1.len() < 5 {
                                        errors.1.push(format!("{error:#}"));
                                    }
                                }
                            }
                        }
                    };
                    if let Err(error) = pod.enter(run) {
                        let mut errors = errors.lock().unwrap_or_else(|p| p.into_inner());
                        errors.0 += 1;
                        errors
                            .1
                            .push(format!("entering pod {}: {error:#}", pod.name));
                    }
                });
            }
        }
    });
    let mut completed = completed.into_inner().unwrap_or_else(|p| p.into_inner());
    completed.sort();
    let (failed, errors) = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    Storm {
        completed,
        failed,
        errors,
    }
}
