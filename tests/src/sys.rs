//! Small system helpers: commands that must succeed, and entering a namespace on this thread.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::Path,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// Runs a command and fails with its stderr when it does not succeed.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program).args(args).output().with_context(|| {
        format!("running {program}: is it installed? (`cargo xtask setup` installs it)")
    })?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// `ip -n NS ARGS...`
pub fn ip_in(netns: &str, args: &str) -> Result<()> {
    let mut all = vec!["-n", netns];
    all.extend(args.split_whitespace());
    run("ip", &all).map(drop)
}

/// Sets sysctls inside a network namespace.
pub fn sysctl_in(netns: &str, settings: &[&str]) -> Result<()> {
    let mut args = vec!["netns", "exec", netns, "sysctl", "-qw"];
    args.extend_from_slice(settings);
    run("ip", &args).map(drop)
}

/// Runs `f` with this thread inside the network namespace at `path`, then moves it back.
/// Sockets made inside stay in that namespace.
pub fn in_netns<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T> {
    let home = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
    let target = File::open(path).with_context(|| format!("opening netns {}", path.display()))?;
    setns(&target).with_context(|| format!("entering netns {}", path.display()))?;
    let result = f();
    if let Err(error) = setns(&home) {
        eprintln!("cannot return to the test's network namespace: {error}; aborting");
        std::process::abort();
    }
    Ok(result)
}

pub(crate) fn setns(file: &File) -> std::io::Result<()> {
    // SAFETY: setns on a namespace fd we hold; affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Fails with a message naming what is missing unless this is root.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "this test needs root (network namespaces, cgroups, bpffs): run `sudo cargo xtask test`"
        );
    }
    Ok(())
}

/// Whether a process with this id is alive.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Makes `command` start inside the network namespace `netns` (and, given its `cgroup.procs`,
/// inside that cgroup), and die with the test process.
pub fn start_inside(command: &mut Command, netns: File, cgroup_procs: Option<File>) {
    // SAFETY: the hook runs between fork and exec and makes only async-signal-safe syscalls
    // on fds opened before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            if let Some(procs) = &cgroup_procs
                && libc::write(procs.as_raw_fd(), c"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A child process killed (and reaped) when dropped, so a failing bench leaves none behind.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// User plus system CPU seconds of a process.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// A process's resident memory, in MB.
pub fn rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .with_context(|| format!("no VmRSS for process {pid}"))?;
    Ok(kb / 1024.0)
}

/// `GET path` on 127.0.0.1:`port` inside the network namespace `netns` (an agent's or a
/// waypoint's own endpoints); (status, body).
pub fn loopback_get(netns: &Path, port: u16, path: &str) -> Result<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stream = in_netns(netns, || {
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
    })??;
    get_on(stream, path)
}

/// HTTP GET of `path` at `addr` from this namespace.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    get_on(
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?,
        path,
    )
}

/// A GET on a connected stream. HTTP/1.0, so that every server answers whole (never
/// chunked) and closes.
fn get_on(mut stream: std::net::TcpStream, path: &str) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP response")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Linux's capabilities (man 7 capabilities) without the `CAP_` prefix, in bit order: bit `i`
/// of a capability mask is `CAPABILITIES[i]`.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Polls `check` every `every` until it holds; after `timeout`, fails saying `what` was never
/// reached. Tests wait on conditions, never on a fixed sleep.
pub fn wait_until(
    what: &str,
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("never reached: {what}");
        }
        std::thread::sleep(every);
    }
}
