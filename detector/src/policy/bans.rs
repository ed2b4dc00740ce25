//! What the policy services answer from: the bans in force, as the daemon wrote them.
//!
//! The daemon's engine task owns the bans; policy connections run on other tasks and must
//! answer in microseconds, so they read this copy (one read lock, one hash lookup) instead of
//! asking the engine or walking the kernel maps. The daemon updates it with every ban and
//! unban it writes, and says whether XDP is attached anywhere.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use crate::enforce::canonical;

#[derive(Debug, Default)]
pub struct BanView {
    table: RwLock<Table>,
    xdp_attached: AtomicBool,
}

#[derive(Debug, Default)]
struct Table {
    /// Single addresses (/32, /128) and their end.
    exact: HashMap<IpAddr, DateTime<Utc>>,
    /// Wider prefixes (few: the engine bans /24s and /64s only for campaigns).
    prefixes: Vec<(IpNet, DateTime<Utc>)>,
}

impl BanView {
    /// Records a ban of `net` until `until` (a longer one wins).
    pub fn ban(&self, net: IpNet, until: DateTime<Utc>) {
        let net = canonical(net);
        let Ok(mut t) = self.table.write() else {
            return;
        };
        if net.prefix_len() == net.max_prefix_len() {
            let end = t.exact.entry(net.addr()).or_insert(until);
            *end = (*end).max(until);
        } else {
            match t.prefixes.iter_mut().find(|(n, _)| *n == net) {
                Some((_, end)) => *end = (*end).max(until),
                None => t.prefixes.push((net, until)),
            }
        }
    }

    pub fn unban(&self, net: IpNet) {
        let net = canonical(net);
        if let Ok(mut t) = self.table.write() {
            if net.prefix_len() == net.max_prefix_len() {
                t.exact.remove(&net.addr());
            } else {
                t.prefixes.retain(|(n, _)| *n != net);
            }
        }
    }

    /// Whether a ban in force at `now` covers `ip`. A poisoned lock answers `false` (the
    /// policy then says DUNNO: failing open).
    pub fn is_banned(&self, ip: IpAddr, now: DateTime<Utc>) -> bool {
        let addr = canonical(IpNet::from(ip)).addr();
        let Ok(t) = self.table.read() else {
            return false;
        };
        if t.exact.get(&addr).is_some_and(|end| *end > now) {
            return true;
        }
        t.prefixes
            .iter()
            .any(|(net, end)| *end > now && net.contains(&addr))
    }

    /// Drops bans that ended (the daemon's sweep calls this).
    pub fn purge(&self, now: DateTime<Utc>) {
        if let Ok(mut t) = self.table.write() {
            t.exact.retain(|_, end| *end > now);
            t.prefixes.retain(|(_, end)| *end > now);
        }
    }

    pub fn len(&self) -> usize {
        self.table
            .read()
            .map_or(0, |t| t.exact.len() + t.prefixes.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn set_xdp_attached(&self, attached: bool) {
        self.xdp_attached.store(attached, Ordering::Relaxed);
    }

    /// XDP drops banned sources itself: a policy answer is only needed without it.
    pub fn xdp_attached(&self) -> bool {
        self.xdp_attached.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn exact_and_prefix_bans_cover_their_addresses_until_they_end() {
        let v = BanView::default();
        v.ban("198.18.0.10/32".parse().unwrap(), t(100));
        v.ban("2001:db8:5::/64".parse().unwrap(), t(100));
        assert!(v.is_banned("198.18.0.10".parse().unwrap(), t(0)));
        assert!(v.is_banned("::ffff:198.18.0.10".parse().unwrap(), t(0)));
        assert!(!v.is_banned("198.18.0.11".parse().unwrap(), t(0)));
        assert!(v.is_banned("2001:db8:5::7".parse().unwrap(), t(0)));
        assert!(!v.is_banned("2001:db8:6::7".parse().unwrap(), t(0)));
        assert!(!v.is_banned("198.18.0.10".parse().unwrap(), t(100)));
        v.unban("198.18.0.10/32".parse().unwrap());
        assert!(!v.is_banned("198.18.0.10".parse().unwrap(), t(0)));
        v.purge(t(200));
        assert!(v.is_empty());
    }
}
