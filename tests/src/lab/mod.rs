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
//! With [`Topology::Split`] the lab is two mail hosts, as on a platform where the MX and the
//! mailbox servers are different machines:
//!
//! ```text
//!                           eth0 ── mh-bot0 ─ dtl-<tag>-mx:   198.18.0.1  Postfix 25/587
//!   dtl-<tag>-bot0 198.18.0.10 ┤
//!                           eth1 ── mh-bot0 ─ dtl-<tag>-imap: 198.18.1.1  Dovecot 143/110
//! ```
//!
//! Every peer then has one veth pair to each host (`eth<i>` to host `i`, the same `mh-<peer>`
//! name inside each host) and the same address on both, so both hosts see it as one client.
//! A further pair, `bk0` (198.18.2.1 on the MX, 198.18.2.2 on the IMAP host), is the
//! platform's internal network, for shared services such as the cluster's Redis.
//! Each host has its own mount namespace. Postfix's SASL client reaches the IMAP host's
//! Dovecot auth socket through the shared file system (the lab's state directory), and
//! Postfix delivers into the maildirs Dovecot serves, like a mail store both hosts mount.
//!
//! `Drop` tears everything down, also when a test panics.
mod clients;
mod config;
mod install;
pub mod logs;
mod mount_ns;
mod state;
mod supervise;
mod sys;
mod topology;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use clients::{find_mailbot, run_mailbot, run_mailbot_to};
pub use detector_testkit::cmd::is_root;
pub use detector_testkit::lock::FileLock;
pub use install::{DEBCONF_TXT, PACKAGES_TXT, ensure_installed, packages};
pub use logs::{LogLine, LogOrigin};
pub use state::{LabInfo, lab_tags};
pub use supervise::sweep_stale;
pub use sys::{NetNsGuard, alive, command_in_net_ns, enter_net_ns, netns_list, netns_pids};

use state::State;

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
/// The IMAP host of a split lab ([`Topology::Split`]).
pub const IMAP_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const IMAP_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// The split lab's internal network between its two hosts (`bk0`), where shared services
/// (the cluster's Redis) live; no client reaches it.
pub const BACKEND_MX_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const BACKEND_IMAP_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
pub const BACKEND_IFACE: &str = "bk0";
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const BOT6_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 6, 0, 0, 0, 6);
/// Bot `i` gets 198.18.0.(10 + i).
pub const MAX_BOTS: usize = 200;
/// Ports Postfix listens on (SMTP, submission).
pub const POSTFIX_PORTS: [u16; 2] = [25, 587];
/// Ports Dovecot listens on (IMAP, POP3).
pub const DOVECOT_PORTS: [u16; 2] = [143, 110];
const DEV_LOG_TARGET: &str = "/run/systemd/journal/dev-log";

/// Where the daemons log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogMode {
    /// Postfix `maillog_file` and Dovecot `log_path`: `<dir>/log/{postfix,dovecot}.log`.
    File,
    /// syslog(3) -> /dev/log -> a standalone systemd-journald -> `<dir>/journal/`.
    Journal,
}

/// How many mail hosts the lab has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Topology {
    /// One mail host (`dtl-<tag>-mail`) running Postfix and Dovecot.
    #[default]
    OneHost,
    /// An MX (`dtl-<tag>-mx`, Postfix, 198.18.0.1) and an IMAP host (`dtl-<tag>-imap`,
    /// Dovecot, 198.18.1.1). File mode only.
    Split,
}

/// What a mail host runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Postfix and Dovecot (the one-host lab).
    Mail,
    /// Postfix only.
    Mx,
    /// Dovecot only.
    Imap,
}

impl Role {
    pub fn runs_postfix(self) -> bool {
        matches!(self, Role::Mail | Role::Mx)
    }

    pub fn runs_dovecot(self) -> bool {
        matches!(self, Role::Mail | Role::Imap)
    }

    /// The ports this host's daemons listen on.
    pub fn ports(self) -> Vec<u16> {
        let mut ports = Vec::new();
        if self.runs_postfix() {
            ports.extend(POSTFIX_PORTS);
        }
        if self.runs_dovecot() {
            ports.extend(DOVECOT_PORTS);
        }
        ports
    }
}

/// One mail host: a network namespace, its addresses, and the anchor of its mount namespace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Host {
    pub role: Role,
    /// Network namespace name, e.g. `dtl-ab12-mx`.
    pub ns: String,
    pub ip: Ipv4Addr,
    /// Configured on the host's interfaces only when the lab has IPv6.
    pub ip6: Ipv6Addr,
    /// The `sleep infinity` that holds the host's private mount namespace.
    pub(crate) anchor: Option<i32>,
}

#[derive(Clone, Debug)]
pub struct LabOptions {
    /// One mail host, or an MX and an IMAP host.
    pub topology: Topology,
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
            topology: Topology::OneHost,
            log_mode: LogMode::File,
            ipv6: false,
            bots: 1,
            tag: None,
            install: true,
            mailbot: None,
        }
    }
}

/// A namespace that talks to the mail host(s) over its own veth pair(s).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Peer {
    /// Network namespace name, e.g. `dtl-ab12-bot0`.
    pub ns: String,
    /// The peer's address (what the mail logs show as the client address).
    pub ip: IpAddr,
    /// The mail host's end of the pair (inside the mail namespace), e.g. `mh-bot0`; a split
    /// lab uses the same name inside both hosts.
    pub mail_iface: String,
}

pub struct Lab {
    state: State,
    /// One per host, in host order.
    anchors: Vec<Child>,
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
        if opts.topology == Topology::Split && opts.log_mode != LogMode::File {
            bail!("a split lab (MX and IMAP host) logs to files only");
        }
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
        let host = |role: Role, name: &str, ip: Ipv4Addr, ip6: Ipv6Addr| Host {
            role,
            ns: format!("{NS_PREFIX}{tag}-{name}"),
            ip,
            ip6,
            anchor: None,
        };
        let hosts = match opts.topology {
            Topology::OneHost => vec![host(Role::Mail, "mail", MAIL_IP, MAIL_IP6)],
            Topology::Split => vec![
                host(Role::Mx, "mx", MAIL_IP, MAIL_IP6),
                host(Role::Imap, "imap", IMAP_IP, IMAP_IP6),
            ],
        };
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
        for ns in hosts
            .iter()
            .map(|h| &h.ns)
            .chain(peers.iter().map(|p| &p.ns))
        {
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
            hosts,
            peers,
            ipv6: opts.ipv6,
            cgroups: Vec::new(),
            uses_dev_log: false,
        };
        let mut lab = Lab {
            state,
            anchors: Vec::new(),
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
        for host in 0..self.state.hosts.len() {
            self.start_anchor(host)?;
        }
        self.mount_lab_files(&rendered)?;
        let postfix_out = self.state.dir.join("run/postfix-start.out");
        let mut postfix = self.in_host_mount_ns(self.postfix_host_index(), "postfix");
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
        let mut dovecot = self.in_host_mount_ns(self.dovecot_host_index(), "dovecot");
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

    fn postfix_host_index(&self) -> usize {
        self.state
            .hosts
            .iter()
            .position(|h| h.role.runs_postfix())
            .expect("every lab has a Postfix host")
    }

    fn dovecot_host_index(&self) -> usize {
        self.state
            .hosts
            .iter()
            .position(|h| h.role.runs_dovecot())
            .expect("every lab has a Dovecot host")
    }

    /// The lab's tag (`dtl-<tag>-...` namespaces).
    pub fn tag(&self) -> &str {
        &self.state.tag
    }

    pub fn log_mode(&self) -> LogMode {
        self.state.log_mode
    }

    /// One host, or the MX and the IMAP host.
    pub fn topology(&self) -> Topology {
        if self.state.hosts.len() == 1 {
            Topology::OneHost
        } else {
            Topology::Split
        }
    }

    /// The mail hosts: the one mail host, or the MX then the IMAP host.
    pub fn hosts(&self) -> &[Host] {
        &self.state.hosts
    }

    /// The host running Postfix (the mail host, or the MX).
    pub fn postfix_host(&self) -> &Host {
        &self.state.hosts[self.postfix_host_index()]
    }

    /// The host running Dovecot (the mail host, or the IMAP host).
    pub fn dovecot_host(&self) -> &Host {
        &self.state.hosts[self.dovecot_host_index()]
    }

    /// The first mail host's IPv4 address (on every mail-side interface): the mail host, or
    /// the MX of a split lab.
    pub fn mail_ip(&self) -> Ipv4Addr {
        self.state.hosts[0].ip
    }

    /// The mail host's IPv6 address, if the lab has IPv6.
    pub fn mail_ip6(&self) -> Option<Ipv6Addr> {
        self.state.ipv6.then_some(self.state.hosts[0].ip6)
    }

    /// The first mail host's network namespace (where the daemons and the XDP interfaces
    /// are): the mail host, or the MX of a split lab.
    pub fn mail_ns(&self) -> &str {
        &self.state.hosts[0].ns
    }

    /// The mail host's interfaces, one per peer (names valid inside `mail_ns()`, and in a
    /// split lab inside each host's namespace); XDP programs attach here to see every client
    /// packet.
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
