//! The lab's network: one namespace per host, one veth pair per peer, created directly inside
//! the namespaces, and the per-namespace sysctls.
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::{Lab, MAIL_IP, MAIL_IP6, sys};

impl Lab {
    /// Namespaces, sysctls and one veth pair per peer, created directly inside the namespaces.
    pub(super) fn create_network(&mut self) -> Result<()> {
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
