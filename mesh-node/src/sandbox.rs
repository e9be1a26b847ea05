//! Where this node's pods live: the network namespace the agent enters to open a pod's
//! listeners. The controller's stream says which pods run here and who they are, but not
//! their namespaces (only the node sees those). Local mode reads them from the pods file; in
//! Kubernetes the kubelet names each pod's cgroup after its UID (`pod<uid>` with the cgroupfs
//! driver, `kubepods-...-pod<uid_with_underscores>.slice` with systemd), so any process of
//! the pod, normally its pause container, leads to `/proc/<pid>/ns/net`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use crate::pods::{Pod, PodsFile};

/// Length of a UUID in text form.
const UID_LEN: usize = 36;

#[derive(Clone, Debug)]
pub enum Sandboxes {
    /// Local mode: the `netns` of the pods file's pod with the same namespace and name.
    PodsFile(PathBuf),
    /// Kubernetes: a process in the pod's cgroup, found under this `/proc`.
    Proc(PathBuf),
}

impl Sandboxes {
    /// Fills in the network namespace of every enrolled pod of `node`, and leaves out those
    /// whose namespace cannot be found (yet). Returns the keys of the pods left out.
    pub fn fill(&self, file: &mut PodsFile, node: &str) -> Vec<String> {
        let wanted: Vec<usize> = (0..file.pods.len())
            .filter(|&i| file.pods[i].node == node && file.is_enrolled(&file.pods[i]))
            .collect();
        if wanted.is_empty() {
            return Vec::new();
        }
        let found = match self {
            Sandboxes::PodsFile(path) => from_pods_file(path),
            Sandboxes::Proc(proc) => {
                let uids = wanted
                    .iter()
                    .filter_map(|&i| file.pods[i].uid.clone())
                    .collect();
                from_proc(proc, &uids)
            }
        };
        let mut missing = BTreeSet::new();
        for i in wanted {
            let pod = &mut file.pods[i];
            let sandbox = match self {
                Sandboxes::PodsFile(_) => found.get(&pod.key()),
                Sandboxes::Proc(_) => pod.uid.as_ref().and_then(|uid| found.get(uid)),
            };
            match sandbox {
                Some(netns) => pod.netns = netns.clone(),
                None => {
                    missing.insert(pod.key());
                }
            }
        }
        file.pods.retain(|pod| !missing.contains(&pod.key()));
        missing.into_iter().collect()
    }

    /// What to tell an operator about a pod left out.
    pub fn describe(&self) -> String {
        match self {
            Sandboxes::PodsFile(path) => format!("not in the pods file {}", path.display()),
            Sandboxes::Proc(proc) => format!(
                "no process under {} runs in a cgroup named after the pod's UID",
                proc.display()
            ),
        }
    }
}

/// `namespace/name` -> netns path, from the pods file (empty when it cannot be read).
fn from_pods_file(path: &Path) -> BTreeMap<String, PathBuf> {
    match PodsFile::read(path) {
        Ok(file) => file
            .pods
            .into_iter()
            .map(|pod: Pod| (pod.key(), pod.netns))
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "pods file unreadable: no pod network namespaces from it");
            BTreeMap::new()
        }
    }
}

/// UID -> `/proc/<pid>/ns/net` of the lowest-numbered process in the pod's cgroup (the
/// first started, so the same one from scan to scan while it lives).
fn from_proc(proc: &Path, uids: &BTreeSet<String>) -> BTreeMap<String, PathBuf> {
    let mut found: BTreeMap<String, u32> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(proc) else {
        return BTreeMap::new();
    };
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we scan: a vanished one is simply skipped.
        let Ok(cgroups) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        for uid in cgroups.lines().flat_map(pod_uids) {
            if uids.contains(&uid) {
                let lowest = found.entry(uid).or_insert(pid);
                *lowest = (*lowest).min(pid);
            }
        }
    }
    found
        .into_iter()
        .map(|(uid, pid)| (uid, proc.join(pid.to_string()).join("ns/net")))
        .collect()
}

/// The pod UIDs a `/proc/<pid>/cgroup` line names (`pod` followed by a UUID, with `-` or
/// systemd's `_`).
fn pod_uids(line: &str) -> impl Iterator<Item = String> + '_ {
    line.match_indices("pod").filter_map(move |(at, _)| {
        let uid = line.get(at + 3..at + 3 + UID_LEN)?;
        let uid = uid.replace('_', "-");
        let is_uuid = uid.char_indices().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        });
        is_uuid.then_some(uid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b5c3b1e-6a2f-4d8e-9c1a-2f3e4d5c6b7a";

    #[test]
    fn kubelet_cgroup_names_give_the_pod_uid() {
        let cgroupfs = format!("0::/kubepods/burstable/pod{UID}/0123abcd");
        let systemd = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-1.scope",
            UID.replace('-', "_")
        );
        for line in [cgroupfs, systemd] {
            assert_eq!(pod_uids(&line).collect::<Vec<_>>(), [UID], "{line}");
        }
        assert_eq!(pod_uids("0::/system.slice/podman.service").count(), 0);
        assert_eq!(pod_uids("0::/user.slice/pod-not-a-uid").count(), 0);
    }

    #[test]
    fn proc_scan_takes_the_lowest_pid_of_the_pod() {
        let dir = std::env::temp_dir().join(format!("ambit-sandbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (pid, cgroup) in [
            ("40", format!("0::/kubepods/pod{UID}/app")),
            ("7", format!("0::/kubepods/pod{UID}/pause")),
            ("9", "0::/system.slice/sshd.service".to_owned()),
        ] {
            std::fs::create_dir_all(dir.join(pid)).unwrap();
            std::fs::write(dir.join(pid).join("cgroup"), cgroup).unwrap();
        }
        std::fs::create_dir_all(dir.join("self")).unwrap();
        let found = from_proc(&dir, &BTreeSet::from([UID.to_owned()]));
        assert_eq!(found.get(UID), Some(&dir.join("7/ns/net")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
