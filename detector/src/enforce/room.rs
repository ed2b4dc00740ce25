//! A full ban map makes room instead of refusing the new ban ([`Enforcer::ban_making_room`]):
//! expired entries not swept yet go first; then, in the IPv6 prefix trie, the /64 bans inside
//! one site (the engine's `ipv6_site_prefix`, default /48) fold into one ban of the site when
//! there are at least the engine's `ipv6_site_offenders` of them and the site may be banned as a
//! whole; then the ban ending soonest is evicted. Permanent bans are never evicted.
//!
//! Room is only made when a write failed for lack of it: one walk of the full map (in batches,
//! a few ms at 65k entries), which is rare, not per ban.
use std::collections::HashMap as StdHashMap;
use std::time::Duration;

use aya::maps::lpm_trie::Key;
use detector_common::PrefixBan;
use ipnet::{IpNet, Ipv6Net};

use super::maps::Enforcer;
use super::table::{BanMap, BanValue, Table};
use super::types::{BanOutcome, Reason};
use super::{clock, maps::canonical};
use crate::Error;

/// How the enforcer folds IPv6 prefix bans when their trie is full. The daemon sets it from
/// the engine's own site rule, so the enforcer folds exactly what the engine would widen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aggregation {
    /// The site a /64 folds into (`engine.ipv6_site_prefix`).
    pub site_prefix: u8,
    /// Prefix bans inside one site, the new one included, that make it fold
    /// (`engine.ipv6_site_offenders`); 0 never folds.
    pub min_prefixes: u32,
}

impl Default for Aggregation {
    fn default() -> Self {
        Aggregation {
            site_prefix: 48,
            min_prefixes: 3,
        }
    }
}

/// What a full map gave up so that a new ban fits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MadeRoom {
    /// Entries past their end that no sweep had removed yet.
    Swept(usize),
    /// `folded` prefix bans inside `site` (the new one too when `with_new`) became one ban of
    /// `site`, lasting as long as the longest of them (reason `aggregated`).
    Aggregated {
        site: IpNet,
        folded: usize,
        with_new: bool,
    },
    /// This ban, the live timed one ending soonest, was removed.
    Evicted { net: IpNet, remaining: Duration },
}

impl std::fmt::Display for MadeRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MadeRoom::Swept(n) => write!(f, "removed {n} expired entries"),
            MadeRoom::Aggregated { site, folded, .. } => {
                write!(f, "folded {folded} prefix bans into {site}")
            }
            MadeRoom::Evicted { net, remaining } => write!(
                f,
                "evicted the ban of {net}, which had {} left",
                humantime::format_duration(Duration::from_secs(remaining.as_secs()))
            ),
        }
    }
}

/// One entry of the IPv6 trie.
type Entry6 = (Key<[u8; 16]>, PrefixBan);

/// What one walk of a full table found: expired keys, and the live timed ban ending soonest.
struct Survey<K> {
    dead: Vec<K>,
    soonest: Option<(K, u64)>,
}

fn survey<M: BanMap>(table: &Table<M>, now_ns: u64) -> crate::Result<Survey<M::Key>> {
    let mut out = Survey {
        dead: Vec::new(),
        soonest: None,
    };
    table.walk(|k, v| {
        let end = v.expires_ns();
        if !v.is_live(now_ns) {
            out.dead.push(k);
        } else if end != 0 && out.soonest.as_ref().is_none_or(|(_, e)| end < *e) {
            out.soonest = Some((k, end));
        }
    })?;
    Ok(out)
}

/// Frees one slot of `table` at least: expired entries if any, else the ban ending soonest.
fn sweep_or_evict<M: BanMap>(table: &mut Table<M>, now_ns: u64) -> crate::Result<Option<MadeRoom>> {
    let survey = survey(table, now_ns)?;
    if !survey.dead.is_empty() {
        let n = table.remove_all(&survey.dead)?;
        if n > 0 {
            return Ok(Some(MadeRoom::Swept(n)));
        }
    }
    let Some((key, end)) = survey.soonest else {
        return Ok(None);
    };
    let net = super::table::BanKey::net(&key);
    if !table.remove(&key)? {
        return Ok(None);
    }
    Ok(net.map(|net| MadeRoom::Evicted {
        net,
        remaining: Duration::from_nanos(end.saturating_sub(now_ns)),
    }))
}

impl Enforcer {
    /// [`Enforcer::ban`], making room when the map is full: expired entries first, then (IPv6
    /// prefix bans) folding the prefix bans of one site into the site when [`Aggregation`]
    /// allows and `may_widen(site)` agrees (the daemon asks the engine whether a known client
    /// lives there; the allowlist is checked here), then evicting the timed ban that ends
    /// soonest. Returns what was given up. Fails (`MapFull`) only when nothing can go: every
    /// ban is permanent.
    pub fn ban_making_room(
        &mut self,
        net: IpNet,
        ttl: Option<Duration>,
        reason: Reason,
        may_widen: &dyn Fn(IpNet) -> bool,
    ) -> crate::Result<(BanOutcome, Option<MadeRoom>)> {
        let err = match self.ban(net, ttl, reason) {
            Err(e @ Error::MapFull { .. }) => e,
            other => return other.map(|o| (o, None)),
        };
        let net = canonical(net);
        let now = clock::monotonic_ns();
        let room = match net {
            IpNet::V6(n) if n.prefix_len() < 128 => {
                if let Some(room) = self.fold_site(n, ttl, now, may_widen)? {
                    if let MadeRoom::Aggregated { with_new: true, .. } = room {
                        self.refresh_prefix_flags()?;
                        return Ok((BanOutcome::Added, Some(room)));
                    }
                    Some(room)
                } else {
                    sweep_or_evict(&mut self.prefix_v6, now)?
                }
            }
            IpNet::V4(n) if n.prefix_len() < 32 => sweep_or_evict(&mut self.prefix_v4, now)?,
            IpNet::V4(_) => sweep_or_evict(&mut self.bans_v4, now)?,
            IpNet::V6(_) => sweep_or_evict(&mut self.bans_v6, now)?,
        };
        let Some(room) = room else {
            return Err(err);
        };
        let outcome = self.ban(net, ttl, reason)?;
        Ok((outcome, Some(room)))
    }

    /// Folds the prefix bans of one site of the full IPv6 trie into a ban of the site: `new`'s
    /// own site when it would then hold enough of them (the new ban is folded in too, and so
    /// written), else the site holding the most. `None` when no site qualifies.
    fn fold_site(
        &mut self,
        new: Ipv6Net,
        ttl: Option<Duration>,
        now_ns: u64,
        may_widen: &dyn Fn(IpNet) -> bool,
    ) -> crate::Result<Option<MadeRoom>> {
        let agg = self.aggregation;
        if agg.min_prefixes == 0 || new.prefix_len() <= agg.site_prefix {
            return Ok(None);
        }
        let site_of = |n: Ipv6Net| {
            Ipv6Net::new(n.network(), agg.site_prefix)
                .map(|s| s.trunc())
                .ok()
        };
        // Live entries longer than a site, by site; and each site's own entry.
        let mut inside: StdHashMap<Ipv6Net, Vec<Entry6>> = StdHashMap::new();
        let mut own: StdHashMap<Ipv6Net, PrefixBan> = StdHashMap::new();
        self.prefix_v6.walk(|k, v| {
            if !v.is_live(now_ns) {
                return;
            }
            let Some(IpNet::V6(n)) = super::table::BanKey::net(&k) else {
                return;
            };
            if n.prefix_len() == agg.site_prefix {
                own.insert(n, v);
            } else if n.prefix_len() > agg.site_prefix
                && let Some(site) = site_of(n)
            {
                inside.entry(site).or_default().push((k, v));
            }
        })?;
        let allowed = |site: Ipv6Net| {
            let site = IpNet::V6(site);
            self.allowlist().check(&site).is_ok() && may_widen(site)
        };
        let need = agg.min_prefixes as usize;
        let mine = site_of(new);
        let mut pick = None;
        if let Some(site) = mine
            && inside.get(&site).map_or(0, Vec::len) + 1 >= need
            && allowed(site)
        {
            pick = Some((site, true));
        } else {
            let mut sites: Vec<(&Ipv6Net, usize)> = inside
                .iter()
                .filter(|(_, v)| v.len() >= need.max(2))
                .map(|(s, v)| (s, v.len()))
                .collect();
            sites.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            if let Some((site, _)) = sites.into_iter().find(|(s, _)| allowed(**s)) {
                pick = Some((*site, false));
            }
        }
        let Some((site, with_new)) = pick else {
            return Ok(None);
        };
        let members = inside.remove(&site).unwrap_or_default();
        // The site's ban lasts as long as the longest of what it replaces (0 = permanent).
        let mut ends: Vec<u64> = members.iter().map(|(_, v)| v.expires_ns()).collect();
        if with_new {
            ends.push(PrefixBan::new(ttl, now_ns, Reason::Aggregated, 0).expires_ns());
        }
        if let Some(v) = own.get(&site) {
            ends.push(v.expires_ns());
        }
        let end = if ends.contains(&0) {
            0
        } else {
            ends.iter().copied().max().unwrap_or(0)
        };
        let hits = (members.iter().map(|(_, v)| v.hits()))
            .chain(own.get(&site).map(|v| v.hits()))
            .fold(0u64, u64::wrapping_add);
        let value = PrefixBan {
            expires_s: u32::try_from(end / clock::NS_PER_S).unwrap_or(0),
            hits: hits as u32,
            reason: Reason::Aggregated.code(),
        };
        let site_key = Key::new(u32::from(agg.site_prefix), site.network().octets());
        // One slot first, so the site fits even when it has no entry yet; put it back if the
        // site still cannot be written, so nothing is lost.
        let (first, rest) = members
            .split_first()
            .map_or((None, &[][..]), |(f, r)| (Some(f), r));
        if let Some((k, _)) = first {
            self.prefix_v6.remove(k)?;
        }
        if let Err(e) = self.prefix_v6.write(&site_key, &value) {
            if let Some((k, v)) = first {
                let _ = self.prefix_v6.write(k, v);
            }
            return Err(e);
        }
        let keys: Vec<Key<[u8; 16]>> = rest.iter().map(|(k, _)| *k).collect();
        self.prefix_v6.remove_all(&keys)?;
        Ok(Some(MadeRoom::Aggregated {
            site: IpNet::V6(site),
            folded: members.len() + usize::from(with_new),
            with_new,
        }))
    }
}
