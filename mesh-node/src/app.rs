//! Wires the agent: dataplane, enrollment loop, proxies and HTTP endpoints.

mod pod_source;
mod state;
mod succession;

use pod_source::{PodSource, RETRY_ENROLLMENT};
pub use state::{ConfigDump, State};

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mesh_common::{NODE_ACCELERATE, NodeConfig};

use crate::{
    admin::{self, Endpoint},
    cgroup::{
        self,
        pod_starts::{self, PodStart},
    },
    config::{Config, ConfigSource},
    dataplane::{self, Dataplane},
    drain::{self, Signals},
    enrollment::Enrollment,
    handover::{Offer, Predecessor, Request},
    identity::CertificateStore,
    metrics::Metrics,
    pods::{FileWatch, PodsFile},
    policy::{self, PolicyWatch},
    proxy::{Connections, HbonePool},
    sandbox::Sandboxes,
    services::Services,
};
use mesh_core::{
    Identity,
    ca_client::{CaClient, Token, TrustRoots},
    policy::PolicySet,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Dataplane(#[from] dataplane::Error),
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate service: {0}")]
    Identity(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Handover(#[from] crate::handover::Error),
    #[error("cannot serve {what} on {addr}: {source}")]
    Serve {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Moves into the agent's cgroup before the runtime starts threads (all threads move anyway,
/// but doing it first means no socket is ever made from the old cgroup).
pub fn prepare(config: &Config) -> Result<(), Error> {
    if let Some(dir) = &config.agent_cgroup {
        cgroup::move_self_into(dir).map_err(|source| Error::Cgroup {
            path: dir.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// `mesh-node --uninstall`: asks the running agent, if any, to release every pod and remove
/// its programs and pins; with none running, removes the pins itself.
pub fn uninstall(config: &Config) -> Result<(), Error> {
    match Predecessor::find(&config.handover_socket)? {
        Some(agent) => {
            let pid = agent.pid;
            let pods = agent.release()?;
            tracing::info!(
                pid,
                pods,
                "the running agent released every pod and removed its pins; it drains what \
                 it carries, then waits to be stopped"
            );
        }
        None => {
            dataplane::remove_pins(&config.bpf_dir)?;
            tracing::info!(
                bpf_dir = %config.bpf_dir.display(),
                "no agent running: programs detached and pins removed; no pod is captured"
            );
        }
    }
    Ok(())
}

pub async fn run(config: Config) -> Result<(), Error> {
    if config.node_name.is_empty() {
        return Err(Error::Config(
            "--node-name (AMBIT_NODE_NAME) is required".to_owned(),
        ));
    }
    let config = Arc::new(config);
    let hierarchy = cgroup::discover().map_err(|source| Error::Cgroup {
        path: "/proc/self/mountinfo".into(),
        source,
    })?;
    let own_cgroup = hierarchy.own;
    let cgroup_root = config.cgroup_root.clone().unwrap_or(hierarchy.root);
    let agent_cgroup_id = cgroup::cgroup_id(&own_cgroup).map_err(|source| Error::Cgroup {
        path: own_cgroup.display().to_string(),
        source,
    })?;
    // A running agent hands over instead of being replaced with a gap. Asked first: its
    // cgroup goes into the programs' configuration before they are replaced.
    let predecessor = Predecessor::find(&config.handover_socket).unwrap_or_else(|error| {
        tracing::error!(%error, "cannot ask for a hand-over; starting afresh");
        None
    });
    if let Some(predecessor) = &predecessor {
        tracing::info!(
            pid = predecessor.pid, build = %predecessor.build,
            "taking over from the running agent"
        );
    }
    let node = NodeConfig {
        agent_cgroup_id,
        predecessor_cgroup_id: predecessor.as_ref().map_or(0, |p| p.cgroup_id),
        flags: if config.accelerate {
            NODE_ACCELERATE
        } else {
            0
        },
    };

    dataplane::ensure_bpffs()?;
    let (dataplane, orig) = Dataplane::start(&config.bpf_dir, &cgroup_root, node)?;
    tracing::info!(
        bpf_dir = %config.bpf_dir.display(), cgroup_root = %cgroup_root.display(),
        agent_cgroup = %own_cgroup.display(), agent_cgroup_id, accelerate = config.accelerate,
        "eBPF programs attached"
    );

    let ca = match &config.ca_addr {
        Some(addr) => Some(ca_client(&config, addr)?),
        None => None,
    };
    let certificates = ca
        .clone()
        .map(|ca| CertificateStore::new(ca, Duration::from_secs(config.cert_lifetime)));
    let hbone = certificates.as_ref().map(|_| HbonePool::default());
    let (drain_trigger, drain) = mesh_core::drain::channel();
    let state = Arc::new(State {
        config: config.clone(),
        metrics: Metrics::default(),
        connections: Connections::default(),
        workloads: RwLock::default(),
        enrolled: RwLock::new(Vec::new()),
        ready: AtomicBool::new(false),
        certificates,
        hbone,
        identities: RwLock::new(Vec::new()),
        policies: RwLock::new(Arc::new(PolicySet::default())),
        policy_errors: RwLock::new(Vec::new()),
        services: RwLock::new(Arc::new(Services::default())),
        drain,
    });
    let (mut policy_watch, mut pod_source) = match config.config_source {
        ConfigSource::File => {
            let pods_file = config.pods_file.clone().ok_or_else(|| {
                Error::Config("--config-source file needs --pods-file".to_owned())
            })?;
            let policies = config
                .config_dir
                .clone()
                .map(|dir| PolicyWatch::new(dir, config.root_namespace.clone()));
            (policies, PodSource::file(FileWatch::new(pods_file)))
        }
        ConfigSource::Controller => {
            let ca = ca.clone().ok_or_else(|| {
                Error::Config("--config-source controller needs --ca-addr".to_owned())
            })?;
            let (pods_tx, streamed) = tokio::sync::watch::channel(None);
            tokio::spawn(crate::control::follow_config(state.clone(), ca, pods_tx));
            let sandboxes = match &config.pods_file {
                Some(path) => Sandboxes::PodsFile(path.clone()),
                None => Sandboxes::Proc(config.proc_dir.clone()),
            };
            let source = PodSource::Controller {
                streamed,
                sandboxes,
                missing: Vec::new(),
                last_look: std::time::Instant::now(),
                look_again: false,
            };
            (None, source)
        }
    };
    let endpoints = serve_endpoints(&config, &state, predecessor.as_ref())?;
    let (pods_tx, mut handover_requests) = tokio::sync::mpsc::channel(1);
    let offer = Arc::new(Offer {
        endpoints: std::sync::Mutex::new(endpoints),
        requests: pods_tx,
        cgroup_id: agent_cgroup_id,
    });
    let mut predecessor = match predecessor {
        Some(predecessor) => Some(predecessor),
        None => {
            succession::offer(&config, &offer);
            None
        }
    };

    let fresh_decisions = dataplane.fresh_decisions;
    let mut enrollment = Enrollment::new(dataplane, orig, state.clone());
    let mut pod_starts = watch_pod_starts(&config, &cgroup_root, fresh_decisions, &mut enrollment);
    let hold = Duration::from_secs(config.undecided_hold_secs);
    let mut tick = tokio::time::interval(Duration::from_millis(config.poll_ms.max(10)));
    let signals = Signals::watch();
    let stop = signals.received(1);
    tokio::pin!(stop);
    let mut last_attempt = std::time::Instant::now();
    // This node's pods as last applied: what a retry and the pod-start decisions work from.
    let mut node_pods = PodsFile::default();
    let ended = loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => break Ended::Signalled,
            Some(request) = handover_requests.recv() => match request {
                Request::Pods { reply, sent } => {
                    if succession::hand_over(&enrollment, reply, sent).await {
                        break Ended::HandedOver;
                    }
                    continue;
                }
                Request::Release { done } => {
                    succession::release(&mut enrollment, &config.bpf_dir, done).await;
                    break Ended::Released;
                }
            },
            Some(event) = pod_starts.recv() => match event {
                PodStart::Appeared(cgroup) => enrollment.pod_cgroup_appeared(cgroup, false),
                PodStart::Populated { .. } => pod_source.look_again(),
                PodStart::Gone { id } => enrollment.pod_cgroup_gone(id),
            },
        }
        match policy_watch.as_mut().and_then(PolicyWatch::poll) {
            None => {}
            Some(Ok((policies, errors))) => policy::apply(&state, policies, errors),
            Some(Err(error)) => {
                tracing::error!(%error, "config directory unreadable; keeping the current policies")
            }
        }
        match pod_source.poll(&state) {
            None if enrollment.failed && last_attempt.elapsed() >= RETRY_ENROLLMENT => {
                last_attempt = std::time::Instant::now();
                enrollment.reconcile(&node_pods);
            }
            None => {}
            Some(Ok(file)) => {
                if let Some(predecessor) = predecessor.take() {
                    succession::take_over(&state, &file, predecessor, &mut enrollment).await?;
                    succession::offer(&config, &offer);
                }
                last_attempt = std::time::Instant::now();
                // The proxies already see every pod in the store before any listener this
                // reconcile opens (or takes over) accepts: with none, a destination of the
                // mesh would look like one outside it and be reached in plaintext.
                node_pods = file;
                let relabelled = enrollment.reconcile(&node_pods);
                // Only new labels or waypoint bindings of this node's pods change what their
                // live connections are allowed: only those pods' connections are re-checked.
                let closed = if relabelled.is_empty() {
                    0
                } else {
                    policy::enforce_pods(&state, &relabelled)
                };
                if closed > 0 {
                    tracing::info!(
                        closed,
                        "pods changed; closed connections they no longer allow"
                    );
                }
                if !state.ready.swap(true, Ordering::AcqRel) {
                    tracing::info!("ready");
                    give_memory_back();
                }
            }
            // Keep what is enrolled: a half-written or broken file must not release pods.
            Some(Err(error)) => {
                tracing::error!(%error, "pods not applied; keeping the current enrollment")
            }
        }
        if enrollment.has_undecided() {
            enrollment.decide_starting(&node_pods, hold);
        }
    };
    // Another agent asking from now on is refused (a successor exits, and starts afresh once
    // this agent is gone): there is nothing left to hand over.
    drop(handover_requests);
    // No new connection from here: every pod's listeners close here (handed over, released,
    // or the pods stay captured and fail closed until an agent returns); HBONE clients are
    // told GOAWAY; what is carried goes on until it ends.
    drop(enrollment);
    state.ready.store(false, Ordering::Release);
    drain_trigger.start();
    drain::carried(
        &state,
        Duration::from_secs(config.drain_timeout_secs),
        &signals,
    )
    .await;
    if ended != Ended::Signalled && signals.count() == 0 {
        // Exiting now would have the DaemonSet restart this container, and it would take
        // the pods back: wait to be stopped (a rollout does so once the successor is ready).
        tracing::info!("drained; waiting to be stopped");
        signals.received(1).await;
    }
    match ended {
        Ended::HandedOver => tracing::info!("stopping; the successor carries the pods"),
        Ended::Released => tracing::info!("stopping; every pod was released"),
        Ended::Signalled => {
            tracing::info!(
                "shutting down; pods stay enrolled and fail closed until an agent returns"
            )
        }
    }
    Ok(())
}

/// Serves the metrics, readiness and admin endpoints. In Kubernetes each agent has its pod's
/// own address, so both agents of a rollout bind. Where they share one (the test bed, a
/// host-network agent) the predecessor's listeners are taken instead: the probe then reaches
/// this agent, not ready until it has taken the pods over. Returns what a successor takes.
fn serve_endpoints(
    config: &Config,
    state: &Arc<State>,
    predecessor: Option<&Predecessor>,
) -> Result<Vec<(Endpoint, std::os::fd::OwnedFd, tokio::task::AbortHandle)>, Error> {
    let mut bound = Vec::new();
    for (addr, what, endpoint) in [
        (config.metrics_addr, "metrics", Endpoint::Metrics),
        (config.readiness_addr, "readiness", Endpoint::Readiness),
        (config.admin_addr, "admin", Endpoint::Admin),
    ] {
        bound.push((endpoint, what, addr, admin::bind(addr)));
    }
    let in_use = |result: &std::io::Result<_>| matches!(result, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse);
    let mut inherited_endpoints = match predecessor {
        Some(predecessor) if bound.iter().any(|(.., result)| in_use(result)) => {
            predecessor.take_endpoints()?
        }
        _ => Vec::new(),
    };
    let mut endpoints = Vec::new();
    for (endpoint, what, addr, result) in bound {
        let serve_error = |source| Error::Serve { what, addr, source };
        let listener = match inherited_endpoints.iter().position(|(e, _)| *e == endpoint) {
            Some(at) if in_use(&result) => inherited_endpoints.swap_remove(at).1,
            _ => result.map_err(serve_error)?,
        };
        let (fd, task) = admin::serve(listener, endpoint, state.clone()).map_err(serve_error)?;
        endpoints.push((endpoint, fd, task));
    }
    Ok(endpoints)
}

/// Watches the kubelet's pod cgroups: the ones there now are reported at once (decided if no
/// agent ran since boot), and from then on the kernel holds every new one until decided.
/// Without a `kubepods` directory nothing is held (logged), and the receiver stays empty.
fn watch_pod_starts(
    config: &Config,
    cgroup_root: &std::path::Path,
    fresh: bool,
    enrollment: &mut Enrollment,
) -> tokio::sync::mpsc::UnboundedReceiver<PodStart> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let Some(base) = config
        .pod_cgroups
        .clone()
        .or_else(|| pod_starts::discover_base(cgroup_root))
    else {
        tracing::warn!(
            cgroup_root = %cgroup_root.display(),
            "no kubepods cgroup found: pods are not held while they start (--pod-cgroups)"
        );
        return rx;
    };
    let parents = pod_starts::parents(&base);
    if parents.is_empty() {
        tracing::warn!(base = %base.display(), "no such cgroup: pods are not held while they start (--pod-cgroups)");
        return rx;
    }
    let ids: Vec<u64> = parents
        .iter()
        .filter_map(|p| cgroup::cgroup_id(p).ok())
        .collect();
    if let Err(error) = pod_starts::watch(&parents, tx) {
        tracing::error!(%error, base = %base.display(), "cannot watch pod cgroups: pods are not held while they start");
        return tokio::sync::mpsc::unbounded_channel().1;
    }
    // What the watch found there already, before the kernel holds anything new.
    while let Ok(event) = rx.try_recv() {
        if let PodStart::Appeared(cgroup) = event {
            enrollment.pod_cgroup_appeared(cgroup, fresh);
        }
    }
    match enrollment.dataplane.hold_pods_under(&ids) {
        Ok(()) => tracing::info!(
            base = %base.display(), parents = parents.len(),
            "pods starting below these cgroups are held until decided"
        ),
        Err(error) => tracing::error!(%error, "pods are not held while they start"),
    }
    rx
}

/// Returns the memory start-up used and freed (the eBPF object, its BTF, the first
/// configuration) to the system, and after that what a large change of the workloads freed
/// (a whole pods file parsed, a snapshot diffed): the allocator keeps freed pages for reuse,
/// and an agent that then sits idle would never hand them back.
pub(crate) fn give_memory_back() {
    // SAFETY: mi_collect has no preconditions; it only frees pages this process no longer uses.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// How many pods one change must touch before the memory it freed is given back at once.
pub(crate) const LARGE_CHANGE: usize = 1000;

/// Why the enrollment loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// SIGTERM or SIGINT with no successor: the pods stay captured, failing closed.
    Signalled,
    /// A successor took the pods' listeners.
    HandedOver,
    /// `mesh-node --uninstall`: every pod was let go.
    Released,
}

/// The client of the controller's CA, from the root and token files.
fn ca_client(config: &Config, addr: &str) -> Result<CaClient, Error> {
    let root_file = config
        .ca_root
        .clone()
        .ok_or_else(|| Error::Identity("--ca-root is required with --ca-addr".to_owned()))?;
    let roots = TrustRoots::from_file(root_file).map_err(|e| Error::Identity(e.to_string()))?;
    let token_file = config
        .token_file
        .clone()
        .ok_or_else(|| Error::Identity("--token-file is required with --ca-addr".to_owned()))?;
    // Read now so a missing file is reported at start; read again for every request, as
    // Kubernetes rotates projected tokens.
    let token = Token::File(token_file);
    token
        .current()
        .map_err(|e| Error::Identity(e.message().to_owned()))?;
    let controller =
        Identity::controller(&config.trust_domain).map_err(|e| Error::Identity(e.to_string()))?;
    CaClient::new(addr, roots, controller, token).map_err(|e| Error::Identity(e.to_string()))
}
