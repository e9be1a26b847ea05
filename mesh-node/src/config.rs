//! The agent's configuration: command-line flags, each also settable from the environment.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use serde::Serialize;

/// Ambit node agent: captures enrolled pods' traffic with eBPF and carries it.
#[derive(Clone, Debug, Parser, Serialize)]
#[command(name = "mesh-node", version)]
pub struct Config {
    /// This node's name: only pods scheduled here (`node:` in the pods file) are enrolled.
    /// Required, except with `--uninstall`.
    #[arg(long, env = "AMBIT_NODE_NAME", default_value = "")]
    pub node_name: String,

    /// Uninstall from this node, then exit: the running agent (found at `--handover-socket`)
    /// releases every pod (their new connections go straight, those it carries go on),
    /// detaches its programs and removes its pins, then drains and waits to be stopped. With
    /// no agent running, the pins under `--bpf-dir` are removed here, which releases pods a
    /// stopped agent left failing closed.
    #[arg(long)]
    pub uninstall: bool,

    /// Local mode: the YAML file of namespaces and pods, watched for changes. With
    /// `--config-source controller` only the pods' network namespaces are read from it; without
    /// it they are found in `/proc` by the cgroup the kubelet names after each pod's UID.
    #[arg(long, env = "AMBIT_PODS_FILE")]
    pub pods_file: Option<PathBuf>,

    /// Where the agent pins its maps, programs and links (on a bpffs mount).
    #[arg(long, env = "AMBIT_BPF_DIR", default_value = "/sys/fs/bpf/ambit")]
    pub bpf_dir: PathBuf,

    /// The cgroup v2 directory the connect and sock_ops programs attach to; it must contain
    /// every pod's cgroup and the agent's. By default the root of the hierarchy, wherever
    /// `/proc/self/mountinfo` says it is mounted (`/sys/fs/cgroup` on most nodes).
    #[arg(long, env = "AMBIT_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,

    /// A cgroup v2 directory the agent moves itself into at start, so that its sockets are
    /// told apart from the pods' by cgroup id. Without it the agent stays where it was
    /// started (a DaemonSet's container already has a cgroup of its own).
    #[arg(long, env = "AMBIT_AGENT_CGROUP")]
    pub agent_cgroup: Option<PathBuf>,

    /// The kubelet's `kubepods` cgroup directory (cgroupfs or systemd driver): a pod cgroup
    /// appearing below it (or below its QoS classes) has its connects refused by the kernel
    /// until the agent has captured it or let it go, so a pod of the mesh never sends around
    /// it while it starts. By default `kubepods.slice` or `kubepods` under the hierarchy's root;
    /// without one, starting pods are not held.
    #[arg(long, env = "AMBIT_POD_CGROUPS")]
    pub pod_cgroups: Option<PathBuf>,

    /// How long a starting pod the agent knows nothing of (the controller has not sent it yet)
    /// is held before it is let go uncaptured (logged, and counted in
    /// `ambit_pods_let_go_undecided_total`). Longer is safer for mesh pods and slower for pods
    /// outside the mesh that start while the controller is away.
    #[arg(long, env = "AMBIT_UNDECIDED_HOLD_SECS", default_value_t = 5)]
    pub undecided_hold_secs: u64,

    /// Splice the app <-> agent loopback hop with sockmap (`sk_msg`).
    #[arg(long, env = "AMBIT_ACCELERATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub accelerate: bool,

    /// Prometheus metrics (`/metrics`, `/stats/prometheus`).
    #[arg(long, env = "AMBIT_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,

    /// Admin endpoint: config dump and live connections. Keep it on loopback.
    #[arg(long, env = "AMBIT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// Readiness (`/healthz/ready`): ready once the programs are attached and pods enrolled.
    #[arg(long, env = "AMBIT_READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,

    /// Runtime worker threads for the data path.
    #[arg(long, env = "AMBIT_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,

    /// A directory of Istio YAML (PeerAuthentication, AuthorizationPolicy), watched for
    /// changes. Without it: PERMISSIVE, allow all.
    #[arg(long, env = "AMBIT_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,

    /// Where pods and policies come from: `file` (`--pods-file`, `--config-dir`) or
    /// `controller` (its configuration stream, on the `--ca-addr` connection).
    #[arg(
        long,
        alias = "policy-source",
        env = "AMBIT_CONFIG_SOURCE",
        value_enum,
        default_value_t = ConfigSource::File,
        requires_if("controller", "ca_addr")
    )]
    pub config_source: ConfigSource,

    /// Where `/proc` is (the host's, with `hostPID`): pods' network namespaces are found there
    /// when the controller gives the pods and no `--pods-file` is set.
    #[arg(long, env = "AMBIT_PROC", default_value = "/proc")]
    pub proc_dir: PathBuf,

    /// The namespace whose policies apply mesh-wide (Istio's root namespace).
    #[arg(long, env = "AMBIT_ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,

    /// The mesh's trust domain.
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// The cluster's name in metrics (`source_cluster`, `destination_cluster`), Istio's
    /// `CLUSTER_ID`.
    #[arg(long, env = "AMBIT_CLUSTER_ID", default_value = mesh_core::telemetry::DEFAULT_CLUSTER)]
    pub cluster_id: String,

    /// The controller's certificate service, `host:port` (a name is resolved at each
    /// connection). With it, traffic between enrolled pods is carried
    /// over HBONE (mutual TLS); without it, captured traffic is forwarded as plain TCP.
    #[arg(long, env = "AMBIT_CA_ADDR", requires_all = ["ca_root", "token_file"])]
    pub ca_addr: Option<String>,

    /// PEM file with the mesh's root certificate(s).
    #[arg(long, env = "AMBIT_CA_ROOT")]
    pub ca_root: Option<PathBuf>,

    /// File holding this node's bootstrap token for the certificate service.
    #[arg(long, env = "AMBIT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Lifetime asked for workload certificates, in seconds (renewed at half of it).
    #[arg(long, env = "AMBIT_CERT_LIFETIME", default_value_t = 24 * 3600)]
    pub cert_lifetime: u64,

    /// How long the connections the agent carries may go on once it stops accepting: after
    /// handing its pods over to a successor, or on SIGTERM without one (new connections are
    /// then refused: the pods stay captured and fail closed). Keep it under the pod's
    /// termination grace period (30 s in deploy/node.yaml). A second SIGTERM ends it at once.
    #[arg(long, env = "AMBIT_DRAIN_TIMEOUT_SECS", default_value_t = 25)]
    pub drain_timeout_secs: u64,

    /// The Unix socket over which a new agent takes this one's listening sockets (restart and
    /// upgrade without refusing a connection). In a directory only root can enter, on the
    /// host (deploy/node.yaml mounts /var/run/ambit/node): both agents of a rollout must see it.
    #[arg(
        long,
        env = "AMBIT_HANDOVER_SOCKET",
        default_value = "/var/run/ambit/node/handover.sock"
    )]
    pub handover_socket: PathBuf,

    /// How often the pods file is checked for changes, in milliseconds.
    #[arg(long, env = "AMBIT_POLL_MS", default_value_t = 200)]
    pub poll_ms: u64,

    /// Deadlines and caps of HBONE: the listeners (per pod), and the client pool (connect and
    /// CONNECT deadlines, idle connections dropped).
    #[command(flatten)]
    pub limits: mesh_core::transport::Limits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigSource {
    File,
    Controller,
}
