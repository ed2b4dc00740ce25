//! The mail lab: a real Postfix + Dovecot host in its own network namespace, with bots and a
//! legitimate client in their own namespaces, logging to files or to a real systemd journal.
//!
//! ```text
//!   dtl-<tag>-client  eth0 198.18.0.2 ───── mh-client ┐
//!   dtl-<tag>-bot0    eth0 198.18.0.10 ──── mh-bot0   ├─ dtl-<tag>-mail: 198.18.0.1 (+ 2001:db8:1::1)
//!   dtl-<tag>-bot6    eth0 2001:db8:1:6::6 ── mh-bot6   ┘   Postfix 25/587, Dovecot 143/110
//! ```
//!
//! One veth pair per client namespace, created directly inside the two namespaces (nothing in
//! the root namespace, no default route anywhere, so no packet can leave). The mail host's
//! address sits on every `mh-*` interface as a /32 (/128) with a host route to the peer, so
//! an XDP program attached to `lab.mail_ifaces()` sees every client packet.
//!
//! The daemons run in a private mount namespace (anchored by a `sleep infinity`) where the
//! lab's own /etc/postfix, journald.conf, /run/systemd and /run/log are mounted; the host's
//! files are never changed (except a dangling `/dev/log` symlink in journal mode when the host
//! has none, removed by the last lab that uses it). Several labs can run at once: every lab
//! has its own tag, namespaces, state directory, queue, and journal.
//!
//! `Drop` tears everything down, also when a test panics.
mod config;
mod install;
pub mod logs;
mod sys;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use install::{DEBCONF_TXT, PACKAGES_TXT, ensure_installed, packages};
pub use logs::{LogLine, LogOrigin};

use crate::mailclient::Report;
pub use sys::{NetNsGuard, alive, command_in_net_ns, enter_net_ns, netns_list, netns_pids};

/// Every namespace of every lab starts with this.
pub const NS_PREFIX: &str = "dtl-";
/// Lab state directories live here (`<STATE_ROOT>/<tag>/`).
pub const STATE_ROOT: &str = "/run/detector-lab";
/// The hosted domain; every local part is accepted (catch-all).
pub const DOMAIN: &str = "example.test";
/// Real mailboxes (local part, password).
pub const USERS: &[(&str, &str)] = &[("alice", "AlicePass123"), ("bob", "BobPass123")];
pub const MAIL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const MAIL_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const BOT6_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 6, 0, 0, 0, 6);
/// Bot `i` gets 198.18.0.(10 + i).
pub const MAX_BOTS: usize = 200;
/// Ports the lab waits for before `up` returns.
pub const PORTS: [u16; 4] = [25, 587, 143, 110];
const DEV_LOG_TARGET: &str = "/run/systemd/journal/dev-log";

/// Where the daemons log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogMode {
    /// Postfix `maillog_file` and Dovecot `log_path`: `<dir>/log/{postfix,dovecot}.log`.
    File,
    /// syslog(3) -> /dev/log -> a standalone systemd-journald -> `<dir>/journal/`.
    Journal,
}

#[derive(Clone, Debug)]
pub struct LabOptions {
    pub log_mode: LogMode,
    /// Adds the `bot6` namespace (2001:db8:1:6::6) and IPv6 on the mail host.
    pub ipv6: bool,
    /// Number of IPv4 bot namespaces (`bot0`..), 198.18.0.10 upwards.
    pub bots: usize,
    /// Short name in the namespace names (`dtl-<tag>-mail`); default: unique per lab.
    pub tag: Option<String>,
    /// Install the Debian packages if they are missing (default true).
    pub install: bool,
    /// The mailbot binary; default: `$MAILBOT_BIN`, else next to the running test binary.
    pub mailbot: Option<PathBuf>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            log_mode: LogMode::File,
            ipv6: false,
            bots: 1,
            tag: None,
            install: true,
            mailbot: None,
        }
    }
}

/// A namespace that talks to the mail host over its own veth pair.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Peer {
    /// Network namespace name, e.g. `dtl-ab12-bot0`.
    pub ns: String,
    /// The peer's address (what the mail logs show as the client address).
    pub ip: IpAddr,
    /// The mail host's end of the pair (inside the mail namespace), e.g. `mh-bot0`.
    pub mail_iface: String,
}

/// What teardown needs; also written to `<dir>/state.json` so that a lab whose owner died
/// (or one kept up by `cargo xtask lab up`) can be torn down later.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    tag: String,
    dir: PathBuf,
    log_mode: LogMode,
    /// The process that owns the lab (0: kept up on purpose, torn down by `Lab::down_tag`).
    owner: u32,
    mail_ns: String,
    peers: Vec<Peer>,
    ipv6: bool,
    anchor: Option<i32>,
    /// cgroup directories relative to the mount namespace's /sys/fs/cgroup, leaf first.
    cgroups: Vec<String>,
    /// This lab uses the shared `/dev/log` symlink.
    uses_dev_log: bool,
}

pub struct Lab {
    state: State,
    anchor: Option<Child>,
    journald: Option<Child>,
    dev_log_lock: Option<FileLock>,
    mailbot: PathBuf,
    torn_down: bool,
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Installs what is missing, writes the configuration, creates the namespaces, starts
    /// journald (journal mode), Postfix and Dovecot, and waits until they listen.
    pub fn up(opts: LabOptions) -> Result<Lab> {
        if !is_root() {
            bail!("the mail lab needs root (network namespaces, mounts)");
        }
        if opts.bots > MAX_BOTS {
            bail!("at most {MAX_BOTS} bots, {} requested", opts.bots);
        }
        let tag = match &opts.tag {
            Some(t) => {
                if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    bail!("lab tag {t:?} must be 1-20 ASCII letters or digits");
                }
                t.clone()
            }
            None => format!(
                "{:x}{}",
                std::process::id(),
                NEXT_LAB.fetch_add(1, Ordering::Relaxed)
            ),
        };
        if opts.install {
            install::ensure_installed()?;
        } else if !install::missing_files().is_empty() {
            bail!(
                "lab packages missing ({}); run `cargo xtask setup`",
                install::missing_files().join(" ")
            );
        }
        sweep_stale();
        let mailbot = match &opts.mailbot {
            Some(p) => p.clone(),
            None => find_mailbot()?,
        };
        let dir = Path::new(STATE_ROOT).join(&tag);
        if dir.exists() {
            bail!(
                "{} exists: a lab with tag {tag} is up (tear it down first)",
                dir.display()
            );
        }
        let mail_ns = format!("{NS_PREFIX}{tag}-mail");
        let mut peers = vec![Peer {
            ns: format!("{NS_PREFIX}{tag}-client"),
            ip: CLIENT_IP.into(),
            mail_iface: "mh-client".into(),
        }];
        for i in 0..opts.bots {
            let ip = Ipv4Addr::new(198, 18, 0, 10 + i as u8);
            peers.push(Peer {
                ns: format!("{NS_PREFIX}{tag}-bot{i}"),
                ip: ip.into(),
                mail_iface: format!("mh-bot{i}"),
            });
        }
        if opts.ipv6 {
            peers.push(Peer {
                ns: format!("{NS_PREFIX}{tag}-bot6"),
                ip: BOT6_IP.into(),
                mail_iface: "mh-bot6".into(),
            });
        }
        for ns in std::iter::once(&mail_ns).chain(peers.iter().map(|p| &p.ns)) {
            if sys::netns_exists(ns) {
                bail!("network namespace {ns} already exists");
            }
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let state = State {
            tag,
            dir,
            log_mode: opts.log_mode,
            owner: std::process::id(),
            mail_ns,
            peers,
            ipv6: opts.ipv6,
            anchor: None,
            cgroups: Vec::new(),
            uses_dev_log: false,
        };
        let mut lab = Lab {
            state,
            anchor: None,
            journald: None,
            dev_log_lock: None,
            mailbot,
            torn_down: false,
        };
        lab.save_state()?;
        // On any error below, dropping `lab` tears down what was built so far.
        lab.start()
            .with_context(|| format!("bringing up lab {}", lab.state.tag))?;
        Ok(lab)
    }

    fn start(&mut self) -> Result<()> {
        let rendered = config::write_all(&self.state.dir, self.state.log_mode, self.state.ipv6)?;
        self.create_network()?;
        self.start_anchor()?;
        let root = self.ns_root();
        let mount = |args: &[&str]| sys::run(self.in_mail_mount_ns("mount").args(args));
        mount(&["--bind", path_str(&rendered.postfix_etc)?, "/etc/postfix"])?;
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
        let postfix_out = self.state.dir.join("run/postfix-start.out");
        let mut postfix = self.in_mail_mount_ns("postfix");
        postfix.arg("start");
        self.in_unit_cgroup(&mut postfix, "postfix@-.service");
        let out = postfix
            .stdout(output_file(&postfix_out)?)
            .stderr(output_file(&postfix_out)?)
            .status()?;
        if !out.success() {
            bail!("postfix start failed ({out}): {}", read_lossy(&postfix_out));
        }
        let dovecot_out = self.state.dir.join("run/dovecot-start.out");
        let mut dovecot = self.in_mail_mount_ns("dovecot");
        dovecot.arg("-c").arg(&rendered.dovecot_conf);
        self.in_unit_cgroup(&mut dovecot, "dovecot.service");
        let out = dovecot
            .stdout(output_file(&dovecot_out)?)
            .stderr(output_file(&dovecot_out)?)
            .status()?;
        if !out.success() {
            bail!(
                "dovecot failed to start ({out}): {}",
                read_lossy(&dovecot_out)
            );
        }
        self.wait_ready()
    }

    /// Namespaces, sysctls and one veth pair per peer, created directly inside the namespaces.
    fn create_network(&mut self) -> Result<()> {
        let st = &self.state;
        let all_ns: Vec<&String> = std::iter::once(&st.mail_ns)
            .chain(st.peers.iter().map(|p| &p.ns))
            .collect();
        for ns in &all_ns {
            sys::run(Command::new("ip").args(["netns", "add", ns]))?;
        }
        for ns in &all_ns {
            let v6 = st.ipv6
                && (**ns == st.mail_ns || st.peers.iter().any(|p| &p.ns == *ns && p.ip.is_ipv6()));
            set_sysctls(ns, v6)?;
            sys::run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        for p in &st.peers {
            sys::run(Command::new("ip").args([
                "link",
                "add",
                &p.mail_iface,
                "netns",
                &st.mail_ns,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &p.ns,
            ]))?;
            let (mail_addr, peer_addr) = match p.ip {
                IpAddr::V4(ip) => (format!("{MAIL_IP}/32"), format!("{ip}/24")),
                IpAddr::V6(ip) => (format!("{MAIL_IP6}/128"), format!("{ip}/64")),
            };
            let nodad: &[&str] = if p.ip.is_ipv6() { &["nodad"] } else { &[] };
            sys::run(
                Command::new("ip")
                    .args([
                        "-n",
                        &st.mail_ns,
                        "addr",
                        "add",
                        &mail_addr,
                        "dev",
                        &p.mail_iface,
                    ])
                    .args(nodad),
            )?;
            sys::run(
                Command::new("ip")
                    .args(["-n", &p.ns, "addr", "add", &peer_addr, "dev", "eth0"])
                    .args(nodad),
            )?;
            sys::run(Command::new("ip").args([
                "-n",
                &st.mail_ns,
                "link",
                "set",
                &p.mail_iface,
                "up",
            ]))?;
            sys::run(Command::new("ip").args(["-n", &p.ns, "link", "set", "eth0", "up"]))?;
            if p.ip.is_ipv6() {
                // The IPv6 bot lives in its own /64 (so its ban covers a /64 that is not the
                // mail host's): reach the mail host through an on-link host route.
                sys::run(Command::new("ip").args([
                    "-n",
                    &p.ns,
                    "-6",
                    "route",
                    "add",
                    &MAIL_IP6.to_string(),
                    "dev",
                    "eth0",
                ]))?;
            }
            sys::run(Command::new("ip").args([
                "-n",
                &st.mail_ns,
                "route",
                "add",
                &p.ip.to_string(),
                "dev",
                &p.mail_iface,
            ]))?;
        }
        Ok(())
    }

    /// `sleep infinity` in the mail network namespace and a new private mount namespace: it
    /// holds the mount namespace in which the daemons run (entered with nsenter).
    fn start_anchor(&mut self) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.state.mail_ns,
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
        self.anchor = Some(child);
        self.state.anchor = Some(pid);
        self.save_state()?;
        // ip and unshare exec in place: the pid is sleep's once the mount namespace exists.
        let ready = sys::wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        });
        if !ready {
            bail!("the mail namespace anchor (pid {pid}) did not start");
        }
        Ok(())
    }

    fn start_journald(&mut self) -> Result<()> {
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

    fn wait_ready(&self) -> Result<()> {
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

    /// Moves the child (before it execs) into a unit cgroup of this lab (journal mode only).
    fn in_unit_cgroup(&self, cmd: &mut Command, unit: &str) {
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

    /// The lab's mount namespace as seen from outside (`/proc/<anchor>/root`).
    fn ns_root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.state.anchor.unwrap_or(0)))
    }

    fn save_state(&self) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.state)?;
        std::fs::write(self.state.dir.join("state.json"), json).context("writing the lab state")
    }

    // ------------------------------------------------------------------ public API

    /// The lab's tag (`dtl-<tag>-...` namespaces).
    pub fn tag(&self) -> &str {
        &self.state.tag
    }

    pub fn log_mode(&self) -> LogMode {
        self.state.log_mode
    }

    /// The mail host's IPv4 address (on every mail-side interface).
    pub fn mail_ip(&self) -> Ipv4Addr {
        MAIL_IP
    }

    /// The mail host's IPv6 address, if the lab has IPv6.
    pub fn mail_ip6(&self) -> Option<Ipv6Addr> {
        self.state.ipv6.then_some(MAIL_IP6)
    }

    /// The mail host's network namespace (where the daemons and the XDP interfaces are).
    pub fn mail_ns(&self) -> &str {
        &self.state.mail_ns
    }

    /// The mail host's interfaces, one per peer (names valid inside `mail_ns()`); XDP
    /// programs attach here to see every client packet.
    pub fn mail_ifaces(&self) -> Vec<String> {
        self.state
            .peers
            .iter()
            .map(|p| p.mail_iface.clone())
            .collect()
    }

    /// The legitimate client (198.18.0.2).
    pub fn client(&self) -> &Peer {
        &self.state.peers[0]
    }

    /// The IPv4 bots, 198.18.0.10 upwards.
    pub fn bots(&self) -> Vec<&Peer> {
        self.state.peers[1..]
            .iter()
            .filter(|p| p.ip.is_ipv4())
            .collect()
    }

    /// The IPv6 bot (2001:db8:1:6::6), if the lab has IPv6.
    pub fn bot6(&self) -> Option<&Peer> {
        self.state.peers.iter().find(|p| p.ip.is_ipv6())
    }

    /// Every peer: client, bots, bot6.
    pub fn peers(&self) -> &[Peer] {
        &self.state.peers
    }

    /// The lab's state directory (configs, logs, journal).
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// Postfix's log file (file mode).
    pub fn postfix_log(&self) -> Option<PathBuf> {
        (self.state.log_mode == LogMode::File).then(|| self.state.dir.join("log/postfix.log"))
    }

    /// Dovecot's log file (file mode).
    pub fn dovecot_log(&self) -> Option<PathBuf> {
        (self.state.log_mode == LogMode::File).then(|| self.state.dir.join("log/dovecot.log"))
    }

    /// The journal directory (journal mode): `journalctl --directory=<this> -o json`.
    pub fn journal_dir(&self) -> Option<PathBuf> {
        (self.state.log_mode == LogMode::Journal).then(|| self.state.dir.join("journal"))
    }

    /// The lab journald's syslog socket as reachable from the host (journal mode): a
    /// datagram sent here is logged like one Postfix or Dovecot writes to /dev/log.
    pub fn journal_syslog_socket(&self) -> Option<PathBuf> {
        (self.state.log_mode == LogMode::Journal)
            .then(|| self.ns_root().join(DEV_LOG_TARGET.trim_start_matches('/')))
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
    pub fn in_mail_mount_ns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.state.anchor.unwrap_or(0).to_string())
            .args(["-m", "-n", "--"])
            .arg(program);
        sys::close_inherited_fds(&mut cmd);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs the mailbot in `peer`'s namespace against the mail host and returns its reports.
    /// `args` is a mailbot command line after `--server` (added here), e.g. `["round"]`.
    pub fn mailbot(&self, peer: &Peer, args: &[&str]) -> Result<Vec<crate::mailclient::Report>> {
        run_mailbot(&self.mailbot, peer, args)
    }

    /// One botnet round from `peer`: RCPT probe of `<local>@example.test` (random if None),
    /// QUIT, then IMAP, POP3 and submission logins with that address and a wrong password.
    /// Returns the probed address and the four reports.
    pub fn round(&self, peer: &Peer, local: Option<&str>) -> Result<(String, Vec<Report>)> {
        let local = local.map_or_else(|| crate::mailclient::random_token(10), str::to_string);
        let reports = self.mailbot(peer, &["round", "--local", &local])?;
        Ok((format!("{local}@{DOMAIN}"), reports))
    }

    /// SMTP probe (EHLO, MAIL FROM, RCPT TO:<rcpt>, QUIT or, with `drop`, a dropped connection).
    pub fn probe(&self, peer: &Peer, rcpt: &str, drop: bool) -> Result<Report> {
        let mut args = vec!["probe", "--to", rcpt];
        if drop {
            args.push("--drop");
        }
        single(self.mailbot(peer, &args)?)
    }

    /// IMAP LOGIN + LOGOUT from `peer`.
    pub fn imap_login(&self, peer: &Peer, user: &str, password: &str) -> Result<Report> {
        single(self.mailbot(peer, &["imap", "--user", user, "--password", password])?)
    }

    /// POP3 USER/PASS + QUIT from `peer`.
    pub fn pop3_login(&self, peer: &Peer, user: &str, password: &str) -> Result<Report> {
        single(self.mailbot(peer, &["pop3", "--user", user, "--password", password])?)
    }

    /// SMTP AUTH PLAIN on submission (587) from `peer`.
    pub fn smtp_auth(&self, peer: &Peer, user: &str, password: &str) -> Result<Report> {
        single(self.mailbot(peer, &["smtp-auth", "--user", user, "--password", password])?)
    }

    /// A message from an authenticated user to `to`, through submission.
    pub fn send_mail(&self, peer: &Peer, user: &str, password: &str, to: &str) -> Result<Report> {
        let args = [
            "deliver",
            "--user",
            user,
            "--password",
            password,
            "--to",
            to,
        ];
        single(self.mailbot(peer, &args)?)
    }

    /// All log lines written so far (files, or the journal via `journalctl -o json`).
    pub fn log_lines(&self) -> Result<Vec<LogLine>> {
        read_logs(&self.state.dir, self.state.log_mode)
    }

    /// Waits until a log line satisfies `pred`, polling every 100 ms.
    pub fn wait_for_log(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&LogLine) -> bool,
    ) -> Result<LogLine> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_lines()?.into_iter().find(|l| pred(l)) {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                bail!("no matching log line within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until a log line contains every one of `parts`; the error lists the log.
    pub fn expect_log(&self, timeout: Duration, parts: &[&str]) -> Result<LogLine> {
        self.wait_for_log(timeout, |l| parts.iter().all(|p| l.text.contains(p)))
            .map_err(|_| {
                let lines = self.log_lines().unwrap_or_default();
                let dump: Vec<String> = lines.iter().map(|l| l.text.clone()).collect();
                anyhow::anyhow!(
                    "no log line contains all of {parts:?} within {timeout:?}; the log has:\n{}",
                    dump.join("\n")
                )
            })
    }

    /// The lab's description (as `LabInfo::read(tag)` gives it).
    pub fn info(&self) -> LabInfo {
        LabInfo {
            tag: self.state.tag.clone(),
            dir: self.state.dir.clone(),
            log_mode: self.state.log_mode,
            mail_ns: self.state.mail_ns.clone(),
            peers: self.state.peers.clone(),
            ipv6: self.state.ipv6,
            owner: self.state.owner,
        }
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

    fn teardown_now(&mut self) {
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
fn teardown(st: &State) {
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

/// Removes the shared `/dev/log` symlink if a lab created it and no other lab uses it.
fn release_dev_log() {
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

fn read_state(dir: &Path) -> Result<State> {
    let path = dir.join("state.json");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn single(mut reports: Vec<Report>) -> Result<Report> {
    match reports.len() {
        1 => Ok(reports.remove(0)),
        n => bail!("mailbot printed {n} reports, expected one: {reports:?}"),
    }
}

/// Runs `mailbot --server <mail host> ARGS` in `peer`'s namespace and parses its reports.
pub fn run_mailbot(
    mailbot: &Path,
    peer: &Peer,
    args: &[&str],
) -> Result<Vec<crate::mailclient::Report>> {
    let server = match peer.ip {
        IpAddr::V4(_) => IpAddr::from(MAIL_IP),
        IpAddr::V6(_) => IpAddr::from(MAIL_IP6),
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &peer.ns]).arg(mailbot);
    cmd.arg("--server").arg(server.to_string()).args(args);
    let stdout = sys::run(&mut cmd)?;
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad mailbot output line {l:?}")))
        .collect()
}

fn read_logs(dir: &Path, mode: LogMode) -> Result<Vec<LogLine>> {
    match mode {
        LogMode::File => logs::read_files(&[
            (LogOrigin::PostfixFile, dir.join("log/postfix.log")),
            (LogOrigin::DovecotFile, dir.join("log/dovecot.log")),
        ]),
        LogMode::Journal => logs::read_journal(&dir.join("journal")),
    }
}

/// What is known about a lab that is up, also one kept up by `cargo xtask lab up`.
#[derive(Clone, Debug)]
pub struct LabInfo {
    pub tag: String,
    pub dir: PathBuf,
    pub log_mode: LogMode,
    pub mail_ns: String,
    /// client, bots, bot6
    pub peers: Vec<Peer>,
    pub ipv6: bool,
    /// 0 when kept up on purpose.
    pub owner: u32,
}

impl LabInfo {
    /// Reads the state of the lab with this tag.
    pub fn read(tag: &str) -> Result<LabInfo> {
        let st = read_state(&Path::new(STATE_ROOT).join(tag))?;
        Ok(LabInfo {
            tag: st.tag,
            dir: st.dir,
            log_mode: st.log_mode,
            mail_ns: st.mail_ns,
            peers: st.peers,
            ipv6: st.ipv6,
            owner: st.owner,
        })
    }

    pub fn log_lines(&self) -> Result<Vec<LogLine>> {
        read_logs(&self.dir, self.log_mode)
    }

    /// Shell-style `KEY=value` lines describing the lab (printed by `cargo xtask lab up`).
    pub fn env_lines(&self) -> Vec<String> {
        let mut out = vec![
            format!("LAB_TAG={}", self.tag),
            format!("LAB_DIR={}", self.dir.display()),
            format!("MAIL_NS={}", self.mail_ns),
            format!("MAIL_IP={MAIL_IP}"),
        ];
        if self.ipv6 {
            out.push(format!("MAIL_IP6={MAIL_IP6}"));
        }
        let ifaces: Vec<&str> = self.peers.iter().map(|p| p.mail_iface.as_str()).collect();
        out.push(format!("MAIL_IFACES=\"{}\"", ifaces.join(" ")));
        for p in &self.peers {
            out.push(format!("PEER {} {} via {}", p.ns, p.ip, p.mail_iface));
        }
        match self.log_mode {
            LogMode::File => {
                out.push(format!(
                    "POSTFIX_LOG={}",
                    self.dir.join("log/postfix.log").display()
                ));
                out.push(format!(
                    "DOVECOT_LOG={}",
                    self.dir.join("log/dovecot.log").display()
                ));
            }
            LogMode::Journal => {
                out.push(format!(
                    "JOURNAL_DIR={}",
                    self.dir.join("journal").display()
                ));
            }
        }
        out
    }
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

/// Tags of the labs that have a state directory (up, detached or stale).
pub fn lab_tags() -> Vec<String> {
    std::fs::read_dir(STATE_ROOT)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("state.json").exists())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn set_sysctls(ns: &str, ipv6: bool) -> Result<()> {
    let v6 = if ipv6 { "0" } else { "1" };
    let settings = [
        ("net/ipv6/conf/all/disable_ipv6", v6),
        ("net/ipv6/conf/default/disable_ipv6", v6),
        // no duplicate address detection: addresses are usable at once
        ("net/ipv6/conf/all/accept_dad", "0"),
        ("net/ipv6/conf/default/accept_dad", "0"),
    ];
    // A scoped thread enters the namespace: /proc/sys/net belongs to the opener's namespace.
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            let _guard = sys::enter_net_ns(ns)?;
            for (key, value) in settings {
                let path = Path::new("/proc/sys").join(key);
                std::fs::write(&path, value)
                    .with_context(|| format!("writing {} in {ns}", path.display()))?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sysctl thread panicked"))?
    })
}

/// The mailbot binary: `$MAILBOT_BIN`, else next to the running executable (or its parent
/// directory, for test binaries in target/<profile>/deps/).
pub fn find_mailbot() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MAILBOT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // Test binaries live in target/<profile>/deps/, binaries in target/<profile>/.
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("mailbot");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "mailbot binary not found next to {} (build it: cargo build -p detector-tests --bin mailbot, or set MAILBOT_BIN)",
        exe.display()
    )
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

/// A daemon's stdout/stderr file; opened in append mode so both streams keep their lines.
fn output_file(p: &Path) -> Result<File> {
    File::options()
        .create(true)
        .append(true)
        .open(p)
        .with_context(|| format!("opening {}", p.display()))
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An flock(2) on a file, released on drop.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    fn open(path: &Path) -> Result<File> {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))
    }

    fn lock(path: &Path, op: i32) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let file = Self::open(path)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(FileLock { _file: file })
    }

    pub fn exclusive(path: &Path) -> Result<Self> {
        Self::lock(path, libc::LOCK_EX)
    }

    pub fn shared(path: &Path) -> Result<Self> {
        Self::lock(path, libc::LOCK_SH)
    }

    pub fn try_exclusive(path: &Path) -> Result<Self> {
        Self::lock(path, libc::LOCK_EX | libc::LOCK_NB)
    }
}
