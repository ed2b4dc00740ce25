//! Each mail host's private mount namespace: the anchor process that holds it, the lab's files
//! mounted over the host's, journald and the shared `/dev/log`, and the unit cgroups (journald
//! runs on the first host only: journal mode has one mail host).
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{
    DEV_LOG_TARGET, FileLock, Lab, LogMode, STATE_ROOT, config, output_file, path_str, read_lossy,
    sys,
};

impl Lab {
    /// Mounts the lab's own files over the host's inside the mail mount namespace (and, in
    /// journal mode, tmpfs for /run/systemd and /run/log, cgroup2 and the unit cgroups),
    /// then starts journald.
    pub(super) fn mount_lab_files(&mut self, rendered: &config::Rendered) -> Result<()> {
        let root = self.ns_root();
        sys::run(
            self.in_host_mount_ns(self.postfix_host_index(), "mount")
                .args(["--bind", path_str(&rendered.postfix_etc)?, "/etc/postfix"]),
        )?;
        let mount = |args: &[&str]| sys::run(self.in_mail_mount_ns("mount").args(args));
        if self.state.log_mode == LogMode::Journal {
            mount(&["-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run/systemd"])?;
            std::fs::create_dir_all(root.join("run/systemd/journal"))?;
            mount(&["-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run/log"])?;
            std::fs::create_dir_all(root.join("run/log/journal"))?;
            mount(&[
                "--bind",
                path_str(&self.state.dir.join("journal"))?,
                "/run/log/journal",
            ])?;
            mount(&[
                "--bind",
                path_str(&rendered.journald_conf)?,
                "/etc/systemd/journald.conf",
            ])?;
            // journald refuses to run without a cgroup file system at /sys/fs/cgroup, and the
            // unit cgroups give the entries real _SYSTEMD_UNIT fields.
            mount(&["-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"])?;
            let slice = format!("dtl-{}.slice", self.state.tag);
            for unit in [
                "systemd-journald.service",
                "postfix@-.service",
                "dovecot.service",
            ] {
                let cg = format!("{slice}/{unit}");
                std::fs::create_dir_all(root.join("sys/fs/cgroup").join(&cg))
                    .with_context(|| format!("creating cgroup {cg}"))?;
                self.state.cgroups.push(cg);
            }
            self.state.cgroups.push(slice);
            self.save_state()?;
            self.start_journald()?;
        }
        Ok(())
    }

    /// `sleep infinity` in host `host`'s network namespace and a new private mount namespace:
    /// it holds the mount namespace in which that host's daemons run (entered with nsenter).
    pub(super) fn start_anchor(&mut self, host: usize) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.state.hosts[host].ns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sleep",
            "infinity",
        ]);
        sys::close_inherited_fds(&mut cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pid = child.id() as i32;
        self.anchors.push(child);
        self.state.hosts[host].anchor = Some(pid);
        self.save_state()?;
        // ip and unshare exec in place: the pid is sleep's once the mount namespace exists.
        let ready = sys::wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        });
        if !ready {
            bail!(
                "the mount namespace anchor of {} (pid {pid}) did not start",
                self.state.hosts[host].ns
            );
        }
        Ok(())
    }

    pub(super) fn start_journald(&mut self) -> Result<()> {
        let out = self.state.dir.join("run/journald.out");
        let mut cmd = self.in_mail_mount_ns("/lib/systemd/systemd-journald");
        self.in_unit_cgroup(&mut cmd, "systemd-journald.service");
        let child = cmd
            .stdout(output_file(&out)?)
            .stderr(output_file(&out)?)
            .spawn()?;
        self.journald = Some(child);
        let socket = self.ns_root().join(DEV_LOG_TARGET.trim_start_matches('/'));
        if !sys::wait_until(Duration::from_secs(5), || socket.exists()) {
            bail!(
                "systemd-journald did not create its socket: {}",
                read_lossy(&out)
            );
        }
        // syslog(3) writes to /dev/log. If the host has none, a symlink to the journald socket
        // path is dangling outside and resolves to this lab's journald inside its namespace;
        // it is shared by all labs (reference-counted by a shared lock). Anything else at
        // /dev/log is covered by a bind mount inside the namespace only.
        std::fs::create_dir_all(STATE_ROOT)?;
        self.dev_log_lock = Some(FileLock::shared(
            &Path::new(STATE_ROOT).join("devlog.lock"),
        )?);
        self.state.uses_dev_log = true;
        self.save_state()?;
        let dev_log = Path::new("/dev/log");
        if dev_log.symlink_metadata().is_err() {
            match std::os::unix::fs::symlink(DEV_LOG_TARGET, dev_log) {
                Ok(()) => std::fs::write(Path::new(STATE_ROOT).join("devlog.created"), b"")?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).context("creating the /dev/log symlink"),
            }
        }
        if std::fs::read_link(dev_log).ok().as_deref() != Some(Path::new(DEV_LOG_TARGET)) {
            sys::run(
                self.in_mail_mount_ns("mount")
                    .args(["--bind", DEV_LOG_TARGET, "/dev/log"]),
            )?;
        }
        Ok(())
    }

    /// Moves the child (before it execs) into a unit cgroup of this lab (journal mode only).
    pub(super) fn in_unit_cgroup(&self, cmd: &mut Command, unit: &str) {
        if self.state.log_mode != LogMode::Journal {
            return;
        }
        let procs = self.ns_root().join(format!(
            "sys/fs/cgroup/dtl-{}.slice/{unit}/cgroup.procs",
            self.state.tag
        ));
        let path = std::ffi::CString::new(procs.into_os_string().into_encoded_bytes())
            .expect("no NUL in cgroup path");
        // SAFETY: open/write/close are async-signal-safe; "0" moves the writing process.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// The first host's mount namespace as seen from outside (`/proc/<anchor>/root`).
    pub(super) fn ns_root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.anchor_pid(0)))
    }

    fn anchor_pid(&self, host: usize) -> i32 {
        self.state
            .hosts
            .get(host)
            .and_then(|h| h.anchor)
            .unwrap_or(0)
    }

    /// `ip netns exec <ns> <program>`: a command in a namespace with its own /sys (fine for
    /// clients; use `command_in_net_ns` for anything that needs the host's /sys/fs/bpf).
    pub fn in_ns(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// A command in the mail host's network *and* mount namespace (sees the lab's
    /// /etc/postfix, e.g. `postqueue -p`, `postconf`, `doveadm -c <dir>/dovecot/dovecot.conf`).
    /// In a split lab this is the MX; [`Lab::in_host_mount_ns`] reaches the IMAP host.
    pub fn in_mail_mount_ns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.in_host_mount_ns(0, program)
    }

    /// A command in the network and mount namespace of host `host` (an index into
    /// [`Lab::hosts`]).
    pub fn in_host_mount_ns(&self, host: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.anchor_pid(host).to_string())
            .args(["-m", "-n", "--"])
            .arg(program);
        sys::close_inherited_fds(&mut cmd);
        cmd.stdin(Stdio::null());
        cmd
    }
}

/// Removes the shared `/dev/log` symlink if a lab created it and no other lab uses it.
pub(super) fn release_dev_log() {
    let root = Path::new(STATE_ROOT);
    let Ok(_excl) = FileLock::try_exclusive(&root.join("devlog.lock")) else {
        return; // another journal-mode lab still holds its shared lock
    };
    let marker = root.join("devlog.created");
    if marker.exists()
        && std::fs::read_link("/dev/log").ok().as_deref() == Some(Path::new(DEV_LOG_TARGET))
    {
        let _ = std::fs::remove_file("/dev/log");
    }
    let _ = std::fs::remove_file(marker);
}
