//! One ban table, generic over its key and value layout and over the map kind (exact HASH or
//! LPM trie): ban (merge), unban, lookup, listing and sweeping are written once for the four
//! tables (exact/prefix × IPv4/IPv6). The layouts themselves are fixed in `detector-common`.
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use aya::Pod;
use aya::maps::{HashMap, LpmTrie, MapData, MapError, lpm_trie::Key};
use detector_common::{ExactBan, Ipv4Key, Ipv6Key, PrefixBan, RebanRequest, reason, reban};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::clock;
use super::reban::{RebanProgram, Rebanned};
use super::types::{BanEntry, BanOutcome, Reason};
use crate::Error;

/// A map key that names a ban target.
pub(crate) trait BanKey: Pod {
    /// The banned address or prefix; `None` for a key no build of ours writes.
    fn net(&self) -> Option<IpNet>;
    /// The in-place re-ban request for this key (exact keys only: the program looks entries
    /// up in the hashes; an LPM lookup would find the longest match, not this very prefix).
    fn reban_request(&self, _expires_ns: u64, _reason: u32) -> Option<RebanRequest> {
        None
    }
}

fn request(family: u32, addr: [u8; 16], expires_ns: u64, reason: u32) -> RebanRequest {
    RebanRequest {
        magic: reban::MAGIC,
        family,
        expires_ns,
        addr,
        reason,
        pad: 0,
    }
}

impl BanKey for Ipv4Key {
    fn net(&self) -> Option<IpNet> {
        Some(IpNet::from(std::net::IpAddr::V4(self.addr.into())))
    }
    fn reban_request(&self, expires_ns: u64, reason: u32) -> Option<RebanRequest> {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&self.addr);
        Some(request(4, addr, expires_ns, reason))
    }
}

impl BanKey for Ipv6Key {
    fn net(&self) -> Option<IpNet> {
        Some(IpNet::from(std::net::IpAddr::V6(self.addr.into())))
    }
    fn reban_request(&self, expires_ns: u64, reason: u32) -> Option<RebanRequest> {
        Some(request(6, self.addr, expires_ns, reason))
    }
}

impl BanKey for Key<[u8; 4]> {
    fn net(&self) -> Option<IpNet> {
        let len = u8::try_from(self.prefix_len()).ok()?;
        Ipv4Net::new(Ipv4Addr::from(self.data()), len)
            .ok()
            .map(IpNet::V4)
    }
}

impl BanKey for Key<[u8; 16]> {
    fn net(&self) -> Option<IpNet> {
        let len = u8::try_from(self.prefix_len()).ok()?;
        Ipv6Net::new(Ipv6Addr::from(self.data()), len)
            .ok()
            .map(IpNet::V6)
    }
}

/// A ban value: an expiry in some resolution, a hit counter the XDP program bumps, a reason.
pub(crate) trait BanValue: Pod {
    /// A value for a ban lasting `ttl` from `now_ns` (`None` = permanent). An end beyond what
    /// the field can hold is stored as permanent, so what is stored is what is reported.
    fn new(ttl: Option<Duration>, now_ns: u64, reason: Reason, hits: u64) -> Self;
    /// CLOCK_MONOTONIC ns at which the ban ends; 0 = permanent.
    fn expires_ns(&self) -> u64;
    fn hits(&self) -> u64;
    fn reason(&self) -> u32;
    fn set_hits(&mut self, hits: u64);
    fn set_reason(&mut self, code: u32);

    fn is_live(&self, now_ns: u64) -> bool {
        let e = self.expires_ns();
        e == 0 || e > now_ns
    }
}

impl BanValue for ExactBan {
    fn new(ttl: Option<Duration>, now_ns: u64, reason: Reason, hits: u64) -> Self {
        ExactBan {
            expires_ns: ttl.and_then(|t| clock::expiry_ns(now_ns, t)).unwrap_or(0),
            hits,
            reason: reason.code(),
            flags: 0,
        }
    }
    fn expires_ns(&self) -> u64 {
        self.expires_ns
    }
    fn hits(&self) -> u64 {
        self.hits
    }
    fn reason(&self) -> u32 {
        self.reason
    }
    fn set_hits(&mut self, hits: u64) {
        self.hits = hits;
    }
    fn set_reason(&mut self, code: u32) {
        self.reason = code;
    }
}

impl BanValue for PrefixBan {
    fn new(ttl: Option<Duration>, now_ns: u64, reason: Reason, hits: u64) -> Self {
        PrefixBan {
            expires_s: ttl.and_then(|t| clock::expiry_s(now_ns, t)).unwrap_or(0),
            // The field is 32 bits (the kernel's counter wraps there too).
            hits: hits as u32,
            reason: reason.code(),
        }
    }
    fn expires_ns(&self) -> u64 {
        u64::from(self.expires_s) * clock::NS_PER_S
    }
    fn hits(&self) -> u64 {
        u64::from(self.hits)
    }
    fn reason(&self) -> u32 {
        self.reason
    }
    fn set_hits(&mut self, hits: u64) {
        self.hits = hits as u32;
    }
    fn set_reason(&mut self, code: u32) {
        self.reason = code;
    }
}

/// The operations the two map kinds share, under one name.
pub(crate) trait BanMap {
    type Key: BanKey;
    type Value: BanValue;
    fn get(&self, key: &Self::Key) -> Result<Self::Value, MapError>;
    fn insert(&mut self, key: &Self::Key, value: &Self::Value) -> Result<(), MapError>;
    fn remove(&mut self, key: &Self::Key) -> Result<(), MapError>;
    fn entries(&self) -> impl Iterator<Item = Result<(Self::Key, Self::Value), MapError>> + '_;
    fn is_empty(&self) -> bool;
}

impl<K: BanKey, V: BanValue> BanMap for HashMap<MapData, K, V> {
    type Key = K;
    type Value = V;
    fn get(&self, key: &K) -> Result<V, MapError> {
        HashMap::get(self, key, 0)
    }
    fn insert(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        HashMap::insert(self, key, value, 0)
    }
    fn remove(&mut self, key: &K) -> Result<(), MapError> {
        HashMap::remove(self, key)
    }
    fn entries(&self) -> impl Iterator<Item = Result<(K, V), MapError>> + '_ {
        self.iter()
    }
    fn is_empty(&self) -> bool {
        self.keys().next().is_none()
    }
}

impl<K: Pod, V: BanValue> BanMap for LpmTrie<MapData, K, V>
where
    Key<K>: BanKey,
{
    type Key = Key<K>;
    type Value = V;
    fn get(&self, key: &Key<K>) -> Result<V, MapError> {
        LpmTrie::get(self, key, 0)
    }
    fn insert(&mut self, key: &Key<K>, value: &V) -> Result<(), MapError> {
        LpmTrie::insert(self, key, value, 0)
    }
    fn remove(&mut self, key: &Key<K>) -> Result<(), MapError> {
        LpmTrie::remove(self, key)
    }
    fn entries(&self) -> impl Iterator<Item = Result<(Key<K>, V), MapError>> + '_ {
        self.iter()
    }
    fn is_empty(&self) -> bool {
        self.keys().next().is_none()
    }
}

/// One pinned ban map with its name and capacity (for messages).
pub(crate) struct Table<M> {
    pub map: M,
    pub name: &'static str,
    pub capacity: u32,
    /// Rewrites an existing exact entry's expiry in place (None: pins from a build without
    /// the program, or a trie; a re-ban then replaces the element).
    pub in_place: Option<RebanProgram>,
}

/// What a walk over a table found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Walk {
    /// Live entries.
    pub live: usize,
    /// Sum of the live entries' hit counters.
    pub hits: u64,
    /// Earliest end among the live timed entries (monotonic ns).
    pub next_expiry: Option<u64>,
}

impl Walk {
    pub fn add(&mut self, other: Walk) {
        self.live += other.live;
        self.hits = self.hits.wrapping_add(other.hits);
        self.next_expiry = earliest(self.next_expiry, other.next_expiry);
    }
}

/// The earlier of two optional expiries.
pub(crate) fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl<M: BanMap> Table<M> {
    pub fn new(map: M, name: &'static str, capacity: u32) -> Self {
        Table {
            map,
            name,
            capacity,
            in_place: None,
        }
    }

    pub fn get(&self, key: &M::Key) -> crate::Result<Option<M::Value>> {
        match self.map.get(key) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(Error::bpf(format!("reading {}", self.name), e)),
        }
    }

    /// Bans `key` for `ttl` from `now_ns`, merged with what is there: a live ban is extended,
    /// never shortened, and its hit counter is carried over. Returns what happened and the
    /// value now stored.
    ///
    /// An existing exact entry is extended in place (see [`Table::store`]), so no drop the XDP
    /// program counts meanwhile is lost. Without the program (older pins, tries) the counter
    /// is read right before the write, and drops counted between those two syscalls
    /// (microseconds) are lost with the replaced element.
    pub fn ban(
        &mut self,
        key: &M::Key,
        ttl: Option<Duration>,
        reason: Reason,
        now_ns: u64,
    ) -> crate::Result<(BanOutcome, M::Value)> {
        let old = self.get(key)?;
        let (value, outcome) = merge(old, M::Value::new(ttl, now_ns, reason, 0), now_ns);
        if changes(old, &value, outcome) {
            self.store(key, old.is_some(), &value)?;
        }
        Ok((outcome, value))
    }

    /// [`Table::ban`] that also returns what was stored before (bulk imports keep it to put
    /// it back if a later write of the same import fails).
    pub fn ban_keeping_old(
        &mut self,
        key: &M::Key,
        ttl: Option<Duration>,
        reason: Reason,
        now_ns: u64,
    ) -> crate::Result<(BanOutcome, Option<M::Value>)> {
        let old = self.get(key)?;
        let (value, outcome) = merge(old, M::Value::new(ttl, now_ns, reason, 0), now_ns);
        if changes(old, &value, outcome) {
            self.store(key, old.is_some(), &value)?;
        }
        Ok((outcome, old))
    }

    /// Stores a merged `value`: over an entry that `existed` when read, only its expiry and
    /// reason are rewritten in place when the table can (the hit counter stays the kernel's);
    /// otherwise, or if the entry was deleted since, the whole value is written.
    fn store(&mut self, key: &M::Key, existed: bool, value: &M::Value) -> crate::Result<()> {
        if existed
            && let Some(program) = &self.in_place
            && let Some(req) = key.reban_request(value.expires_ns(), value.reason())
            && program.run(&req)? == Rebanned::Updated
        {
            return Ok(());
        }
        self.write(key, value)
    }

    /// Writes `value` as is (benchmarks, bulk paths).
    pub fn write(&mut self, key: &M::Key, value: &M::Value) -> crate::Result<()> {
        self.map.insert(key, value).map_err(|e| self.write_error(e))
    }

    fn write_error(&self, err: MapError) -> Error {
        let err = Error::bpf(format!("writing {}", self.name), err);
        if err.is_out_of_space() {
            let Error::BpfCall { source, .. } = err else {
                unreachable!("Error::bpf builds BpfCall")
            };
            Error::MapFull {
                map: self.name,
                capacity: self.capacity,
                source,
            }
        } else {
            err
        }
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&mut self, key: &M::Key) -> crate::Result<bool> {
        match self.map.remove(key) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(false),
            Err(e) => {
                let e = Error::bpf(format!("deleting from {}", self.name), e);
                if e.errno() == Some(libc::ENOENT) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The live ban stored under `key`, as `list` would show it.
    pub fn entry(&self, key: &M::Key, now_ns: u64) -> crate::Result<Option<BanEntry>> {
        Ok(self
            .get(key)?
            .and_then(|v| key.net().and_then(|net| to_entry(net, &v, now_ns))))
    }

    /// Appends every live ban to `out`.
    pub fn list(&self, now_ns: u64, out: &mut Vec<BanEntry>) -> crate::Result<()> {
        for kv in self.map.entries() {
            let (k, v) = kv.map_err(|e| Error::bpf(format!("reading {}", self.name), e))?;
            if let Some(entry) = k.net().and_then(|net| to_entry(net, &v, now_ns)) {
                out.push(entry);
            }
        }
        Ok(())
    }

    /// Deletes the entries that ended at or before `now_ns` and summarises the rest, in one
    /// walk. Keys are collected first: deleting during a hash walk restarts the kernel's
    /// iteration. Returns (removed, what is left).
    pub fn sweep(&mut self, now_ns: u64) -> crate::Result<(usize, Walk)> {
        let mut dead = Vec::new();
        let mut walk = Walk::default();
        for kv in self.map.entries() {
            let (k, v) = kv.map_err(|e| Error::bpf(format!("reading {}", self.name), e))?;
            if v.is_live(now_ns) {
                walk.live += 1;
                walk.hits = walk.hits.wrapping_add(v.hits());
                if v.expires_ns() != 0 {
                    walk.next_expiry = earliest(walk.next_expiry, Some(v.expires_ns()));
                }
            } else {
                dead.push(k);
            }
        }
        let mut removed = 0;
        for k in dead {
            removed += usize::from(self.remove(&k)?);
        }
        Ok((removed, walk))
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn to_entry<V: BanValue>(net: IpNet, v: &V, now_ns: u64) -> Option<BanEntry> {
    let remaining = match v.expires_ns() {
        0 => None,
        e => Some(clock::remaining(e, now_ns)?),
    };
    Some(BanEntry {
        net,
        remaining,
        expires_at: remaining.and_then(clock::wall_clock_in),
        reason: Reason::from_code(v.reason()),
        hits: v.hits(),
    })
}

/// Merges a new ban into what is stored. A live ban keeps the later end (0 = permanent wins)
/// and its counter; an expired leftover not swept yet counts as absent but keeps its counter.
/// The entry's reason follows [`owner`].
pub(crate) fn merge<V: BanValue>(old: Option<V>, new: V, now_ns: u64) -> (V, BanOutcome) {
    match old {
        Some(o) if o.is_live(now_ns) => {
            let (oe, ne) = (o.expires_ns(), new.expires_ns());
            if oe == 0 || (ne != 0 && ne <= oe) {
                let mut v = o;
                v.set_reason(owner(o.reason(), new.reason(), false));
                (v, BanOutcome::Unchanged)
            } else {
                let mut v = new;
                v.set_hits(o.hits());
                v.set_reason(owner(o.reason(), new.reason(), true));
                (v, BanOutcome::Extended)
            }
        }
        o => {
            let mut v = new;
            v.set_hits(o.map_or(0, |o| o.hits()));
            (v, BanOutcome::Added)
        }
    }
}

/// The reason a live entry keeps when another ban lands on it (`extends`: the new ban ends
/// later). One kernel entry serves every origin that bans the prefix, and the CrowdSec
/// bouncer lifts only entries it owns when a decision is deleted; so a CrowdSec ban never
/// takes over an entry detector or an admin made, and any other ban takes over a CrowdSec
/// entry. Otherwise the ban that sets the end names it.
fn owner(old: u32, new: u32, extends: bool) -> u32 {
    match (old == reason::CROWDSEC, new == reason::CROWDSEC) {
        (false, true) => old,
        (true, false) => new,
        _ if extends => new,
        _ => old,
    }
}

/// Whether a merge result must be written: a longer ban, a new one, or a new owner.
fn changes<V: BanValue>(old: Option<V>, merged: &V, outcome: BanOutcome) -> bool {
    outcome != BanOutcome::Unchanged || old.is_some_and(|o| o.reason() != merged.reason())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_crowdsec_ban_never_takes_over_another_origins_entry() {
        let now = 1_000 * clock::NS_PER_S;
        let manual = ExactBan::new(Some(MIN), now, Reason::Manual, 0);
        let crowdsec_longer = ExactBan::new(Some(MIN * 10), now, Reason::CrowdSec, 0);
        let (v, o) = merge(Some(manual), crowdsec_longer, now);
        assert_eq!(o, BanOutcome::Extended);
        assert_eq!(v.expires_ns, crowdsec_longer.expires_ns);
        assert_eq!(Reason::from_code(v.reason), Reason::Manual);
        assert!(changes(Some(manual), &v, o));

        // The other way round: detector's shorter ban claims CrowdSec's entry, end kept.
        let crowdsec = ExactBan::new(Some(MIN * 10), now, Reason::CrowdSec, 0);
        let burst_shorter = ExactBan::new(Some(MIN), now, Reason::Burst, 0);
        let (v, o) = merge(Some(crowdsec), burst_shorter, now);
        assert_eq!(o, BanOutcome::Unchanged);
        assert_eq!(v.expires_ns, crowdsec.expires_ns);
        assert_eq!(Reason::from_code(v.reason), Reason::Burst);
        assert!(
            changes(Some(crowdsec), &v, o),
            "the new owner must be written"
        );

        // Same owner, nothing longer: nothing to write.
        let (v, o) = merge(
            Some(crowdsec),
            ExactBan::new(Some(MIN), now, Reason::CrowdSec, 0),
            now,
        );
        assert!(!changes(Some(crowdsec), &v, o));
    }

    #[test]
    fn rebanning_extends_never_shortens_and_keeps_the_counter() {
        let now = 1_000 * clock::NS_PER_S;
        let mut live = ExactBan::new(Some(MIN), now, Reason::Manual, 0);
        live.hits = 7;
        let shorter = ExactBan::new(Some(MIN / 2), now, Reason::Burst, 0);
        assert_eq!(
            merge(Some(live), shorter, now),
            (live, BanOutcome::Unchanged)
        );
        let (v, o) = merge(Some(live), ExactBan::new(None, now, Reason::Burst, 0), now);
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
        let (v, o) = merge(
            Some(expired),
            ExactBan::new(Some(MIN), now, Reason::Manual, 0),
            now,
        );
        assert_eq!((v.hits, o), (3, BanOutcome::Added));
        assert_eq!(v.expires_ns, now + 60 * clock::NS_PER_S);
    }

    #[test]
    fn prefix_bans_merge_the_same_way() {
        let now = 1_000 * clock::NS_PER_S;
        let mut live = PrefixBan::new(Some(MIN), now, Reason::Manual, 0);
        live.hits = 9;
        let (v, o) = merge(
            Some(live),
            PrefixBan::new(Some(MIN * 2), now, Reason::Burst, 0),
            now,
        );
        assert_eq!((o, v.hits, v.expires_s), (BanOutcome::Extended, 9, 1_120));
        let perm = PrefixBan::new(None, now, Reason::Manual, 0);
        assert_eq!(merge(Some(perm), live, now).1, BanOutcome::Unchanged);
    }

    #[test]
    fn ends_beyond_the_field_become_permanent() {
        let now = 1_000 * clock::NS_PER_S;
        let huge = Duration::from_secs(99_999_999_999 * 86_400);
        assert_eq!(
            ExactBan::new(Some(huge), now, Reason::Manual, 0).expires_ns,
            0
        );
        assert_eq!(
            PrefixBan::new(Some(huge), now, Reason::Manual, 0).expires_s,
            0
        );
        // 200 years fit in u64 ns but not in u32 s.
        let long = Duration::from_secs(200 * 365 * 86_400);
        assert_ne!(
            ExactBan::new(Some(long), now, Reason::Manual, 0).expires_ns,
            0
        );
        assert_eq!(
            PrefixBan::new(Some(long), now, Reason::Manual, 0).expires_s,
            0
        );
    }

    #[test]
    fn keys_name_their_targets() {
        let k = Key::new(24, [198, 18, 3, 0]);
        assert_eq!(k.net(), Some("198.18.3.0/24".parse().unwrap()));
        assert_eq!(Key::new(99, [0u8; 4]).net(), None);
        let k = Ipv6Key {
            addr: "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(),
        };
        assert_eq!(k.net(), Some("2001:db8::1/128".parse().unwrap()));
    }
}
