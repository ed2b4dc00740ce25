//! What a lab records about itself in `<dir>/state.json` (so that a lab whose owner died, or
//! one kept up by `cargo xtask lab up`, can be found and torn down later) and what it tells
//! others about itself (`LabInfo`).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::logs::read_logs;
use super::{Host, Lab, LogLine, LogMode, Peer, Role, STATE_ROOT};

/// What teardown needs; also written to `<dir>/state.json` so that a lab whose owner died
/// (or one kept up by `cargo xtask lab up`) can be torn down later.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) tag: String,
    pub(super) dir: PathBuf,
    pub(super) log_mode: LogMode,
    /// The process that owns the lab (0: kept up on purpose, torn down by `Lab::down_tag`).
    pub(super) owner: u32,
    /// The mail host, or the MX then the IMAP host (each with its mount namespace's anchor).
    pub(super) hosts: Vec<Host>,
    pub(super) peers: Vec<Peer>,
    pub(super) ipv6: bool,
    /// cgroup directories relative to the mount namespace's /sys/fs/cgroup, leaf first.
    pub(super) cgroups: Vec<String>,
    /// This lab uses the shared `/dev/log` symlink.
    pub(super) uses_dev_log: bool,
}

impl Lab {
    pub(super) fn save_state(&self) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.state)?;
        std::fs::write(self.state.dir.join("state.json"), json).context("writing the lab state")
    }

    /// The lab's description (as `LabInfo::read(tag)` gives it).
    pub fn info(&self) -> LabInfo {
        LabInfo {
            tag: self.state.tag.clone(),
            dir: self.state.dir.clone(),
            log_mode: self.state.log_mode,
            mail_ns: self.state.hosts[0].ns.clone(),
            hosts: self.state.hosts.clone(),
            peers: self.state.peers.clone(),
            ipv6: self.state.ipv6,
            owner: self.state.owner,
        }
    }
}

pub(super) fn read_state(dir: &Path) -> Result<State> {
    let path = dir.join("state.json");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// What is known about a lab that is up, also one kept up by `cargo xtask lab up`.
#[derive(Clone, Debug)]
pub struct LabInfo {
    pub tag: String,
    pub dir: PathBuf,
    pub log_mode: LogMode,
    /// The first host's namespace (the mail host, or the MX of a split lab).
    pub mail_ns: String,
    /// The mail host, or the MX then the IMAP host.
    pub hosts: Vec<Host>,
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
            mail_ns: st.hosts.first().map(|h| h.ns.clone()).unwrap_or_default(),
            hosts: st.hosts,
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
        ];
        for h in &self.hosts {
            // MAIL_* for the one mail host, MX_* and IMAP_* for a split lab.
            let var = match h.role {
                Role::Mail => "MAIL",
                Role::Mx => "MX",
                Role::Imap => "IMAP",
            };
            out.push(format!("{var}_NS={}", h.ns));
            out.push(format!("{var}_IP={}", h.ip));
            if self.ipv6 {
                out.push(format!("{var}_IP6={}", h.ip6));
            }
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
