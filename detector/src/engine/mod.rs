//! The correlation engine: a deterministic state machine over [`Event`]s in log time.
//!
//! No I/O and no clock: "now" is the time of the event being observed, so the same input gives
//! the same decisions live and in replay. State is kept per IP, per user name and per ban
//! prefix, forgotten after [`EngineConfig::horizon`] and capped in size; [`Engine::snapshot`] /
//! [`Engine::restore`] carry it across daemon restarts.
//!
//! ```no_run
//! use detector::engine::{Engine, EngineConfig};
//! # let events: Vec<detector::event::Event> = vec![];
//! let mut engine = Engine::new(EngineConfig::default());
//! for ev in &events {
//!     for decision in engine.observe(ev) {
//!         println!("{decision}");
//!     }
//! }
//! ```
mod config;
mod decision;
mod explain;
mod query;
mod rules;
mod snapshot;
pub mod state;
mod table;
mod tiny;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;

pub use config::EngineConfig;
pub use decision::{Action, AlertKind, Decision, Evidence, Rule};
pub use explain::{Explanation, FailureView};
pub use rules::{mailbox_key, typo_of};
pub use snapshot::{OLDEST_SNAPSHOT_VERSION, SNAPSHOT_VERSION, Snapshot, StateCopy};
use state::{IpState, Names, PrefixState, ProbeMark, SiteOffenders, Tiny, Ts, UserState};
use table::AddressTable;
use triomphe::Arc;

use crate::event::Event;

/// How often (in log time) the engine drops state older than the horizon.
const SWEEP_EVERY_S: i64 = 300;

/// The correlation engine. One instance owns all state; feed it events in log order.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    /// Addresses of this host (never banned); see [`Engine::set_host_addrs`].
    host_addrs: Vec<IpAddr>,
    /// Per address (IPv4, or the IPv6 /64). Each state is shared copy-on-write, so a save
    /// copies pointers, not states ([`Engine::state_copy`]).
    ips: AddressTable,
    /// Interned user names and recipients of every record.
    names: Names,
    /// State keys that had a trusted successful login (a superset: checked against `ips`
    /// when read, pruned at each sweep), so a site ban finds its known clients without
    /// walking every address.
    clients: BTreeSet<IpAddr>,
    /// Per mailbox: copied by a save (the sweep reads every one, and a pointer per mailbox
    /// would cost it a cache miss each).
    users: HashMap<Box<str>, UserState>,
    /// The maps below hold their values behind shared pointers for the same reason as
    /// `ips`: a save copies pointers (`Arc::make_mut` copies a value only if a save still
    /// holds it).
    prefixes: HashMap<IpNet, Arc<PrefixState>>,
    /// Non-mail-server probes by mailbox key (split-role links), oldest first.
    marks: HashMap<Box<str>, Arc<Tiny<ProbeMark>>>,
    /// Bans held for the grace period: (deadline, state key); details in `IpState::pending`.
    pending: BTreeSet<(i64, IpAddr)>,
    /// IPv6 sites (`ipv6_site_prefix`) and the banned /64s inside them with their ban times.
    sites: HashMap<IpNet, Arc<SiteOffenders>>,
    /// Latest log time seen (Unix seconds); time never runs backwards inside the engine.
    now: i64,
    last_sweep: i64,
    stats: EngineStats,
}

/// Counters for `detector status` and the replay summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineStats {
    pub events: u64,
    pub bans: u64,
    /// Bans a rule wanted but the allowlist, loopback or a host address prevented.
    pub spared: u64,
    /// Bans a rule wanted on a shared address (many users log in there).
    #[serde(default)]
    pub spared_shared: u64,
    /// Possible-compromise alerts.
    #[serde(default)]
    pub alerts: u64,
    /// Addresses forgotten: past the horizon, or to keep within `max_tracked_ips`.
    pub evicted_ips: u64,
    pub evicted_users: u64,
    pub evicted_prefixes: u64,
    /// Addresses evicted to keep within `max_tracked_ips` (the least evidence first).
    #[serde(default)]
    pub evicted_for_space: u64,
    /// Of those, the ones that carried evidence toward a ban (failed logins, a held ban, a
    /// campaign tie) or a customer's successful login: state churn that costs detection.
    #[serde(default)]
    pub evicted_with_evidence: u64,
}

impl Engine {
    /// A new engine. `cfg` should have passed [`EngineConfig::validate`].
    pub fn new(cfg: EngineConfig) -> Self {
        Engine {
            cfg,
            host_addrs: Vec::new(),
            ips: AddressTable::default(),
            names: Names::default(),
            clients: BTreeSet::new(),
            users: HashMap::new(),
            prefixes: HashMap::new(),
            marks: HashMap::new(),
            pending: BTreeSet::new(),
            sites: HashMap::new(),
            now: i64::MIN,
            last_sweep: i64::MIN,
            stats: EngineStats::default(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The host's own addresses (the daemon passes its interface addresses); never banned.
    pub fn set_host_addrs(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        self.host_addrs = addrs.into_iter().collect();
        self.host_addrs.sort();
        self.host_addrs.dedup();
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Number of tracked IPs, user names and ban prefixes.
    pub fn tracked(&self) -> (usize, usize, usize) {
        (self.ips.len(), self.users.len(), self.prefixes.len())
    }

    /// Latest log time the engine has seen.
    pub fn now(&self) -> Option<DateTime<Utc>> {
        (self.now != i64::MIN).then(|| to_time(self.now))
    }

    /// Feeds one event; returns the decisions it caused (usually none).
    pub fn observe(&mut self, ev: &Event) -> Vec<Decision> {
        self.stats.events += 1;
        let t = ev.time.timestamp();
        // Log lines from several sources can be slightly out of order; rules work on the
        // event's own time but expiry uses the latest time seen.
        self.now = self.now.max(t);
        if self.last_sweep == i64::MIN || self.now.saturating_sub(self.last_sweep) >= SWEEP_EVERY_S
        {
            self.sweep();
        }
        // Bans whose grace period ended before this event come first.
        let mut out = rules::fire_due(self, self.now);
        out.extend(rules::observe(self, ev));
        self.stats.bans += out.iter().filter(|d| d.action == Action::Ban).count() as u64;
        self.stats.alerts += out
            .iter()
            .filter(|d| d.kind == Some(AlertKind::PossibleCompromise))
            .count() as u64;
        self.enforce_caps();
        out
    }

    /// Makes every ban still held for the grace period, as if log time had run past them
    /// (the end of a replayed log: no successful login came).
    pub fn flush_pending(&mut self) -> Vec<Decision> {
        let Some(&(last, _)) = self.pending.last() else {
            return Vec::new();
        };
        let out = rules::fire_due(self, last);
        self.stats.bans += out.iter().filter(|d| d.action == Action::Ban).count() as u64;
        out
    }

    /// What a ban of `ip` covers: `ip` widened to the configured prefix length (IPv6 /64 by
    /// default), or just `ip` itself when the wider prefix would also cover a host address,
    /// loopback or an allowlisted range.
    pub fn ban_prefix(&self, ip: IpAddr) -> IpNet {
        let ip = canonical(ip);
        let wide = self.cfg.ban_prefix(ip);
        let overlaps = |n: &IpNet| wide.contains(&n.network()) || n.contains(&wide.network());
        let unsafe_wide = self.host_addrs.iter().any(|a| wide.contains(a))
            || self.cfg.allowlist.iter().any(overlaps)
            || wide.contains(&IpAddr::from([127, 0, 0, 1]))
            || wide.contains(&IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
        if unsafe_wide { IpNet::from(ip) } else { wide }
    }

    /// The IPv6 site (`ipv6_site_prefix`, default /48) a ban prefix escalates to, if site
    /// escalation applies to it.
    fn site_of(&self, prefix: IpNet) -> Option<IpNet> {
        let len = self.cfg.ipv6_site_prefix;
        match prefix {
            IpNet::V6(p) if self.cfg.ipv6_site_offenders > 0 && len < p.prefix_len() => {
                IpNet::new(IpAddr::V6(p.network()), len)
                    .ok()
                    .map(|n| n.trunc())
            }
            _ => None,
        }
    }

    /// Whether `site` may be banned as a whole now, by the same test the engine's own site
    /// escalation applies (no host address, allowlisted range or known client in it). The
    /// enforcer asks before folding /64 bans into their site in a full map.
    pub fn may_widen(&self, site: IpNet) -> bool {
        self.site_unsafe(site, self.now).is_none()
    }

    /// Why `site` may not be banned as a whole: it covers a host address, loopback, an
    /// allowlisted range, or a known client.
    fn site_unsafe(&self, site: IpNet, t: i64) -> Option<&'static str> {
        let overlaps = |n: &IpNet| site.contains(&n.network()) || n.contains(&site.network());
        if self.host_addrs.iter().any(|a| site.contains(a))
            || site.contains(&IpAddr::from(std::net::Ipv6Addr::LOCALHOST))
        {
            return Some("it holds a host address");
        }
        if self.cfg.allowlist.iter().any(overlaps) {
            return Some("it overlaps the allowlist");
        }
        let since = t.saturating_sub(self.cfg.lenient_period.as_secs() as i64);
        let (first, last) = match site {
            IpNet::V6(n) => (IpAddr::V6(n.network()), IpAddr::V6(n.broadcast())),
            IpNet::V4(n) => (IpAddr::V4(n.network()), IpAddr::V4(n.broadcast())),
        };
        if (self.clients.range(first..=last))
            .filter_map(|k| self.ips.get(k))
            .any(|s| s.success_users_since(since) > 0)
        {
            return Some("a known client lives in it");
        }
        None
    }

    /// The key under which state about `ip` is kept: the network of its ban prefix, so that
    /// an IPv6 host rotating addresses inside its /64 is one actor (and one leniency record).
    pub fn state_key(&self, ip: IpAddr) -> IpAddr {
        self.ban_prefix(ip).network()
    }

    /// Whether the engine may cite this event's line as evidence (it records only these);
    /// lets callers keep raw text for just those lines.
    pub fn may_cite(ev: &Event) -> bool {
        rules::matters(ev)
    }

    /// Whether `ip` may never be banned: loopback, unspecified, the allowlist, host addresses.
    pub fn is_protected(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = canonical(ip);
        if ip.is_loopback() || ip.is_unspecified() {
            return Some("loopback");
        }
        if self.host_addrs.contains(&ip) {
            return Some("a host address");
        }
        if self.cfg.allowlist.iter().any(|n| n.contains(&ip)) {
            return Some("allowlisted");
        }
        None
    }

    /// Forgets the ban of `ip`'s prefix (an admin ran `detector unban`) and returns the unban
    /// decision if one was active. Offences are kept so a relapse still escalates.
    pub fn unban(&mut self, ip: IpAddr, time: DateTime<Utc>) -> Option<Decision> {
        let ip = canonical(ip);
        let prefix = self.ban_prefix(ip);
        let p = self.prefixes.get_mut(&prefix)?;
        if p.banned_until <= time.timestamp() {
            return None;
        }
        let p = Arc::make_mut(p);
        p.banned_until = Ts::of(time.timestamp());
        Some(Decision {
            action: Action::Unban,
            ip,
            prefix,
            time,
            rule: Rule::Manual,
            duration: std::time::Duration::ZERO,
            offence: p.offences,
            dry_run: self.cfg.dry_run,
            evidence: Vec::new(),
            note: "unbanned by the administrator".into(),
            kind: None,
            user: None,
        })
    }

    /// Every ban the engine holds as active: (prefix, log time of its end, rule), by prefix.
    /// The daemon writes the ones missing from the kernel maps on start (after a reboot or a
    /// detach the maps are empty while the snapshot still holds the bans).
    pub fn active_bans(&self) -> Vec<(IpNet, DateTime<Utc>, Rule)> {
        let mut out: Vec<_> = self
            .prefixes
            .iter()
            .filter(|(_, p)| p.banned_until > self.now)
            .map(|(n, p)| (*n, to_time(p.banned_until), p.last_rule))
            .collect();
        out.sort_by_key(|(n, _, _)| *n);
        out
    }

    /// After a restore with a new configuration: unban every active ban that the allowlist or
    /// the host addresses now protect.
    pub fn reconcile(&mut self) -> Vec<Decision> {
        let protected: Vec<IpNet> = self
            .prefixes
            .iter()
            .filter(|(n, p)| p.banned_until > self.now && self.is_protected(n.network()).is_some())
            .map(|(n, _)| *n)
            .collect();
        let now = to_time(self.now);
        let mut out: Vec<Decision> = protected
            .into_iter()
            .filter_map(|n| self.unban(n.network(), now))
            .collect();
        for d in &mut out {
            d.rule = Rule::Manual;
            d.note = "now protected by the allowlist or a host address".into();
        }
        out.sort_by_key(|d| d.prefix);
        out
    }

    /// Drops state older than the horizon (IPs, users) or the offence memory (prefixes).
    fn sweep(&mut self) {
        self.last_sweep = self.now;
        let horizon = self.cfg.horizon.as_secs() as i64;
        let cutoff = self.now.saturating_sub(horizon);
        let lenient = self
            .now
            .saturating_sub(self.cfg.lenient_period.as_secs() as i64);
        let before = self.ips.len();
        self.ips.retain(|_, s| {
            // Successful logins are remembered for the leniency period, the rest for the horizon.
            s.last_seen >= cutoff || s.successes().iter().any(|x| x.time >= lenient)
        });
        // Only what changes is written: a copy held by a save stays shared.
        self.ips.update(
            |s| s.needs_expiry(cutoff, lenient),
            |s| s.expire(cutoff, lenient),
        );
        self.stats.evicted_ips += (before - self.ips.len()) as u64;
        let ips = &self.ips;
        self.clients
            .retain(|k| ips.get(k).is_some_and(|s| !s.successes().is_empty()));
        let before = self.users.len();
        self.users
            .retain(|_, u| u.last_seen >= cutoff || u.attacked_until.is_some_and(|t| t > self.now));
        for u in self.users.values_mut() {
            u.failures.retain(|f| f.time >= cutoff);
        }
        self.stats.evicted_users += (before - self.users.len()) as u64;
        let memory = self.cfg.offence_memory.as_secs() as i64;
        let now = self.now;
        let before = self.prefixes.len();
        self.prefixes
            .retain(|_, p| p.banned_until > now || p.last_offence >= now.saturating_sub(memory));
        self.stats.evicted_prefixes += (before - self.prefixes.len()) as u64;
        let link = now.saturating_sub(self.cfg.link_window.as_secs() as i64);
        self.marks.retain(|_, m| {
            tiny::retain_shared(m, |x| x.time >= link);
            !m.is_empty()
        });
        self.sites.retain(|_, s| {
            tiny::retain_shared(s, |(_, t)| *t >= cutoff);
            !s.is_empty()
        });
        let ips = &self.ips;
        self.pending.retain(|(_, ip)| ips.contains_key(ip));
        self.names.collect();
    }

    /// For `cargo xtask bench engine`: frees the state one part at a time and calls `freed`
    /// with the part's name after each, so a counting allocator can tell what each part held.
    /// Interned names are freed last (every record shares them).
    #[doc(hidden)]
    pub fn release_for_measurement(mut self, mut freed: impl FnMut(&'static str)) {
        let all = |_: &IpState| true;
        self.ips.update(all, |s| s.failures = Default::default());
        freed("address: failed logins");
        self.ips.update(all, |s| s.probes = Default::default());
        freed("address: aborted transactions");
        self.ips.update(all, |s| s.evidence = Default::default());
        freed("address: evidence lines");
        self.ips.update(all, |s| s.clear_extra());
        freed("address: logins, open RCPTs, held ban, alerts");
        self.ips = AddressTable::default();
        freed("address table (records with their keys, slots)");
        self.clients = BTreeSet::new();
        freed("known-client index");
        self.pending = BTreeSet::new();
        freed("held-ban queue");
        self.users = HashMap::new();
        freed("user names' state");
        self.prefixes = HashMap::new();
        freed("ban prefixes (offences, notes)");
        self.marks = HashMap::new();
        freed("probe marks by mailbox");
        self.sites = HashMap::new();
        freed("IPv6 sites");
        self.names = Names::default();
        freed("interned names");
    }

    fn enforce_caps(&mut self) {
        let now = self.now;
        let (evicted, weighty) =
            state::evict_least_evidence(&mut self.ips, self.cfg.max_tracked_ips);
        if evicted > 0 {
            self.stats.evicted_ips += evicted as u64;
            self.stats.evicted_for_space += evicted as u64;
            self.stats.evicted_with_evidence += weighty as u64;
            let ips = &self.ips;
            self.pending.retain(|(_, ip)| ips.contains_key(ip));
            self.clients.retain(|k| ips.contains_key(k));
        }
        self.stats.evicted_users += state::evict_oldest(
            &mut self.users,
            self.cfg.max_tracked_users,
            |u| u.last_seen.get(),
            |_, _| false,
        ) as u64;
        // Active bans are never evicted for size: forgetting one would re-emit it.
        self.stats.evicted_prefixes += state::evict_oldest(
            &mut self.prefixes,
            self.cfg.max_tracked_prefixes,
            |p| p.last_offence.get(),
            |_, p| p.banned_until > now,
        ) as u64;
        state::evict_oldest(
            &mut self.marks,
            self.cfg.max_tracked_users,
            |m| m.back().map_or(i64::MIN, |x| x.time.get()),
            |_, _| false,
        );
        state::evict_oldest(
            &mut self.sites,
            self.cfg.max_tracked_prefixes,
            |s| s.back().map_or(i64::MIN, |x| x.1.get()),
            |_, _| false,
        );
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:198.18.0.2`) are treated as the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn to_time(secs: impl Into<i64>) -> DateTime<Utc> {
    DateTime::from_timestamp(secs.into(), 0).unwrap_or_default()
}

#[cfg(test)]
mod tests;
