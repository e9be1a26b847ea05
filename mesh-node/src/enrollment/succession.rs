//! Enrollment across agent processes: listeners taken from a predecessor, handed to a
//! successor, and every pod released for an uninstall.

use super::Enrollment;
use crate::handover::{self, Inherited, PodListeners};

impl Enrollment {
    /// Enrolls the next reconcile's pods on these listeners where they match, rather than
    /// opening new ones: connections waiting in their backlogs are accepted, none refused.
    pub fn inherit(&mut self, inherited: Inherited) {
        self.inherited = Some(inherited);
    }

    /// Releases every pod for good (`mesh-node --uninstall`): their new connections go straight
    /// at once; those redirected a moment before still wait in the listeners' backlogs, so the
    /// listeners keep accepting for `grace` before they close. Connections carried go on.
    /// Returns how many pods were released.
    pub async fn release_all(&mut self, grace: std::time::Duration) -> usize {
        let mut cookies: Vec<u64> = self
            .active
            .values()
            .map(|a| a.context.netns_cookie)
            .chain(self.refused.values().map(|(_, cookie)| *cookie))
            .chain(self.leftovers.take().unwrap_or_default())
            .collect();
        cookies.sort_unstable();
        cookies.dedup();
        for cookie in &cookies {
            if let Err(error) = self.dataplane.stop_capture(*cookie) {
                tracing::error!(%error, cookie, "releasing a pod failed");
            }
        }
        tokio::time::sleep(grace).await;
        let released = self.active.len() + self.refused.len();
        for (key, active) in std::mem::take(&mut self.active) {
            if let Err(error) = self
                .dataplane
                .unenroll(active.context.netns_cookie, &active.inbound_keys)
            {
                tracing::error!(%error, pod = %key, "releasing pod failed");
            }
            tracing::info!(pod = %key, "pod released");
        }
        for (key, (_, cookie)) in std::mem::take(&mut self.refused) {
            self.release_refused(&key, cookie);
        }
        self.state.metrics.enrolled_pods.set(0);
        self.state.metrics.refused_pods.set(0);
        self.state.set_enrolled(Vec::new());
        released
    }

    /// Every enrolled pod's listening sockets, duplicated, for a successor. This agent keeps
    /// accepting on its own copies until it is dropped.
    pub fn hand_over(&self) -> std::io::Result<Vec<PodListeners>> {
        self.active
            .values()
            .map(|active| {
                let listeners = active
                    .listeners
                    .iter()
                    .map(|(addr, fd)| Ok((*addr, handover::duplicate(*fd)?)))
                    .collect::<std::io::Result<_>>()?;
                Ok(PodListeners {
                    key: active.context.key.clone(),
                    netns_cookie: active.context.netns_cookie,
                    listeners,
                })
            })
            .collect()
    }
}
