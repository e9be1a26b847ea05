//! The kernel side of the agent: loads `mesh-ebpf`, pins maps, programs and links under the
//! bpffs directory, attaches idempotently, and owns the maps.
//!
//! Restarts re-use what is pinned: maps keep their entries (enrolled pods stay captured, and
//! fail closed while no agent listens), and each pinned link is replaced by a link to the new
//! program *after* the new one is attached, so capture has no gap and no program is left
//! attached twice.

mod orig_dsts;
mod pins;

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::RawFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, SockHash},
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, SkLookup, SkMsg, SockOps, links::FdLink,
    },
};
use mesh_common::{EnrolledPod, FAMILY_INET, NodeConfig, OrigDst, PodAddr, maps, programs};

pub use orig_dsts::OrigDsts;
pub use pins::{ensure_bpffs, is_bpffs};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object failed (is this root on a kernel with BTF?): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("eBPF program {0} is missing from the object (agent and mesh-ebpf out of step?)")]
    MissingProgram(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("eBPF map {0} is missing from the object (agent and mesh-ebpf out of step?)")]
    MissingMap(&'static str),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pinning at {path}: {message}")]
    Pin { path: PathBuf, message: String },
}

/// The object built from mesh-ebpf by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-ebpf"));

/// Loads program `$name` as a `$ty` and pins it under `progs/`, replacing the previous pin.
macro_rules! load_pinned {
    ($ebpf:expr, $ty:ty, $name:expr, $dir:expr) => {{
        let name = $name;
        let program: &mut $ty = program($ebpf, name)?;
        program
            .load()
            .map_err(|source| Error::Program { name, source })?;
        pins::replace_program_pin($dir, name, |path| program.pin(path))?;
        program
    }};
}

/// Attaches a loaded cgroup program and pins the link, replacing (and so detaching) the link a
/// previous agent pinned there only once the new one is attached.
macro_rules! attach_to_cgroup {
    ($program:expr, $name:expr, $cgroup:expr, $dir:expr) => {{
        let name = $name;
        let id = $program
            .attach($cgroup, CgroupAttachMode::Single)
            .map_err(|source| Error::Program { name, source })?;
        let link: FdLink = $program
            .take_link(id)
            .map_err(|source| Error::Program { name, source })?
            .try_into()
            .map_err(|e| Error::Pin {
                path: $dir.to_owned(),
                message: format!("{name}: {e}"),
            })?;
        pins::replace_link(&pins::link_path($dir, name), link)?;
    }};
}

/// Loaded programs and the maps the reconciler writes. One writer: the enrollment loop.
pub struct Dataplane {
    /// Pin directory (maps at its top, `progs/` and `links/` below).
    dir: PathBuf,
    /// Owns the loaded programs; `sk_lookup` is attached again for every enrolled pod.
    ebpf: Ebpf,
    enrolled: HashMap<MapData, u64, EnrolledPod>,
    inbound_listeners: SockHash<MapData, PodAddr>,
    /// Each pod's map of pending original destinations, made before its capture starts.
    orig: OrigDsts,
    /// The kubelet's pod cgroup parents: their new children are held until decided.
    pod_parents: HashMap<MapData, u64, u8>,
    /// Pod cgroups decided about (captured, or let go).
    decided: HashMap<MapData, u64, u8>,
    /// The decisions map was made now (no earlier agent pinned one since the node booted).
    pub fresh_decisions: bool,
}

impl Dataplane {
    /// Loads and attaches everything, replacing what a previous agent pinned.
    pub fn start(
        dir: &Path,
        cgroup_root: &Path,
        node: NodeConfig,
    ) -> Result<(Self, OrigDsts), Error> {
        pins::ensure_dirs(dir)?;
        pins::remove_retired(dir)?;
        let fresh_decisions = !dir.join(pins::DECIDED_PODS_PIN).exists();
        let mut loader = EbpfLoader::new();
        let pin_paths: Vec<(&'static str, PathBuf)> = maps::PINNED
            .iter()
            .map(|(name, file)| (*name, dir.join(file)))
            .collect();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        forward_kernel_logs(&mut ebpf);

        let mut config: Array<MapData, NodeConfig> = take_map(&mut ebpf, maps::NODE_CONFIG)?;
        config.set(0, node, 0).map_err(|source| Error::Map {
            name: maps::NODE_CONFIG,
            source,
        })?;

        let cgroup = File::open(cgroup_root).map_err(|source| Error::Io {
            what: "opening the cgroup to attach to",
            path: cgroup_root.to_owned(),
            source,
        })?;
        for name in [programs::CONNECT4, programs::CONNECT6] {
            let program = load_pinned!(&mut ebpf, CgroupSockAddr, name, dir);
            attach_to_cgroup!(program, name, &cgroup, dir);
        }
        let program = load_pinned!(&mut ebpf, SockOps, programs::SOCK_OPS, dir);
        attach_to_cgroup!(program, programs::SOCK_OPS, &cgroup, dir);

        let accel: SockHash<MapData, mesh_common::SockKey> =
            take_map(&mut ebpf, maps::ACCEL_SOCKS)?;
        let name = programs::SK_MSG;
        let program = load_pinned!(&mut ebpf, SkMsg, name, dir);
        // A map has one msg verdict program: attaching replaces the previous agent's.
        let id = program
            .attach(accel.fd())
            .map_err(|source| Error::Program { name, source })?;
        // Owned by the map from now on; dropping the handle must not detach it.
        let link = program
            .take_link(id)
            .map_err(|source| Error::Program { name, source })?;
        std::mem::forget(link);
        // Attached per pod, at enrollment.
        load_pinned!(&mut ebpf, SkLookup, programs::SK_LOOKUP, dir);

        let enrolled = take_map(&mut ebpf, maps::ENROLLED_PODS)?;
        let inbound_listeners = take_map(&mut ebpf, maps::INBOUND_LISTENERS)?;
        let orig = OrigDsts::new(take_map(&mut ebpf, maps::ORIG_DSTS)?);
        let pod_parents = take_map(&mut ebpf, maps::POD_CGROUP_PARENTS)?;
        let decided = take_map(&mut ebpf, maps::DECIDED_PODS)?;
        Ok((
            Self {
                dir: dir.to_owned(),
                ebpf,
                enrolled,
                inbound_listeners,
                orig: orig.clone(),
                pod_parents,
                decided,
                fresh_decisions,
            },
            orig,
        ))
    }

    /// Starts capturing a pod: inbound listeners and `sk_lookup` first, then the enrollment
    /// entry that turns outbound capture on. When a step fails, what referred to this attempt's
    /// listeners is undone; `sk_lookup` and the enrollment entry, if in place, stay, which
    /// holds the pod failing closed (see `refuse`) rather than releasing it even for a moment.
    pub fn enroll(
        &mut self,
        netns: &crate::netns::NetNs,
        cookie: u64,
        pod: EnrolledPod,
        inbound_listeners: &[(PodAddr, RawFd)],
    ) -> Result<(), Error> {
        let result = self.capture(netns, cookie, pod, inbound_listeners);
        if result.is_err() {
            let addrs: Vec<PodAddr> = inbound_listeners.iter().map(|(addr, _)| *addr).collect();
            if let Err(error) = self.remove_listeners(&addrs) {
                tracing::error!(%error, cookie, "undoing a failed enrollment failed");
            }
            if let Err(error) = self.orig.remove_pod(cookie) {
                tracing::error!(%error, cookie, "undoing a failed enrollment failed");
            }
        }
        result
    }

    /// Holds a pod the agent could not enroll failing closed: its connects are redirected to a
    /// listener the agent does not have (refused), and `sk_lookup` drops connections to its
    /// addresses, since it has no listeners to steer them to. `enroll` replaces this.
    pub fn refuse(
        &mut self,
        netns: &crate::netns::NetNs,
        cookie: u64,
        pod: EnrolledPod,
    ) -> Result<(), Error> {
        self.enroll(netns, cookie, pod, &[])
    }

    fn capture(
        &mut self,
        netns: &crate::netns::NetNs,
        cookie: u64,
        pod: EnrolledPod,
        inbound_listeners: &[(PodAddr, RawFd)],
    ) -> Result<(), Error> {
        for (addr, fd) in inbound_listeners {
            self.inbound_listeners
                .insert(*addr, *fd, 0)
                .map_err(|source| Error::Map {
                    name: maps::INBOUND_LISTENERS,
                    source,
                })?;
        }
        let name = programs::SK_LOOKUP;
        let program: &mut SkLookup = program(&mut self.ebpf, name)?;
        let netns_file = File::open(netns.path()).map_err(|source| Error::Io {
            what: "opening network namespace",
            path: netns.path().to_owned(),
            source,
        })?;
        let id = program
            .attach(&netns_file)
            .map_err(|source| Error::Program { name, source })?;
        let link: FdLink = program
            .take_link(id)
            .map_err(|source| Error::Program { name, source })?
            .into();
        pins::replace_link(&pins::sk_lookup_link_path(&self.dir, cookie), link)?;
        self.orig.add_pod(cookie)?;
        self.enrolled
            .insert(cookie, pod, 0)
            .map_err(|source| Error::Map {
                name: maps::ENROLLED_PODS,
                source,
            })
    }

    /// Stops capturing a pod: new connections go straight again; open ones are untouched.
    pub fn unenroll(&mut self, cookie: u64, inbound_addrs: &[PodAddr]) -> Result<(), Error> {
        remove_ignoring_absent(&mut self.enrolled, &cookie, maps::ENROLLED_PODS)?;
        pins::remove_link(&pins::sk_lookup_link_path(&self.dir, cookie))?;
        self.orig.remove_pod(cookie)?;
        self.remove_listeners(inbound_addrs)
    }

    fn remove_listeners(&mut self, inbound_addrs: &[PodAddr]) -> Result<(), Error> {
        for addr in inbound_addrs {
            match self.inbound_listeners.remove(addr) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => {
                    return Err(Error::Map {
                        name: maps::INBOUND_LISTENERS,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Stops capturing a pod's new connections, outbound and inbound, and leaves what those it
    /// carries still need (its listeners, its pending original destinations): the first step
    /// of releasing it for good (`unenroll` finishes).
    pub fn stop_capture(&mut self, cookie: u64) -> Result<(), Error> {
        remove_ignoring_absent(&mut self.enrolled, &cookie, maps::ENROLLED_PODS)?;
        pins::remove_link(&pins::sk_lookup_link_path(&self.dir, cookie))
    }

    /// Holds, from now on, every new child of these cgroups (by id) until it is decided.
    pub fn hold_pods_under(&mut self, parents: &[u64]) -> Result<(), Error> {
        let stale: Vec<u64> = self
            .pod_parents
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !parents.contains(id))
            .collect();
        for id in stale {
            remove_ignoring_absent(&mut self.pod_parents, &id, maps::POD_CGROUP_PARENTS)?;
        }
        for id in parents {
            self.pod_parents
                .insert(id, 1, 0)
                .map_err(|source| Error::Map {
                    name: maps::POD_CGROUP_PARENTS,
                    source,
                })?;
        }
        Ok(())
    }

    /// The pod cgroup `id` is decided: its connects are captured (its namespace is enrolled)
    /// or left alone (it is not in the mesh).
    pub fn decide(&mut self, id: u64) -> Result<(), Error> {
        self.decided.insert(id, 1, 0).map_err(|source| Error::Map {
            name: maps::DECIDED_PODS,
            source,
        })
    }

    pub fn is_decided(&self, id: u64) -> bool {
        self.decided.get(&id, 0).is_ok()
    }

    /// The pod cgroup `id` is gone: its decision too.
    pub fn forget_decision(&mut self, id: u64) -> Result<(), Error> {
        remove_ignoring_absent(&mut self.decided, &id, maps::DECIDED_PODS)
    }

    /// Namespace cookies a previous agent left enrolled (in the map or as `sk_lookup` links).
    pub fn leftover_enrollments(&self) -> Vec<u64> {
        let mut cookies: Vec<u64> = self.enrolled.keys().filter_map(Result::ok).collect();
        cookies.extend(pins::sk_lookup_link_cookies(&self.dir));
        cookies.sort_unstable();
        cookies.dedup();
        cookies
    }

    /// Removes an enrollment whose pod is gone (its namespace may no longer exist).
    pub fn forget(&mut self, cookie: u64) -> Result<(), Error> {
        remove_ignoring_absent(&mut self.enrolled, &cookie, maps::ENROLLED_PODS)?;
        pins::remove_link(&pins::sk_lookup_link_path(&self.dir, cookie))?;
        self.orig.remove_pod(cookie)
    }
}

/// Removes everything pinned under `dir`: unpinning a link detaches its program (no agent
/// keeps a link open), and programs and maps are freed once no process holds them. Nothing is
/// captured afterwards, and nothing is held failing closed.
pub fn remove_pins(dir: &Path) -> Result<(), Error> {
    let links = dir.join("links");
    if let Ok(entries) = std::fs::read_dir(&links) {
        // Links first, so that no program stays attached to maps already gone.
        for entry in entries.filter_map(Result::ok) {
            pins::remove_link(&entry.path())?;
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            what: "removing the pin directory",
            path: dir.to_owned(),
            source,
        }),
    }
}

pub(crate) fn to_socket_addr(dst: &OrigDst) -> SocketAddr {
    let port = dst.port as u16;
    if dst.family == FAMILY_INET {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(dst.addr[0].to_ne_bytes())), port)
    } else {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(dst.addr) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)
    }
}

/// Copies what the programs log (aya-log) into the agent's log, e.g. why `sk_lookup` refused a
/// connection. Must run inside the runtime.
fn forward_kernel_logs(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(error) => {
            tracing::warn!(%error, "kernel program logs unavailable");
            return;
        }
    };
    // SAFETY: the logger owns its ring buffer's fd, which stays open and the same for as long
    // as the logger lives, and the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut logger = match registered {
        Ok(logger) => logger,
        Err(error) => {
            tracing::warn!(error = %error.into_parts().1, "kernel program logs unavailable");
            return;
        }
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(Error::MissingProgram(name))?;
    program
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, Error>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
    M::try_from(map).map_err(|source| Error::Map { name, source })
}

fn remove_ignoring_absent<V: aya::Pod>(
    map: &mut HashMap<MapData, u64, V>,
    key: &u64,
    name: &'static str,
) -> Result<(), Error> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(Error::Map { name, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_destinations_decode_in_network_order() {
        let v4 = OrigDst {
            family: FAMILY_INET,
            port: 8080,
            addr: [u32::from_ne_bytes([198, 19, 0, 2]), 0, 0, 0],
        };
        assert_eq!(to_socket_addr(&v4), "198.19.0.2:8080".parse().unwrap());
        let v6 = OrigDst {
            family: mesh_common::FAMILY_INET6,
            port: 443,
            addr: [
                u32::from_ne_bytes([0xfd, 0, 0, 0]),
                0,
                0,
                u32::from_ne_bytes([0, 0, 0, 7]),
            ],
        };
        assert_eq!(to_socket_addr(&v6), "[fd00::7]:443".parse().unwrap());
    }
}
