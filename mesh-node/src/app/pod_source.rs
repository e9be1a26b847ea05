//! Where the pods to capture come from: local mode's pods file, or the controller's workloads
//! with this node's pods' network namespaces found locally.

use std::time::Duration;

use crate::{
    control::StreamedPods,
    pods::{self, FileWatch, PodsFile},
    sandbox::Sandboxes,
};

/// How soon a pod that failed to enroll (or whose network namespace was not found) is tried
/// again.
pub(super) const RETRY_ENROLLMENT: Duration = Duration::from_secs(1);

/// Where the pods to capture come from.
pub(super) enum PodSource {
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
    pub(super) fn look_again(&mut self) {
        if let PodSource::Controller { look_again, .. } = self {
            *look_again = true;
        }
    }

    /// `Some` with the pods to apply when they changed, or when it is time to look again for
    /// pods whose network namespace was missing.
    pub(super) fn poll(&mut self, node: &str) -> Option<Result<PodsFile, pods::Error>> {
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
