//! Live connections: shown by the admin endpoint, and re-checked when policy changes so that
//! a connection a new policy forbids is closed (the inbound side remembers what it was
//! authorized on).

use std::{
    collections::HashMap,
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

#[derive(Clone, Default)]
pub struct Connections {
    next_id: Arc<AtomicU64>,
    live: Arc<Mutex<HashMap<u64, Live>>>,
}

/// Removes the connection from the live set when dropped.
pub struct Registration {
    id: u64,
    live: Arc<Mutex<HashMap<u64, Live>>>,
    /// Becomes `true` when the connection must be closed.
    pub closed: watch::Receiver<bool>,
}

impl Connections {
    pub fn register(&self, info: ConnectionInfo, authorized: Option<Authorized>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (close, closed) = watch::channel(false);
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Live {
                info,
                authorized,
                close,
            },
        );
        Registration {
            id,
            live: self.live.clone(),
            closed,
        }
    }

    /// How many connections are carried now.
    pub fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Vec<ConnectionInfo> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = live.values().map(|l| l.info.clone()).collect();
        all.sort_by_key(|c| (c.pod.clone(), c.source));
        all
    }

    /// Closes every inbound connection `still_allowed` now refuses; returns how many.
    pub fn close_unless(&self, mut still_allowed: impl FnMut(&Authorized) -> bool) -> usize {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        for connection in live.values() {
            if let Some(authorized) = &connection.authorized
                && !still_allowed(authorized)
            {
                let _ = connection.close.send(true);
                closed += 1;
            }
        }
        closed
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}
