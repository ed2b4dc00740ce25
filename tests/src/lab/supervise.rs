//! Supervision of a lab's processes: waiting until the daemons listen, tearing down (on drop,
//! by tag, or when the owner died), and keeping a lab up on purpose.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::mount_ns::release_dev_log;
use super::state::read_state;
use super::{Lab, PORTS, STATE_ROOT, State, read_lossy, sys};

impl Lab {
    pub(super) fn wait_ready(&self) -> Result<()> {
        let anchor = self.state.anchor.context("no anchor")?;
        let auth = self.state.dir.join("spool/private/auth");
        let ok = sys::wait_until(Duration::from_secs(15), || {
            let ports = sys::listening_ports(anchor);
            PORTS.iter().all(|p| ports.contains(p)) && auth.exists()
        });
        if !ok {
            bail!(
                "daemons not ready after 15 s (listening: {:?}, auth socket: {}); postfix: {}; dovecot: {}",
                sys::listening_ports(anchor),
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
        for child in [self.anchor.take(), self.journald.take()]
            .into_iter()
            .flatten()
        {
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
    let mut pids: Vec<i32> = sys::netns_pids(&st.mail_ns);
    if let Some(anchor) = st.anchor
        && sys::alive(anchor)
    {
        pids.extend(sys::mntns_pids(anchor));
    }
    pids.sort_unstable();
    pids.dedup();
    let daemons: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&p| Some(p) != st.anchor)
        .collect();
    sys::stop_processes(&daemons, Duration::from_secs(3));
    // cgroups are reachable through the anchor's root while it lives; empty ones can go.
    if let Some(anchor) = st.anchor.filter(|&a| sys::alive(a)) {
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
        sys::stop_processes(&[anchor], Duration::from_secs(2));
    }
    for ns in st
        .peers
        .iter()
        .map(|p| &p.ns)
        .chain(std::iter::once(&st.mail_ns))
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
