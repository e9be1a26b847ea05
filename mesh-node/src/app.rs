//! Wires the agent: dataplane, enrollment loop, proxies and HTTP endpoints.

mod succession;

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mesh_common::{NODE_ACCELERATE, NodeConfig};
use serde::Serialize;

use crate::{
    admin::{self, Endpoint},
    cgroup::{
        self,
        pod_starts::{self, PodStart},
    },
    config::{Config, ConfigSource},
    control::StreamedPods,
    dataplane::{self, Dataplane},
    drain::{self, Signals},
    enrollment::{EnrolledView, Enrollment},
    handover::{Offer, Predecessor, Request},
    identity::{CertificateStore, CertificateView},
    metrics::Metrics,
    pods::{self, FileWatch, IndexedPods, PodsFile},
    policy::{self, PolicyWatch},
    proxy::{Connections, HbonePool},
    sandbox::Sandboxes,
    services::Services,
};
use mesh_core::{
    Identity,
    ca_client::{CaClient, Token, TrustRoots},
    policy::{LoadError, PolicySet},
};

/// How soon a pod that failed to enroll (or whose network namespace was not found) is tried
/// again.
const RETRY_ENROLLMENT: Duration = Duration::from_secs(1);

/// Where the pods to capture come from.
enum PodSource {
    /// Local mode: the pods file says everything.
    File(FileWatch),
    /// The controller's workloads, with this node's pods' network namespaces found locally.
    Controller {
        streamed: StreamedPods,
        sandboxes: Sandboxes,
        /// Pods of this node whose network namespace was not found at the last look.
        missing: Vec<String>,
        last_look: std::time::Instant,
        /// Look again at the next poll: a pod cgroup got its first process.
        look_again: bool,
    },
}

impl PodSource {
    /// A pod cgroup got its first process: its network namespace can be found now.
    fn look_again(&mut self) {
        if let PodSource::Controller { look_again, .. } = self {
            *look_again = true;
        }
    }

    /// `Some` with the pods to apply when they changed, or when it is time to look again for
    /// pods whose network namespace was missing.
    fn poll(&mut self, node: &str) -> Option<Result<PodsFile, pods::Error>> {
        match self {
            PodSource::File(watch) => watch.poll(),
            PodSource::Controller {
                streamed,
                sandboxes,
                missing,
                last_look,
                look_again,
            } => {
                let changed = streamed.has_changed().unwrap_or(false);
                let retry = !missing.is_empty()
                    && (std::mem::take(look_again) || last_look.elapsed() >= RETRY_ENROLLMENT);
                if !changed && !retry {
                    return None;
                }
                let mut file = (**streamed.borrow_and_update().as_ref()?).clone();
                *last_look = std::time::Instant::now();
                let now_missing = sandboxes.fill(&mut file, node);
                if now_missing != *missing && !now_missing.is_empty() {
                    tracing::warn!(
                        pods = ?now_missing,
                        "network namespace not found ({}); not captured until it is",
                        sandboxes.describe()
                    );
                }
                *missing = now_missing;
                Some(Ok(file))
            }
        }
    }
}

/// What the proxies and the endpoints share.
pub struct State {
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub connections: Connections,
    /// The last valid pods, indexed for the lookups made per connection.
    pods: RwLock<Arc<IndexedPods>>,
    enrolled: RwLock<Vec<EnrolledView>>,
    /// Programs attached and the first reconcile done.
    ready: AtomicBool,
    /// Certificates for the enrolled pods' identities (HBONE mode only).
    pub certificates: Option<Arc<CertificateStore>>,
    /// Pooled HBONE connections (HBONE mode only).
    pub hbone: Option<HbonePool>,
    /// The identities enrolled pods have: readiness waits for their certificates.
    identities: RwLock<Vec<Identity>>,
    policies: RwLock<Arc<PolicySet>>,
    policy_errors: RwLock<Vec<String>>,
    /// Services by address (from the controller's stream; none in local mode).
    services: RwLock<Arc<Services>>,
    /// Signals once the agent stops accepting: HBONE connections then send GOAWAY.
    pub drain: mesh_core::drain::Watch,
}

#[derive(Serialize)]
pub struct ConfigDump {
    pub config: Arc<Config>,
    pub enrolled: Vec<EnrolledView>,
    pub certificates: Vec<CertificateView>,
    pub policies: usize,
    pub policy_list: Vec<String>,
    pub policy_errors: Vec<String>,
    pub pods: Arc<IndexedPods>,
}

impl State {
    pub fn pods(&self) -> Arc<IndexedPods> {
        self.pods.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn services(&self) -> Arc<Services> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_services(&self, services: Services) {
        *self.services.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(services);
    }

    pub fn set_enrolled(&self, view: Vec<EnrolledView>) {
        *self.enrolled.write().unwrap_or_else(|p| p.into_inner()) = view;
    }

    /// Ready once the programs are attached, the pods file applied, and (with HBONE) every
    /// enrolled pod's certificate loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self.certificates.as_ref().is_none_or(|certs| {
                certs.has_all(&self.identities.read().unwrap_or_else(|p| p.into_inner()))
            })
    }

    /// Records the enrolled pods' identities and keeps certificates for exactly those.
    pub fn set_identities(&self, identities: Vec<Identity>) {
        if let Some(certs) = &self.certificates {
            certs.retain(&identities);
        }
        *self.identities.write().unwrap_or_else(|p| p.into_inner()) = identities;
    }

    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_policies(&self, policies: PolicySet, errors: Vec<LoadError>) {
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policies);
        *self
            .policy_errors
            .write()
            .unwrap_or_else(|p| p.into_inner()) = errors.iter().map(ToString::to_string).collect();
    }

    pub fn certificate_view(&self) -> Vec<CertificateView> {
        self.certificates
            .as_ref()
            .map(|c| c.view())
            .unwrap_or_default()
    }

    pub fn config_dump(&self) -> ConfigDump {
        ConfigDump {
            config: self.config.clone(),
            enrolled: self
                .enrolled
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            certificates: self.certificate_view(),
            policies: self.policies().len(),
            policy_list: self.policies().summary(),
            policy_errors: self
                .policy_errors
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            pods: self.pods(),
        }
    }
}

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
        pods: RwLock::new(Arc::new(IndexedPods::default())),
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
            (policies, PodSource::File(FileWatch::new(pods_file)))
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
    // In Kubernetes each agent has its pod's own address, so both bind. Where they share one
    // (the test bed, a host-network agent), the predecessor's listeners are taken instead:
    // the probe then reaches this agent, not ready until it has taken the pods over.
    let mut bound = Vec::new();
    for (addr, what, endpoint) in [
        (config.metrics_addr, "metrics", Endpoint::Metrics),
        (config.readiness_addr, "readiness", Endpoint::Readiness),
        (config.admin_addr, "admin", Endpoint::Admin),
    ] {
        bound.push((endpoint, what, addr, admin::bind(addr)));
    }
    let in_use = |result: &std::io::Result<_>| matches!(result, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse);
    let mut inherited_endpoints = match &predecessor {
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
        match pod_source.poll(&config.node_name) {
            None if enrollment.failed && last_attempt.elapsed() >= RETRY_ENROLLMENT => {
                last_attempt = std::time::Instant::now();
                enrollment.reconcile(&state.pods());
            }
            None => {}
            Some(Ok(file)) => {
                if let Some(predecessor) = predecessor.take() {
                    succession::take_over(&state, &file, predecessor, &mut enrollment).await?;
                    succession::offer(&config, &offer);
                }
                last_attempt = std::time::Instant::now();
                let relabelled = enrollment.reconcile(&file);
                *state.pods.write().unwrap_or_else(|p| p.into_inner()) =
                    Arc::new(IndexedPods::new(file));
                // Only new labels or waypoint bindings of this node's pods change what their
                // live connections are allowed; other pod changes need no pass over them.
                let closed = if relabelled > 0 {
                    policy::enforce(&state)
                } else {
                    0
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
            enrollment.decide_starting(&state.pods(), hold);
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
/// configuration) to the system: the allocator keeps freed pages for reuse, and an agent that
/// then sits idle would never hand them back.
fn give_memory_back() {
    // SAFETY: mi_collect has no preconditions; it only frees pages this process no longer uses.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

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
