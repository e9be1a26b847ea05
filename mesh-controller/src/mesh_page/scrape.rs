//! Reading the subscribers' metrics: every connected node agent and waypoint serves them on
//! port 15020 of the address it connected from. Each is read every [`EVERY`] while the page
//! is looked at; a few recent reads are kept, so that rates come from two reads of the same
//! target.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mesh_core::exposition::{self, Sample};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::distribution::Distributor;

/// How often each subscriber is read.
pub const EVERY: Duration = Duration::from_secs(2);
/// How long reads are kept: the longest window a rate is taken over.
const KEPT: Duration = Duration::from_secs(30);
/// Where Ambit's components serve their metrics.
const METRICS_PORT: u16 = 15020;
/// A read that takes longer is given up (the target is reported down).
const READ_DEADLINE: Duration = Duration::from_secs(1);
/// A metrics page larger than this is not read (a target that is not Ambit's).
const MAX_PAGE: u64 = 32 << 20;

/// One read of a target.
pub struct Read {
    pub at: Instant,
    pub samples: Arc<Vec<Sample>>,
}

/// A target and its recent reads, newest last.
#[derive(Default)]
pub struct Target {
    pub role: String,
    pub node: String,
    pub reads: VecDeque<Read>,
    /// Why the last read failed, if it did.
    pub error: Option<String>,
}

/// Subscribers read at once, at most: a large cluster is read in waves, not all at once.
const AT_ONCE: usize = 32;
/// Reading stops this long after the page was last looked at: a controller nobody watches
/// reads nobody's metrics.
const IDLE_AFTER: Duration = Duration::from_secs(60);

/// Every subscriber's recent reads, by address.
#[derive(Default)]
pub struct Reads {
    targets: Mutex<HashMap<IpAddr, Target>>,
    /// When the page last asked for the graph.
    viewed: Mutex<Option<Instant>>,
}

impl Reads {
    /// Reads `f` of the targets; the page is being looked at.
    pub fn with<T>(&self, f: impl FnOnce(&HashMap<IpAddr, Target>) -> T) -> T {
        *self.viewed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        f(&self.targets.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn watched(&self) -> bool {
        self.viewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < IDLE_AFTER)
    }
}

/// Reads every subscriber, forever.
pub async fn follow(distributor: Arc<Distributor>, reads: Arc<Reads>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !reads.watched() {
            reads
                .targets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            continue;
        }
        let mut targets: HashMap<IpAddr, (String, String)> = HashMap::new();
        for subscriber in distributor.subscribers() {
            if let Some(address) = subscriber.address {
                targets.insert(address, (subscriber.role, subscriber.node));
            }
        }
        let results = read_all(targets.keys().copied().collect()).await;
        let now = Instant::now();
        let mut kept = reads.targets.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|address, _| targets.contains_key(address));
        for (address, result) in results {
            let (role, node) = targets.remove(&address).unwrap_or_default();
            let target = kept.entry(address).or_default();
            target.role = role;
            target.node = node;
            match result {
                Ok(samples) => {
                    target.error = None;
                    target.reads.push_back(Read {
                        at: now,
                        samples: Arc::new(samples),
                    });
                    while target
                        .reads
                        .front()
                        .is_some_and(|r| now.duration_since(r.at) > KEPT)
                    {
                        target.reads.pop_front();
                    }
                }
                Err(error) => target.error = Some(error),
            }
        }
    }
}

/// Reads all `addresses`, [`AT_ONCE`] at a time.
async fn read_all(addresses: Vec<IpAddr>) -> Vec<(IpAddr, Result<Vec<Sample>, String>)> {
    let permits = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let mut tasks = tokio::task::JoinSet::new();
    for address in addresses {
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (address, read(address).await)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(result) = joined {
            results.push(result);
        }
    }
    results
}

async fn read(address: IpAddr) -> Result<Vec<Sample>, String> {
    let target = SocketAddr::new(address, METRICS_PORT);
    let page = tokio::time::timeout(READ_DEADLINE, async {
        let mut stream = tokio::net::TcpStream::connect(target).await?;
        // HTTP/1.0: the answer comes whole and the connection closes after it.
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: ambit\r\n\r\n")
            .await?;
        let mut page = Vec::new();
        stream.take(MAX_PAGE).read_to_end(&mut page).await?;
        Ok::<_, std::io::Error>(page)
    })
    .await
    .map_err(|_| format!("{target}: no answer within {READ_DEADLINE:?}"))?
    .map_err(|e| format!("{target}: {e}"))?;
    let text = String::from_utf8_lossy(&page);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("{target}: not an HTTP answer"));
    };
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(format!("{target}: {status}"));
    }
    Ok(exposition::parse(body))
}
