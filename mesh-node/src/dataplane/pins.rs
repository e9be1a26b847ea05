//! The bpffs layout under the agent's pin directory, and replacing pins without gaps.
//!
//! ```text
//! <dir>/enrolled_pods ...     maps (see mesh_common::maps::PINNED)
//! <dir>/progs/<program>       each loaded program
//! <dir>/links/<program>       cgroup links (connect4, connect6, sock_ops)
//! <dir>/links/sk_lookup-<netns cookie>   one per enrolled pod
//! ```

use std::path::{Path, PathBuf};

use aya::{
    pin::PinError,
    programs::links::{FdLink, PinnedLink},
};

use super::Error;

/// `statfs` magic of a bpffs mount.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SK_LOOKUP_PREFIX: &str = "sk_lookup-";
/// The pin of `mesh_common::maps::DECIDED_PODS` (its presence tells a restart from a boot).
pub(super) const DECIDED_PODS_PIN: &str = "decided_pods";

/// Whether a bpffs is mounted at `path`.
pub fn is_bpffs(path: &Path) -> std::io::Result<bool> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    // SAFETY: statfs writes only into `stat`, which outlives the call.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `stat` is a valid out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there yet (a fresh machine, or a
/// container that was given the directory but not the mount). Pins in a bpffs of the
/// agent's own do not outlive it: that is said in the log.
pub fn ensure_bpffs() -> Result<(), Error> {
    let root = Path::new("/sys/fs/bpf");
    let io = |what, source| Error::Io {
        what,
        path: root.to_owned(),
        source,
    };
    std::fs::create_dir_all(root).map_err(|e| io("creating", e))?;
    let path = c"/sys/fs/bpf";
    if is_bpffs(root).map_err(|e| io("statfs", e))? {
        return Ok(());
    }
    tracing::warn!(
        "no bpffs at /sys/fs/bpf: mounting one; if this is a container, its pins will not \
         outlive it (mount bpffs on the host, as systemd does, and give the agent that mount)"
    );
    // SAFETY: all strings are NUL-terminated constants.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io(
            "mounting bpffs (needs CAP_SYS_ADMIN)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

pub(super) fn ensure_dirs(dir: &Path) -> Result<(), Error> {
    for sub in ["progs", "links"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(|source| Error::Io {
            what: "creating pin directory",
            path,
            source,
        })?;
    }
    Ok(())
}

/// Removes map pins whose layout this agent no longer uses, before loading: the loader reuses a
/// pinned map by name, and programs must never be given an old layout.
pub(super) fn remove_retired(dir: &Path) -> Result<(), Error> {
    for file in mesh_common::maps::RETIRED_PINS {
        let path = dir.join(file);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed a pin of an older layout"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    what: "removing a retired pin",
                    path,
                    source,
                });
            }
        }
    }
    Ok(())
}

pub(super) fn link_path(dir: &Path, program: &str) -> PathBuf {
    dir.join("links").join(program.trim_start_matches("ambit_"))
}

pub(super) fn sk_lookup_link_path(dir: &Path, netns_cookie: u64) -> PathBuf {
    dir.join("links")
        .join(format!("{SK_LOOKUP_PREFIX}{netns_cookie}"))
}

pub(super) fn sk_lookup_link_cookies(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir.join("links")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(SK_LOOKUP_PREFIX)?
                .parse()
                .ok()
        })
        .collect()
}

/// Pins `link` at `path`, detaching whatever link was pinned there before. The new link is
/// already attached, so the hook is never empty in between.
pub(super) fn replace_link(path: &Path, link: FdLink) -> Result<(), Error> {
    remove_link(path)?;
    link.pin(path).map(drop).map_err(|e| pin_error(path, e))
}

/// Detaches the link pinned at `path`, if any.
pub(super) fn remove_link(path: &Path) -> Result<(), Error> {
    if !path.exists() {
        return Ok(());
    }
    match PinnedLink::from_pin(path) {
        // Unpinning drops the last reference once the returned fd closes: the link detaches.
        Ok(old) => old.unpin().map(drop).map_err(|source| Error::Io {
            what: "unpinning link",
            path: path.to_owned(),
            source,
        }),
        // Not a link (a leftover of another layout): just remove the file.
        Err(_) => std::fs::remove_file(path).map_err(|source| Error::Io {
            what: "removing stale pin",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Pins a freshly loaded program as `progs/<name>`, replacing the previous agent's pin so the
/// old program is freed once its links are gone.
pub(super) fn replace_program_pin(
    dir: &Path,
    name: &str,
    pin: impl FnOnce(&Path) -> Result<(), PinError>,
) -> Result<(), Error> {
    let path = dir.join("progs").join(name);
    if path.exists() {
        std::fs::remove_file(&path).map_err(|source| Error::Io {
            what: "removing old program pin",
            path: path.clone(),
            source,
        })?;
    }
    pin(&path).map_err(|e| pin_error(&path, e))
}

fn pin_error(path: &Path, error: PinError) -> Error {
    Error::Pin {
        path: path.to_owned(),
        message: error.to_string(),
    }
}
