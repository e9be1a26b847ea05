use std::path::Path;

use super::*;

/// A directory tree standing in for a cgroup2 mount: `dirs` relative to it, `procs` writing a
/// `cgroup.procs`, `typed` giving a directory a `cgroup.type` (every cgroup but the root has
/// one).
struct Tree(PathBuf);

impl Tree {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ambit-cgroup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Tree(dir)
    }

    fn cgroup(&self, path: &str, procs: &[u32]) -> &Self {
        let dir = self.0.join(path);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.type"), "domain\n").unwrap();
        let procs: Vec<String> = procs.iter().map(u32::to_string).collect();
        std::fs::write(dir.join("cgroup.procs"), procs.join("\n")).unwrap();
        self
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mountinfo(lines: &[(&str, &Path)]) -> String {
    lines
        .iter()
        .enumerate()
        .map(|(i, (root, point))| {
            format!(
                "{} 23 0:{} {root} {} rw,relatime - cgroup2 cgroup2 rw\n",
                40 + i,
                38 + i,
                point.display().to_string().replace(' ', "\\040")
            )
        })
        .collect::<String>()
        + "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
}

#[test]
fn without_a_cgroup_namespace_the_own_cgroup_is_the_mount_plus_the_path() {
    let tree = Tree::new("plain");
    tree.cgroup("kubepods/pod1/agent", &[4242]);
    let found = discover_from(
        &mountinfo(&[("/", tree.path())]),
        "0::/kubepods/pod1/agent\n",
        4242,
    )
    .unwrap();
    assert_eq!(found.root, tree.path());
    assert_eq!(found.own, tree.path().join("kubepods/pod1/agent"));
}

#[test]
fn in_a_private_cgroup_namespace_the_own_cgroup_is_found_by_its_procs() {
    // What a DaemonSet container sees: its own namespace root four levels down, and the
    // host's hierarchy mounted (hostPath) at /sys/fs/cgroup, shown as "/../../../..".
    let tree = Tree::new("private ns");
    tree.cgroup("kubepods.slice/besteffort/podA/cri-1", &[1, 7])
        .cgroup("kubepods.slice/besteffort/podA/cri-2", &[])
        .cgroup("kubepods.slice/burstable/podB/cri-3", &[12])
        .cgroup("system.slice/containerd.service", &[1]);
    let found = discover_from(&mountinfo(&[("/../../../..", tree.path())]), "0::/\n", 12).unwrap();
    assert_eq!(found.root, tree.path());
    assert_eq!(
        found.own,
        tree.path().join("kubepods.slice/burstable/podB/cri-3")
    );
}

#[test]
fn a_process_in_a_child_of_its_namespace_root_is_found_too() {
    let tree = Tree::new("nested");
    tree.cgroup("a/ctr", &[]).cgroup("a/ctr/agent", &[9]);
    let found = discover_from(&mountinfo(&[("/../..", tree.path())]), "0::/agent\n", 9).unwrap();
    assert_eq!(found.own, tree.path().join("a/ctr/agent"));
}

#[test]
fn the_hierarchy_root_is_told_from_a_containers_own_cgroup_mount() {
    // A runtime's own cgroup2 mount (the container's cgroup, which has cgroup.type) beside the
    // host's hierarchy: the root is the one without cgroup.type, wherever it is mounted.
    let host = Tree::new("host");
    host.cgroup("pods/ctr", &[5]);
    let own = Tree::new("own");
    std::fs::write(own.path().join("cgroup.type"), "domain\n").unwrap();
    let found = discover_from(
        &mountinfo(&[("/", own.path()), ("/../..", host.path())]),
        "0::/\n",
        5,
    )
    .unwrap();
    assert_eq!(found.root, host.path());
    assert_eq!(found.own, host.path().join("pods/ctr"));
}

#[test]
fn only_a_namespaced_view_is_refused_naming_what_to_mount() {
    let own = Tree::new("only own");
    std::fs::write(own.path().join("cgroup.type"), "domain\n").unwrap();
    let error = discover_from(&mountinfo(&[("/", own.path())]), "0::/\n", 1).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("mount the host's /sys/fs/cgroup"),
        "{error}"
    );
    let error = discover_from(&mountinfo(&[]), "0::/\n", 1).unwrap_err();
    assert!(error.to_string().contains("no cgroup2 mount"), "{error}");
}

#[test]
fn a_process_not_listed_anywhere_is_an_error_not_a_guess() {
    let tree = Tree::new("absent");
    tree.cgroup("a/b", &[3]);
    let error = discover_from(&mountinfo(&[("/../..", tree.path())]), "0::/\n", 4).unwrap_err();
    assert!(
        error.to_string().contains("lists this process (4)"),
        "{error}"
    );
}

#[test]
fn mountinfo_escapes_are_decoded() {
    assert_eq!(unescape("/a\\040b\\011c\\134d"), "/a b\tc\\d");
    assert_eq!(unescape("/plain\\x"), "/plain\\x");
    // Digits are only an escape after a backslash, and one past a byte stays as written.
    assert_eq!(unescape("/pod-7777/999"), "/pod-7777/999");
    assert_eq!(unescape("/a\\777"), "/a\\777");
    assert_eq!(levels_above("/"), Some(0));
    assert_eq!(levels_above("/../.."), Some(2));
    assert_eq!(levels_above("/a/b"), None);
    assert_eq!(levels_above("/../a"), None);
}

#[test]
fn this_process_is_found_on_the_running_host() {
    let found = discover().unwrap();
    assert!(found.own.starts_with(&found.root), "{found:?}");
    assert!(cgroup_id(&found.own).unwrap() > 0);
}
