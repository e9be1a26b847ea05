//! Live connections, for the admin endpoint and for tests that check what was captured.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;

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

#[derive(Clone, Default)]
pub struct Connections {
    next_id: Arc<AtomicU64>,
    live: Arc<Mutex<HashMap<u64, ConnectionInfo>>>,
}

/// Removes the connection from the live set when dropped.
pub struct Registration {
    id: u64,
    live: Arc<Mutex<HashMap<u64, ConnectionInfo>>>,
}

impl Connections {
    pub fn register(&self, info: ConnectionInfo) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, info);
        Registration {
            id,
            live: self.live.clone(),
        }
    }

    pub fn snapshot(&self) -> Vec<ConnectionInfo> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = live.values().cloned().collect();
        all.sort_by_key(|c| (c.pod.clone(), c.source));
        all
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
