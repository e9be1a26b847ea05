//! Where the pods to capture come from: local mode's pods file, or the controller's workloads
//! with this node's pods' network namespaces found locally. Either way every pod goes into the
//! workload store first; what comes out is this node's share, for enrollment.

use std::time::Duration;

use crate::{
    app::State,
    control::StreamedPods,
    pods::{self, FileWatch, PodsFile},
    sandbox::Sandboxes,
};

/// How soon a pod that failed to enroll (or whose network namespace was not found) is tried
/// again.
pub(super) const RETRY_ENROLLMENT: Duration = Duration::from_secs(1);

/// Where the pods to capture come from.
pub(super) enum PodSource {
    /// Local mode: the pods file says everything. It is read whole; the store takes only
    /// what differs.
    File {
        watch: FileWatch,
        /// Whether this node's pods were handed out once (the first look always is).
        started: bool,
    },
    /// The controller's workloads (the stream task keeps the store), with this node's pods'
    /// network namespaces found locally.
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
    pub(super) fn file(watch: FileWatch) -> Self {
        PodSource::File {
            watch,
            started: false,
        }
    }

    /// A pod cgroup got its first process: its network namespace can be found now.
    pub(super) fn look_again(&mut self) {
        if let PodSource::Controller { look_again, .. } = self {
            *look_again = true;
        }
    }

    /// `Some` with this node's pods to apply when they changed, or when it is time to look
    /// again for pods whose network namespace was missing.
    pub(super) fn poll(&mut self, state: &State) -> Option<Result<PodsFile, pods::Error>> {
        let node = state.config.node_name.as_str();
        match self {
            PodSource::File { watch, started } => {
                let file = match watch.poll()? {
                    Ok(file) => file,
                    Err(error) => return Some(Err(error)),
                };
                let mut store = state.workloads_mut();
                let touched = store.replace_all(file);
                state
                    .metrics
                    .workload_changes
                    .record(&touched.pods, store.len());
                // This node's share is taken only when it may have changed (or at the start).
                let first = !std::mem::replace(started, true);
                let node_file =
                    (first || touched.concerns_node(node)).then(|| store.node_file(node));
                drop(store);
                if touched.pods.len() >= super::LARGE_CHANGE {
                    // The whole file was parsed for it: its memory goes back at once.
                    drop(touched);
                    super::give_memory_back();
                }
                node_file.map(Ok)
            }
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
                // Nothing from the controller yet: keep what is enrolled.
                streamed.borrow_and_update().as_ref()?;
                let mut file = state.workloads().node_file(node);
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
