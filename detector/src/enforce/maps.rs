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
use super::reban::RebanProgram;
use super::table::{BanMap, BanValue, Table, Walk, earliest};
use super::types::{ActiveBan, BanEntry, BanOutcome, Reason, Reconciled, Stats};
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
    /// Earliest end (monotonic ns) of a timed ban this process knows of: the last walk's
    /// minimum, lowered by every ban written since. Until it passes, [`Enforcer::sweep_due`]
    /// has nothing to remove and does not walk.
    next_expiry: Option<u64>,
    /// When the maps were last walked (monotonic ns); `None` = never.
    last_walk: Option<u64>,
    /// Walk at least this often anyway: other processes (`detector ban`) write bans whose ends
    /// this process does not see.
    full_walk_every: Duration,
}

/// How often [`Enforcer::sweep_due`] walks the maps when nothing it knows of is due.
pub const FULL_WALK_EVERY: Duration = Duration::from_secs(300);

/// What a walk of the maps by [`Enforcer::sweep_due`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Expired entries deleted.
    pub removed: usize,
    /// Live bans left, per family (exact and prefix).
    pub live_v4: usize,
    pub live_v6: usize,
    /// Sum of the live bans' hit counters.
    pub hits: u64,
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
        enforcer.bans_v4.in_place = RebanProgram::from_pin(&pins.reban_program())?;
        enforcer.bans_v6.in_place = RebanProgram::from_pin(&pins.reban_program())?;
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
            typed(take(map_names::SETTINGS_OBJECT)?, map_names::SETTINGS)?;
        let fresh = Settings {
            flags: 0,
            layout_version: detector_common::LAYOUT_VERSION,
        };
        settings
            .set(0, fresh, 0)
            .map_err(|e| Error::bpf("writing SETTINGS", e))?;
        let mut enforcer = Self::assemble(take, capacity, settings)?;
        // The bench object has no re-ban program: its enforcer replaces elements.
        if let Some(program) = ebpf.program(detector_common::REBAN_PROGRAM) {
            let program: &aya::programs::Xdp = program
                .try_into()
                .map_err(|e| Error::bpf(detector_common::REBAN_PROGRAM, e))?;
            enforcer.bans_v4.in_place = Some(RebanProgram::from_program(program)?);
            enforcer.bans_v6.in_place = Some(RebanProgram::from_program(program)?);
        }
        Ok(enforcer)
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
            next_expiry: None,
            last_walk: None,
            full_walk_every: FULL_WALK_EVERY,
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

    /// What bans are checked against.
    pub fn allowlist(&self) -> &Allowlist {
        &self.allow
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
        let (outcome, expires) = with_table!(self, net, |t, k| {
            let (outcome, stored) = t.ban(&k, ttl, reason, now)?;
            (outcome, stored.expires_ns())
        });
        if expires != 0 {
            self.next_expiry = earliest(self.next_expiry, Some(expires));
        }
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

    /// Makes the maps hold the engine's active bans. On maps no daemon has filled yet (fresh
    /// after a reboot or `detector detach`), every ban missing is written with its time left;
    /// on maps a daemon already filled, a missing ban was removed by an administrator and is
    /// reported in [`Reconciled::removed_by_admin`] instead, for the engine to forget. Marks
    /// the maps as filled either way. One lookup per ban, no walk.
    pub fn reconcile(&mut self, bans: &[ActiveBan]) -> crate::Result<Reconciled> {
        let synced = self.read_settings()?.flags & settings_flags::ENGINE_SYNCED != 0;
        let mut out = Reconciled::default();
        for ban in bans {
            let net = canonical(ban.net);
            if self.entry(net)?.is_some() {
                out.present.push(net);
            } else if synced {
                out.removed_by_admin.push(net);
            } else {
                match self.ban(net, ban.remaining, ban.reason) {
                    Ok(_) => out.restored.push(net),
                    Err(e) => out.failed.push((net, e)),
                }
            }
        }
        self.update_flags(|f| f | settings_flags::ENGINE_SYNCED)?;
        Ok(out)
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
        Ok(self.sweep_all()?.removed)
    }

    /// [`Enforcer::sweep_expired`] when there can be something to remove: the earliest end
    /// this process knows of has passed, or [`FULL_WALK_EVERY`] went by since the last walk
    /// (for bans other processes wrote). `None` when it did not walk: at a million bans a walk
    /// is millions of syscalls, and most sweeps have nothing to do.
    pub fn sweep_due(&mut self) -> crate::Result<Option<SweepReport>> {
        let now = clock::monotonic_ns();
        let full_every = u64::try_from(self.full_walk_every.as_nanos()).unwrap_or(u64::MAX);
        let due = match self.last_walk {
            None => true,
            Some(last) => {
                self.next_expiry.is_some_and(|e| e <= now) || now.saturating_sub(last) >= full_every
            }
        };
        if !due {
            return Ok(None);
        }
        self.sweep_all().map(Some)
    }

    /// Sets how often [`Enforcer::sweep_due`] walks when nothing known is due (tests).
    pub fn set_full_walk_every(&mut self, every: Duration) {
        self.full_walk_every = every;
    }

    /// Those of `nets` that have no live ban in the maps (one lookup each, no walk): how the
    /// daemon notices that an administrator removed one of its bans.
    pub fn missing(&mut self, nets: impl IntoIterator<Item = IpNet>) -> crate::Result<Vec<IpNet>> {
        let mut out = Vec::new();
        for net in nets {
            if self.entry(net)?.is_none() {
                out.push(net);
            }
        }
        Ok(out)
    }

    /// One walk over every table: removes what ended, summarises what is left.
    fn sweep_all(&mut self) -> crate::Result<SweepReport> {
        let now = clock::monotonic_ns();
        let mut report = SweepReport::default();
        let mut left = Walk::default();
        let walks = [
            (true, self.bans_v4.sweep(now)?),
            (false, self.bans_v6.sweep(now)?),
            (true, self.prefix_v4.sweep(now)?),
            (false, self.prefix_v6.sweep(now)?),
        ];
        for (v4, (removed, walk)) in walks {
            report.removed += removed;
            if v4 {
                report.live_v4 += walk.live;
            } else {
                report.live_v6 += walk.live;
            }
            left.add(walk);
        }
        report.hits = left.hits;
        self.next_expiry = left.next_expiry;
        self.last_walk = Some(now);
        // Also repairs the flags if two processes raced on them.
        self.refresh_prefix_flags()?;
        Ok(report)
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

/// What [`Enforcer::ban_many`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BulkOutcome {
    pub added: usize,
    pub extended: usize,
    pub unchanged: usize,
}

/// Old values of the entries a bulk write changed, to put them back if a later write fails.
type Undo<M> = Vec<(<M as BanMap>::Key, Option<<M as BanMap>::Value>)>;

fn ban_undoable<M: BanMap>(
    table: &mut Table<M>,
    key: M::Key,
    ttl: Option<Duration>,
    reason: Reason,
    now: u64,
    undo: &mut Undo<M>,
) -> crate::Result<BanOutcome> {
    let (outcome, old) = table.ban_keeping_old(&key, ttl, reason, now)?;
    if outcome != BanOutcome::Unchanged {
        undo.push((key, old));
    }
    Ok(outcome)
}

fn roll_back<M: BanMap>(table: &mut Table<M>, undo: Undo<M>) {
    for (key, old) in undo.into_iter().rev() {
        let _ = match old {
            Some(v) => table.write(&key, &v),
            None => table.remove(&key).map(drop),
        };
    }
}

impl Enforcer {
    /// Bans many prefixes at once (`ban --from`): one process holding the maps, a lookup and
    /// an update per entry, the prefix flags refreshed once. All or nothing: if a write fails
    /// (a full map), every entry written so far is put back as it was and the error returned.
    /// The allowlist is NOT checked here: the caller checks the whole list first (against
    /// [`Allowlist::protected_nets`], read once) and reports what it refused.
    pub fn ban_many(
        &mut self,
        bans: &[(IpNet, Option<Duration>)],
        reason: Reason,
    ) -> crate::Result<BulkOutcome> {
        let now = clock::monotonic_ns();
        let (mut u4, mut u6, mut p4, mut p6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut out = BulkOutcome::default();
        let mut result = Ok(());
        for &(net, ttl) in bans {
            let net = canonical(net);
            let outcome = match net {
                IpNet::V4(n) if n.prefix_len() == 32 => {
                    let key = Ipv4Key {
                        addr: n.addr().octets(),
                    };
                    ban_undoable(&mut self.bans_v4, key, ttl, reason, now, &mut u4)
                }
                IpNet::V6(n) if n.prefix_len() == 128 => {
                    let key = Ipv6Key {
                        addr: n.addr().octets(),
                    };
                    ban_undoable(&mut self.bans_v6, key, ttl, reason, now, &mut u6)
                }
                IpNet::V4(n) => {
                    let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
                    ban_undoable(&mut self.prefix_v4, key, ttl, reason, now, &mut p4)
                }
                IpNet::V6(n) => {
                    let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
                    ban_undoable(&mut self.prefix_v6, key, ttl, reason, now, &mut p6)
                }
            };
            match outcome {
                Ok(BanOutcome::Added) => out.added += 1,
                Ok(BanOutcome::Extended) => out.extended += 1,
                Ok(BanOutcome::Unchanged) => out.unchanged += 1,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() {
            roll_back(&mut self.bans_v4, u4);
            roll_back(&mut self.bans_v6, u6);
            roll_back(&mut self.prefix_v4, p4);
            roll_back(&mut self.prefix_v6, p6);
        }
        self.refresh_prefix_flags()?;
        result.map(|()| out)
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
