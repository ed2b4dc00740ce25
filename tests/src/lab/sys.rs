//! Small system helpers of the lab: running commands (the shared runner), finding and stopping processes by
//! namespace, and entering a network namespace without touching the mount namespace.
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The shared runner: stdout of a successful command, else an error with its stderr.
pub use detector_testkit::cmd::output as run;

/// Makes every inherited descriptor above stderr close-on-exec in the child, so that daemons
/// the lab starts never hold the test runner's (or cargo's) pipes open.
pub fn close_inherited_fds(cmd: &mut Command) -> &mut Command {
    // SAFETY: close_range is async-signal-safe and touches only the child's descriptor table.
    // CLOEXEC (instead of closing) keeps std's own exec-error pipe working.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        })
    }
}

/// True while `pid` runs. A zombie counts as dead: PID 1 on some machines reaps orphans late.
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the last ')' (the command name may itself contain parentheses).
    match stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
    {
        Some(state) => state != "Z" && state != "X",
        None => false,
    }
}

/// Sends TERM, waits up to `grace` for every process to die, then sends KILL and waits again.
pub fn stop_processes(pids: &[i32], grace: Duration) {
    signal_all(pids, libc::SIGTERM);
    if wait_dead(pids, grace) {
        return;
    }
    signal_all(pids, libc::SIGKILL);
    wait_dead(pids, Duration::from_secs(2));
}

fn signal_all(pids: &[i32], sig: i32) {
    for &pid in pids {
        // SAFETY: kill has no memory-safety preconditions; a vanished pid just gives ESRCH.
        unsafe { libc::kill(pid, sig) };
    }
}

fn wait_dead(pids: &[i32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|&p| !alive(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Identity (device, inode) of a namespace file such as `/run/netns/NAME` or `/proc/PID/ns/net`.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Every live process whose network namespace is the named one (like `ip netns pids`).
pub fn netns_pids(name: &str) -> Vec<i32> {
    match ns_id(&netns_path(name)) {
        Some(id) => pids_where(|pid| ns_id(Path::new(&format!("/proc/{pid}/ns/net"))) == Some(id)),
        None => Vec::new(),
    }
}

/// Every live process that shares the mount namespace of `anchor` (including the anchor).
pub fn mntns_pids(anchor: i32) -> Vec<i32> {
    match ns_id(Path::new(&format!("/proc/{anchor}/ns/mnt"))) {
        Some(id) => pids_where(|pid| ns_id(Path::new(&format!("/proc/{pid}/ns/mnt"))) == Some(id)),
        None => Vec::new(),
    }
}

fn pids_where(pred: impl Fn(i32) -> bool) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != std::process::id() as i32 && pred(pid) && alive(pid))
        .collect()
}

pub fn netns_path(name: &str) -> std::path::PathBuf {
    Path::new("/run/netns").join(name)
}

pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Names of all network namespaces in /run/netns (what `ip netns list` shows).
pub fn netns_list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Switches the calling thread into a network namespace until the guard is dropped.
///
/// Only `CLONE_NEWNET` changes: unlike `ip netns exec`, the thread keeps the host's mount
/// namespace and so the host's `/sys/fs/bpf` (pinned maps), while sockets it opens, netlink
/// (XDP attach) and interface-name lookups all happen inside the namespace. Threads spawned
/// while the guard is alive start in the namespace too.
pub fn enter_net_ns(name: &str) -> Result<NetNsGuard> {
    let original = File::open("/proc/thread-self/ns/net")
        .context("opening this thread's network namespace")?;
    let target = open_netns(name)?;
    setns_net(target.as_raw_fd()).with_context(|| format!("entering network namespace {name}"))?;
    Ok(NetNsGuard {
        original: original.into(),
    })
}

/// Restores the thread's previous network namespace on drop.
#[must_use = "the thread leaves the namespace when the guard is dropped"]
pub struct NetNsGuard {
    original: OwnedFd,
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns_net(self.original.as_raw_fd()) {
            // Continuing in the wrong namespace would send test traffic to the wrong place.
            panic!("cannot return to the original network namespace: {e}");
        }
    }
}

fn open_netns(name: &str) -> Result<OwnedFd> {
    let path = netns_path(name);
    let f = File::open(&path)
        .with_context(|| format!("opening {} (no such network namespace?)", path.display()))?;
    Ok(f.into())
}

fn setns_net(fd: i32) -> std::io::Result<()> {
    // SAFETY: setns only reads the descriptor; CLONE_NEWNET affects only the calling thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A `Command` whose child runs in the named network namespace but keeps the caller's mount
/// namespace (so `/sys/fs/bpf` stays the host's). Use it to start `detector` for a lab.
pub fn command_in_net_ns(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    let fd = open_netns(name)?;
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; the closure owns the descriptor, so it is open in
    // the forked child.
    unsafe {
        cmd.pre_exec(move || setns_net(fd.as_raw_fd()));
    }
    Ok(cmd)
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// TCP ports in LISTEN state in the network namespace of `pid` (from /proc/PID/net/tcp{,6}).
pub fn listening_ports(pid: i32) -> Vec<u16> {
    let mut ports = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1);
            let state = cols.nth(1);
            if state == Some("0A")
                && let Some(port) = local
                    .and_then(|l| l.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}
