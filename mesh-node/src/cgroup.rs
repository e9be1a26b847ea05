//! cgroup v2 facts the agent needs: where the hierarchy is mounted, a cgroup's id (what
//! `bpf_get_current_cgroup_id` returns), and moving the agent into a cgroup of its own.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// A cgroup v2 id is the inode number of its directory on the cgroup2 mount.
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// The first cgroup2 mount point in this mount namespace.
pub fn v2_mount() -> io::Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPEROPTS"
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup2 mount (is cgroup v2 enabled?)",
            )
        })
}

/// This process's cgroup v2 directory.
pub fn current_dir() -> io::Result<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let relative = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup v2 entry in /proc/self/cgroup",
            )
        })?;
    Ok(v2_mount()?.join(relative.trim_start_matches('/')))
}

/// Moves the whole process (every thread) into `dir`, creating it.
pub fn move_self_into(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}
