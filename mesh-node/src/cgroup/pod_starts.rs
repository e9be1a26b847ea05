//! Pods starting on this node, seen as the kubelet makes their cgroups: inotify on the pod
//! cgroup parents (`kubepods` and its QoS classes), and on each new pod cgroup's
//! `cgroup.events` (its first process). No polling: the agent learns of a pod as the kernel
//! does, while the kernel holds the pod's connects until the agent has decided about it.

use std::{
    collections::HashMap,
    ffi::OsStr,
    path::{Path, PathBuf},
    time::Instant,
};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::sync::mpsc::UnboundedSender;

use super::cgroup_id;
use crate::sandbox::{QOS_CGROUPS, pod_cgroup_uid};

/// A pod's cgroup, as it appeared.
#[derive(Clone, Debug)]
pub struct PodCgroup {
    /// Its cgroup v2 id (what the kernel programs see).
    pub id: u64,
    /// The pod's UID, from the cgroup's name.
    pub uid: String,
    pub path: PathBuf,
    /// When the agent saw it.
    pub seen: Instant,
}

#[derive(Debug)]
pub enum PodStart {
    /// A pod cgroup appeared (or existed when the watch began).
    Appeared(PodCgroup),
    /// A process is in it now: its network namespace can be found.
    Populated { uid: String },
    /// It was removed: the pod is gone.
    Gone { id: u64 },
}

/// The pod cgroup parents under `base` (a `kubepods` directory): itself and its QoS classes.
pub fn parents(base: &Path) -> Vec<PathBuf> {
    std::iter::once(base.to_owned())
        .chain(QOS_CGROUPS.iter().map(|qos| base.join(qos)))
        .filter(|p| p.is_dir())
        .collect()
}

/// The kubelet's `kubepods` under the hierarchy's `root`, for either cgroup driver.
pub fn discover_base(root: &Path) -> Option<PathBuf> {
    ["kubepods.slice", "kubepods"]
        .iter()
        .map(|name| root.join(name))
        .find(|p| p.is_dir())
}

/// Watches `parents` from now on, then reports the pod cgroups already there; both go to
/// `events`, from a thread of its own. Returns once the watches are in place, so that a pod
/// cgroup made after this returns is never missed.
pub fn watch(parents: &[PathBuf], events: UnboundedSender<PodStart>) -> std::io::Result<()> {
    let inotify = Inotify::init()?;
    let mut parent_watches = HashMap::new();
    for parent in parents {
        let wd = inotify.watches().add(
            parent,
            WatchMask::CREATE | WatchMask::DELETE | WatchMask::ONLYDIR,
        )?;
        parent_watches.insert(wd, parent.clone());
    }
    let mut watcher = Watcher {
        inotify,
        parents: parent_watches,
        pods: HashMap::new(),
        events,
    };
    for parent in parents {
        for entry in std::fs::read_dir(parent)?.filter_map(Result::ok) {
            watcher.appeared(parent, &entry.file_name());
        }
    }
    std::thread::Builder::new()
        .name("pod-cgroups".into())
        .spawn(move || watcher.run())?;
    Ok(())
}

struct Watcher {
    inotify: Inotify,
    /// Watched parents, by watch.
    parents: HashMap<WatchDescriptor, PathBuf>,
    /// Each pod cgroup's `cgroup.events` watch: its UID and id.
    pods: HashMap<WatchDescriptor, (String, u64)>,
    events: UnboundedSender<PodStart>,
}

impl Watcher {
    fn run(mut self) {
        let mut buffer = [0u8; 8192];
        loop {
            let events: Vec<(WatchDescriptor, EventMask, Option<std::ffi::OsString>)> = match self
                .inotify
                .read_events_blocking(&mut buffer)
            {
                Ok(events) => events
                    .map(|e| (e.wd, e.mask, e.name.map(OsStr::to_owned)))
                    .collect(),
                Err(error) => {
                    tracing::error!(%error, "watching pod cgroups failed: pods starting from now on wait for the next reconcile");
                    return;
                }
            };
            for (wd, mask, name) in events {
                if let Some(parent) = self.parents.get(&wd).cloned() {
                    let Some(name) = name else { continue };
                    if mask.contains(EventMask::CREATE) {
                        self.appeared(&parent, &name);
                    } else if mask.contains(EventMask::DELETE) {
                        self.gone(&name);
                    }
                } else if let Some((uid, _)) = self.pods.get(&wd) {
                    if mask.contains(EventMask::MODIFY) {
                        let _ = self.events.send(PodStart::Populated { uid: uid.clone() });
                    } else if mask.contains(EventMask::IGNORED) {
                        self.pods.remove(&wd);
                    }
                }
                if self.events.is_closed() {
                    return;
                }
            }
        }
    }

    fn appeared(&mut self, parent: &Path, name: &OsStr) {
        let path = parent.join(name);
        let name = name.to_string_lossy();
        if QOS_CGROUPS.contains(&name.as_ref()) {
            // A QoS class made after the agent started: a parent too.
            if let Ok(wd) = self.inotify.watches().add(
                &path,
                WatchMask::CREATE | WatchMask::DELETE | WatchMask::ONLYDIR,
            ) {
                self.parents.insert(wd, path);
            }
            return;
        }
        let Some(uid) = pod_cgroup_uid(&name) else {
            return;
        };
        let seen = Instant::now();
        let Ok(id) = cgroup_id(&path) else {
            return;
        };
        if let Ok(wd) = self
            .inotify
            .watches()
            .add(path.join("cgroup.events"), WatchMask::MODIFY)
        {
            self.pods.insert(wd, (uid.clone(), id));
        }
        let _ = self.events.send(PodStart::Appeared(PodCgroup {
            id,
            uid: uid.clone(),
            path: path.clone(),
            seen,
        }));
        // It may have been populated before its watch was added.
        let populated = std::fs::read_to_string(path.join("cgroup.events"))
            .is_ok_and(|events| events.lines().any(|l| l == "populated 1"));
        if populated {
            let _ = self.events.send(PodStart::Populated { uid });
        }
    }

    fn gone(&mut self, name: &OsStr) {
        let Some(uid) = pod_cgroup_uid(&name.to_string_lossy()) else {
            return;
        };
        let ids: Vec<u64> = self
            .pods
            .values()
            .filter(|(u, _)| *u == uid)
            .map(|(_, id)| *id)
            .collect();
        for id in ids {
            let _ = self.events.send(PodStart::Gone { id });
        }
    }
}
