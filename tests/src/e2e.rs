//! The end-to-end chain on the mail lab: `detector run` follows the lab's logs (files or the
//! journal) and is attached to the mail host's interfaces, with guards that stop the daemon
//! and remove its pins and state, also when a test panics.
//!
//! ```no_run
//! # use detector_tests::e2e::{E2e, E2eOptions};
//! # use detector_tests::lab::LogMode;
//! let mut e = E2e::up(E2eOptions::new("t1", LogMode::File)).unwrap();
//! let bot = e.lab.bots()[0].clone();
//! e.lab.round(&bot, None).unwrap();
//! let ban = e.wait_banned("198.18.0.10", std::time::Duration::from_secs(15)).unwrap();
//! // Drop: SIGTERM the daemon, `detector detach`, remove the pin and state directories,
//! // tear the lab down.
//! ```
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::bin::{detector_bin, ensure_bpffs};
use crate::lab::{self, Lab, LabOptions, LogMode, Peer};
use crate::mailclient::Report;

/// Work directories (state, config, daemon logs) live here: `<WORK_ROOT>/<tag>/`.
pub const WORK_ROOT: &str = "/run/detector-e2e";

/// The daemon settings every end-to-end run uses: sources start at the beginning (the daemon
/// may start after the lab's first lines), persistence only at start and on SIGTERM (tests
/// control when state is saved), fast sweeps (kernel counters in the metrics).
pub const CONFIG: &str = r#"[daemon]
persist_interval = "1h"
sweep_interval = "1s"

[sources]
file_start = "beginning"

[sources.journal]
start = "beginning"
"#;

/// What to bring up.
#[derive(Clone, Debug)]
pub struct E2eOptions {
    /// Unique per test: lab tag (`dtl-<tag>-*`), pin dir `/sys/fs/bpf/detector-e2e-<tag>`.
    pub tag: String,
    pub log_mode: LogMode,
    pub ipv6: bool,
    pub bots: usize,
    /// The mailbot binary (tests: `env!("CARGO_BIN_EXE_mailbot")`).
    pub mailbot: Option<PathBuf>,
    /// Extra configuration appended to [`CONFIG`] (e.g. an `[engine]` table).
    pub extra_config: String,
    /// Pin directory; default `/sys/fs/bpf/detector-e2e-<tag>`.
    pub pin_dir: Option<PathBuf>,
    /// Source flags for `detector run` instead of the lab's logs (e.g. `--file X`).
    pub source_args: Option<Vec<String>>,
    /// Serve the daemon's metrics on this port of 127.0.0.1 inside the mail namespace.
    pub metrics_port: Option<u16>,
}

impl E2eOptions {
    /// `tag` gets the process id appended, so that reruns and parallel runs never collide.
    pub fn new(tag: &str, log_mode: LogMode) -> Self {
        E2eOptions {
            tag: format!("{tag}{:x}", std::process::id()),
            log_mode,
            ipv6: false,
            bots: 1,
            mailbot: None,
            extra_config: String::new(),
            pin_dir: None,
            source_args: None,
            metrics_port: None,
        }
    }
}

/// One live ban as `detector list --json` prints it.
#[derive(Clone, Debug, Deserialize)]
pub struct Ban {
    pub address: String,
    pub reason: String,
    pub hits: u64,
    pub expires_in_s: Option<u64>,
}

/// The lab, the pinned XDP program and maps, and (while running) the daemon. Dropped in
/// field order: daemon, pins, work directory, lab.
pub struct E2e {
    daemon: Option<Daemon>,
    pub pins: Pins,
    work: WorkDir,
    pub lab: Lab,
    config: PathBuf,
    source_args: Option<Vec<String>>,
    metrics_port: Option<u16>,
    runs: u32,
}

impl E2e {
    /// Brings the lab up and starts `detector run` attached to every mail-side interface.
    pub fn up(opts: E2eOptions) -> Result<E2e> {
        let mut e = Self::up_without_daemon(opts)?;
        e.start_daemon()?;
        Ok(e)
    }

    /// The lab, pins and work directory, no daemon yet ([`E2e::start_daemon`]).
    pub fn up_without_daemon(opts: E2eOptions) -> Result<E2e> {
        ensure_bpffs()?;
        let lab = Lab::up(LabOptions {
            topology: lab::Topology::OneHost,
            log_mode: opts.log_mode,
            ipv6: opts.ipv6,
            bots: opts.bots,
            tag: Some(opts.tag.clone()),
            install: true,
            mailbot: opts.mailbot.clone(),
        })?;
        let pin_dir = opts
            .pin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/sys/fs/bpf/detector-e2e-{}", opts.tag)));
        let pins = Pins::new(pin_dir, lab.mail_ns())?;
        let work = WorkDir::new(Path::new(WORK_ROOT).join(&opts.tag))?;
        let config = work.path.join("detector.toml");
        std::fs::write(&config, format!("{CONFIG}\n{}", opts.extra_config))?;
        Ok(E2e {
            daemon: None,
            pins,
            work,
            lab,
            config,
            source_args: opts.source_args,
            metrics_port: opts.metrics_port,
            runs: 0,
        })
    }

    /// The daemon's state directory (engine.json, checkpoints.json).
    pub fn state_dir(&self) -> PathBuf {
        self.work.path.join("state")
    }

    pub fn work_dir(&self) -> &Path {
        &self.work.path
    }

    /// Starts `detector run` in the mail namespace (host mounts, so the host's /sys/fs/bpf),
    /// following the lab's logs; returns once it follows them. Each start logs to its own
    /// file (`daemon-<n>.log`, JSON lines).
    pub fn start_daemon(&mut self) -> Result<()> {
        if self.daemon.is_some() {
            bail!("the daemon is already running");
        }
        self.runs += 1;
        let log = self.work.path.join(format!("daemon-{}.log", self.runs));
        let mut cmd = lab::command_in_net_ns(self.lab.mail_ns(), detector_bin())?;
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--pin-dir")
            .arg(&self.pins.path)
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--log-format", "json"]);
        for iface in self.lab.mail_ifaces() {
            cmd.arg("--iface").arg(iface);
        }
        if let Some(port) = self.metrics_port {
            cmd.arg("--metrics-listen").arg(format!("127.0.0.1:{port}"));
        }
        match self.lab.log_mode() {
            _ if self.source_args.is_some() => {
                cmd.args(self.source_args.iter().flatten());
            }
            LogMode::File => {
                for f in [self.lab.postfix_log(), self.lab.dovecot_log()]
                    .into_iter()
                    .flatten()
                {
                    cmd.arg("--file").arg(f);
                }
            }
            LogMode::Journal => {
                cmd.arg("--journal-dir").arg(
                    self.lab
                        .journal_dir()
                        .context("journal mode without journal")?,
                );
            }
        }
        cmd.env_remove("DETECTOR_PIN_DIR")
            .env("DETECTOR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&log)?)
            .stderr(File::options().append(true).open(&log)?);
        // Its own process group: a Ctrl-C at the terminal reaches only the owner, which then
        // stops the daemon through this guard.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", detector_bin().display()))?;
        let mut daemon = Daemon {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if daemon.log_text().contains("following logs") {
                break;
            }
            if let Some(status) = daemon.try_wait()? {
                bail!(
                    "detector run exited ({status}) before following the logs:\n{}",
                    daemon.log_text()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "detector run not following the logs after 20 s:\n{}",
                    daemon.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.daemon = Some(daemon);
        Ok(())
    }

    /// The running daemon.
    pub fn daemon(&self) -> Result<&Daemon> {
        self.daemon.as_ref().context("the daemon is not running")
    }

    /// SIGTERM, wait for exit (state saved); returns the exit status.
    pub fn stop_daemon(&mut self) -> Result<ExitStatus> {
        let d = self.daemon.take().context("the daemon is not running")?;
        d.stop()
    }

    /// SIGKILL (no chance to save anything).
    pub fn kill_daemon(&mut self) -> Result<()> {
        let d = self.daemon.take().context("the daemon is not running")?;
        d.kill()
    }

    /// Every daemon log so far (all runs), for failure messages.
    pub fn daemon_logs(&self) -> String {
        (1..=self.runs)
            .map(|n| {
                let p = self.work.path.join(format!("daemon-{n}.log"));
                format!("--- daemon run {n} ---\n{}", read_lossy(&p))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `detector::ban` lines of daemon run `n` (1-based), as JSON objects (their
    /// `fields`: prefix, ip, rule, offence, ...).
    pub fn ban_lines(&self, run: u32) -> Vec<Value> {
        let p = self.work.path.join(format!("daemon-{run}.log"));
        ban_lines_of(&read_lossy(&p))
    }

    /// `detector list --json`.
    pub fn list(&self) -> Result<Vec<Ban>> {
        list(&self.pins.path)
    }

    /// The live ban whose address (as `detector list` shows it) is `addr`.
    pub fn ban(&self, addr: &str) -> Result<Option<Ban>> {
        Ok(self.list()?.into_iter().find(|b| b.address == addr))
    }

    /// Polls `detector list --json` until `addr` is banned.
    pub fn wait_banned(&self, addr: &str, timeout: Duration) -> Result<Ban> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(b) = self.ban(addr)? {
                return Ok(b);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{addr} not banned within {timeout:?}; bans: {:?}\n{}",
                    self.list()?,
                    self.daemon_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's Prometheus metrics (`GET /metrics` on 127.0.0.1 inside the mail
    /// namespace, where it listens): `name{labels}` -> value.
    pub fn metrics(&self) -> Result<HashMap<String, f64>> {
        use std::io::{Read, Write};
        let port = self.metrics_port.context("metrics_port not set")?;
        let ns = self.lab.mail_ns().to_string();
        let text = std::thread::spawn(move || -> Result<String> {
            let _in_ns = lab::enter_net_ns(&ns)?;
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("metrics thread panicked"))??;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .context("no HTTP body")?;
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// `detector <args> --json --pin-dir <pins>` parsed as JSON.
    pub fn detector_json(&self, args: &[&str]) -> Result<Value> {
        let out = Command::new(detector_bin())
            .args(args)
            .arg("--json")
            .arg("--pin-dir")
            .arg(&self.pins.path)
            .env_remove("DETECTOR_PIN_DIR")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "detector {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The mailbot with short timeouts (1 s connect, 3 s I/O): a dropped SYN shows as
    /// `timeout` after a second.
    pub fn mailbot_fast(&self, peer: &Peer, args: &[&str]) -> Result<Vec<Report>> {
        let mut all = vec!["--connect-timeout", "1", "--timeout", "3"];
        all.extend_from_slice(args);
        self.lab.mailbot(peer, &all)
    }
}

/// `detector list --json --pin-dir DIR`.
pub fn list(pin_dir: &Path) -> Result<Vec<Ban>> {
    let out = Command::new(detector_bin())
        .args(["list", "--json", "--pin-dir"])
        .arg(pin_dir)
        .env_remove("DETECTOR_PIN_DIR")
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "detector list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing detector list --json")
}

/// The `detector::ban` records in a JSON log (their `fields` objects).
pub fn ban_lines_of(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "detector::ban")
        .map(|v| v["fields"].clone())
        .collect()
}

/// A running `detector run`; SIGTERM (then SIGKILL after 10 s) on drop.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("no daemon"),
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid; it is not reaped yet, so the pid is ours.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// SIGTERM and wait (up to 10 s, then SIGKILL and an error).
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().context("no daemon")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "detector run ignored SIGTERM for 10 s:\n{}",
                    read_lossy(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) -> Result<()> {
        let mut child = self.child.take().context("no daemon")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                // SAFETY: as in `signal`.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// A bpffs pin directory: on drop, `detector detach` (links, program, maps) and removal of
/// whatever is left (removing a link pin detaches XDP as well).
pub struct Pins {
    pub path: PathBuf,
    net_ns: String,
}

impl Pins {
    fn new(path: PathBuf, net_ns: &str) -> Result<Self> {
        let p = Pins {
            path,
            net_ns: net_ns.to_string(),
        };
        p.clean();
        Ok(p)
    }

    fn clean(&self) {
        if !self.path.exists() {
            return;
        }
        if let Ok(mut cmd) = lab::command_in_net_ns(&self.net_ns, detector_bin()) {
            let _ = cmd
                .args(["detach", "--pin-dir"])
                .arg(&self.path)
                .env_remove("DETECTOR_PIN_DIR")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        self.clean();
    }
}

/// A directory removed with its contents on drop.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new(path: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP").is_some() {
            eprintln!("e2e: keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
