//! Supervision of a lab's processes: waiting until the daemons listen, tearing down (on drop,
//! by tag, or when the owner died), and keeping a lab up on purpose.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use super::mount_ns::release_dev_log;
use super::state::read_state;
use super::{Lab, STATE_ROOT, State, read_lossy, sys};

impl Lab {
    /// Waits until every host's daemons listen and Dovecot's auth socket (Postfix's SASL
    /// server) exists.
    pub(super) fn wait_ready(&self) -> Result<()> {
        let auth = self.state.dir.join("spool/private/auth");
        let listening = |h: &super::Host| h.anchor.map(sys::listening_ports).unwrap_or_default();
        let ok = sys::wait_until(Duration::from_secs(15), || {
            auth.exists()
                && self.state.hosts.iter().all(|h| {
                    let ports = listening(h);
                    h.role.ports().iter().all(|p| ports.contains(p))
                })
        });
        if !ok {
            let listening: Vec<(String, Vec<u16>)> = self
                .state
                .hosts
                .iter()
                .map(|h| (h.ns.clone(), listening(h)))
                .collect();
            bail!(
                "daemons not ready after 15 s (listening: {listening:?}, auth socket: {}); postfix: {}; dovecot: {}",
                auth.exists(),
                read_lossy(&self.state.dir.join("run/postfix-start.out")),
                read_lossy(&self.state.dir.join("run/dovecot-start.out")),
            );
        }
        Ok(())
    }

    /// Keeps the lab running after this value is gone (for `cargo xtask lab up`); tear it
    /// down later with `Lab::down_tag`.
    pub fn detach(mut self) -> Result<String> {
        self.state.owner = 0;
        self.save_state()?;
        self.torn_down = true;
        // The children keep running; the shared /dev/log lock is released (a later `down`
        // removes the symlink if it is the last user).
        Ok(self.state.tag.clone())
    }

    /// Tears down a detached lab (or one whose owner died) by its tag.
    pub fn down_tag(tag: &str) -> Result<()> {
        let state = read_state(&Path::new(STATE_ROOT).join(tag))?;
        teardown(&state);
        Ok(())
    }

    /// Tears the lab down now (what `Drop` does).
    pub fn down(mut self) {
        self.teardown_now();
    }

    pub(super) fn teardown_now(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        teardown(&self.state);
        drop(self.dev_log_lock.take());
        if self.state.uses_dev_log {
            release_dev_log();
        }
        for child in self.anchors.drain(..).chain(self.journald.take()) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown_now();
    }
}

/// Stops every process of the lab, removes its cgroups, namespaces and state directory.
/// Best effort: every step runs even if an earlier one failed.
pub(super) fn teardown(st: &State) {
    let anchors: Vec<i32> = st.hosts.iter().filter_map(|h| h.anchor).collect();
    let mut pids: Vec<i32> = Vec::new();
    for host in &st.hosts {
        pids.extend(sys::netns_pids(&host.ns));
        if let Some(anchor) = host.anchor
            && sys::alive(anchor)
        {
            pids.extend(sys::mntns_pids(anchor));
        }
    }
    pids.sort_unstable();
    pids.dedup();
    let daemons: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|p| !anchors.contains(p))
        .collect();
    sys::stop_processes(&daemons, Duration::from_secs(3));
    // cgroups (journal mode, first host only) are reachable through the anchor's root while
    // it lives; empty ones can go.
    if let Some(anchor) = st
        .hosts
        .first()
        .and_then(|h| h.anchor)
        .filter(|&a| sys::alive(a))
    {
        let base = PathBuf::from(format!("/proc/{anchor}/root/sys/fs/cgroup"));
        for cg in &st.cgroups {
            let path = base.join(cg);
            // An exiting process may keep its cgroup busy for a moment.
            sys::wait_until(Duration::from_secs(2), || {
                match std::fs::remove_dir(&path) {
                    Ok(()) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                }
            });
        }
    }
    let live_anchors: Vec<i32> = anchors.into_iter().filter(|&a| sys::alive(a)).collect();
    sys::stop_processes(&live_anchors, Duration::from_secs(2));
    for ns in st
        .peers
        .iter()
        .map(|p| &p.ns)
        .chain(st.hosts.iter().map(|h| &h.ns))
    {
        let left = sys::netns_pids(ns);
        sys::stop_processes(&left, Duration::from_secs(2));
        if sys::netns_exists(ns) {
            let _ = sys::run(Command::new("ip").args(["netns", "delete", ns]));
        }
    }
    // (A lab torn down by its own process releases after dropping its shared lock.)
    if st.uses_dev_log && st.owner != std::process::id() {
        release_dev_log();
    }
    let _ = std::fs::remove_dir_all(&st.dir);
}

/// Tears down labs whose owning process is gone (a test killed before its Drop ran).
pub fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir(STATE_ROOT) else {
        return;
    };
    for entry in dir.flatten() {
        if !entry.path().is_dir() {
            continue;
        }
        if let Ok(state) = read_state(&entry.path())
            && state.owner != 0
            && !sys::alive(state.owner as i32)
        {
            eprintln!(
                "lab: tearing down stale lab {} (owner {} is gone)",
                state.tag, state.owner
            );
            teardown(&state);
        }
    }
}
