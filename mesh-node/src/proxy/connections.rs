//! Live connections: shown by the admin endpoint, and re-checked when policy changes so that
//! a connection a new policy forbids is closed (the inbound side remembers what it was
//! authorized on). Indexed by pod: a change of one pod re-checks only its connections.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use mesh_core::Identity;
use serde::Serialize;
use tokio::sync::watch;

#[derive(Clone, Debug, Serialize)]
pub struct ConnectionInfo {
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// `namespace/name` of the enrolled pod on this node.
    pub pod: String,
    pub source: SocketAddr,
    /// The original destination.
    pub destination: SocketAddr,
    /// The peer's SPIFFE identity, when the connection is mutual TLS.
    pub peer_identity: Option<String>,
}

/// What an inbound connection was authorized on, to authorize it again later.
#[derive(Clone, Debug)]
pub struct Authorized {
    /// The destination pod's key (`namespace/name`).
    pub pod: String,
    /// The client's verified identity; `None` for plaintext.
    pub client: Option<Identity>,
    pub source: SocketAddr,
    pub destination_port: u16,
}

struct Live {
    info: ConnectionInfo,
    authorized: Option<Authorized>,
    /// Set to `true` to make the forwarding task close the connection.
    close: watch::Sender<bool>,
}

/// The live connections, by id and by their pod.
#[derive(Default)]
struct LiveSet {
    by_id: HashMap<u64, Live>,
    /// The ids of each pod's connections (`namespace/name`).
    by_pod: HashMap<String, HashSet<u64>>,
}

#[derive(Clone, Default)]
pub struct Connections {
    next_id: Arc<AtomicU64>,
    live: Arc<Mutex<LiveSet>>,
}

/// Removes the connection from the live set when dropped.
pub struct Registration {
    id: u64,
    live: Arc<Mutex<LiveSet>>,
    /// Becomes `true` when the connection must be closed.
    pub closed: watch::Receiver<bool>,
}

impl Connections {
    pub fn register(&self, info: ConnectionInfo, authorized: Option<Authorized>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (close, closed) = watch::channel(false);
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        // The pod's key is copied only for its first connection.
        match live.by_pod.get_mut(&info.pod) {
            Some(ids) => {
                ids.insert(id);
            }
            None => {
                live.by_pod.insert(info.pod.clone(), HashSet::from([id]));
            }
        }
        live.by_id.insert(
            id,
            Live {
                info,
                authorized,
                close,
            },
        );
        drop(live);
        Registration {
            id,
            live: self.live.clone(),
            closed,
        }
    }

    /// How many connections are carried now.
    pub fn len(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Vec<ConnectionInfo> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = live.by_id.values().map(|l| l.info.clone()).collect();
        all.sort_by_key(|c| (c.pod.clone(), c.source));
        all
    }

    /// Closes every inbound connection `still_allowed` now refuses; returns how many it
    /// checked and how many it closed.
    pub fn close_unless(&self, still_allowed: impl FnMut(&Authorized) -> bool) -> Rechecked {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        recheck(live.by_id.values(), still_allowed)
    }

    /// As [`Connections::close_unless`], for the connections of `pods` only.
    pub fn close_unless_of(
        &self,
        pods: &[String],
        still_allowed: impl FnMut(&Authorized) -> bool,
    ) -> Rechecked {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let of_pods = pods
            .iter()
            .filter_map(|pod| live.by_pod.get(pod))
            .flatten()
            .filter_map(|id| live.by_id.get(id));
        recheck(of_pods, still_allowed)
    }
}

/// What a re-check did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rechecked {
    /// Inbound connections authorized again.
    pub checked: usize,
    pub closed: usize,
}

fn recheck<'a>(
    connections: impl Iterator<Item = &'a Live>,
    mut still_allowed: impl FnMut(&Authorized) -> bool,
) -> Rechecked {
    let mut done = Rechecked::default();
    for connection in connections {
        if let Some(authorized) = &connection.authorized {
            done.checked += 1;
            if !still_allowed(authorized) {
                let _ = connection.close.send(true);
                done.closed += 1;
            }
        }
    }
    done
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let Some(gone) = live.by_id.remove(&self.id) else {
            return;
        };
        if let Some(ids) = live.by_pod.get_mut(&gone.info.pod) {
            ids.remove(&self.id);
            if ids.is_empty() {
                live.by_pod.remove(&gone.info.pod);
            }
        }
    }
}
