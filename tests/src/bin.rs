//! Running the real `detector` binary, and the bpffs pin directory a test owns.
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result};

use crate::netns::NetNs;

/// `DETECTOR_BIN` (set by `cargo xtask test`), else `<workspace>/target/debug/detector`.
pub fn detector_bin() -> PathBuf {
    std::env::var_os("DETECTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/detector"))
}

/// Mounts bpffs at /sys/fs/bpf if it is not mounted (as `cargo xtask test` does).
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()?;
        anyhow::ensure!(st.success(), "mounting bpffs failed");
    }
    Ok(())
}

/// `/sys/fs/bpf/detector-test-<tag>-<pid>`: removed with everything in it on drop (removing
/// the link pins detaches XDP).
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new(tag: &str) -> Result<Self> {
        ensure_bpffs()?;
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/detector-test-{tag}-{}",
            std::process::id()
        ));
        let d = PinDir { path };
        d.clean();
        Ok(d)
    }

    fn clean(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        self.clean();
    }
}

/// Output of one detector run.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            ok: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `detector ARGS --pin-dir DIR`, optionally inside a network namespace (entered with
/// setns between fork and exec, so the mount namespace, and bpffs, stay the host's).
pub fn detector(pins: &PinDir, netns: Option<&NetNs>, args: &[&str]) -> Result<Run> {
    let mut cmd = Command::new(detector_bin());
    cmd.args(args)
        .arg("--pin-dir")
        .arg(&pins.path)
        .env_remove("DETECTOR_PIN_DIR");
    if let Some(ns) = netns {
        let file = File::open(ns.path()).with_context(|| format!("opening {}", ns.path()))?;
        let fd = file.as_raw_fd();
        // SAFETY: only setns (async-signal-safe) runs between fork and exec; `file` outlives
        // the spawn below.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {}", detector_bin().display()))?;
        drop(file);
        return Ok(out.into());
    }
    Ok(cmd
        .output()
        .with_context(|| format!("running {}", detector_bin().display()))?
        .into())
}

/// Runs `detector ARGS --pin-dir DIR` as user `nobody` (privilege checks).
pub fn detector_unprivileged(pins: &PinDir, args: &[&str]) -> Result<Run> {
    // The build tree may sit under a directory `nobody` cannot enter (/root): run a copy,
    // one per call (tests run in parallel threads: a shared copy could be rewritten or
    // removed while another test runs it).
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("dtk-unpriv-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bin = dir.join("detector");
    std::fs::copy(detector_bin(), &bin).context("copying the detector binary")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    let result = run_as_nobody(&bin, pins, args);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_as_nobody(bin: &Path, pins: &PinDir, args: &[&str]) -> Result<Run> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .arg("--pin-dir")
        .arg(&pins.path)
        .env_remove("DETECTOR_PIN_DIR");
    // SAFETY: only setgroups/setgid/setuid (async-signal-safe) run between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // A thread of this test process that forks while the copy's write descriptor is open
    // holds it until its child execs: exec fails with ETXTBSY for that moment. Try again.
    let mut tries = 0;
    loop {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => {
                return Ok(r
                    .with_context(|| format!("running {} as nobody", bin.display()))?
                    .into());
            }
        }
    }
}

/// A `detector` command running in the background (`trace`), its stdout read line by line on
/// a thread. Killed (SIGKILL) and reaped on drop if still running.
pub struct Background {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every stdout line received so far.
    pub seen: Vec<String>,
}

impl Background {
    /// Starts `detector ARGS --pin-dir DIR` in the host's namespaces.
    pub fn spawn(pins: &PinDir, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(detector_bin())
            .args(args)
            .arg("--pin-dir")
            .arg(&pins.path)
            .env_remove("DETECTOR_PIN_DIR")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", detector_bin().display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Background {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Reads lines until one contains `needle` (and returns it), or fails once the process
    /// has closed stdout or `patience` has passed without such a line (a hang, not a speed
    /// check: keep it generous).
    pub fn wait_for(&mut self, needle: &str, patience: std::time::Duration) -> Result<String> {
        let deadline = std::time::Instant::now() + patience;
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return Ok(l.clone());
        }
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(_) => anyhow::bail!(
                    "no line containing {needle:?}; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        anyhow::ensure!(unsafe { libc::kill(pid, signal) } == 0, "kill failed");
        Ok(())
    }

    /// Waits for the exit and reads the rest of stdout; true if it exited with success.
    pub fn wait(&mut self) -> Result<bool> {
        let status = self.child.wait()?;
        while let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_secs(5)) {
            self.seen.push(line);
        }
        Ok(status.success())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Like [`detector`] but fails unless the command succeeded.
pub fn detector_ok(pins: &PinDir, netns: Option<&NetNs>, args: &[&str]) -> Result<Run> {
    let run = detector(pins, netns, args)?;
    anyhow::ensure!(
        run.ok,
        "detector {} failed: {}{}",
        args.join(" "),
        run.stdout,
        run.stderr
    );
    Ok(run)
}
