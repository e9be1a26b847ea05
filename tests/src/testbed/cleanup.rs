//! Tearing down what a test bed made, and sweeping what a killed run left behind.

use std::{path::Path, time::Duration};

use super::{BPF_BASE, CGROUP_PREFIX, CGROUP_V2, NETNS_PREFIX};
use crate::sys;

pub(super) fn print_agent_logs(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ----", path.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

pub(super) fn kill_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    // Wait (bounded) for the kernel to empty the tree.
    for _ in 0..100 {
        let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        if events.contains("populated 0") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(super) fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes namespaces, cgroups and pins of earlier runs whose process is gone (killed before
/// its Drop could run).
pub(super) fn sweep_leftovers() {
    let dead = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !sys::pid_alive(pid))
    };
    if let Ok(out) = sys::run("ip", &["netns", "list"]) {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if dead(name, NETNS_PREFIX) {
                let _ = sys::run("ip", &["netns", "del", name]);
            }
        }
    }
    for (base, prefix) in [(CGROUP_V2, CGROUP_PREFIX), (BPF_BASE, "test-")] {
        let Ok(entries) = std::fs::read_dir(base) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead(&name, prefix) {
                if base == CGROUP_V2 {
                    kill_cgroup_tree(&entry.path());
                    remove_cgroup_tree(&entry.path());
                } else {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}
