//! The topology: a fabric namespace with a bridge joining the nodes; in each node namespace a
//! bridge (`cni0`) joining its pods, with routes to the other nodes' pod subnets. Addresses are
//! from 198.18.0.0/15, the range set aside for benchmarking network devices (RFC 2544), and
//! from the unique-local fd00:18::/32, and exist only inside the namespaces made here. Every
//! pod is dual-stack: `198.19.<node>.<pod + 2>` and `fd00:19:<node>::<pod + 2>`.
//!
//! ```text
//!   fabric ns: br0 ── n0 ┄ eth0 [node n0 198.18.0.1] cni0 198.19.0.1/24 ── p0 ┄ eth0 [pod n0-p0 198.19.0.2]
//!              ├──── n1 ┄ eth0 [node n1 198.18.0.2] cni0 198.19.1.1/24 ── ...
//! ```

mod cleanup;
mod pods_file;

pub use pods_file::remote_pod;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use mesh_node::pods::{self, PodsFile};

use self::cleanup::{kill_cgroup_tree, print_agent_logs, remove_cgroup_tree, sweep_leftovers};
use crate::sys::{self, ip_in, sysctl_in};

const NETNS_PREFIX: &str = "ambit-t";
const CGROUP_PREFIX: &str = "ambit-test-";
/// Where this machine mounts cgroup v2 (a hybrid host; real nodes use /sys/fs/cgroup).
pub const CGROUP_V2: &str = "/sys/fs/cgroup/unified";
const BPF_BASE: &str = "/sys/fs/bpf/ambit";

/// Tests sharing one process run one topology at a time: agents attach to the host's cgroup
/// root, and checks that count programs there must not see another test's.
static SERIAL: Mutex<()> = Mutex::new(());
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Debug)]
pub struct Topology {
    pub nodes: usize,
    pub pods_per_node: usize,
    /// Kubernetes namespaces, given to pods round robin (pod j gets `namespaces[j % len]`).
    pub namespaces: Vec<String>,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            nodes: 2,
            pods_per_node: 2,
            namespaces: vec!["default".to_owned()],
        }
    }
}

#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Pin directory of this node's agent.
    pub bpf_dir: PathBuf,
    /// cgroup the node's agent moves itself into.
    pub agent_cgroup: PathBuf,
    pub pods: Vec<Pod>,
}

#[derive(Clone, Debug)]
pub struct Pod {
    /// `n<node>-p<index>`.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    pub node: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// The pod's cgroup, named `pod<uid>` as the kubelet names it: a node agent finding pods
    /// in `/proc` (no pods file) matches that name.
    pub cgroup: PathBuf,
    /// A UUID, unique to this test bed.
    pub uid: String,
}

pub struct Testbed {
    pub id: String,
    /// Pods file, agent logs.
    pub work_dir: PathBuf,
    pub cgroup_dir: PathBuf,
    pub bpf_base: PathBuf,
    fabric: String,
    pub nodes: Vec<Node>,
    pods_file: Mutex<PodsFile>,
    /// A process per pod holding it, as Kubernetes' pause container does; see
    /// [`start_pause_processes`](Self::start_pause_processes).
    pause: Mutex<Vec<std::process::Child>>,
    _serial: MutexGuard<'static, ()>,
}

impl Pod {
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// `namespace/name`, as the agent names pods.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Runs `f` on this thread inside the pod's network namespace.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        sys::in_netns(&self.netns_path(), f)
    }

    /// A TCP connection opened from inside the pod, as the pod's app would.
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let stream = self
            .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .map_err(std::io::Error::other)??;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// A dual-stack listener on all of the pod's addresses.
    pub fn listen(&self, port: u16) -> Result<TcpListener> {
        let addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
        self.enter(|| TcpListener::bind(addr))?
            .with_context(|| format!("listening on {addr} in pod {}", self.name))
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip.into(), port)
    }

    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip6.into(), port)
    }

    /// Starts a process inside the pod: its network namespace and its cgroup.
    pub fn spawn(&self, command: &mut Command) -> Result<Child> {
        let netns = std::fs::File::open(self.netns_path())?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.cgroup.join("cgroup.procs"))?;
        sys::start_inside(command, netns, Some(procs));
        command
            .spawn()
            .with_context(|| format!("starting {command:?} in pod {}", self.name))
    }

    /// The kernel's cookie for the pod's network namespace (the enrollment map's key).
    pub fn netns_cookie(&self) -> Result<u64> {
        let socket = self.enter(|| std::net::UdpSocket::bind("127.0.0.1:0"))??;
        Ok(mesh_node::netns::netns_cookie(&socket)?)
    }
}

impl Testbed {
    /// Builds the topology. Needs root.
    pub fn new(topology: Topology) -> Result<Self> {
        sys::require_root()?;
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        sweep_leftovers();
        let pid = std::process::id();
        let id = format!("{pid}-{}", SEQUENCE.fetch_add(1, Ordering::Relaxed));
        let work_dir = std::env::temp_dir().join(format!("ambit-test-{id}"));
        std::fs::create_dir_all(work_dir.join("config"))?;
        let mut testbed = Testbed {
            fabric: format!("{NETNS_PREFIX}{id}-fab"),
            cgroup_dir: Path::new(CGROUP_V2).join(format!("{CGROUP_PREFIX}{id}")),
            bpf_base: Path::new(BPF_BASE).join(format!("test-{id}")),
            id,
            work_dir,
            nodes: Vec::new(),
            pods_file: Mutex::new(PodsFile::default()),
            pause: Mutex::new(Vec::new()),
            _serial: serial,
        };
        // From here on, Drop tears down whatever part was built.
        testbed
            .build(&topology)
            .context("building the test topology")?;
        Ok(testbed)
    }

    fn build(&mut self, topology: &Topology) -> Result<()> {
        std::fs::create_dir_all(&self.cgroup_dir).with_context(|| {
            format!(
                "creating {} (is cgroup v2 mounted at {CGROUP_V2}?)",
                self.cgroup_dir.display()
            )
        })?;
        sys::run("ip", &["netns", "add", &self.fabric])?;
        ip_in(&self.fabric, "link add br0 type bridge")?;
        ip_in(&self.fabric, "link set br0 up")?;
        ip_in(&self.fabric, "link set lo up")?;
        // The controller's address, reachable from every node.
        ip_in(&self.fabric, "addr add 198.18.0.254/24 dev br0")?;
        for n in 0..topology.nodes {
            let node = self.build_node(n, topology)?;
            self.nodes.push(node);
        }
        // The controller reaches pods (a waypoint pod asks it for its certificate) through
        // their nodes.
        for (k, node) in self.nodes.iter().enumerate() {
            ip_in(
                &self.fabric,
                &format!("route add 198.19.{k}.0/24 via {}", node.ip),
            )?;
        }
        // Routes between nodes' pod subnets.
        for node in &self.nodes {
            for (k, other) in self.nodes.iter().enumerate() {
                if other.name != node.name {
                    ip_in(
                        &node.netns,
                        &format!("route add 198.19.{k}.0/24 via {}", other.ip),
                    )?;
                    ip_in(
                        &node.netns,
                        &format!("-6 route add fd00:19:{k}::/64 via fd00:18::{}", k + 1),
                    )?;
                }
            }
        }
        let namespaces = topology
            .namespaces
            .iter()
            .map(|name| pods::Namespace {
                name: name.clone(),
                labels: Default::default(),
            })
            .collect();
        let pods = self
            .pods()
            .map(|pod| pods::Pod {
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                node: pod.node.clone(),
                service_account: "default".to_owned(),
                ip: pod.ip,
                netns: pod.netns_path(),
                cgroup: Some(pod.cgroup.clone()),
                labels: Default::default(),
                uid: Some(pod.uid.clone()),
                owner: None,
                names: None,
                enrolled: None,
                waypoint: None,
            })
            .collect();
        self.update_pods_file(|file| {
            file.namespaces = namespaces;
            file.pods = pods;
        })
    }

    fn build_node(&self, n: usize, topology: &Topology) -> Result<Node> {
        let name = format!("n{n}");
        let netns = format!("{NETNS_PREFIX}{}-{name}", self.id);
        let ip = Ipv4Addr::new(198, 18, 0, n as u8 + 1);
        sys::run("ip", &["netns", "add", &netns])?;
        ip_in(
            &self.fabric,
            &format!("link add {name} type veth peer name eth0 netns {netns}"),
        )?;
        ip_in(&self.fabric, &format!("link set {name} master br0 up"))?;
        ip_in(&netns, "link set lo up")?;
        ip_in(&netns, &format!("addr add {ip}/24 dev eth0"))?;
        ip_in(
            &netns,
            &format!("addr add fd00:18::{}/64 dev eth0 nodad", n + 1),
        )?;
        ip_in(&netns, "link set eth0 up")?;
        ip_in(&netns, "link add cni0 type bridge")?;
        ip_in(&netns, &format!("addr add 198.19.{n}.1/24 dev cni0"))?;
        ip_in(
            &netns,
            &format!("addr add fd00:19:{n}::1/64 dev cni0 nodad"),
        )?;
        ip_in(&netns, "link set cni0 up")?;
        sysctl_in(
            &netns,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        )?;
        let node_cgroup = self.cgroup_dir.join(&name);
        std::fs::create_dir_all(&node_cgroup)?;
        let mut pods = Vec::new();
        for p in 0..topology.pods_per_node {
            let pod_name = format!("{name}-p{p}");
            let pod_netns = format!("{NETNS_PREFIX}{}-{pod_name}", self.id);
            let pod_ip = Ipv4Addr::new(198, 19, n as u8, p as u8 + 2);
            let pod_ip6 = Ipv6Addr::new(0xfd00, 0x19, n as u16, 0, 0, 0, 0, p as u16 + 2);
            sys::run("ip", &["netns", "add", &pod_netns])?;
            ip_in(
                &netns,
                &format!("link add p{p} type veth peer name eth0 netns {pod_netns}"),
            )?;
            ip_in(&netns, &format!("link set p{p} master cni0 up"))?;
            ip_in(&pod_netns, "link set lo up")?;
            ip_in(&pod_netns, &format!("addr add {pod_ip}/24 dev eth0"))?;
            ip_in(&pod_netns, &format!("addr add {pod_ip6}/64 dev eth0 nodad"))?;
            ip_in(&pod_netns, "link set eth0 up")?;
            ip_in(&pod_netns, &format!("route add default via 198.19.{n}.1"))?;
            ip_in(
                &pod_netns,
                &format!("-6 route add default via fd00:19:{n}::1"),
            )?;
            // Connection-rate benchmarks measure the mesh, not the kernel's port allocator; the range
            // stays clear of the mesh's 150xx ports, as Kubernetes' default (32768-60999) does.
            sysctl_in(
                &pod_netns,
                &[
                    "net.ipv4.tcp_tw_reuse=1",
                    "net.ipv4.ip_local_port_range=20000 65000",
                ],
            )?;
            let uid = format!("7e57{n:04x}-{p:04x}-4000-8000-{:012x}", std::process::id());
            // Where the kubelet (cgroupfs driver) puts a pod: agents find pods by this layout.
            let cgroup = node_cgroup.join("kubepods").join(format!("pod{uid}"));
            std::fs::create_dir_all(&cgroup)?;
            let namespace = topology.namespaces[p % topology.namespaces.len()].clone();
            pods.push(Pod {
                name: pod_name,
                namespace,
                node: name.clone(),
                netns: pod_netns,
                ip: pod_ip,
                ip6: pod_ip6,
                cgroup,
                uid,
            });
        }
        Ok(Node {
            bpf_dir: self.bpf_base.join(&name),
            agent_cgroup: node_cgroup.join("agent"),
            name,
            netns,
            ip,
            pods,
        })
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|node| node.pods.iter())
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods()
            .find(|pod| pod.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in the test bed"))
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the test bed"))
    }

    pub fn fabric_netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.fabric)
    }

    /// The directory of Istio YAML every agent watches.
    pub fn config_dir(&self) -> PathBuf {
        self.work_dir.join("config")
    }

    /// Writes (or replaces) a policy file in the config directory, atomically.
    pub fn write_policy(&self, name: &str, yaml: &str) -> Result<()> {
        let tmp = self.work_dir.join(format!("{name}.yaml.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.config_dir().join(format!("{name}.yaml")))?;
        Ok(())
    }

    pub fn remove_policy(&self, name: &str) -> Result<()> {
        Ok(std::fs::remove_file(
            self.config_dir().join(format!("{name}.yaml")),
        )?)
    }

    /// Starts a long-lived process in every pod (its network namespace and cgroup), as the
    /// kubelet's pause container: what an agent without a pods file finds pods by.
    pub fn start_pause_processes(&self) -> Result<()> {
        let mut pause = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        for pod in self.pods() {
            pause.push(pod.spawn(Command::new("sleep").arg("infinity"))?);
        }
        Ok(())
    }

    fn teardown(&mut self) {
        // Everything started in the test bed lives under its cgroup: agents and pod processes.
        kill_cgroup_tree(&self.cgroup_dir);
        for mut child in self
            .pause
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        // By prefix, so a half-built topology goes too.
        let own = format!("{NETNS_PREFIX}{}-", self.id);
        if let Ok(out) = sys::run("ip", &["netns", "list"]) {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or_default();
                if name.starts_with(&own) {
                    let _ = sys::run("ip", &["netns", "del", name]);
                }
            }
        }
        // Unlinking pinned links detaches the programs.
        let _ = std::fs::remove_dir_all(&self.bpf_base);
        remove_cgroup_tree(&self.cgroup_dir);
        if std::thread::panicking() {
            print_agent_logs(&self.work_dir);
        }
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.teardown();
    }
}
