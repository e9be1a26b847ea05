//! Where this node's pods live: the network namespace the agent enters to open a pod's
//! listeners. The controller's stream says which pods run here and who they are, but not
//! their namespaces (only the node sees those). Local mode reads them from the pods file; in
//! Kubernetes the kubelet names each pod's cgroup after its UID (`kubepods/[qos/]pod<uid>`
//! with the cgroupfs driver, `kubepods.slice/[kubepods-<qos>.slice/]kubepods-[<qos>-]pod<uid
//! with underscores>.slice` with systemd), so any process of the pod, normally its pause
//! container, leads to `/proc/<pid>/ns/net`.
//!
//! Only the pod-level component the kubelet made counts, at its place under `kubepods`: a pod
//! can make cgroups of its own below its own, and one named after another pod's UID must not
//! make its processes that pod's sandbox.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use crate::pods::{Pod, PodsFile, Scheduled};

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
        // Left out of the pods, but still known as pods of the mesh on this node: a pod
        // starting with this UID stays held until its namespace is found and it is enrolled.
        for pod in file.pods.iter().filter(|pod| missing.contains(&pod.key())) {
            if let Some(uid) = &pod.uid {
                file.scheduled.insert(
                    uid.clone(),
                    Scheduled {
                        key: pod.key(),
                        node: pod.node.clone(),
                        enrolled: true,
                    },
                );
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
        for uid in cgroups.lines().filter_map(pod_uid) {
            if uids.contains(&uid) {
                let lowest = found.entry(uid).or_insert(pid);
                *lowest = (*lowest).min(pid);
            }
        }
    }
    // The pid was chosen from a file read moments ago: if it has exited and its number was
    // reused since, the process now there must still be in the pod's cgroup.
    found.retain(|uid, pid| {
        std::fs::read_to_string(proc.join(pid.to_string()).join("cgroup"))
            .is_ok_and(|cgroups| cgroups.lines().filter_map(pod_uid).any(|u| &u == uid))
    });
    found
        .into_iter()
        .map(|(uid, pid)| (uid, proc.join(pid.to_string()).join("ns/net")))
        .collect()
}

/// Whether `netns` (`<proc>/<pid>/ns/net`, as the scan found it) still belongs to a process of
/// the pod `uid`. Paths of another shape (local mode's named namespaces) are not a process's,
/// and hold.
pub fn still_the_pods(netns: &Path, uid: &str) -> bool {
    let is_process_netns = netns.ends_with("ns/net");
    let Some(process) = netns.parent().and_then(Path::parent) else {
        return true;
    };
    if !is_process_netns {
        return true;
    }
    std::fs::read_to_string(process.join("cgroup"))
        .is_ok_and(|cgroups| cgroups.lines().filter_map(pod_uid).any(|u| u == uid))
}

/// The UID of the pod whose cgroup a `/proc/<pid>/cgroup` line (`id:controllers:path`) is in:
/// the component right after `kubepods` (or after its QoS class), as the kubelet names it.
/// Leading `..` (the path seen from another cgroup namespace) and a prefix before `kubepods`
/// (a node that is itself a container) are allowed; anything below the pod's cgroup is not
/// read.
fn pod_uid(line: &str) -> Option<String> {
    let path = line.splitn(3, ':').nth(2)?;
    let mut components = path.split('/').filter(|c| !c.is_empty() && *c != "..");
    // cgroupfs: kubepods/[besteffort|burstable/]pod<uid>
    // systemd:  kubepods.slice/[kubepods-<qos>.slice/]kubepods-[<qos>-]pod<uid_>.slice
    components.find(|c| *c == "kubepods" || *c == "kubepods.slice")?;
    let mut next = components.next()?;
    if QOS_CGROUPS.contains(&next) {
        next = components.next()?;
    }
    pod_cgroup_uid(next)
}

/// The pod UID a pod-level cgroup's name carries: `pod<uid>` (cgroupfs driver) or
/// `kubepods-[<qos>-]pod<uid with underscores>.slice` (systemd); `None` for any other name.
pub fn pod_cgroup_uid(name: &str) -> Option<String> {
    let uid = match name.strip_suffix(".slice") {
        Some(unit) => unit.rsplit_once("-pod")?.1.replace('_', "-"),
        None => name.strip_prefix("pod")?.to_owned(),
    };
    let is_uuid = uid.len() == UID_LEN
        && uid.char_indices().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        });
    is_uuid.then_some(uid)
}

/// The names the kubelet gives its QoS classes' cgroups under `kubepods` (both drivers).
pub const QOS_CGROUPS: [&str; 4] = [
    "besteffort",
    "burstable",
    "kubepods-besteffort.slice",
    "kubepods-burstable.slice",
];

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b5c3b1e-6a2f-4d8e-9c1a-2f3e4d5c6b7a";

    #[test]
    fn kubelet_cgroup_names_give_the_pod_uid() {
        let underscored = UID.replace('-', "_");
        let lines = [
            format!("0::/kubepods/burstable/pod{UID}/0123abcd"),
            format!("0::/kubepods/pod{UID}/0123abcd"),
            format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{underscored}.slice/cri-containerd-1.scope"
            ),
            format!("0::/kubepods.slice/kubepods-pod{underscored}.slice/cri-containerd-1.scope"),
            // Seen from the agent's own cgroup namespace, and on a node that is a container.
            format!("0::/../../kubepods/besteffort/pod{UID}/c"),
            format!("0::/docker/4f2a/kubepods/pod{UID}"),
        ];
        for line in lines {
            assert_eq!(pod_uid(&line).as_deref(), Some(UID), "{line}");
        }
        assert_eq!(pod_uid("0::/system.slice/podman.service"), None);
        assert_eq!(pod_uid("0::/user.slice/pod-not-a-uid"), None);
        assert_eq!(
            pod_uid(&format!("0::/ambit/pod{UID}")),
            None,
            "not under kubepods"
        );
    }

    #[test]
    fn a_cgroup_a_pod_made_below_its_own_names_no_other_pod() {
        // Pod A's process in a cgroup it created, named after pod B.
        let victim = "99999999-6a2f-4d8e-9c1a-2f3e4d5c6b7a";
        let line = format!("0::/kubepods/burstable/pod{UID}/app/pod{victim}");
        assert_eq!(pod_uid(&line).as_deref(), Some(UID));
        let systemd = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-1.scope/kubepods-pod{}.slice",
            UID.replace('-', "_"),
            victim.replace('-', "_")
        );
        assert_eq!(pod_uid(&systemd).as_deref(), Some(UID));
    }

    #[test]
    fn proc_scan_takes_the_lowest_pid_of_the_pod() {
        let dir = std::env::temp_dir().join(format!("ambit-sandbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (pid, cgroup) in [
            ("40", format!("0::/kubepods/pod{UID}/app")),
            ("7", format!("0::/kubepods/pod{UID}/pause")),
            ("9", "0::/system.slice/sshd.service".to_owned()),
            // A lower pid, in a cgroup another pod made and named after this one.
            (
                "3",
                format!("0::/kubepods/pod{}/x/pod{UID}", "1".repeat(8) + &UID[8..]),
            ),
        ] {
            std::fs::create_dir_all(dir.join(pid)).unwrap();
            std::fs::write(dir.join(pid).join("cgroup"), cgroup).unwrap();
        }
        std::fs::create_dir_all(dir.join("self")).unwrap();
        let found = from_proc(&dir, &BTreeSet::from([UID.to_owned()]));
        assert_eq!(found.get(UID), Some(&dir.join("7/ns/net")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_sandbox_whose_process_changed_pods_is_not_the_pods() {
        let dir = std::env::temp_dir().join(format!("ambit-sandbox-pid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("7")).unwrap();
        let cgroup = dir.join("7/cgroup");
        std::fs::write(&cgroup, format!("0::/kubepods/pod{UID}/pause")).unwrap();
        let netns = dir.join("7/ns/net");
        assert!(still_the_pods(&netns, UID));
        // The pod's process exited and its number went to another pod's.
        let other = "1".repeat(8) + &UID[8..];
        std::fs::write(&cgroup, format!("0::/kubepods/pod{other}/pause")).unwrap();
        assert!(!still_the_pods(&netns, UID));
        std::fs::remove_file(&cgroup).unwrap();
        assert!(!still_the_pods(&netns, UID), "a process that is gone");
        // Local mode's named namespaces are no process's.
        assert!(still_the_pods(Path::new("/run/netns/pod-a"), UID));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pod_of_the_mesh_left_out_for_its_namespace_stays_known_as_one() {
        let dir = std::env::temp_dir().join(format!("ambit-sandbox-fill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("self")).unwrap();
        let mut file: PodsFile = serde_json::from_value(serde_json::json!({
            "namespaces": [{"name": "a", "labels": {"ambit.io/dataplane-mode": "ambient"}}],
            "pods": [{"name": "p", "namespace": "a", "node": "n0", "ip": "10.0.0.1",
                      "netns": "/x", "uid": UID}],
        }))
        .unwrap();
        // No process of the pod yet: its namespace is not found.
        let missing = Sandboxes::Proc(dir.clone()).fill(&mut file, "n0");
        assert_eq!(missing, ["a/p"]);
        assert!(file.pods.is_empty());
        assert_eq!(
            file.scheduled.get(UID),
            Some(&Scheduled {
                key: "a/p".to_owned(),
                node: "n0".to_owned(),
                enrolled: true
            })
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
