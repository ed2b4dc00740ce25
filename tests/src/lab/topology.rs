//! The lab's network: one namespace per host, one veth pair per peer and mail host, created
//! directly inside the namespaces, and the per-namespace sysctls.
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::{BACKEND_IFACE, BACKEND_IMAP_IP, BACKEND_MX_IP, Host, Lab, Peer, sys};

impl Lab {
    /// Namespaces, sysctls and one veth pair per peer and host, created directly inside the
    /// namespaces.
    pub(super) fn create_network(&mut self) -> Result<()> {
        let st = &self.state;
        let host_ns: Vec<&String> = st.hosts.iter().map(|h| &h.ns).collect();
        let all_ns: Vec<&String> = host_ns
            .iter()
            .copied()
            .chain(st.peers.iter().map(|p| &p.ns))
            .collect();
        for ns in &all_ns {
            sys::run(Command::new("ip").args(["netns", "add", ns]))?;
        }
        for ns in &all_ns {
            let v6 = st.ipv6
                && (host_ns.contains(ns)
                    || st.peers.iter().any(|p| &p.ns == *ns && p.ip.is_ipv6()));
            set_sysctls(ns, v6)?;
            sys::run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        for (i, host) in st.hosts.iter().enumerate() {
            for p in &st.peers {
                link_peer(host, i, p)?;
            }
        }
        if let [mx, imap] = st.hosts.as_slice() {
            link_backend(mx, imap)?;
        }
        Ok(())
    }
}

/// The split lab's internal network between the MX and the IMAP host (`bk0` in both):
/// where the hosts reach shared services such as the cluster's Redis. No client is on it.
fn link_backend(mx: &Host, imap: &Host) -> Result<()> {
    let ip = |args: &[&str]| sys::run(Command::new("ip").args(args));
    ip(&[
        "link",
        "add",
        BACKEND_IFACE,
        "netns",
        &mx.ns,
        "type",
        "veth",
        "peer",
        "name",
        BACKEND_IFACE,
        "netns",
        &imap.ns,
    ])?;
    for (host, addr) in [(mx, BACKEND_MX_IP), (imap, BACKEND_IMAP_IP)] {
        ip(&[
            "-n",
            &host.ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            BACKEND_IFACE,
        ])?;
        ip(&["-n", &host.ns, "link", "set", BACKEND_IFACE, "up"])?;
    }
    Ok(())
}

/// The veth pair between `peer` (its `eth<i>`) and host number `i` (its `mh-<peer>`), the
/// addresses on both ends and the host routes.
fn link_peer(host: &Host, i: usize, p: &Peer) -> Result<()> {
    let peer_iface = format!("eth{i}");
    let ip = |args: &[&str]| sys::run(Command::new("ip").args(args));
    ip(&[
        "link",
        "add",
        &p.mail_iface,
        "netns",
        &host.ns,
        "type",
        "veth",
        "peer",
        "name",
        &peer_iface,
        "netns",
        &p.ns,
    ])?;
    // On the first host's pair the peer's address has its subnet (on-link route to the
    // first host); on later pairs it is a host address with an explicit route, so that each
    // host is reached over its own pair and sees the same client address.
    let (host_addr, peer_addr, host_ip) = match p.ip {
        IpAddr::V4(v4) => (
            format!("{}/32", host.ip),
            format!("{v4}/{}", if i == 0 { 24 } else { 32 }),
            host.ip.to_string(),
        ),
        IpAddr::V6(v6) => (
            format!("{}/128", host.ip6),
            format!("{v6}/{}", if i == 0 { 64 } else { 128 }),
            host.ip6.to_string(),
        ),
    };
    let nodad: &[&str] = if p.ip.is_ipv6() { &["nodad"] } else { &[] };
    sys::run(
        Command::new("ip")
            .args([
                "-n",
                &host.ns,
                "addr",
                "add",
                &host_addr,
                "dev",
                &p.mail_iface,
            ])
            .args(nodad),
    )?;
    sys::run(
        Command::new("ip")
            .args(["-n", &p.ns, "addr", "add", &peer_addr, "dev", &peer_iface])
            .args(nodad),
    )?;
    ip(&["-n", &host.ns, "link", "set", &p.mail_iface, "up"])?;
    ip(&["-n", &p.ns, "link", "set", &peer_iface, "up"])?;
    if p.ip.is_ipv6() || i > 0 {
        // The IPv6 bot lives in its own /64 (so its ban covers a /64 that is not the mail
        // host's), and later hosts are outside the first pair's subnet: reach the host
        // through an on-link host route, from the peer's one address.
        let peer_ip = p.ip.to_string();
        let family = if p.ip.is_ipv6() { "-6" } else { "-4" };
        ip(&[
            "-n",
            &p.ns,
            family,
            "route",
            "add",
            &host_ip,
            "dev",
            &peer_iface,
            "src",
            &peer_ip,
        ])?;
    }
    ip(&[
        "-n",
        &host.ns,
        "route",
        "add",
        &p.ip.to_string(),
        "dev",
        &p.mail_iface,
    ])?;
    Ok(())
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
