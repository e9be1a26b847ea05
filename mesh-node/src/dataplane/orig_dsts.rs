//! Each enrolled pod's map of original destinations (`ORIG_DSTS`'s inner maps): created at
//! enrollment, read and consumed by the outbound proxy on every accept, dropped at unenroll.
//!
//! A map per pod is what keeps pods apart: an LRU shared by the node let one pod's connect
//! storm evict other pods' pending entries, and their connections then failed closed.

use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap, HashOfMaps, Map, MapData, MapError};
use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH;
use mesh_common::{OrigDst, OrigDstKey, PENDING_PER_POD, maps};

use super::{Error, to_socket_addr};

type PodMap = HashMap<MapData, OrigDstKey, OrigDst>;

/// Where captured connections were going, per pod. Cheap to clone; one lock, held for a map
/// lookup and delete per accept.
#[derive(Clone)]
pub struct OrigDsts {
    inner: Arc<Mutex<PodMaps>>,
}

struct PodMaps {
    /// The pinned outer map the kernel reads, by netns cookie.
    outer: HashOfMaps<MapData, u64, PodMap>,
    /// Handles on the inner maps, so an accept costs no map-by-id open.
    pods: StdHashMap<u64, PodMap>,
}

impl OrigDsts {
    pub(super) fn new(outer: HashOfMaps<MapData, u64, PodMap>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(PodMaps {
                outer,
                pods: StdHashMap::new(),
            })),
        }
    }

    /// Gives the pod in namespace `cookie` its map, or keeps the one a previous agent made
    /// (its pending entries belong to connections still waiting to be accepted).
    pub(super) fn add_pod(&self, cookie: u64) -> Result<(), Error> {
        let mut maps = self.lock();
        if maps.pods.contains_key(&cookie) {
            return Ok(());
        }
        let map = match maps.outer.get(&cookie, 0) {
            Ok(map) => map,
            Err(_) => {
                let map = new_pod_map().map_err(map_error)?;
                maps.outer.insert(cookie, &map, 0).map_err(map_error)?;
                map
            }
        };
        maps.pods.insert(cookie, map);
        Ok(())
    }

    /// Drops the pod's map; the kernel frees it once no program holds it.
    pub(super) fn remove_pod(&self, cookie: u64) -> Result<(), Error> {
        let mut maps = self.lock();
        maps.pods.remove(&cookie);
        match maps.outer.remove(&cookie) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(source) => Err(map_error(source)),
        }
    }

    /// The original destination of the connection the app in namespace `cookie` opened from
    /// `client`, consumed so a later connection from the same address cannot read a stale one.
    pub fn take(&self, cookie: u64, client: SocketAddr) -> Option<SocketAddr> {
        let key = key_of(client);
        let mut maps = self.lock();
        if !maps.pods.contains_key(&cookie) {
            // Enrolled by a previous agent and not yet re-enrolled by this one.
            let map = maps.outer.get(&cookie, 0).ok()?;
            maps.pods.insert(cookie, map);
        }
        let map = maps.pods.get_mut(&cookie)?;
        let dst = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(to_socket_addr(&dst))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PodMaps> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The key `sock_ops` wrote for this client: a v4-mapped peer is the IPv4 one.
fn key_of(client: SocketAddr) -> OrigDstKey {
    let port = u32::from(client.port());
    match client.ip().to_canonical() {
        IpAddr::V4(ip) => OrigDstKey::v4(u32::from_ne_bytes(ip.octets()), port),
        IpAddr::V6(ip) => OrigDstKey::v6(ip.octets(), port),
    }
}

fn new_pod_map() -> Result<PodMap, MapError> {
    let definition = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_LRU_HASH as u32,
        size_of::<OrigDstKey>() as u32,
        size_of::<OrigDst>() as u32,
        PENDING_PER_POD,
        0,
    );
    // The kernel keeps 15 bytes of a map's name: what `bpftool map show` lists.
    let data = MapData::create(definition, "ambit_pod_dsts", None)?;
    PodMap::try_from(Map::from_map_data(data)?)
}

fn map_error(source: MapError) -> Error {
    Error::Map {
        name: maps::ORIG_DSTS,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_mapped_clients_share_a_key_and_v6_does_not() {
        let v4 = key_of("127.0.0.1:40000".parse().unwrap());
        let mapped = key_of("[::ffff:127.0.0.1]:40000".parse().unwrap());
        let v6 = key_of("[::1]:40000".parse().unwrap());
        assert_eq!(v4, mapped);
        assert_ne!(v4, v6);
        assert_eq!(v4.family, mesh_common::FAMILY_INET);
        assert_eq!(v6.family, mesh_common::FAMILY_INET6);
        assert_ne!(v4, key_of("127.0.0.2:40000".parse().unwrap()));
    }
}
