//! [`Enforcer`]: typed access to the pinned ban maps.
//!
//! A /32 or /128 goes to the exact hash (fast path); anything wider to the LPM trie of its
//! family, and SETTINGS' HAVE_PREFIX flags follow whether each trie holds anything, so the XDP
//! program skips empty tries.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use detector_common::{
    Counters, ExactBan, Ipv4Key, Ipv6Key, PrefixBan, Settings, map_names, settings_flags,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::allow::Allowlist;
use super::clock;
use super::pins::PinPaths;
use super::types::{BanEntry, BanOutcome, Reason, Stats};
use super::{bpf_error, sys, verify};
use crate::Error;

pub struct Enforcer {
    pins: PinPaths,
    allow: Allowlist,
    bans_v4: HashMap<MapData, Ipv4Key, ExactBan>,
    bans_v6: HashMap<MapData, Ipv6Key, ExactBan>,
    prefix_v4: LpmTrie<MapData, [u8; 4], PrefixBan>,
    prefix_v6: LpmTrie<MapData, [u8; 16], PrefixBan>,
    stats: PerCpuArray<MapData, Counters>,
    settings: Array<MapData, Settings>,
    /// max_entries of the exact maps and of the tries (for "map full" messages).
    exact_capacity: u32,
    prefix_capacity: u32,
}

fn open_map(pins: &PinPaths, name: &str) -> crate::Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path)
        .map_err(|e| bpf_error(format!("opening {}", path.display()), &e))?;
    Map::from_map_data(data).map_err(|e| bpf_error(format!("opening {}", path.display()), &e))
}

macro_rules! typed {
    ($pins:expr, $name:expr, $ty:ident) => {
        $ty::try_from(open_map($pins, $name)?).map_err(|e| bpf_error($name, &e))?
    };
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

fn full_error(what: &str, capacity: u32, err: &MapError) -> Error {
    let msg = super::chain(err);
    if msg.contains("too long")
        || msg.contains("E2BIG")
        || msg.contains("No space")
        || msg.contains("Argument list")
    {
        Error::Bpf(format!(
            "{what} is full ({capacity} entries); raise the capacity (detach and attach again) or unban something"
        ))
    } else {
        Error::Bpf(format!("writing {what}: {msg}"))
    }
}

fn lookup<T>(r: Result<T, MapError>, what: &str) -> crate::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(bpf_error(format!("reading {what}"), &e)),
    }
}

fn removed(r: Result<(), MapError>, what: &str) -> crate::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) | Err(MapError::ElementNotFound) => Ok(false),
        Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(bpf_error(format!("deleting from {what}"), &e)),
    }
}

/// Later of two expiries; 0 (permanent) wins.
fn later(a: u64, b: u64) -> u64 {
    if a == 0 || b == 0 { 0 } else { a.max(b) }
}

impl Enforcer {
    /// Opens the pinned maps under `pin_dir` after checking they match this build.
    pub fn open(pin_dir: &Path) -> crate::Result<Self> {
        sys::require_privileges()?;
        sys::require_bpffs(pin_dir)?;
        let pins = PinPaths::new(pin_dir);
        verify::check_pinned_maps(&pins, None)?;
        let settings: Array<MapData, Settings> = typed!(&pins, map_names::SETTINGS, Array);
        let current = settings
            .get(&0, 0)
            .map_err(|e| bpf_error("reading SETTINGS", &e))?;
        verify::check_layout_version(&pins, current.layout_version)?;
        let exact_capacity = capacity_of(&pins, map_names::BANS_V4);
        let prefix_capacity = capacity_of(&pins, map_names::PREFIX_V4);
        Ok(Enforcer {
            bans_v4: typed!(&pins, map_names::BANS_V4, HashMap),
            bans_v6: typed!(&pins, map_names::BANS_V6, HashMap),
            prefix_v4: typed!(&pins, map_names::PREFIX_V4, LpmTrie),
            prefix_v6: typed!(&pins, map_names::PREFIX_V6, LpmTrie),
            stats: typed!(&pins, map_names::STATS, PerCpuArray),
            settings,
            pins,
            allow: Allowlist::default(),
            exact_capacity,
            prefix_capacity,
        })
    }

    /// Wraps the maps of a freshly loaded, unpinned object (BPF_PROG_TEST_RUN harness and
    /// benchmark); SETTINGS is initialised like a first attach does.
    pub(crate) fn from_loaded(
        ebpf: &mut aya::Ebpf,
        capacity: super::Capacity,
    ) -> crate::Result<Self> {
        fn take(ebpf: &mut aya::Ebpf, name: &str) -> crate::Result<Map> {
            ebpf.take_map(name)
                .ok_or_else(|| Error::Bpf(format!("the XDP object has no map {name}")))
        }
        let mut settings: Array<MapData, Settings> =
            Array::try_from(take(ebpf, map_names::SETTINGS)?)
                .map_err(|e| bpf_error("SETTINGS", &e))?;
        let fresh = Settings {
            flags: 0,
            layout_version: detector_common::LAYOUT_VERSION,
        };
        settings
            .set(0, fresh, 0)
            .map_err(|e| bpf_error("writing SETTINGS", &e))?;
        let conv = |e: MapError| bpf_error("typed map", &e);
        Ok(Enforcer {
            pins: PinPaths::new("(unpinned)"),
            allow: Allowlist::default(),
            bans_v4: HashMap::try_from(take(ebpf, map_names::BANS_V4)?).map_err(conv)?,
            bans_v6: HashMap::try_from(take(ebpf, map_names::BANS_V6)?).map_err(conv)?,
            prefix_v4: LpmTrie::try_from(take(ebpf, map_names::PREFIX_V4)?).map_err(conv)?,
            prefix_v6: LpmTrie::try_from(take(ebpf, map_names::PREFIX_V6)?).map_err(conv)?,
            stats: PerCpuArray::try_from(take(ebpf, map_names::STATS)?).map_err(conv)?,
            settings,
            exact_capacity: capacity.exact,
            prefix_capacity: capacity.prefix,
        })
    }

    /// Bulk insert for benchmarks: exact IPv4 bans with no allowlist check or merge.
    pub(crate) fn insert_exact_v4_raw(
        &mut self,
        addr: [u8; 4],
        value: ExactBan,
    ) -> crate::Result<()> {
        let cap = self.exact_capacity;
        self.bans_v4
            .insert(Ipv4Key { addr }, value, 0)
            .map_err(|e| full_error(map_names::BANS_V4, cap, &e))
    }

    /// Bulk insert for benchmarks: exact IPv6 bans with no allowlist check or merge.
    pub(crate) fn insert_exact_v6_raw(
        &mut self,
        addr: [u8; 16],
        value: ExactBan,
    ) -> crate::Result<()> {
        let cap = self.exact_capacity;
        self.bans_v6
            .insert(Ipv6Key { addr }, value, 0)
            .map_err(|e| full_error(map_names::BANS_V6, cap, &e))
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
            exact: self.exact_capacity,
            prefix: self.prefix_capacity,
        }
    }

    /// What bans must never cover, on top of the built-in ranges and the host's own addresses:
    /// the configured allow CIDRs and the host's infrastructure.
    pub fn set_allowlist(&mut self, allow: Allowlist) {
        self.allow = allow;
    }

    /// Bans `net` for `ttl` (`None` = permanent). Re-banning keeps the hit count and the later
    /// expiry: a ban is extended, never shortened (unban first to shorten one).
    pub fn ban(
        &mut self,
        net: IpNet,
        ttl: Option<Duration>,
        reason: Reason,
    ) -> crate::Result<BanOutcome> {
        let net = canonical(net);
        self.allow.check(&net)?;
        let expires_ns = ttl.map_or(0, clock::expiry_ns);
        match net {
            IpNet::V4(n) if n.prefix_len() == 32 => {
                let key = Ipv4Key {
                    addr: n.addr().octets(),
                };
                let old = lookup(self.bans_v4.get(&key, 0), map_names::BANS_V4)?;
                let cap = self.exact_capacity;
                let (value, outcome) = merge_exact(old, expires_ns, reason);
                if outcome != BanOutcome::Unchanged {
                    self.bans_v4
                        .insert(key, value, 0)
                        .map_err(|e| full_error(map_names::BANS_V4, cap, &e))?;
                }
                Ok(outcome)
            }
            IpNet::V6(n) if n.prefix_len() == 128 => {
                let key = Ipv6Key {
                    addr: n.addr().octets(),
                };
                let old = lookup(self.bans_v6.get(&key, 0), map_names::BANS_V6)?;
                let cap = self.exact_capacity;
                let (value, outcome) = merge_exact(old, expires_ns, reason);
                if outcome != BanOutcome::Unchanged {
                    self.bans_v6
                        .insert(key, value, 0)
                        .map_err(|e| full_error(map_names::BANS_V6, cap, &e))?;
                }
                Ok(outcome)
            }
            IpNet::V4(n) => {
                let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
                let old = lookup(self.prefix_v4.get(&key, 0), map_names::PREFIX_V4)?;
                let (value, outcome) = merge_prefix(old, ttl, reason);
                if outcome != BanOutcome::Unchanged {
                    let cap = self.prefix_capacity;
                    self.prefix_v4
                        .insert(&key, value, 0)
                        .map_err(|e| full_error(map_names::PREFIX_V4, cap, &e))?;
                }
                self.refresh_prefix_flags()?;
                Ok(outcome)
            }
            IpNet::V6(n) => {
                let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
                let old = lookup(self.prefix_v6.get(&key, 0), map_names::PREFIX_V6)?;
                let (value, outcome) = merge_prefix(old, ttl, reason);
                if outcome != BanOutcome::Unchanged {
                    let cap = self.prefix_capacity;
                    self.prefix_v6
                        .insert(&key, value, 0)
                        .map_err(|e| full_error(map_names::PREFIX_V6, cap, &e))?;
                }
                self.refresh_prefix_flags()?;
                Ok(outcome)
            }
        }
    }

    /// Removes the ban on exactly `net` (a /24 ban is not lifted by unbanning one address in
    /// it). Returns whether there was one.
    pub fn unban(&mut self, net: IpNet) -> crate::Result<bool> {
        let net = canonical(net);
        let found = match net {
            IpNet::V4(n) if n.prefix_len() == 32 => removed(
                self.bans_v4.remove(&Ipv4Key {
                    addr: n.addr().octets(),
                }),
                map_names::BANS_V4,
            )?,
            IpNet::V6(n) if n.prefix_len() == 128 => removed(
                self.bans_v6.remove(&Ipv6Key {
                    addr: n.addr().octets(),
                }),
                map_names::BANS_V6,
            )?,
            IpNet::V4(n) => {
                let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
                removed(self.prefix_v4.remove(&key), map_names::PREFIX_V4)?
            }
            IpNet::V6(n) => {
                let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
                removed(self.prefix_v6.remove(&key), map_names::PREFIX_V6)?
            }
        };
        if net.prefix_len() < net.max_prefix_len() {
            self.refresh_prefix_flags()?;
        }
        Ok(found)
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
        let mut exact = |addr: IpAddr, v: ExactBan| {
            let remaining = if v.expires_ns == 0 {
                None
            } else {
                clock::remaining(v.expires_ns, now)
            };
            if v.expires_ns != 0 && remaining.is_none() {
                return;
            }
            out.push(BanEntry {
                net: IpNet::from(addr),
                remaining,
                expires_at: remaining.map(clock::wall_clock_in),
                reason: Reason::from_code(v.reason),
                hits: v.hits,
            });
        };
        for kv in self.bans_v4.iter() {
            let (k, v) = kv.map_err(|e| bpf_error("reading BANS_V4", &e))?;
            exact(IpAddr::V4(Ipv4Addr::from(k.addr)), v);
        }
        for kv in self.bans_v6.iter() {
            let (k, v) = kv.map_err(|e| bpf_error("reading BANS_V6", &e))?;
            exact(IpAddr::V6(Ipv6Addr::from(k.addr)), v);
        }
        let mut prefix = |net: IpNet, v: PrefixBan| {
            let expires_ns = u64::from(v.expires_s) * 1_000_000_000;
            let remaining = if v.expires_s == 0 {
                None
            } else {
                clock::remaining(expires_ns, now)
            };
            if v.expires_s != 0 && remaining.is_none() {
                return;
            }
            out.push(BanEntry {
                net,
                remaining,
                expires_at: remaining.map(clock::wall_clock_in),
                reason: Reason::from_code(v.reason),
                hits: u64::from(v.hits),
            });
        };
        for kv in self.prefix_v4.iter() {
            let (k, v) = kv.map_err(|e| bpf_error("reading PREFIX_V4", &e))?;
            if let Ok(n) = Ipv4Net::new(Ipv4Addr::from(k.data()), k.prefix_len() as u8) {
                prefix(IpNet::V4(n), v);
            }
        }
        for kv in self.prefix_v6.iter() {
            let (k, v) = kv.map_err(|e| bpf_error("reading PREFIX_V6", &e))?;
            if let Ok(n) = Ipv6Net::new(Ipv6Addr::from(k.data()), k.prefix_len() as u8) {
                prefix(IpNet::V6(n), v);
            }
        }
        out.sort_by(|a, b| {
            (a.net.prefix_len() < a.net.max_prefix_len(), a.net)
                .cmp(&(b.net.prefix_len() < b.net.max_prefix_len(), b.net))
        });
        Ok(out)
    }

    /// Deletes expired entries (the XDP program already ignores them; this frees the slots).
    /// Keys are collected first: deleting during a hash walk restarts the kernel's iteration.
    /// Returns how many were removed.
    pub fn sweep_expired(&mut self) -> crate::Result<usize> {
        let now = clock::monotonic_ns();
        let now_s = now / 1_000_000_000;
        let dead = |exp: u64| exp != 0 && exp <= now;
        let mut n = 0;
        let v4: Vec<Ipv4Key> = self
            .bans_v4
            .iter()
            .filter_map(|kv| kv.ok())
            .filter(|(_, v)| dead(v.expires_ns))
            .map(|(k, _)| k)
            .collect();
        for k in v4 {
            n += usize::from(removed(self.bans_v4.remove(&k), map_names::BANS_V4)?);
        }
        let v6: Vec<Ipv6Key> = self
            .bans_v6
            .iter()
            .filter_map(|kv| kv.ok())
            .filter(|(_, v)| dead(v.expires_ns))
            .map(|(k, _)| k)
            .collect();
        for k in v6 {
            n += usize::from(removed(self.bans_v6.remove(&k), map_names::BANS_V6)?);
        }
        let p4: Vec<Key<[u8; 4]>> = self
            .prefix_v4
            .iter()
            .filter_map(|kv| kv.ok())
            .filter(|(_, v)| v.expires_s != 0 && u64::from(v.expires_s) <= now_s)
            .map(|(k, _)| k)
            .collect();
        for k in p4 {
            n += usize::from(removed(self.prefix_v4.remove(&k), map_names::PREFIX_V4)?);
        }
        let p6: Vec<Key<[u8; 16]>> = self
            .prefix_v6
            .iter()
            .filter_map(|kv| kv.ok())
            .filter(|(_, v)| v.expires_s != 0 && u64::from(v.expires_s) <= now_s)
            .map(|(k, _)| k)
            .collect();
        for k in p6 {
            n += usize::from(removed(self.prefix_v6.remove(&k), map_names::PREFIX_V6)?);
        }
        // Also repairs the flags if two processes raced on them.
        self.refresh_prefix_flags()?;
        Ok(n)
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
            .map_err(|e| bpf_error("reading STATS", &e))?;
        let mut t = Counters::default();
        for c in per_cpu.iter() {
            t.passed = t.passed.wrapping_add(c.passed);
            t.dropped = t.dropped.wrapping_add(c.dropped);
            t.dropped_bytes = t.dropped_bytes.wrapping_add(c.dropped_bytes);
            t.observed = t.observed.wrapping_add(c.observed);
            t.expired_hits = t.expired_hits.wrapping_add(c.expired_hits);
            t.malformed = t.malformed.wrapping_add(c.malformed);
            t.non_ip = t.non_ip.wrapping_add(c.non_ip);
        }
        Ok(Stats {
            seen: t.passed.wrapping_add(t.dropped),
            passed: t.passed,
            dropped: t.dropped,
            dropped_bytes: t.dropped_bytes,
            observed: t.observed,
            expired_hits: t.expired_hits,
            malformed: t.malformed,
            non_ip: t.non_ip,
            observe_mode: self.observe()?,
        })
    }

    fn read_settings(&self) -> crate::Result<Settings> {
        self.settings
            .get(&0, 0)
            .map_err(|e| bpf_error("reading SETTINGS", &e))
    }

    fn update_flags(&mut self, f: impl FnOnce(u32) -> u32) -> crate::Result<()> {
        let mut s = self.read_settings()?;
        let new = f(s.flags);
        if new != s.flags {
            s.flags = new;
            self.settings
                .set(0, s, 0)
                .map_err(|e| bpf_error("writing SETTINGS", &e))?;
        }
        Ok(())
    }

    /// HAVE_PREFIX_V4/V6 = "that trie holds at least one entry".
    fn refresh_prefix_flags(&mut self) -> crate::Result<()> {
        let have4 = self.prefix_v4.keys().next().is_some();
        let have6 = self.prefix_v6.keys().next().is_some();
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

fn merge_exact(old: Option<ExactBan>, expires_ns: u64, reason: Reason) -> (ExactBan, BanOutcome) {
    let now = clock::monotonic_ns();
    match old {
        // An expired leftover (not swept yet) counts as absent, but keeps its hit count.
        Some(o) if o.expires_ns == 0 || o.expires_ns > now => {
            let merged = later(o.expires_ns, expires_ns);
            if merged == o.expires_ns {
                (o, BanOutcome::Unchanged)
            } else {
                (
                    ExactBan {
                        expires_ns: merged,
                        reason: reason.code(),
                        ..o
                    },
                    BanOutcome::Extended,
                )
            }
        }
        o => (
            ExactBan {
                expires_ns,
                hits: o.map_or(0, |o| o.hits),
                reason: reason.code(),
                flags: 0,
            },
            BanOutcome::Added,
        ),
    }
}

fn merge_prefix(
    old: Option<PrefixBan>,
    ttl: Option<Duration>,
    reason: Reason,
) -> (PrefixBan, BanOutcome) {
    let expires_s = ttl.map_or(0, clock::expiry_s);
    let now_s = clock::monotonic_ns() / 1_000_000_000;
    match old {
        Some(o) if o.expires_s == 0 || u64::from(o.expires_s) > now_s => {
            let merged = later(u64::from(o.expires_s), u64::from(expires_s)) as u32;
            if merged == o.expires_s {
                (o, BanOutcome::Unchanged)
            } else {
                (
                    PrefixBan {
                        expires_s: merged,
                        reason: reason.code(),
                        ..o
                    },
                    BanOutcome::Extended,
                )
            }
        }
        o => (
            PrefixBan {
                expires_s,
                hits: o.map_or(0, |o| o.hits),
                reason: reason.code(),
            },
            BanOutcome::Added,
        ),
    }
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

    #[test]
    fn rebanning_extends_never_shortens() {
        let live = ExactBan {
            expires_ns: clock::monotonic_ns() + 60_000_000_000,
            hits: 7,
            reason: 0,
            flags: 0,
        };
        let (v, o) = merge_exact(Some(live), live.expires_ns - 1, Reason::Burst);
        assert_eq!((v, o), (live, BanOutcome::Unchanged));
        let (v, o) = merge_exact(Some(live), 0, Reason::Burst);
        assert_eq!(o, BanOutcome::Extended);
        assert_eq!(
            (v.expires_ns, v.hits, v.reason),
            (0, 7, Reason::Burst.code())
        );
        let expired = ExactBan {
            expires_ns: 1,
            hits: 3,
            reason: 0,
            flags: 0,
        };
        let (v, o) = merge_exact(Some(expired), 5, Reason::Manual);
        assert_eq!((v.expires_ns, v.hits, o), (5, 3, BanOutcome::Added));
    }
}
