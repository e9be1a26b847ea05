//! Pods starting: the kernel refuses the connects of a pod cgroup the agent has not decided
//! about (`mesh-ebpf`'s `undecided_pod`), so that a pod of the mesh never sends a packet
//! around it before it is captured. Here each new pod cgroup waits for its decision: captured
//! once its pod is enrolled (or held failing closed), let go at once when its pod is not in
//! the mesh, and let go after the hold limit when the agent never learns of its pod.

use std::time::Duration;

use super::Enrollment;
use crate::{cgroup::pod_starts::PodCgroup, pods::PodsFile};

impl Enrollment {
    /// A pod cgroup appeared (or was there when the agent started). One there before any
    /// agent of this boot (`preexisting`) runs already uncaptured: it is decided now and its
    /// pod, if of the mesh, enrolled as usual; holding it would cut a running pod off.
    pub fn pod_cgroup_appeared(&mut self, cgroup: PodCgroup, preexisting: bool) {
        if preexisting || self.dataplane.is_decided(cgroup.id) {
            if let Err(error) = self.dataplane.decide(cgroup.id) {
                tracing::error!(%error, uid = %cgroup.uid, "deciding a pod cgroup failed");
            }
            return;
        }
        tracing::debug!(uid = %cgroup.uid, path = %cgroup.path.display(), "pod starting: its connects are refused until it is decided");
        self.undecided.insert(cgroup.id, cgroup);
        self.count_undecided();
    }

    /// A pod cgroup was removed: its decision goes with it.
    pub fn pod_cgroup_gone(&mut self, id: u64) {
        self.undecided.remove(&id);
        if let Err(error) = self.dataplane.forget_decision(id) {
            tracing::warn!(%error, id, "forgetting a pod cgroup's decision failed");
        }
        self.count_undecided();
    }

    /// Whether some starting pod waits for its decision.
    pub fn has_undecided(&self) -> bool {
        !self.undecided.is_empty()
    }

    /// Decides every starting pod that can be: its pod (by UID in `file`) is enrolled or
    /// held, or is not of the mesh; one the agent does not know is let go after `hold`.
    pub fn decide_starting(&mut self, file: &PodsFile, hold: Duration) {
        if self.undecided.is_empty() {
            return;
        }
        let node = self.state.config.node_name.clone();
        let mut decided = Vec::new();
        for (id, cgroup) in &self.undecided {
            let pod = file
                .pods
                .iter()
                .find(|p| p.uid.as_deref() == Some(cgroup.uid.as_str()));
            let verdict = match pod {
                Some(pod) if pod.node == node && file.is_enrolled(pod) => {
                    let key = pod.key();
                    (self.active.contains_key(&key) || self.refused.contains_key(&key))
                        .then_some("captured")
                }
                Some(_) => Some("not in the mesh"),
                // Scheduled here, no address yet: decided now if it is not of the mesh; a pod
                // of the mesh waits until it is enrolled.
                None if file
                    .scheduled
                    .get(&cgroup.uid)
                    .is_some_and(|s| s.node == node && !s.enrolled) =>
                {
                    Some("not in the mesh")
                }
                // Of the mesh, its namespace not found yet: held until it is enrolled.
                None if file
                    .scheduled
                    .get(&cgroup.uid)
                    .is_some_and(|s| s.node == node && s.enrolled) =>
                {
                    None
                }
                None if cgroup.seen.elapsed() >= hold => {
                    tracing::warn!(
                        uid = %cgroup.uid, hold_secs = hold.as_secs(),
                        "a starting pod is unknown to the agent after the hold limit: letting it go uncaptured"
                    );
                    self.state.metrics.pods_let_go_undecided.inc();
                    Some("unknown")
                }
                None => None,
            };
            if let Some(verdict) = verdict {
                decided.push((*id, verdict, cgroup.seen));
            }
        }
        for (id, verdict, seen) in decided {
            if let Err(error) = self.dataplane.decide(id) {
                tracing::error!(%error, id, "deciding a pod cgroup failed; it stays held");
                continue;
            }
            if let Some(cgroup) = self.undecided.remove(&id) {
                let waited = seen.elapsed();
                self.state
                    .metrics
                    .pod_start_hold
                    .observe(waited.as_secs_f64());
                tracing::info!(
                    uid = %cgroup.uid, %verdict, waited_ms = waited.as_millis() as u64,
                    "starting pod decided"
                );
            }
        }
        self.count_undecided();
    }

    fn count_undecided(&self) {
        self.state
            .metrics
            .undecided_pods
            .set(self.undecided.len() as i64);
    }
}
