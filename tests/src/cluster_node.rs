//! Cluster nodes for the multi-host lab test and `cargo xtask bench cluster`: a real
//! `detector run --cluster URL --node NAME` with its own state and pin directory, optionally
//! inside a network namespace (attached to that host's interfaces), and a private
//! redis-server inside a namespace, bound to an address there (the split lab's internal
//! network). Every guard cleans up on drop, also when a test panics.
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bin::{PinDir, detector_bin};
use crate::e2e::{Ban, ban_lines_of, list};
use crate::lab;

/// The daemon settings of every node: sources from the beginning (a node may start after its
/// host's first lines), state saved only at start and on SIGTERM, 1 s sweeps.
pub const NODE_CONFIG: &str = r#"[daemon]
persist_interval = "1h"
sweep_interval = "1s"

[sources]
file_start = "beginning"
"#;

/// How long a wait-until may take before it fails (a hang, not a speed check).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What one node runs.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// `--node NAME`, also the name of its directory and pin directory.
    pub name: String,
    /// `--cluster URL`; None: a standalone node (a reference run without Redis).
    pub cluster: Option<String>,
    /// Network namespace to run in (keeping the host's mounts, so the host's /sys/fs/bpf);
    /// None: the caller's.
    pub net_ns: Option<String>,
    /// `--iface` (names valid inside `net_ns`).
    pub ifaces: Vec<String>,
    /// `--file` sources; none: an enforcement-only node.
    pub files: Vec<PathBuf>,
    /// Serve metrics on 127.0.0.1:PORT (inside `net_ns`).
    pub metrics_port: Option<u16>,
    /// Appended to [`NODE_CONFIG`].
    pub extra_config: String,
}

impl NodeOptions {
    pub fn new(name: &str) -> Self {
        NodeOptions {
            name: name.to_string(),
            cluster: None,
            net_ns: None,
            ifaces: Vec::new(),
            files: Vec::new(),
            metrics_port: None,
            extra_config: String::new(),
        }
    }
}

/// One `detector run` node: directory (config, state, logs), pins, and while it runs, its
/// process (SIGTERM, then SIGKILL, on drop; then the pins and the directory go).
pub struct Node {
    pub opts: NodeOptions,
    pub dir: PathBuf,
    pub pins: PinDir,
    child: Option<Child>,
    runs: u32,
}

impl Node {
    /// Creates `<work>/<name>/` with its config; `tag` makes the pin directory unique.
    pub fn new(work: &Path, tag: &str, opts: NodeOptions) -> Result<Node> {
        let dir = work.join(&opts.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("detector.toml"),
            format!("{NODE_CONFIG}\n{}", opts.extra_config),
        )?;
        Ok(Node {
            pins: PinDir::new(&format!("{tag}-{}", opts.name))?,
            opts,
            dir,
            child: None,
            runs: 0,
        })
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.join(format!("daemon-{run}.log"))
    }

    /// Every run's log, for failure messages.
    pub fn logs(&self) -> String {
        (1..=self.runs)
            .map(|n| {
                format!(
                    "--- {} run {n} ---\n{}",
                    self.opts.name,
                    read_lossy(&self.log_path(n))
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `detector::ban` records of every run (their `fields`).
    pub fn ban_lines(&self) -> Vec<Value> {
        (1..=self.runs)
            .flat_map(|n| ban_lines_of(&read_lossy(&self.log_path(n))))
            .collect()
    }

    /// Starts `detector run`; returns once it follows its logs (or, enforcement only, once
    /// it runs) and, in a cluster, once `detector status` shows it connected.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.opts.name);
        }
        self.runs += 1;
        let log = self.log_path(self.runs);
        let mut cmd = match &self.opts.net_ns {
            Some(ns) => lab::command_in_net_ns(ns, detector_bin())?,
            None => Command::new(detector_bin()),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(self.dir.join("detector.toml"))
            .arg("--pin-dir")
            .arg(&self.pins.path)
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--log-format", "json"]);
        if let Some(url) = &self.opts.cluster {
            cmd.args(["--cluster", url, "--node", &self.opts.name]);
        }
        for iface in &self.opts.ifaces {
            cmd.arg("--iface").arg(iface);
        }
        for f in &self.opts.files {
            cmd.arg("--file").arg(f);
        }
        if let Some(port) = self.opts.metrics_port {
            cmd.arg("--metrics-listen").arg(format!("127.0.0.1:{port}"));
        }
        use std::os::unix::process::CommandExt;
        // Its own process group: a Ctrl-C reaches only the owner, which stops it here.
        cmd.process_group(0)
            .env_remove("DETECTOR_PIN_DIR")
            .env("DETECTOR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&log)?)
            .stderr(File::options().append(true).open(&log)?);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", detector_bin().display()))?;
        self.child = Some(child);
        if !self.opts.files.is_empty() {
            self.wait_log("following logs")?;
        }
        if self.opts.cluster.is_some() {
            self.wait_connected()?;
        }
        Ok(())
    }

    /// Waits until the current run's log contains `needle`; fails if the daemon exits.
    pub fn wait_log(&mut self, needle: &str) -> Result<()> {
        let log = self.log_path(self.runs);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if read_lossy(&log).contains(needle) {
                return Ok(());
            }
            if let Some(st) = self.child.as_mut().context("not running")?.try_wait()? {
                bail!("{} exited ({st}):\n{}", self.opts.name, self.logs());
            }
            if Instant::now() > deadline {
                bail!(
                    "no {needle:?} in {}'s log after {PATIENCE:?}:\n{}",
                    self.opts.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `detector status --json` says the cluster link is up.
    pub fn wait_connected(&mut self) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = self.child.as_mut().context("not running")?.try_wait()? {
                bail!("{} exited ({st}):\n{}", self.opts.name, self.logs());
            }
            if self
                .cluster_status()
                .ok()
                .flatten()
                .is_some_and(|c| c["connected"] == true)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not connected to Redis after {PATIENCE:?}:\n{}",
                    self.opts.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `cluster` part of `detector status --json` (None: no cluster shown).
    pub fn cluster_status(&self) -> Result<Option<Value>> {
        let out = Command::new(detector_bin())
            .args(["status", "--json", "--pin-dir"])
            .arg(&self.pins.path)
            .arg("--state-dir")
            .arg(self.state_dir())
            .env_remove("DETECTOR_PIN_DIR")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "detector status: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("parsing detector status")?;
        Ok((!v["cluster"].is_null()).then(|| v["cluster"].clone()))
    }

    /// `detector list --json` of this node's pinned maps.
    pub fn list(&self) -> Result<Vec<Ban>> {
        list(&self.pins.path)
    }

    /// The live ban whose address is `addr`, if any.
    pub fn ban(&self, addr: &str) -> Result<Option<Ban>> {
        Ok(self.list()?.into_iter().find(|b| b.address == addr))
    }

    /// Polls this node's kernel map until `addr` is banned.
    pub fn wait_banned(&self, addr: &str) -> Result<Ban> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(b) = self.ban(addr)? {
                return Ok(b);
            }
            if Instant::now() > deadline {
                bail!(
                    "{addr} not banned on {} within {PATIENCE:?}; its bans: {:?}\n{}",
                    self.opts.name,
                    self.list()?,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node's Prometheus metrics (`name{labels}` -> value), fetched inside its namespace.
    pub fn metrics(&self) -> Result<HashMap<String, f64>> {
        let port = self.opts.metrics_port.context("metrics_port not set")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let text = match &self.opts.net_ns {
            Some(ns) => {
                let ns = ns.clone();
                std::thread::spawn(move || -> Result<String> {
                    let _in_ns = lab::enter_net_ns(&ns)?;
                    http_get(addr, "/metrics")
                })
                .join()
                .map_err(|_| anyhow::anyhow!("metrics thread panicked"))??
            }
            None => http_get(addr, "/metrics")?,
        };
        Ok(parse_metrics(&text))
    }

    /// SIGTERM and wait (up to 10 s, then SIGKILL and an error).
    pub fn stop(&mut self) -> Result<()> {
        let mut child = self.child.take().context("not running")?;
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} ignored SIGTERM for 10 s", self.opts.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        if std::env::var_os("E2E_KEEP").is_some() {
            eprintln!("cluster node: keeping {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A private redis-server in a network namespace, bound to `bind` there (and to its
/// loopback), without persistence; killed on drop. The lab's teardown also stops it (it is a
/// process in the lab's namespace).
pub struct NsRedis {
    pub bind: IpAddr,
    pub port: u16,
    net_ns: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl NsRedis {
    pub const PORT: u16 = 6379;

    /// Starts redis-server in `net_ns` on `bind`:6379 (the namespace is private, so the
    /// default port cannot clash), its directory `dir`; waits until it answers PING there.
    pub fn start(net_ns: &str, bind: IpAddr, dir: &Path) -> Result<NsRedis> {
        // TODO(cluster merge): detector_testkit::redis::ensure_installed()
        anyhow::ensure!(
            Path::new("/usr/bin/redis-server").exists(),
            "redis-server missing: cargo xtask setup"
        );
        std::fs::create_dir_all(dir)?;
        let log = dir.join("redis.log");
        let mut cmd = lab::command_in_net_ns(net_ns, "redis-server")?;
        cmd.args(["--bind", &format!("{bind} 127.0.0.1")])
            .args(["--port", &Self::PORT.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            // What the README advises: the streams must never be evicted.
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().context("starting redis-server")?;
        let mut r = NsRedis {
            bind,
            port: Self::PORT,
            net_ns: net_ns.to_string(),
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if r.ping() {
                return Ok(r);
            }
            if let Some(st) = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("redis-server exited ({st}):\n{}", read_lossy(&log));
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server in {net_ns} not answering after {PATIENCE:?}:\n{}",
                    read_lossy(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://BIND:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}:{}/0", self.bind, self.port)
    }

    fn ping(&self) -> bool {
        let ns = self.net_ns.clone();
        let addr = SocketAddr::new(self.bind, self.port);
        std::thread::spawn(move || -> Result<bool> {
            let _in_ns = lab::enter_net_ns(&ns)?;
            Ok(resp_command(addr, &["PING"]).is_ok_and(|r| r.contains("PONG")))
        })
        .join()
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false)
    }

    /// One command, answered in RESP (raw text), sent from inside the namespace.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        let ns = self.net_ns.clone();
        let addr = SocketAddr::new(self.bind, self.port);
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        std::thread::spawn(move || -> Result<String> {
            let _in_ns = lab::enter_net_ns(&ns)?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            resp_command(addr, &args)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("redis thread panicked"))?
    }
}

impl Drop for NsRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends one command (RESP array of bulk strings) and reads one reply; for the short
/// replies the harness needs (PING, XLEN, INFO, MEMORY USAGE). Not a general client.
pub fn resp_command(addr: SocketAddr, args: &[&str]) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if resp_complete(&got) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    if let Some(err) = text.strip_prefix('-') {
        bail!("redis: {}", err.trim());
    }
    Ok(text)
}

/// A whole simple reply: a status/error/integer line, or a bulk string with all its bytes.
fn resp_complete(b: &[u8]) -> bool {
    let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    match b.first() {
        Some(b'$') => {
            let len: i64 = String::from_utf8_lossy(&b[1..nl]).parse().unwrap_or(0);
            len < 0 || b.len() >= nl + 2 + len as usize + 2
        }
        _ => true,
    }
}

/// The integer of a `:N` reply.
pub fn resp_integer(reply: &str) -> Result<i64> {
    reply
        .strip_prefix(':')
        .and_then(|r| r.trim().parse().ok())
        .with_context(|| format!("not an integer reply: {reply:?}"))
}

fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// Prometheus text -> `name{labels}` -> value.
pub fn parse_metrics(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// A work directory removed with its contents on drop (kept with `E2E_KEEP`).
pub struct WorkDir(pub PathBuf);

impl WorkDir {
    pub fn new(path: PathBuf) -> Result<WorkDir> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
