//! Keeps the set of captured pods equal to what the pods file says: enrolls new pods, releases
//! removed ones, and re-enrolls a pod whose spec changed. Pods' processes are never touched:
//! capture starts and stops underneath them.
//!
//! Enrollment is all or nothing: every listener is opened before the kernel is told anything,
//! and a kernel step that fails undoes the ones before it. A pod that cannot be enrolled (a
//! port the agent needs is taken in it, its namespace is gone) is not left uncaptured: it is
//! held failing closed, with no traffic in or out, and enrolled again at the next attempt.

mod capture;
mod starts;
mod succession;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::RawFd,
    sync::Arc,
};

use mesh_common::{ENROLLED_IPV6_OUTBOUND, EnrolledPod, PodAddr};
use serde::Serialize;
use tokio::task::JoinHandle;

use capture::open_sandbox;

use crate::{
    app::State,
    dataplane::{self, Dataplane, OrigDsts},
    handover::Inherited,
    netns::netns_cookie,
    pods::{Pod, PodsFile},
    proxy::PodContext,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pod {pod}: cannot open network namespace {path}: {source}")]
    Netns {
        pod: String,
        path: String,
        source: std::io::Error,
    },
    #[error("pod {pod}: cannot open listener {addr} in its namespace: {source}")]
    Listener {
        pod: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("pod {pod} has no valid SPIFFE identity: {source}")]
    Identity {
        pod: String,
        source: mesh_core::identity::Error,
    },
    #[error("pod {pod}: {source}")]
    Dataplane {
        pod: String,
        source: Box<dataplane::Error>,
    },
    #[error(
        "pod {pod}: the process found for its network namespace ({path}) is no longer in the pod"
    )]
    SandboxChanged { pod: String, path: String },
}

/// What the admin endpoint shows of an enrolled pod.
#[derive(Clone, Debug, Serialize)]
pub struct EnrolledView {
    pub pod: String,
    pub ip: Ipv4Addr,
    pub service_account: String,
    pub netns: String,
    pub netns_cookie: u64,
    pub ipv6_outbound: bool,
    /// IPv6 addresses found in the pod (captured inbound like its IPv4 address).
    pub ipv6_addresses: Vec<Ipv6Addr>,
}

struct ActivePod {
    spec: Pod,
    context: Arc<PodContext>,
    ipv6_outbound: bool,
    /// The `sk_lookup` keys this pod's inbound listeners were inserted under.
    inbound_keys: Vec<PodAddr>,
    ipv6_addresses: Vec<Ipv6Addr>,
    /// Accept loops; aborting them closes the pod's listeners.
    tasks: Vec<JoinHandle<()>>,
    /// The listening sockets the accept loops own (open while they run), to hand over.
    listeners: Vec<(SocketAddr, RawFd)>,
}

impl Drop for ActivePod {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub struct Enrollment {
    pub(crate) dataplane: Dataplane,
    orig: OrigDsts,
    state: Arc<State>,
    active: BTreeMap<String, ActivePod>,
    /// Pods that could not be enrolled, held failing closed: spec and namespace cookie.
    refused: BTreeMap<String, (Pod, u64)>,
    /// Enrollments a previous agent left behind, to be released after the first reconcile
    /// unless the pod is still wanted.
    leftovers: Option<Vec<u64>>,
    /// Some wanted pod could not be enrolled in the last reconcile: try again soon.
    pub failed: bool,
    /// Listeners a predecessor handed over, claimed by the next reconcile.
    inherited: Option<Inherited>,
    /// Pod cgroups that appeared and wait for a decision, their connects refused meanwhile.
    undecided: std::collections::HashMap<u64, crate::cgroup::pod_starts::PodCgroup>,
}

impl Enrollment {
    pub fn new(dataplane: Dataplane, orig: OrigDsts, state: Arc<State>) -> Self {
        let leftovers = Some(dataplane.leftover_enrollments());
        Self {
            dataplane,
            orig,
            state,
            active: BTreeMap::new(),
            refused: BTreeMap::new(),
            leftovers,
            failed: false,
            inherited: None,
            undecided: Default::default(),
        }
    }

    /// Applies the file; the pods that kept their capture with new labels or waypoint binding.
    /// Errors are per pod: one pod that cannot be enrolled leaves the others working, and is
    /// tried again on the next change.
    pub fn reconcile(&mut self, file: &PodsFile) -> Vec<String> {
        self.failed = false;
        let node = self.state.config.node_name.clone();
        let desired: BTreeMap<String, &Pod> =
            file.enrolled_on(&node).map(|p| (p.key(), p)).collect();

        let (mut stale, mut relabelled) = (Vec::new(), Vec::new());
        for (key, active) in &mut self.active {
            match desired.get(key) {
                Some(pod) if **pod == active.spec => {}
                Some(pod) if same_capture(pod, &active.spec) => {
                    tracing::info!(pod = %key, "pod relabelled; capture unchanged");
                    active.context.update(pod);
                    active.spec = (*pod).clone();
                    relabelled.push(key.clone());
                }
                _ => stale.push(key.clone()),
            }
        }
        for key in stale {
            if let Some(active) = self.active.remove(&key) {
                self.release(active);
            }
        }
        // Refused pods that left are let go. The others (changed or not) stay held while they
        // are tried again below: a successful enrollment replaces the hold, a failed one renews
        // it, and there is no moment in between when the pod is free.
        let gone: Vec<String> = self
            .refused
            .keys()
            .filter(|key| !desired.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            if let Some((_, cookie)) = self.refused.remove(&key) {
                self.release_refused(&key, cookie);
            }
        }
        for (key, pod) in desired {
            if self.active.contains_key(&key) {
                continue;
            }
            match self.enroll(pod) {
                Ok(active) => {
                    tracing::info!(pod = %key, ip = %pod.ip, cookie = active.context.netns_cookie, "pod enrolled");
                    // A hold on another namespace (the pod's sandbox was replaced) is let go.
                    if let Some((_, cookie)) = self.refused.remove(&key)
                        && cookie != active.context.netns_cookie
                    {
                        self.release_refused(&key, cookie);
                    }
                    self.active.insert(key, active);
                }
                Err(error) => {
                    self.failed = true;
                    self.refuse(pod, &error);
                }
            }
        }
        if let Some(inherited) = self.inherited.take() {
            tracing::info!(
                pods = self.active.len(),
                unclaimed_listeners = inherited.unclaimed(),
                "took over the predecessor's listeners"
            );
        }
        if let Some(leftovers) = self.leftovers.take() {
            for cookie in leftovers {
                let kept = self
                    .active
                    .values()
                    .any(|a| a.context.netns_cookie == cookie)
                    || self.refused.values().any(|(_, c)| *c == cookie);
                if !kept {
                    tracing::info!(cookie, "releasing an enrollment left by a previous agent");
                    if let Err(error) = self.dataplane.forget(cookie) {
                        tracing::warn!(%error, cookie, "could not release leftover enrollment");
                    }
                }
            }
        }
        self.state
            .metrics
            .enrolled_pods
            .set(self.active.len() as i64);
        self.state
            .metrics
            .refused_pods
            .set(self.refused.len() as i64);
        self.state.set_enrolled(self.view());
        let mut identities: Vec<_> = self
            .active
            .values()
            .map(|a| a.context.identity.clone())
            .collect();
        identities.sort();
        identities.dedup();
        self.state.set_identities(identities);
        relabelled
    }

    fn release(&mut self, active: ActivePod) {
        let key = active.spec.key();
        if let Err(error) = self
            .dataplane
            .unenroll(active.context.netns_cookie, &active.inbound_keys)
        {
            tracing::error!(%error, pod = %key, "releasing pod failed");
        }
        drop(active);
        tracing::info!(pod = %key, "pod released");
    }

    /// Holds `pod` failing closed after `error` kept it from being enrolled; logs why.
    fn refuse(&mut self, pod: &Pod, error: &Error) {
        let key = pod.key();
        let held = open_sandbox(pod).and_then(|netns| {
            let cookie = netns
                .socket(socket2::Domain::IPV4)
                .and_then(|socket| netns_cookie(&socket))
                .map_err(|source| Error::Netns {
                    pod: key.clone(),
                    path: pod.netns.display().to_string(),
                    source,
                })?;
            // IPv6 connects are redirected too (to a listener that is not there), whether or
            // not the pod has IPv6: nothing may leave a refused pod.
            let entry = EnrolledPod {
                ip4: u32::from_ne_bytes(pod.ip.octets()),
                flags: ENROLLED_IPV6_OUTBOUND,
            };
            self.dataplane
                .refuse(&netns, cookie, entry)
                .map_err(|source| Error::Dataplane {
                    pod: key.clone(),
                    source: Box::new(source),
                })?;
            Ok(cookie)
        });
        match held {
            Ok(cookie) => {
                tracing::error!(%error, pod = %key, "pod not enrolled: its traffic is refused until it can be; will retry");
                if let Some((_, old)) = self.refused.insert(key.clone(), (pod.clone(), cookie))
                    && old != cookie
                {
                    self.release_refused(&key, old);
                }
            }
            Err(hold_error) => tracing::error!(
                %error, %hold_error, pod = %key,
                "pod not enrolled, and it could not be held failing closed either; will retry"
            ),
        }
    }

    fn release_refused(&mut self, key: &str, cookie: u64) {
        match self.dataplane.unenroll(cookie, &[]) {
            Ok(()) => tracing::info!(pod = %key, "refused pod released"),
            Err(error) => tracing::error!(%error, pod = %key, "releasing a refused pod failed"),
        }
    }

    fn view(&self) -> Vec<EnrolledView> {
        self.active
            .values()
            .map(|a| EnrolledView {
                pod: a.spec.key(),
                ip: a.spec.ip,
                service_account: a.spec.service_account.clone(),
                netns: a.spec.netns.display().to_string(),
                netns_cookie: a.context.netns_cookie,
                ipv6_outbound: a.ipv6_outbound,
                ipv6_addresses: a.ipv6_addresses.clone(),
            })
            .collect()
    }
}

/// Whether two specs of a pod capture the same way: same namespace, identity and addresses.
/// Labels and the waypoint binding are read per connection, so changing them must not take
/// the pod's listeners down (a re-enrollment refuses connections while it runs).
fn same_capture(new: &Pod, old: &Pod) -> bool {
    let capture = |pod: &Pod| Pod {
        labels: Default::default(),
        waypoint: None,
        owner: None,
        names: None,
        ..pod.clone()
    };
    capture(new) == capture(old)
}
