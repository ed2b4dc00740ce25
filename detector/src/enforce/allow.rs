//! Addresses that must never be banned: loopback and other special ranges, the host's own
//! addresses (read at check time: they change), the host's infrastructure (nameservers,
//! default gateways, Postfix's relayhost: read once at start, see [`super::infra`]) and the
//! configured allow CIDRs.
use std::net::IpAddr;

use ipnet::IpNet;

use super::infra::{InfraSources, Infrastructure, gather};
use super::maps::canonical;
use crate::Error;

/// Ranges no ban may touch, whatever the configuration: loopback, "this network",
/// link-local (IPv6 neighbours and routers, cloud metadata at 169.254.169.254), multicast and
/// broadcast. None of them is a sensible botnet source.
const BUILT_IN: &[(&str, &str)] = &[
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("255.255.255.255/32", "broadcast"),
];

#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    configured: Vec<IpNet>,
    infrastructure: Vec<Infrastructure>,
}

impl Allowlist {
    /// `configured`: the allow CIDRs from the configuration. An IPv4-mapped IPv6 entry
    /// (`::ffff:198.18.0.1`) protects the IPv4 address, which is what is on the wire.
    pub fn new(configured: Vec<IpNet>) -> Self {
        Allowlist {
            configured: configured.into_iter().map(canonical).collect(),
            infrastructure: Vec::new(),
        }
    }

    /// Adds the host's infrastructure addresses (see [`host_infrastructure`]).
    pub fn with_infrastructure(mut self, infrastructure: Vec<Infrastructure>) -> Self {
        self.infrastructure = infrastructure;
        self
    }

    pub fn infrastructure(&self) -> &[Infrastructure] {
        &self.infrastructure
    }

    /// Refuses a ban that overlaps any protected range. Two prefixes overlap exactly when one
    /// contains the other, so a ban wider than an allowed range is refused as well.
    pub fn check(&self, ban: &IpNet) -> crate::Result<()> {
        for (cidr, what) in BUILT_IN {
            let net: IpNet = cidr.parse().expect("built-in CIDRs are valid");
            if overlaps(ban, &net) {
                return Err(refused(ban, &format!("it covers {what} range {net}")));
            }
        }
        for net in &self.configured {
            if overlaps(ban, net) {
                return Err(refused(ban, &format!("it overlaps the allowlisted {net}")));
            }
        }
        for infra in &self.infrastructure {
            if ban.contains(&infra.addr) {
                return Err(refused(
                    ban,
                    &format!("it covers {}, this host's {}", infra.addr, infra.what),
                ));
            }
        }
        for addr in local_addresses() {
            if ban.contains(&addr) {
                return Err(refused(
                    ban,
                    &format!("it covers this host's own address {addr}"),
                ));
            }
        }
        Ok(())
    }
}

impl Allowlist {
    /// Every network [`Allowlist::check`] protects, for callers that cut a foreign range
    /// around them (CrowdSec decisions) instead of refusing it whole.
    pub fn protected_nets(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = BUILT_IN
            .iter()
            .map(|(cidr, _)| cidr.parse().expect("built-in CIDRs are valid"))
            .collect();
        out.extend(self.configured.iter().copied());
        out.extend(self.infrastructure.iter().map(|i| IpNet::from(i.addr)));
        out.extend(local_addresses().into_iter().map(IpNet::from));
        out
    }
}

fn refused(ban: &IpNet, why: &str) -> Error {
    Error::Usage(format!("refusing to ban {ban}: {why}"))
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    match (a, b) {
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)) => {
            a.contains(&b.network()) || b.contains(&a.network())
        }
        _ => false,
    }
}

/// The host's nameservers, default gateways and Postfix relayhost, read now from the system
/// and logged: call once at start.
pub fn host_infrastructure() -> Vec<Infrastructure> {
    let found = gather(&InfraSources::system());
    for i in &found {
        tracing::info!(addr = %i.addr, what = %i.what, "never banned: host infrastructure");
    }
    found
}

/// Every address configured on this host's interfaces (in the current network namespace).
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family tells its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: the family says this sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: the family says this sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_loopback_and_wider_prefixes() {
        let a = Allowlist::default();
        assert!(a.check(&net("127.0.0.1/32")).is_err());
        assert!(a.check(&net("::1/128")).is_err());
        assert!(a.check(&net("0.0.0.0/0")).is_err());
        assert!(a.check(&net("::/0")).is_err());
        assert!(a.check(&net("169.254.169.254/32")).is_err());
        assert!(a.check(&net("198.18.5.0/24")).is_ok());
        assert!(a.check(&net("2001:db8:10::7/128")).is_ok());
    }

    #[test]
    fn refuses_overlap_with_configured_allow_in_both_directions() {
        let a = Allowlist::new(vec![net("198.18.10.0/24")]);
        assert!(a.check(&net("198.18.10.5/32")).is_err());
        assert!(a.check(&net("198.18.0.0/16")).is_err());
        assert!(a.check(&net("198.18.11.0/24")).is_ok());
    }

    #[test]
    fn ipv4_mapped_allow_entries_protect_the_ipv4_address() {
        let a = Allowlist::new(vec![
            net("::ffff:198.18.0.1/128"),
            net("::ffff:198.18.8.0/120"),
        ]);
        assert!(a.check(&net("198.18.0.1/32")).is_err());
        assert!(a.check(&net("198.18.8.9/32")).is_err());
        assert!(a.check(&net("198.18.0.2/32")).is_ok());
    }

    #[test]
    fn refuses_infrastructure() {
        let a = Allowlist::default().with_infrastructure(vec![Infrastructure {
            addr: "198.18.0.53".parse().unwrap(),
            what: "nameserver (/etc/resolv.conf)".into(),
        }]);
        let err = a.check(&net("198.18.0.53/32")).unwrap_err().to_string();
        assert!(err.contains("nameserver (/etc/resolv.conf)"), "{err}");
        assert!(a.check(&net("198.18.0.0/24")).is_err());
        assert!(a.check(&net("198.18.0.54/32")).is_ok());
    }

    #[test]
    fn refuses_own_addresses() {
        // Loopback is always configured; every other local address must be refused too.
        for addr in local_addresses() {
            let err = Allowlist::default().check(&IpNet::from(addr)).unwrap_err();
            assert!(err.to_string().contains("refusing"), "{err}");
        }
    }
}
