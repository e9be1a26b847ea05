//! Whether this host can run the node agent, checked as the agent would use it: the kernel's
//! eBPF program and map types (loaded for real, not guessed from a version), BTF, the cgroup
//! v2 hierarchy and where it is mounted, bpffs, network namespaces, and the capabilities the
//! DaemonSet grants. What `ambitctl precheck` prints on a node.

use std::path::Path;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
};
use serde::Serialize;

/// One check's outcome.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    /// Works, with a caveat to know about.
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

fn check(name: &'static str, outcome: Outcome, detail: impl Into<String>) -> Check {
    Check {
        name,
        outcome,
        detail: detail.into(),
    }
}

/// Capabilities the agent's DaemonSet grants, by bit (man 7 capabilities).
const CAPABILITIES: [(&str, u32); 5] = [
    ("NET_ADMIN", 12),
    ("SYS_PTRACE", 19),
    ("SYS_ADMIN", 21),
    ("PERFMON", 38),
    ("BPF", 39),
];

/// Every check, in the order an operator reads them.
pub fn run() -> Vec<Check> {
    let mut checks = vec![
        kernel(),
        btf(),
        cgroup(),
        bpffs(),
        namespaces(),
        capabilities(),
    ];
    checks.extend(program_types());
    checks
}

fn kernel() -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let version: Vec<u32> = release
        .split(['.', '-'])
        .take(2)
        .filter_map(|p| p.parse().ok())
        .collect();
    match version.as_slice() {
        [major, minor] if (*major, *minor) >= (5, 15) => {
            check("kernel", Outcome::Pass, format!("Linux {release}"))
        }
        [_, _] => check(
            "kernel",
            Outcome::Fail,
            format!("Linux {release}: the agent's programs need 5.15 or later"),
        ),
        _ => check(
            "kernel",
            Outcome::Warn,
            format!(
                "cannot read the kernel version ({release:?}); the program checks below decide"
            ),
        ),
    }
}

fn btf() -> Check {
    match Path::new("/sys/kernel/btf/vmlinux").exists() {
        true => check("BTF", Outcome::Pass, "/sys/kernel/btf/vmlinux"),
        false => check(
            "BTF",
            Outcome::Fail,
            "no /sys/kernel/btf/vmlinux: the kernel must be built with CONFIG_DEBUG_INFO_BTF",
        ),
    }
}

fn cgroup() -> Check {
    match crate::cgroup::discover() {
        Ok(hierarchy) => {
            let root = hierarchy.root.display().to_string();
            if root == "/sys/fs/cgroup" {
                check("cgroup v2", Outcome::Pass, format!("root at {root}"))
            } else {
                check(
                    "cgroup v2",
                    Outcome::Warn,
                    format!(
                        "root at {root} (a hybrid host): the DaemonSet mounts the host's \
                         /sys/fs/cgroup, which must then be the cgroup v2 hierarchy"
                    ),
                )
            }
        }
        Err(error) => check("cgroup v2", Outcome::Fail, error.to_string()),
    }
}

fn bpffs() -> Check {
    match crate::dataplane::is_bpffs(Path::new("/sys/fs/bpf")) {
        Ok(true) => check("bpffs", Outcome::Pass, "mounted at /sys/fs/bpf"),
        Ok(false) => check(
            "bpffs",
            Outcome::Warn,
            "not mounted at /sys/fs/bpf: the agent mounts its own, and its pins do not outlive \
             it (systemd mounts it on most distributions)",
        ),
        Err(error) => check("bpffs", Outcome::Fail, format!("/sys/fs/bpf: {error}")),
    }
}

fn namespaces() -> Check {
    match std::fs::File::open("/proc/self/ns/net") {
        Ok(_) => check("network namespaces", Outcome::Pass, "/proc/self/ns/net"),
        Err(error) => check("network namespaces", Outcome::Fail, error.to_string()),
    }
}

fn capabilities() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = CAPABILITIES
        .iter()
        .filter(|(_, bit)| effective & (1 << bit) == 0)
        .map(|(name, _)| *name)
        .collect();
    match missing.is_empty() {
        true => check(
            "capabilities",
            Outcome::Pass,
            "BPF, PERFMON, NET_ADMIN, SYS_ADMIN, SYS_PTRACE",
        ),
        false => check(
            "capabilities",
            Outcome::Fail,
            format!(
                "missing {} (run as root, or as the DaemonSet grants them); the program checks \
                 below need them too",
                missing.join(", ")
            ),
        ),
    }
}

/// The program and map types the agent loads, each probed by loading a minimal one.
fn program_types() -> Vec<Check> {
    let programs = [
        (
            ProgramType::CgroupSockAddr,
            "cgroup/connect4, connect6: outbound capture",
        ),
        (ProgramType::SockOps, "sock_ops: original destinations"),
        (
            ProgramType::CgroupSockopt,
            "cgroup/getsockopt: SO_ORIGINAL_DST",
        ),
        (ProgramType::SkLookup, "sk_lookup: inbound capture"),
        (ProgramType::SkMsg, "sk_msg: sockmap acceleration"),
    ];
    let maps = [
        (MapType::SockHash, "sockhash"),
        (MapType::LruHash, "LRU hash"),
    ];
    let mut checks = Vec::new();
    for (program, what) in programs {
        checks.push(match is_program_supported(program) {
            Ok(true) => check("eBPF program", Outcome::Pass, what),
            Ok(false) => check(
                "eBPF program",
                Outcome::Fail,
                format!("{what}: not supported"),
            ),
            Err(error) => check(
                "eBPF program",
                Outcome::Fail,
                format!("{what}: cannot probe ({error})"),
            ),
        });
    }
    for (map, what) in maps {
        checks.push(match is_map_supported(map) {
            Ok(true) => check("eBPF map", Outcome::Pass, what),
            Ok(false) => check("eBPF map", Outcome::Fail, format!("{what}: not supported")),
            Err(error) => check(
                "eBPF map",
                Outcome::Fail,
                format!("{what}: cannot probe ({error})"),
            ),
        });
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On this machine (root, Linux 6.18 with BTF) every check passes, but the hybrid cgroup
    /// layout's warning.
    #[test]
    fn this_host_passes() {
        let checks = run();
        let failed: Vec<&Check> = checks
            .iter()
            .filter(|c| c.outcome == Outcome::Fail)
            .collect();
        assert!(failed.is_empty(), "{failed:#?}");
        assert!(checks.len() >= 12);
    }
}
