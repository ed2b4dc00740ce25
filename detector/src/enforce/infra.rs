//! The host's infrastructure, which no ban may cover whatever the logs say: the nameservers in
//! /etc/resolv.conf, the default gateways (/proc/net/route, /proc/net/ipv6_route) and Postfix's
//! `relayhost`. Read once at start ([`gather`]); every source is a path or a string so tests
//! can feed fixture text.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How long resolving a `relayhost` name may hold up the start.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where [`gather`] reads from.
#[derive(Clone, Debug)]
pub struct InfraSources {
    pub resolv_conf: PathBuf,
    pub route_v4: PathBuf,
    pub route_v6: PathBuf,
    pub relayhost: Relayhost,
}

/// Where Postfix's `relayhost` comes from.
#[derive(Clone, Debug)]
pub enum Relayhost {
    /// `postconf -h relayhost`, if postconf is installed.
    Postconf,
    /// This value (as `postconf -h relayhost` would print it).
    Value(String),
}

impl InfraSources {
    /// This host's files and its Postfix.
    pub fn system() -> Self {
        InfraSources {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            route_v4: PathBuf::from("/proc/net/route"),
            route_v6: PathBuf::from("/proc/net/ipv6_route"),
            relayhost: Relayhost::Postconf,
        }
    }
}

/// One protected address and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Infrastructure {
    pub addr: IpAddr,
    /// "nameserver (/etc/resolv.conf)", "default gateway via eth0", "Postfix relayhost …".
    pub what: String,
}

/// Reads every source; a missing or unreadable one is logged and contributes nothing (a host
/// without IPv6 has no ipv6_route, one without Postfix no relayhost). Each address once.
pub fn gather(src: &InfraSources) -> Vec<Infrastructure> {
    let mut out: Vec<Infrastructure> = Vec::new();
    let mut add = |addr: IpAddr, what: String| {
        let addr = canonical_addr(addr);
        if !out.iter().any(|i| i.addr == addr) {
            out.push(Infrastructure { addr, what });
        }
    };
    let read = |path: &PathBuf| match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "not read");
            None
        }
    };
    if let Some(text) = read(&src.resolv_conf) {
        for addr in parse_resolv_conf(&text) {
            add(addr, format!("nameserver ({})", src.resolv_conf.display()));
        }
    }
    if let Some(text) = read(&src.route_v4) {
        for (addr, iface) in parse_route_v4(&text) {
            add(addr, format!("default gateway via {iface}"));
        }
    }
    if let Some(text) = read(&src.route_v6) {
        for (addr, iface) in parse_route_v6(&text) {
            add(addr, format!("default gateway via {iface}"));
        }
    }
    let relayhost = match &src.relayhost {
        Relayhost::Value(v) => Some(v.clone()),
        Relayhost::Postconf => postconf_relayhost(),
    };
    if let Some(value) = relayhost
        && let Some((host, port)) = parse_relayhost(&value)
    {
        let addrs = resolve(&host, port);
        if addrs.is_empty() {
            tracing::warn!(relayhost = %value, "Postfix relayhost did not resolve; it is not protected from bans");
        }
        for addr in addrs {
            add(addr, format!("Postfix relayhost {value}"));
        }
    }
    out
}

/// IPv4-mapped IPv6 is the IPv4 address on the wire.
fn canonical_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// `nameserver ADDR` lines (a `%zone` suffix on a link-local address is dropped).
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let addr = words.next()?;
            let addr = addr.split_once('%').map_or(addr, |(a, _)| a);
            addr.parse().ok()
        })
        .collect()
}

/// Gateways of the IPv4 default routes in /proc/net/route, with their interface. The kernel
/// prints each address as the hex of its in-memory (network-order) u32, hence native-endian
/// bytes back.
pub fn parse_route_v4(text: &str) -> Vec<(IpAddr, String)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, gateway, mask) = (f.first()?, f.get(1)?, f.get(2)?, f.get(7)?);
            let hex = |s: &str| u32::from_str_radix(s, 16).ok();
            if hex(dest)? != 0 || hex(mask)? != 0 {
                return None;
            }
            let gw = hex(gateway)?;
            (gw != 0).then(|| {
                (
                    IpAddr::V4(Ipv4Addr::from(gw.to_ne_bytes())),
                    iface.to_string(),
                )
            })
        })
        .collect()
}

/// Next hops of the IPv6 default routes (::/0) in /proc/net/ipv6_route, with their interface.
pub fn parse_route_v6(text: &str) -> Vec<(IpAddr, String)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, plen, next_hop, iface) = (f.first()?, f.get(1)?, f.get(4)?, f.get(9)?);
            let dest = hex128(dest)?;
            let next_hop = hex128(next_hop)?;
            if dest != 0 || u8::from_str_radix(plen, 16).ok()? != 0 || next_hop == 0 {
                return None;
            }
            Some((IpAddr::V6(Ipv6Addr::from(next_hop)), iface.to_string()))
        })
        .collect()
}

fn hex128(s: &str) -> Option<u128> {
    (s.len() == 32)
        .then(|| u128::from_str_radix(s, 16).ok())
        .flatten()
}

/// `relayhost` forms: `host`, `host:port`, `[host]`, `[host]:port`, `[ipv6]`, `[ipv6]:port`
/// (brackets turn off MX lookups in Postfix; an MX lookup is not done here either: the host
/// name's own addresses are protected). Empty = no relayhost. Several comma-separated
/// entries (Postfix ≥ 3.5 accepts a list) yield the first; the rest are ignored.
pub fn parse_relayhost(value: &str) -> Option<(String, u16)> {
    let value = value.split([',', ' ']).find(|s| !s.is_empty())?.trim();
    if value.is_empty() {
        return None;
    }
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 25,
            None => return None,
        };
        (host, port)
    } else if value.parse::<Ipv6Addr>().is_ok() {
        (value, 25)
    } else {
        match value.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (value, 25),
        }
    };
    let host = host.strip_prefix("ipv6:").unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// The addresses of `host` (an address literal, or a name resolved with a time limit).
fn resolve(host: &str, port: u16) -> Vec<IpAddr> {
    if let Ok(addr) = host.parse::<IpAddr>() {
        return vec![addr];
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let query = format!("{host}:{port}");
    // A thread so a slow resolver delays the start by RESOLVE_TIMEOUT at most; a late answer
    // goes nowhere.
    std::thread::spawn(move || {
        let addrs: Vec<IpAddr> = query
            .to_socket_addrs()
            .map(|it| it.map(|s| s.ip()).collect())
            .unwrap_or_default();
        let _ = tx.send(addrs);
    });
    rx.recv_timeout(RESOLVE_TIMEOUT).unwrap_or_default()
}

/// `postconf -h relayhost`, or `None` without postconf (no Postfix) or when it fails.
fn postconf_relayhost() -> Option<String> {
    // Without a main.cf postconf can only fail, and Postfix's fatal path sleeps a second
    // before exiting: every `detector ban` on a host without Postfix would pay it.
    let config_dir = std::env::var_os("MAIL_CONFIG")
        .map_or_else(|| PathBuf::from("/etc/postfix"), PathBuf::from);
    if !config_dir.join("main.cf").exists() {
        tracing::debug!(dir = %config_dir.display(), "no Postfix main.cf; no relayhost to protect");
        return None;
    }
    let out = match Command::new("postconf").args(["-h", "relayhost"]).output() {
        Ok(out) => out,
        Err(e) => {
            tracing::debug!(error = %e, "postconf not run; no relayhost to protect");
            return None;
        }
    };
    if !out.status.success() {
        tracing::warn!(stderr = %String::from_utf8_lossy(&out.stderr).trim(), "postconf -h relayhost failed");
        return None;
    }
    let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const RESOLV: &str = "# Generated by NetworkManager\nsearch example.net\n\
        nameserver 198.18.0.53\n;nameserver 198.18.0.99\nnameserver fe80::53%eth0\n\
        nameserver   2001:db8::53  \noptions edns0\nnameserver not-an-address\n";

    // Two default routes (one on-link, no gateway) and a subnet route.
    const ROUTE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010012C6\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
        wg0\t00000000\t00000000\t0001\t0\t0\t200\t00000000\t0\t0\t0\n\
        eth0\t000012C6\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";

    const ROUTE6: &str = "\
20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";

    #[test]
    fn nameservers() {
        assert_eq!(
            parse_resolv_conf(RESOLV),
            vec![ip("198.18.0.53"), ip("fe80::53"), ip("2001:db8::53")]
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv4_default_gateways() {
        assert_eq!(
            parse_route_v4(ROUTE),
            vec![(ip("198.18.0.1"), "eth0".to_string())]
        );
    }

    #[test]
    fn ipv6_default_gateways() {
        assert_eq!(
            parse_route_v6(ROUTE6),
            vec![(ip("fe80::1"), "eth0".to_string())]
        );
    }

    #[test]
    fn relayhost_forms() {
        let p = |s: &str| parse_relayhost(s);
        assert_eq!(p(""), None);
        assert_eq!(p("  "), None);
        assert_eq!(p("198.18.0.25"), Some(("198.18.0.25".into(), 25)));
        assert_eq!(p("[198.18.0.25]:587"), Some(("198.18.0.25".into(), 587)));
        assert_eq!(
            p("[smtp.example.net]"),
            Some(("smtp.example.net".into(), 25))
        );
        assert_eq!(
            p("smtp.example.net:2525"),
            Some(("smtp.example.net".into(), 2525))
        );
        assert_eq!(p("[2001:db8::25]:587"), Some(("2001:db8::25".into(), 587)));
        assert_eq!(p("[ipv6:2001:db8::25]"), Some(("2001:db8::25".into(), 25)));
        assert_eq!(p("2001:db8::25"), Some(("2001:db8::25".into(), 25)));
        assert_eq!(p("[a]:b"), None);
        assert_eq!(p("[unclosed:25"), None);
        assert_eq!(
            p("[198.18.0.25]:587, [198.18.0.26]"),
            Some(("198.18.0.25".into(), 587))
        );
    }

    #[test]
    fn gather_reads_every_source_once_and_skips_missing_ones() {
        let dir = std::env::temp_dir().join(format!("detector-infra-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), RESOLV).unwrap();
        std::fs::write(dir.join("ipv6_route"), ROUTE6).unwrap();
        let src = InfraSources {
            resolv_conf: dir.join("resolv.conf"),
            route_v4: dir.join("missing"),
            route_v6: dir.join("ipv6_route"),
            // IPv4-mapped: protected as the IPv4 address; and a duplicate nameserver.
            relayhost: Relayhost::Value("[::ffff:198.18.0.53]:587".into()),
        };
        let got = gather(&src);
        std::fs::remove_dir_all(&dir).unwrap();
        let addrs: Vec<IpAddr> = got.iter().map(|i| i.addr).collect();
        assert_eq!(
            addrs,
            vec![
                ip("198.18.0.53"),
                ip("fe80::53"),
                ip("2001:db8::53"),
                ip("fe80::1")
            ]
        );
        assert!(got[0].what.starts_with("nameserver ("), "{:?}", got[0]);
        assert_eq!(got[3].what, "default gateway via eth0");

        let relay = gather(&InfraSources {
            resolv_conf: "/nonexistent".into(),
            route_v4: "/nonexistent".into(),
            route_v6: "/nonexistent".into(),
            relayhost: Relayhost::Value("[198.18.0.25]:587".into()),
        });
        assert_eq!(
            relay,
            vec![Infrastructure {
                addr: ip("198.18.0.25"),
                what: "Postfix relayhost [198.18.0.25]:587".into()
            }]
        );
    }
}
