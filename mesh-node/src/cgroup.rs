//! cgroup v2 facts the agent needs: where the whole hierarchy is mounted (the connect and
//! sock_ops programs attach at its root), the agent's own cgroup and its id (what
//! `bpf_get_current_cgroup_id` returns for the agent's sockets, which the programs skip), and
//! moving the agent into a cgroup of its own.
//!
//! Both are read from `/proc/self/mountinfo`, never assumed: real nodes mount cgroup v2 at
//! `/sys/fs/cgroup`, hybrid hosts at `/sys/fs/cgroup/unified`, and a container usually has a
//! private cgroup namespace, where `/proc/self/cgroup` reads `0::/` and the host's hierarchy
//! (a hostPath volume) shows its root as `/..`, one `..` per level above the container's own
//! cgroup. There the agent's cgroup is found as the one whose `cgroup.procs` lists the agent.

pub mod pod_starts;

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

/// The cgroup v2 hierarchy as the agent sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where the hierarchy's root is mounted: every pod's cgroup is below it.
    pub root: PathBuf,
    /// The agent's own cgroup directory, under `root`.
    pub own: PathBuf,
}

/// A cgroup v2 id is the inode number of its directory on the cgroup2 mount.
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// The hierarchy's root and this process's cgroup, from `/proc/self/mountinfo` and
/// `/proc/self/cgroup`.
pub fn discover() -> io::Result<Hierarchy> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    discover_from(&mountinfo, &own, std::process::id())
}

/// [`discover`] on given file contents; `pid` is this process as its own pid namespace
/// numbers it (what `cgroup.procs` shows to it).
pub fn discover_from(mountinfo: &str, self_cgroup: &str, pid: u32) -> io::Result<Hierarchy> {
    let relative = self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| {
            not_found("no cgroup v2 entry in /proc/self/cgroup (is cgroup v2 enabled?)")
        })?
        .trim();
    let mounts = cgroup2_mounts(mountinfo);
    if mounts.is_empty() {
        return Err(not_found(
            "no cgroup2 mount in /proc/self/mountinfo: the agent needs the host's cgroup v2 \
             hierarchy (in Kubernetes, a hostPath volume of /sys/fs/cgroup)",
        ));
    }
    // The hierarchy's root has no `cgroup.type` (every other cgroup has one). Among several
    // mounts of it, the conventional place wins.
    let mut roots: Vec<&Cgroup2Mount> = mounts
        .iter()
        .filter(|m| !m.mount_point.join("cgroup.type").exists())
        .collect();
    roots.sort_by_key(|m| m.mount_point != Path::new("/sys/fs/cgroup"));
    let root = roots.first().ok_or_else(|| {
        not_found(&format!(
            "cgroup2 is mounted at {} but none of those is the hierarchy's root (a container's \
             own cgroup is not enough): mount the host's /sys/fs/cgroup into the agent",
            mounts
                .iter()
                .map(|m| m.mount_point.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let own = match levels_above(&root.root) {
        // The mount's root is this process's cgroup namespace root, and it is the hierarchy's
        // root: no private cgroup namespace.
        Some(0) => root.mount_point.join(relative.trim_start_matches('/')),
        // A private cgroup namespace `levels` below the hierarchy's root.
        Some(levels) => find_own(&root.mount_point, levels, relative, pid)?,
        None => {
            return Err(not_found(&format!(
                "the cgroup2 mount at {} shows root {}, neither this cgroup namespace's root \
                 nor above it",
                root.mount_point.display(),
                root.root
            )));
        }
    };
    Ok(Hierarchy {
        root: root.mount_point.clone(),
        own,
    })
}

#[derive(Debug)]
struct Cgroup2Mount {
    /// The mount's root within the hierarchy, relative to this process's cgroup namespace.
    root: String,
    mount_point: PathBuf,
}

fn cgroup2_mounts(mountinfo: &str) -> Vec<Cgroup2Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS"
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut fields = left.split_whitespace().skip(3);
            let root = unescape(fields.next()?);
            let mount_point = PathBuf::from(unescape(fields.next()?));
            Some(Cgroup2Mount { root, mount_point })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // Only a backslash starts an escape; the value is read wide, since digits that are
        // not one (`\777`) stay as written rather than wrap.
        let octal = (bytes[i] == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| {
                let value = digits.iter().fold(0u16, |n, d| n * 8 + u16::from(d - b'0'));
                u8::try_from(value).ok()
            });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/` -> 0, `/../..` -> 2; `None` for a root below this namespace's (`/a/b`) or beside it.
fn levels_above(root: &str) -> Option<usize> {
    let mut levels = 0;
    for component in Path::new(root).components() {
        match component {
            Component::RootDir => {}
            Component::ParentDir => levels += 1,
            _ => return None,
        }
    }
    Some(levels)
}

/// The directory `levels` below `mount` whose `relative` sub-cgroup lists `pid`: this
/// process's cgroup, seen through a mount of the whole hierarchy from inside a private cgroup
/// namespace.
fn find_own(mount: &Path, levels: usize, relative: &str, pid: u32) -> io::Result<PathBuf> {
    let relative = relative.trim_start_matches('/');
    let pid = pid.to_string();
    let mut frontier = vec![mount.to_owned()];
    for _ in 0..levels {
        let mut next = Vec::new();
        for dir in &frontier {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            next.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        frontier = next;
    }
    frontier
        .into_iter()
        .map(|dir| match relative {
            "" => dir,
            relative => dir.join(relative),
        })
        .find(|dir| {
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .is_ok_and(|procs| procs.lines().any(|line| line.trim() == pid))
        })
        .ok_or_else(|| {
            not_found(&format!(
                "no cgroup {levels} levels below {} lists this process ({pid}) in its \
                 cgroup.procs",
                mount.display()
            ))
        })
}

fn not_found(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, message.to_owned())
}

/// Moves the whole process (every thread) into `dir`, creating it.
pub fn move_self_into(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

#[cfg(test)]
mod tests;
