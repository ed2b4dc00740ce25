//! [`Enforcer`]: typed access to the pinned ban maps.
//!
//! A /32 or /128 goes to the exact hash (fast path); anything wider to the LPM trie of its
//! family, and SETTINGS' HAVE_PREFIX flags follow whether each trie holds anything, so the XDP
//! program skips empty tries.
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key};
use detector_common::{
    Counters, ExactBan, Ipv4Key, Ipv6Key, PrefixBan, Settings, map_names, settings_flags,
};
use ipnet::{IpNet, Ipv4Net};

use super::allow::Allowlist;
use super::clock;
use super::pins::PinPaths;
use super::table::{Table, Walk};
use super::types::{BanEntry, BanOutcome, Reason, Stats};
use super::{sys, verify};
use crate::Error;

pub struct Enforcer {
    pins: PinPaths,
    allow: Allowlist,
    bans_v4: Table<HashMap<MapData, Ipv4Key, ExactBan>>,
    bans_v6: Table<HashMap<MapData, Ipv6Key, ExactBan>>,
    prefix_v4: Table<LpmTrie<MapData, [u8; 4], PrefixBan>>,
    prefix_v6: Table<LpmTrie<MapData, [u8; 16], PrefixBan>>,
    stats: PerCpuArray<MapData, Counters>,
    settings: Array<MapData, Settings>,
}

/// Runs `$body` with `$t` bound to the table that holds `$net` and `$k` to its key there:
/// a /32 or /128 goes to the exact hash of its family, anything wider to the family's trie.
macro_rules! with_table {
    ($self:expr, $net:expr, |$t:ident, $k:ident| $body:expr) => {
        match $net {
            IpNet::V4(n) if n.prefix_len() == 32 => {
                let $t = &mut $self.bans_v4;
                let $k = Ipv4Key {
                    addr: n.addr().octets(),
                };
                $body
            }
            IpNet::V6(n) if n.prefix_len() == 128 => {
                let $t = &mut $self.bans_v6;
                let $k = Ipv6Key {
                    addr: n.addr().octets(),
                };
                $body
            }
            IpNet::V4(n) => {
                let $t = &mut $self.prefix_v4;
                let $k = Key::new(u32::from(n.prefix_len()), n.network().octets());
                $body
            }
            IpNet::V6(n) => {
                let $t = &mut $self.prefix_v6;
                let $k = Key::new(u32::from(n.prefix_len()), n.network().octets());
                $body
            }
        }
    };
}

/// A typed map from an untyped one.
fn typed<M>(map: Map, name: &str) -> crate::Result<M>
where
    M: TryFrom<Map, Error = aya::maps::MapError>,
{
    M::try_from(map).map_err(|e| Error::bpf(name, e))
}

fn open_map(pins: &PinPaths, name: &str) -> crate::Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path)
        .map_err(|e| Error::bpf(format!("opening {}", path.display()), e))?;
    Map::from_map_data(data).map_err(|e| Error::bpf(format!("opening {}", path.display()), e))
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, as dual-stack daemons log IPv4 peers) is the IPv4
/// address on the wire; store it as such or the ban would never match. Host bits are cleared.
pub fn canonical(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && let Some(v4) = n.network().to_ipv4_mapped()
        && n.prefix_len() >= 96
    {
        let v4net = Ipv4Net::new(v4, n.prefix_len() - 96).expect("prefix <= 32");
        return IpNet::V4(v4net.trunc());
    }
    net.trunc()
}

impl Enforcer {
    /// Opens the pinned maps under `pin_dir` after checking they match this build.
    pub fn open(pin_dir: &Path) -> crate::Result<Self> {
        sys::require_privileges()?;
        sys::require_bpffs(pin_dir)?;
        let pins = PinPaths::new(pin_dir);
        verify::check_pinned_maps(&pins, None)?;
        let settings: Array<MapData, Settings> =
            typed(open_map(&pins, map_names::SETTINGS)?, map_names::SETTINGS)?;
        let current = settings
            .get(&0, 0)
            .map_err(|e| Error::bpf("reading SETTINGS", e))?;
        verify::check_layout_version(&pins, current.layout_version)?;
        let capacity = super::Capacity {
            exact: capacity_of(&pins, map_names::BANS_V4),
            prefix: capacity_of(&pins, map_names::PREFIX_V4),
        };
        let mut enforcer = Self::assemble(|name| open_map(&pins, name), capacity, settings)?;
        enforcer.pins = pins;
        Ok(enforcer)
    }

    /// Wraps the maps of a freshly loaded, unpinned object (BPF_PROG_TEST_RUN harness and
    /// benchmark); SETTINGS is initialised like a first attach does.
    pub(crate) fn from_loaded(
        ebpf: &mut aya::Ebpf,
        capacity: super::Capacity,
    ) -> crate::Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| Error::Bpf(format!("the XDP object has no map {name}")))
        };
        let mut settings: Array<MapData, Settings> =
            typed(take(map_names::SETTINGS)?, map_names::SETTINGS)?;
        let fresh = Settings {
            flags: 0,
            layout_version: detector_common::LAYOUT_VERSION,
        };
        settings
            .set(0, fresh, 0)
            .map_err(|e| Error::bpf("writing SETTINGS", e))?;
        Self::assemble(take, capacity, settings)
    }

    fn assemble(
        mut map: impl FnMut(&str) -> crate::Result<Map>,
        capacity: super::Capacity,
        settings: Array<MapData, Settings>,
    ) -> crate::Result<Self> {
        use map_names::{BANS_V4, BANS_V6, PREFIX_V4, PREFIX_V6, STATS};
        Ok(Enforcer {
            pins: PinPaths::new("(unpinned)"),
            allow: Allowlist::default(),
            bans_v4: Table::new(typed(map(BANS_V4)?, BANS_V4)?, BANS_V4, capacity.exact),
            bans_v6: Table::new(typed(map(BANS_V6)?, BANS_V6)?, BANS_V6, capacity.exact),
            prefix_v4: Table::new(
                typed(map(PREFIX_V4)?, PREFIX_V4)?,
                PREFIX_V4,
                capacity.prefix,
            ),
            prefix_v6: Table::new(
                typed(map(PREFIX_V6)?, PREFIX_V6)?,
                PREFIX_V6,
                capacity.prefix,
            ),
            stats: typed(map(STATS)?, STATS)?,
            settings,
        })
    }

    /// Bulk insert for benchmarks: exact IPv4 bans with no allowlist check or merge.
    pub(crate) fn insert_exact_v4_raw(
        &mut self,
        addr: [u8; 4],
        value: ExactBan,
    ) -> crate::Result<()> {
        self.bans_v4.write(&Ipv4Key { addr }, &value)
    }

    /// Bulk insert for benchmarks: exact IPv6 bans with no allowlist check or merge.
    pub(crate) fn insert_exact_v6_raw(
        &mut self,
        addr: [u8; 16],
        value: ExactBan,
    ) -> crate::Result<()> {
        self.bans_v6.write(&Ipv6Key { addr }, &value)
    }

    pub fn pin_dir(&self) -> &Path {
        self.pins.dir()
    }

    /// Interfaces with a pinned XDP link.
    pub fn attached_interfaces(&self) -> Vec<String> {
        self.pins.linked_interfaces()
    }

    /// Capacity of the pinned maps (exact bans and prefix bans, per family).
    pub fn capacity(&self) -> super::Capacity {
        super::Capacity {
            exact: self.bans_v4.capacity,
            prefix: self.prefix_v4.capacity,
        }
    }

    /// What bans must never cover, on top of the built-in ranges and the host's own addresses:
    /// the configured allow CIDRs and the host's infrastructure.
    pub fn set_allowlist(&mut self, allow: Allowlist) {
        self.allow = allow;
    }

    /// Bans `net` for `ttl` (`None` = permanent). Re-banning keeps the hit count and the later
    /// expiry: a ban is extended, never shortened (unban first to shorten one). A `ttl` whose
    /// end the kernel's expiry field cannot hold is stored as permanent; [`Enforcer::entry`]
    /// reads back what was stored.
    pub fn ban(
        &mut self,
        net: IpNet,
        ttl: Option<Duration>,
        reason: Reason,
    ) -> crate::Result<BanOutcome> {
        let net = canonical(net);
        self.allow.check(&net)?;
        let now = clock::monotonic_ns();
        let outcome = with_table!(self, net, |t, k| t.ban(&k, ttl, reason, now)?.0);
        if net.prefix_len() < net.max_prefix_len() {
            self.refresh_prefix_flags()?;
        }
        Ok(outcome)
    }

    /// Removes the ban on exactly `net` (a /24 ban is not lifted by unbanning one address in
    /// it). Returns whether there was one.
    pub fn unban(&mut self, net: IpNet) -> crate::Result<bool> {
        let net = canonical(net);
        let found = with_table!(self, net, |t, k| t.remove(&k)?);
        if net.prefix_len() < net.max_prefix_len() {
            self.refresh_prefix_flags()?;
        }
        Ok(found)
    }

    /// The live ban stored for exactly `net` (one lookup, no walk), as `list` shows it.
    pub fn entry(&mut self, net: IpNet) -> crate::Result<Option<BanEntry>> {
        let net = canonical(net);
        let now = clock::monotonic_ns();
        with_table!(self, net, |t, k| t.entry(&k, now))
    }

    /// The live ban that drops `addr`, if any: the exact entry, else the longest matching
    /// prefix (what the XDP program would do). For `explain`-style questions.
    pub fn find(&self, addr: IpAddr) -> crate::Result<Option<BanEntry>> {
        let net = canonical(IpNet::from(addr));
        let target = net.addr();
        Ok(self
            .list()?
            .into_iter()
            .filter(|e| e.net.contains(&target))
            .max_by_key(|e| e.net.prefix_len()))
    }

    /// Every live (unexpired) ban, exact ones first, each family in address order.
    pub fn list(&self) -> crate::Result<Vec<BanEntry>> {
        let now = clock::monotonic_ns();
        let mut out = Vec::new();
        self.bans_v4.list(now, &mut out)?;
        self.bans_v6.list(now, &mut out)?;
        self.prefix_v4.list(now, &mut out)?;
        self.prefix_v6.list(now, &mut out)?;
        out.sort_by(|a, b| {
            (a.net.prefix_len() < a.net.max_prefix_len(), a.net)
                .cmp(&(b.net.prefix_len() < b.net.max_prefix_len(), b.net))
        });
        Ok(out)
    }

    /// Deletes expired entries (the XDP program already ignores them; this frees the slots).
    /// Returns how many were removed.
    pub fn sweep_expired(&mut self) -> crate::Result<usize> {
        Ok(self.sweep_all()?.0)
    }

    /// One walk over every table: removes what ended, summarises what is left.
    fn sweep_all(&mut self) -> crate::Result<(usize, Walk)> {
        let now = clock::monotonic_ns();
        let mut removed = 0;
        let mut left = Walk::default();
        for (n, w) in [
            self.bans_v4.sweep(now)?,
            self.bans_v6.sweep(now)?,
            self.prefix_v4.sweep(now)?,
            self.prefix_v6.sweep(now)?,
        ] {
            removed += n;
            left.add(w);
        }
        // Also repairs the flags if two processes raced on them.
        self.refresh_prefix_flags()?;
        Ok((removed, left))
    }

    /// Observe mode: matches are counted (hits, OBSERVED) but passed.
    pub fn set_observe(&mut self, on: bool) -> crate::Result<()> {
        self.update_flags(|f| {
            if on {
                f | settings_flags::OBSERVE
            } else {
                f & !settings_flags::OBSERVE
            }
        })
    }

    pub fn observe(&self) -> crate::Result<bool> {
        Ok(self.read_settings()?.flags & settings_flags::OBSERVE != 0)
    }

    /// Packet counters summed over CPUs.
    pub fn stats(&self) -> crate::Result<Stats> {
        let per_cpu = self
            .stats
            .get(&0, 0)
            .map_err(|e| Error::bpf("reading STATS", e))?;
        let mut counters = Counters::default();
        for c in per_cpu.iter() {
            counters.add(c);
        }
        Ok(Stats {
            counters,
            observe_mode: self.observe()?,
        })
    }

    fn read_settings(&self) -> crate::Result<Settings> {
        self.settings
            .get(&0, 0)
            .map_err(|e| Error::bpf("reading SETTINGS", e))
    }

    fn update_flags(&mut self, f: impl FnOnce(u32) -> u32) -> crate::Result<()> {
        let mut s = self.read_settings()?;
        let new = f(s.flags);
        if new != s.flags {
            s.flags = new;
            self.settings
                .set(0, s, 0)
                .map_err(|e| Error::bpf("writing SETTINGS", e))?;
        }
        Ok(())
    }

    /// HAVE_PREFIX_V4/V6 = "that trie holds at least one entry".
    fn refresh_prefix_flags(&mut self) -> crate::Result<()> {
        let have4 = !self.prefix_v4.is_empty();
        let have6 = !self.prefix_v6.is_empty();
        self.update_flags(|f| {
            let mut f = f & !(settings_flags::HAVE_PREFIX_V4 | settings_flags::HAVE_PREFIX_V6);
            if have4 {
                f |= settings_flags::HAVE_PREFIX_V4;
            }
            if have6 {
                f |= settings_flags::HAVE_PREFIX_V6;
            }
            f
        })
    }
}

fn capacity_of(pins: &PinPaths, name: &str) -> u32 {
    aya::maps::MapInfo::from_pin(pins.map(name)).map_or(0, |i| i.max_entries())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv6_becomes_ipv4_and_host_bits_are_cleared() {
        let n: IpNet = "::ffff:198.18.10.7/128".parse().unwrap();
        assert_eq!(canonical(n), "198.18.10.7/32".parse::<IpNet>().unwrap());
        let n: IpNet = "::ffff:198.18.10.7/120".parse().unwrap();
        assert_eq!(canonical(n), "198.18.10.0/24".parse::<IpNet>().unwrap());
        let n: IpNet = "198.18.10.77/24".parse().unwrap();
        assert_eq!(canonical(n), "198.18.10.0/24".parse::<IpNet>().unwrap());
        let n: IpNet = "2001:db8:10::1/128".parse().unwrap();
        assert_eq!(canonical(n), n);
    }
}
