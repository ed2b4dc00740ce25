//! Issue 11: several `detector` nodes, one defence, through a real (private) redis-server.
//!
//! Each node is a real `detector run` with its own state directory and its own bpffs pin
//! directory (maps pinned, no interface: only the maps matter here); the bans are read back
//! from each node's pinned maps with `detector list`.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use detector_testkit::redis::{Options, Redis, Tls};
use detector_tests::bin::{PinDir, detector_bin};
use serde_json::Value;

/// How long any wait-until may take before the test fails (a hang, not a speed check).
const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `check` until it gives `Some`, or fails after [`PATIENCE`] with `what`.
fn wait_until<T>(what: &str, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A work directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir> {
        let dir =
            std::env::temp_dir().join(format!("detector-cluster-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One node: its directory (config, state, logs), pins and, while it runs, its process.
struct Node {
    name: String,
    dir: PathBuf,
    pins: PinDir,
    /// The log files it follows (none: enforcement only).
    files: Vec<PathBuf>,
    child: Option<Child>,
    runs: u32,
}

impl Node {
    fn new(work: &Path, test: &str, name: &str, files: &[&str]) -> Result<Node> {
        Node::with_config(work, test, name, files, "")
    }

    /// `extra`: more TOML (a `[cluster]` table).
    fn with_config(
        work: &Path,
        test: &str,
        name: &str,
        files: &[&str],
        extra: &str,
    ) -> Result<Node> {
        let dir = work.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("detector.toml"),
            format!(
                "[daemon]\npersist_interval = \"1s\"\nsweep_interval = \"1s\"\n\n\
                 [sources]\nfile_start = \"beginning\"\n\n\
                 [engine]\ngrace_period = \"0s\"\n\n{extra}"
            ),
        )?;
        let files = files
            .iter()
            .map(|f| {
                let p = dir.join(f);
                std::fs::write(&p, "")?;
                Ok(p)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Node {
            name: name.to_string(),
            pins: PinDir::new(&format!("{test}-{name}"))?,
            dir,
            files,
            child: None,
            runs: 0,
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("daemon-{}.log", self.runs))
    }

    /// All runs' logs.
    fn logs(&self) -> String {
        (1..=self.runs)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("daemon-{n}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// `detector run --cluster URL --node NAME [--file F]...`; waits until it follows its
    /// logs and both its Redis connections are up.
    fn start(&mut self, url: &str, extra: &[&str]) -> Result<()> {
        self.runs += 1;
        let log = self.log_path();
        let mut cmd = Command::new(detector_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(self.dir.join("detector.toml"))
            .arg("--pin-dir")
            .arg(&self.pins.path)
            .arg("--state-dir")
            .arg(self.state())
            .args([
                "--cluster",
                url,
                "--node",
                &self.name,
                "--log-format",
                "json",
            ])
            .args(extra);
        for f in &self.files {
            cmd.arg("--file").arg(f);
        }
        let child = cmd
            .env_remove("DETECTOR_PIN_DIR")
            .env("DETECTOR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .spawn()
            .context("starting detector run")?;
        self.child = Some(child);
        self.wait_log("following logs")?;
        self.wait_connected()
    }

    fn wait_log(&mut self, needle: &str) -> Result<()> {
        let what = format!("{needle:?} in {}'s log", self.name);
        wait_until(&what, || {
            if let Some(st) = self.child.as_mut().context("not running")?.try_wait()? {
                bail!("{} exited ({st}):\n{}", self.name, self.logs());
            }
            Ok(std::fs::read_to_string(self.log_path())
                .unwrap_or_default()
                .contains(needle)
                .then_some(()))
        })
        .with_context(|| self.logs())
    }

    /// The status file says both connections are up (written every 2 s by the daemon).
    fn wait_connected(&mut self) -> Result<()> {
        let what = format!("{} connected", self.name);
        wait_until(&what, || {
            Ok(self
                .status()?
                .filter(|s| s["connected"] == true && s["written_at"].is_string())
                .map(|_| ()))
        })
        .with_context(|| self.logs())
    }

    /// `detector status --json`'s cluster part.
    fn status(&self) -> Result<Option<Value>> {
        let out = self.detector(&["status", "--json"])?;
        let v: Value = serde_json::from_str(&out)?;
        Ok((!v["cluster"].is_null()).then(|| v["cluster"].clone()))
    }

    fn detector(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(detector_bin())
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pins.path)
            .arg("--state-dir")
            .arg(self.state())
            .env_remove("DETECTOR_PIN_DIR")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "detector {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The ban covering `addr` in this node's pinned maps, if any.
    fn kernel_ban(&self, addr: &str) -> Result<Option<Value>> {
        let out = Command::new(detector_bin())
            .args(["list", "--json", "--pin-dir"])
            .arg(&self.pins.path)
            .env_remove("DETECTOR_PIN_DIR")
            .output()?;
        if !out.status.success() {
            // Not pinned yet.
            return Ok(None);
        }
        let all: Value = serde_json::from_slice(&out.stdout)?;
        Ok(all
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["address"] == addr)
            .cloned())
    }

    fn wait_banned(&self, addr: &str) -> Result<Value> {
        wait_until(&format!("{addr} banned at {}", self.name), || {
            self.kernel_ban(addr)
        })
        .with_context(|| self.logs())
    }

    /// The `detector::ban` records of all runs (their `fields`).
    fn ban_lines(&self, addr: &str) -> Vec<Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "detector::ban" && v["fields"]["ip"] == addr)
            .map(|v| v["fields"].clone())
            .collect()
    }

    fn explain(&self, addr: &str) -> Result<Value> {
        Ok(serde_json::from_str(
            &self.detector(&["explain", addr, "--json"])?,
        )?)
    }

    /// Appends lines to its `n`th log file.
    fn append(&self, n: usize, text: &str) -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::options().append(true).open(&self.files[n])?;
        f.write_all(text.as_bytes())?;
        Ok(())
    }

    /// SIGTERM (state saved) and wait.
    fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let st = child.wait()?;
            anyhow::ensure!(st.success(), "{} exited {st}:\n{}", self.name, self.logs());
        }
        Ok(())
    }

    /// SIGKILL: no state saved beyond the last periodic save.
    fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}

/// The MX's part of the seed pattern: `bot` probes `mailbox` and aborts the transaction.
fn probe(bot: &str, mailbox: &str, pid: u32) -> String {
    let t = now();
    format!(
        "{t} mx postfix/smtpd[{pid}]: connect from unknown[{bot}]\n\
         {t} mx postfix/smtpd[{pid}]: NOQUEUE: info: RCPT from unknown[{bot}]: lab-rcpt=<{mailbox}>; from=<p@q.invalid> to=<{mailbox}> proto=ESMTP helo=<x>\n\
         {t} mx postfix/smtpd[{pid}]: disconnect from unknown[{bot}] ehlo=1 mail=1 rcpt=1 quit=1 commands=4\n"
    )
}

/// The IMAP host's part: one failed login as `mailbox`.
fn login(bot: &str, mailbox: &str, session: &str) -> String {
    format!(
        "{} imap dovecot: imap-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<{mailbox}>, method=PLAIN, rip={bot}, lip=198.18.0.1, session=<{session}>\n",
        now()
    )
}

/// Failed SMTP AUTH logins, `n` of them (two are a slow-repeat ban with no grace period).
fn sasl_failures(bot: &str, n: u32) -> String {
    let t = now();
    (0..n)
        .map(|i| {
            format!(
                "{t} imap postfix/submission/smtpd[30{i}]: warning: unknown[{bot}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6\n"
            )
        })
        .collect()
}

/// `detector replay` of these files: the decisions' JSON lines.
fn replay(config: &Path, files: &[&Path]) -> Result<Vec<Value>> {
    let out = Command::new(detector_bin())
        .args(["replay", "--json", "--config"])
        .arg(config)
        .args(files)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["action"] == "ban")
        .collect())
}

/// Waits until `node`'s status counts at least `events` events from `peer`.
fn wait_peer_events(node: &Node, peer: &str, events: u64) -> Result<()> {
    wait_until(
        &format!("{} has {events} events from {peer}", node.name),
        || {
            Ok(node
                .status()?
                .filter(|s| s["peers"][peer]["events"].as_u64().unwrap_or(0) >= events)
                .map(|_| ()))
        },
    )
}

#[test]
fn a_probe_on_the_mx_and_a_login_on_the_imap_host_ban_the_bot_on_every_node() -> Result<()> {
    let redis = Redis::start()?;
    let work = TempDir::new("split")?;
    let mut mx = Node::new(&work.0, "cl1", "mx", &["postfix.log"])?;
    let mut imap = Node::new(&work.0, "cl1", "imap", &["dovecot.log"])?;
    let mut enforcer = Node::new(&work.0, "cl1", "edge", &[])?;
    for n in [&mut mx, &mut imap, &mut enforcer] {
        n.start(&redis.url(), &[])?;
    }
    let bot = "198.18.5.7";
    mx.append(0, &probe(bot, "alice@example.test", 201))?;
    // The probe reaches the IMAP host before the login does (as live, seconds apart).
    wait_peer_events(&imap, "mx", 3)?;
    imap.append(0, &login(bot, "alice@example.test", "Mb2s"))?;

    for n in [&mx, &imap, &enforcer] {
        let ban = n.wait_banned(bot)?;
        assert_eq!(ban["reason"], "probe-login", "{}: {ban}", n.name);
    }
    // Each ban line names the nodes whose events it rests on.
    for n in [&mx, &imap] {
        let lines = n.ban_lines(bot);
        assert!(!lines.is_empty(), "{}:\n{}", n.name, n.logs());
        let nodes = lines[0]["nodes"].as_str().unwrap_or_default();
        assert_eq!(nodes, r#"["imap", "mx"]"#, "{}: {:?}", n.name, lines[0]);
    }
    // explain names them too, on the node that saw none of the logs.
    // (It reads the state the daemon saves every second.)
    let explained = wait_until("explain with the cluster's part", || {
        let e = enforcer.explain(bot)?;
        // The imap node's ban message may come (and be saved) before its login event has
        // reached this node's engine: wait for both.
        Ok((!e["cluster"].is_null() && e["offences"] != 0).then_some(e))
    })?;
    assert_eq!(
        explained["cluster"][0]["nodes"],
        serde_json::json!(["imap", "mx"]),
        "{explained}"
    );
    assert_eq!(explained["offences"], 1, "{explained}");

    // No single node's log alone bans the bot; both together do (the logs are the nodes').
    let config = mx.dir.join("detector.toml");
    let (postfix, dovecot) = (&mx.files[0], &imap.files[0]);
    assert_eq!(replay(&config, &[postfix])?, Vec::<Value>::new());
    assert_eq!(replay(&config, &[dovecot])?, Vec::<Value>::new());
    assert_eq!(replay(&config, &[postfix, dovecot])?.len(), 1);

    // An administrator's unban on one node lifts the ban on every node.
    enforcer.detector(&["unban", bot])?;
    for n in [&mx, &imap, &enforcer] {
        wait_until(&format!("{bot} unbanned at {}", n.name), || {
            Ok(n.kernel_ban(bot)?.is_none().then_some(()))
        })
        .with_context(|| n.logs())?;
    }
    assert!(
        mx.logs().contains("unban from the cluster"),
        "{}",
        mx.logs()
    );

    for n in [&mut mx, &mut imap, &mut enforcer] {
        n.stop()?;
    }
    Ok(())
}

/// Failed logins the node's engine counted for `addr` (as its last save has them).
fn failures_counted(node: &Node, addr: &str) -> Result<u64> {
    let e = node.explain(addr)?;
    Ok(e["failures"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f["count"].as_u64().unwrap_or(0))
        .sum())
}

/// Waits until the node's saved engine state counts `n` failures for `addr`.
fn wait_failures(node: &Node, addr: &str, n: u64) -> Result<()> {
    wait_until(
        &format!("{} counting {n} failures of {addr}", node.name),
        || Ok((failures_counted(node, addr)? >= n).then_some(())),
    )
    .with_context(|| node.logs())
}

/// `imap_extra`: more `detector run` arguments for the IMAP node.
fn three_nodes(work: &Path, test: &str, url: &str, imap_extra: &[&str]) -> Result<[Node; 3]> {
    let mut mx = Node::new(work, test, "mx", &["postfix.log"])?;
    let mut imap = Node::new(work, test, "imap", &["dovecot.log"])?;
    let mut edge = Node::new(work, test, "edge", &[])?;
    mx.start(url, &[])?;
    imap.start(url, imap_extra)?;
    edge.start(url, &[])?;
    Ok([mx, imap, edge])
}

/// One sample of `/metrics` on `addr` (`name value` lines).
fn metric(addr: &str, name: &str) -> Result<Option<f64>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    // One write: the endpoint answers the first segment it reads.
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok()))
}

fn free_addr() -> Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string())
}

#[test]
fn with_redis_down_nodes_ban_on_their_own_and_share_it_when_it_returns() -> Result<()> {
    let mut redis = Redis::start()?;
    let work = TempDir::new("outage")?;
    let metrics = free_addr()?;
    let [mut mx, mut imap, mut edge] = three_nodes(
        &work.0,
        "cl2",
        &redis.url(),
        &["--metrics-listen", &metrics],
    )?;
    assert_eq!(metric(&metrics, "detector_cluster_connected")?, Some(1.0));

    redis.kill();
    for n in [&mx, &imap, &edge] {
        wait_until(&format!("{} to notice the outage", n.name), || {
            Ok(n.status()?.filter(|s| s["connected"] == false).map(|_| ()))
        })?;
    }
    // Each logging node bans on its own evidence while Redis is away.
    let (at_imap, at_mx) = ("198.18.6.1", "198.18.6.2");
    imap.append(0, &sasl_failures(at_imap, 2))?;
    mx.append(0, &sasl_failures(at_mx, 2))?;
    imap.wait_banned(at_imap)?;
    mx.wait_banned(at_mx)?;
    assert!(imap.logs().contains("Redis unreachable"), "{}", imap.logs());
    let status = imap.detector(&["status"])?;
    assert!(status.contains("NOT connected"), "{status}");
    assert_eq!(edge.kernel_ban(at_imap)?, None);
    assert_eq!(metric(&metrics, "detector_cluster_connected")?, Some(0.0));

    // Redis returns (empty: no persistence): the buffered events and bans reach every node.
    redis.restart()?;
    for n in [&mx, &imap, &edge] {
        for bot in [at_imap, at_mx] {
            n.wait_banned(bot)?;
        }
    }
    // Counted once everywhere: the origin does not count its own events read back, and the
    // others count each event once.
    for n in [&mx, &imap, &edge] {
        for bot in [at_imap, at_mx] {
            wait_failures(n, bot, 2)?;
            assert_eq!(failures_counted(n, bot)?, 2, "{} {bot}", n.name);
            assert_eq!(n.explain(bot)?["offences"], 1, "{} {bot}", n.name);
        }
        // The status file is rewritten every 2 s.
        wait_until(&format!("{} to report its reconnect", n.name), || {
            Ok(n.status()?
                .filter(|s| s["reconnects"].as_u64() >= Some(1) && s["connected"] == true)
                .map(|_| ()))
        })?;
    }
    assert_eq!(metric(&metrics, "detector_cluster_connected")?, Some(1.0));
    assert!(metric(&metrics, "detector_cluster_reconnects_total")? >= Some(1.0));
    // The imap node published its 2 events and its ban (and heartbeats are not counted).
    assert!(metric(&metrics, "detector_cluster_published_total")? >= Some(3.0));
    // mx's 2 events and its ban, each once.
    assert_eq!(
        metric(&metrics, "detector_cluster_consumed_total")?,
        Some(3.0)
    );
    for n in [&mut mx, &mut imap, &mut edge] {
        n.stop()?;
    }
    Ok(())
}

#[test]
fn a_node_killed_and_restarted_catches_up_without_escalating_twice() -> Result<()> {
    let redis = Redis::start()?;
    let work = TempDir::new("crash")?;
    let [mut mx, mut imap, mut edge] = three_nodes(&work.0, "cl3", &redis.url(), &[])?;
    let url = redis.url();

    let before = "198.18.7.1";
    imap.append(0, &sasl_failures(before, 2))?;
    edge.wait_banned(before)?;
    wait_failures(&edge, before, 2)?;

    edge.kill()?;
    let meanwhile = "198.18.7.2";
    imap.append(0, &sasl_failures(meanwhile, 2))?;
    mx.wait_banned(meanwhile)?;
    assert_eq!(edge.kernel_ban(meanwhile)?, None);

    // Back from its saved position: what happened meanwhile is applied, nothing twice.
    edge.start(&url, &[])?;
    edge.wait_banned(meanwhile)?;
    wait_failures(&edge, meanwhile, 2)?;
    for bot in [before, meanwhile] {
        assert_eq!(failures_counted(&edge, bot)?, 2, "{bot}");
        let e = edge.explain(bot)?;
        assert_eq!(e["offences"], 1, "{bot}: {e}");
        for line in edge.ban_lines(bot) {
            assert_eq!(line["offence"], 1, "{bot}: {line}");
        }
    }
    for n in [&mut mx, &mut imap, &mut edge] {
        n.stop()?;
    }
    Ok(())
}

/// Two nodes share a ban through `url`, each configured with `cluster` (TOML).
fn share_one_ban(test: &str, url: &str, cluster: &str) -> Result<()> {
    let work = TempDir::new(test)?;
    let mut imap = Node::with_config(&work.0, test, "imap", &["dovecot.log"], cluster)?;
    let mut edge = Node::with_config(&work.0, test, "edge", &[], cluster)?;
    imap.start(url, &[])?;
    edge.start(url, &[])?;
    let bot = "198.18.8.1";
    imap.append(0, &sasl_failures(bot, 2))?;
    imap.wait_banned(bot)?;
    edge.wait_banned(bot)?;
    imap.stop()?;
    edge.stop()?;
    Ok(())
}

#[test]
fn an_acl_user_in_the_url_and_the_password_from_a_file_work() -> Result<()> {
    let redis = Redis::start_with(Options {
        password: Some("s3cret-for-test".into()),
        tls: None,
    })?;
    let work = TempDir::new("auth-files")?;
    let pass = work.0.join("redis.pass");
    std::fs::write(&pass, "s3cret-for-test\n")?;
    // `default` is the ACL user requirepass sets the password of.
    let url = format!("redis://default@127.0.0.1:{}/0", redis.port);
    share_one_ban(
        "auth",
        &url,
        &format!("[cluster]\npassword_file = \"{}\"\n", pass.display()),
    )?;
    Ok(())
}

#[test]
fn rediss_with_a_private_ca_works() -> Result<()> {
    let work = TempDir::new("tls-ca")?;
    let tls = Tls::generate(&work.0)?;
    let redis = Redis::start_with(Options {
        password: None,
        tls: Some(tls.clone()),
    })?;
    assert!(redis.url().starts_with("rediss://"));
    share_one_ban(
        "tls",
        &redis.url(),
        &format!("[cluster]\nca_file = \"{}\"\n", tls.ca.display()),
    )
}
