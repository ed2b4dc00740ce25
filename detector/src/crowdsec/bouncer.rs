//! Turning the decision stream into kernel bans.
//!
//! The kernel maps are the truth about what is banned: a startup pull (the first after
//! detector starts or after the Local API was unreachable) bans everything it lists and then
//! removes every `crowdsec` ban in the maps that it did not list, so nothing deleted while
//! detector was away lingers. Between startups, deltas add and delete by decision id. Several
//! decisions may cover one prefix (two scenarios on one address); the prefix is unbanned when
//! the last of them is deleted.
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use super::duration;
use super::model::{Decision, StreamResponse};
use super::narrow::{Narrowed, narrow};
use crate::enforce::{self, BanOutcome, Enforcer, Reason};

/// Decisions with a scenario of this prefix (what [`super::push`] sends) or this origin are
/// detector's own: never imported back as foreign bans.
pub const OWN_ORIGIN: &str = "detector";
pub const OWN_SCENARIO_PREFIX: &str = "detector/";

/// What the bouncer needs from the kernel side; [`Enforcer`] in the daemon, a map in tests.
pub trait BanTable {
    /// Bans `net` for `ttl` as a CrowdSec ban (refusals of the allowlist are errors).
    fn ban(&mut self, net: IpNet, ttl: Duration) -> crate::Result<BanOutcome>;
    fn unban(&mut self, net: IpNet) -> crate::Result<bool>;
    /// The prefixes of every live CrowdSec ban in the table.
    fn crowdsec_bans(&self) -> crate::Result<Vec<IpNet>>;
    /// Networks no ban may touch (built-in ranges, allowlist, this host's addresses).
    fn protected(&self) -> Vec<IpNet>;
}

impl BanTable for Enforcer {
    fn ban(&mut self, net: IpNet, ttl: Duration) -> crate::Result<BanOutcome> {
        Enforcer::ban(self, net, Some(ttl), Reason::CrowdSec)
    }
    fn unban(&mut self, net: IpNet) -> crate::Result<bool> {
        // The entry is shared with every other origin that banned the prefix, and they own
        // it (see `enforce::table::owner`): a deleted decision leaves their ban in place.
        match self.entry(net)? {
            Some(held) if held.reason != Reason::CrowdSec => {
                tracing::info!(prefix = %net, reason = held.reason.as_str(),
                    "CrowdSec decision gone; the prefix stays banned for its other reason");
                Ok(false)
            }
            _ => Enforcer::unban(self, net),
        }
    }
    fn crowdsec_bans(&self) -> crate::Result<Vec<IpNet>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|b| b.reason == Reason::CrowdSec)
            .map(|b| b.net)
            .collect())
    }
    fn protected(&self) -> Vec<IpNet> {
        self.allowlist().protected_nets()
    }
}

/// Which decisions to take (`[crowdsec] origins` / `scenarios`; empty = all).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Exact origins (`crowdsec`, `cscli`, `CAPI`, `lists`), case-insensitive.
    pub origins: Vec<String>,
    /// Substrings of the scenario (`ssh`, `postfix`), case-insensitive.
    pub scenarios: Vec<String>,
}

impl Filter {
    fn takes(&self, d: &Decision) -> bool {
        let origin_ok = self.origins.is_empty()
            || self
                .origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(&d.origin));
        let scenario = d.scenario.to_ascii_lowercase();
        let scenario_ok = self.scenarios.is_empty()
            || (self.scenarios.iter()).any(|s| scenario.contains(&s.to_ascii_lowercase()));
        origin_ok && scenario_ok
    }
}

/// Running totals since start (also in the status file).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub pulls: u64,
    pub startup_pulls: u64,
    /// Ban decisions written to the maps.
    pub banned: u64,
    /// Deleted decisions removed from the maps.
    pub unbanned: u64,
    /// Stale CrowdSec bans removed by a startup pull.
    pub stale_removed: u64,
    /// Decisions of types other than `ban`, by type (`captcha`: left to other bouncers).
    pub ignored_types: BTreeMap<String, u64>,
    /// Decisions of scopes other than Ip/Range (`Country`, `AS`, ...), by scope.
    pub ignored_scopes: BTreeMap<String, u64>,
    /// Simulated decisions (scenarios in simulation mode).
    pub simulated: u64,
    /// Left out by the origins/scenarios filters.
    pub filtered: u64,
    /// detector's own decisions (pushed alerts) seen in the stream and skipped.
    pub own: u64,
    /// Already over when received.
    pub expired: u64,
    /// Narrowed around protected addresses.
    pub narrowed: u64,
    /// Refused: invalid value, protected address, or a map write that failed.
    pub refused: u64,
}

/// One live decision we applied.
#[derive(Clone, Debug)]
struct Live {
    /// The prefixes written for it (one, or the pieces of a narrowed range).
    nets: Vec<IpNet>,
    label: String,
}

/// The bouncer's memory of which decision put which prefix in the maps.
#[derive(Debug, Default)]
pub struct Bouncer {
    filter: Filter,
    live: HashMap<i64, Live>,
    by_net: HashMap<IpNet, Vec<i64>>,
    pub counts: Counts,
}

/// What one pull changed, for the log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub banned: usize,
    pub unbanned: usize,
    pub stale_removed: usize,
    pub skipped: usize,
}

impl Bouncer {
    pub fn new(filter: Filter) -> Self {
        Bouncer {
            filter,
            ..Bouncer::default()
        }
    }

    /// `crowdsec/<origin>/<scenario>` of every prefix we hold, for `list` and `explain`.
    pub fn labels(&self) -> BTreeMap<IpNet, String> {
        let mut out = BTreeMap::new();
        for (net, ids) in &self.by_net {
            if let Some(live) = ids.iter().find_map(|id| self.live.get(id)) {
                out.insert(*net, live.label.clone());
            }
        }
        out
    }

    /// Applies one answer of the stream. `startup`: it is the complete set of live decisions.
    pub fn apply(
        &mut self,
        startup: bool,
        response: StreamResponse,
        table: &mut impl BanTable,
    ) -> Applied {
        let mut applied = Applied::default();
        self.counts.pulls += 1;
        if startup {
            self.counts.startup_pulls += 1;
            // Rebuilt from the answer; what the maps hold beyond it is removed below.
            self.live.clear();
            self.by_net.clear();
        } else {
            // Deleted first: a decision deleted and re-added in one interval stays.
            for d in response.deleted.iter().flatten() {
                applied.unbanned += self.delete(d, table);
            }
        }
        let protected = table.protected();
        for d in response.new.unwrap_or_default() {
            match self.add(&d, &protected, table) {
                0 => applied.skipped += 1,
                n => applied.banned += n,
            }
        }
        if startup {
            applied.stale_removed = self.remove_stale(table);
        }
        applied
    }

    /// Writes one new decision; returns how many prefixes were banned.
    fn add(&mut self, d: &Decision, protected: &[IpNet], table: &mut impl BanTable) -> usize {
        let c = &mut self.counts;
        if d.origin.eq_ignore_ascii_case(OWN_ORIGIN) || d.scenario.starts_with(OWN_SCENARIO_PREFIX)
        {
            c.own += 1;
            return 0;
        }
        if !self.filter.takes(d) {
            c.filtered += 1;
            return 0;
        }
        if !d.kind.eq_ignore_ascii_case("ban") {
            *c.ignored_types.entry(d.kind.clone()).or_default() += 1;
            return 0;
        }
        if d.simulated == Some(true) {
            c.simulated += 1;
            return 0;
        }
        let net = match d.target() {
            None => {
                *c.ignored_scopes.entry(d.scope.clone()).or_default() += 1;
                return 0;
            }
            Some(Err(why)) => {
                c.refused += 1;
                tracing::warn!(id = d.id, origin = %d.origin, scenario = %d.scenario, "CrowdSec decision refused: {why}");
                return 0;
            }
            Some(Ok(net)) => enforce::canonical(net),
        };
        let ttl = match duration::parse(&d.duration).map(|g| g.remaining()) {
            Ok(Some(ttl)) => ttl,
            Ok(None) => {
                c.expired += 1;
                return 0;
            }
            Err(why) => {
                c.refused += 1;
                tracing::warn!(id = d.id, %net, "CrowdSec decision refused: {why}");
                return 0;
            }
        };
        let nets = match narrow(net, protected) {
            Narrowed::Whole => vec![net],
            Narrowed::Pieces(pieces) => {
                c.narrowed += 1;
                tracing::warn!(
                    id = d.id, %net, origin = %d.origin, scenario = %d.scenario,
                    pieces = pieces.len(),
                    "CrowdSec decision covers protected addresses (this host or the allowlist); banning the rest of it only"
                );
                pieces
            }
            Narrowed::Refused(why) => {
                c.refused += 1;
                tracing::warn!(id = d.id, %net, origin = %d.origin, scenario = %d.scenario, "CrowdSec decision refused: {why}");
                return 0;
            }
        };
        let mut written = Vec::new();
        for piece in nets {
            match table.ban(piece, ttl) {
                Ok(_) => written.push(piece),
                Err(e) => {
                    self.counts.refused += 1;
                    tracing::warn!(id = d.id, prefix = %piece, error = %e, "CrowdSec ban not written");
                }
            }
        }
        if written.is_empty() {
            return 0;
        }
        self.counts.banned += 1;
        for net in &written {
            let ids = self.by_net.entry(*net).or_default();
            if !ids.contains(&d.id) {
                ids.push(d.id);
            }
        }
        let n = written.len();
        let label = format!("crowdsec/{}/{}", d.origin, d.scenario);
        let kept = written.clone();
        if let Some(old) = self.live.insert(
            d.id,
            Live {
                nets: written,
                label,
            },
        ) {
            // The same id again (a startup answer lists each once; be safe anyway).
            let gone: Vec<IpNet> = old.nets.into_iter().filter(|n| !kept.contains(n)).collect();
            self.release(d.id, &gone, table);
        }
        n
    }

    /// Removes one deleted decision; returns how many prefixes left the maps.
    fn delete(&mut self, d: &Decision, table: &mut impl BanTable) -> usize {
        let Some(live) = self.live.remove(&d.id) else {
            return 0; // never applied (filtered, other type) or already gone
        };
        self.counts.unbanned += 1;
        self.release(d.id, &live.nets, table)
    }

    /// Drops `id` from its prefixes; unbans those no other decision holds.
    fn release(&mut self, id: i64, nets: &[IpNet], table: &mut impl BanTable) -> usize {
        let mut removed = 0;
        for net in nets {
            let Some(ids) = self.by_net.get_mut(net) else {
                continue;
            };
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_net.remove(net);
                match table.unban(*net) {
                    Ok(_) => removed += 1,
                    Err(e) => tracing::warn!(prefix = %net, error = %e, "CrowdSec unban failed"),
                }
            }
        }
        removed
    }

    /// After a startup pull: CrowdSec bans in the maps that the answer did not list.
    fn remove_stale(&mut self, table: &mut impl BanTable) -> usize {
        let in_maps = match table.crowdsec_bans() {
            Ok(nets) => nets,
            Err(e) => {
                tracing::warn!(error = %e, "listing the bans for the CrowdSec resync failed");
                return 0;
            }
        };
        let mut removed = 0;
        for net in in_maps {
            if !self.by_net.contains_key(&enforce::canonical(net)) {
                match table.unban(net) {
                    Ok(_) => removed += 1,
                    Err(e) => {
                        tracing::warn!(prefix = %net, error = %e, "removing a stale CrowdSec ban failed")
                    }
                }
            }
        }
        self.counts.stale_removed += removed as u64;
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[derive(Default)]
    struct FakeTable {
        bans: BTreeMap<IpNet, (Duration, bool)>, // (ttl, is crowdsec)
        protected: Vec<IpNet>,
    }

    impl BanTable for FakeTable {
        fn ban(&mut self, net: IpNet, ttl: Duration) -> crate::Result<BanOutcome> {
            self.bans.insert(net, (ttl, true));
            Ok(BanOutcome::Added)
        }
        fn unban(&mut self, net: IpNet) -> crate::Result<bool> {
            Ok(self.bans.remove(&net).is_some())
        }
        fn crowdsec_bans(&self) -> crate::Result<Vec<IpNet>> {
            Ok(self
                .bans
                .iter()
                .filter(|(_, v)| v.1)
                .map(|(k, _)| *k)
                .collect())
        }
        fn protected(&self) -> Vec<IpNet> {
            self.protected.clone()
        }
    }

    fn d(id: i64, kind: &str, scope: &str, value: &str, duration: &str) -> Decision {
        Decision {
            id,
            origin: "cscli".into(),
            kind: kind.into(),
            scope: scope.into(),
            value: value.into(),
            duration: duration.into(),
            scenario: "manual 'ban' from 'test'".into(),
            simulated: None,
        }
    }

    fn resp(new: Vec<Decision>, deleted: Vec<Decision>) -> StreamResponse {
        StreamResponse {
            new: Some(new),
            deleted: Some(deleted),
        }
    }

    fn nets(t: &FakeTable) -> BTreeSet<String> {
        t.bans.keys().map(|n| n.to_string()).collect()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn bans_ip_and_range_with_their_remaining_time_and_counts_the_rest() {
        let mut b = Bouncer::default();
        let mut t = FakeTable::default();
        let a = b.apply(
            true,
            resp(
                vec![
                    d(1, "ban", "Ip", "198.18.0.7", "3h59m58.5s"),
                    d(2, "ban", "Range", "198.18.5.0/24", "1h"),
                    d(3, "ban", "Ip", "2001:db8::7", "10m"),
                    d(4, "captcha", "Ip", "198.18.0.8", "1h"),
                    d(5, "ban", "Country", "FR", "1h"),
                    d(6, "ban", "Ip", "198.18.0.9", "-2s"),
                    d(7, "ban", "Ip", "::ffff:198.18.0.10", "1h"),
                ],
                vec![],
            ),
            &mut t,
        );
        assert_eq!(a.banned, 4);
        assert_eq!(
            nets(&t),
            set(&[
                "198.18.0.7/32",
                "198.18.0.10/32",
                "198.18.5.0/24",
                "2001:db8::7/128"
            ])
        );
        assert_eq!(
            t.bans[&"198.18.0.7/32".parse().unwrap()].0,
            Duration::from_millis((3 * 3600 + 59 * 60 + 58) * 1000 + 500)
        );
        assert_eq!(b.counts.ignored_types["captcha"], 1);
        assert_eq!(b.counts.ignored_scopes["Country"], 1);
        assert_eq!(b.counts.expired, 1);
        assert_eq!(
            b.labels()[&"198.18.0.7/32".parse::<IpNet>().unwrap()],
            "crowdsec/cscli/manual 'ban' from 'test'"
        );
    }

    #[test]
    fn deleted_decisions_leave_unless_another_holds_the_prefix() {
        let mut b = Bouncer::default();
        let mut t = FakeTable::default();
        b.apply(
            true,
            resp(
                vec![
                    d(1, "ban", "Ip", "198.18.0.7", "1h"),
                    d(2, "ban", "Ip", "198.18.0.7", "2h"),
                    d(3, "ban", "Ip", "198.18.0.8", "1h"),
                ],
                vec![],
            ),
            &mut t,
        );
        b.apply(
            false,
            resp(vec![], vec![d(1, "ban", "Ip", "198.18.0.7", "0s")]),
            &mut t,
        );
        assert_eq!(nets(&t), set(&["198.18.0.7/32", "198.18.0.8/32"]));
        let a = b.apply(
            false,
            StreamResponse {
                new: None,
                deleted: Some(vec![
                    d(2, "ban", "Ip", "198.18.0.7", "0s"),
                    d(3, "ban", "Ip", "198.18.0.8", "0s"),
                    d(99, "ban", "Ip", "198.18.0.99", "0s"),
                ]),
            },
            &mut t,
        );
        assert_eq!(a.unbanned, 2);
        assert!(t.bans.is_empty());
    }

    #[test]
    fn a_startup_pull_removes_what_is_no_longer_there_but_not_other_bans() {
        let mut b = Bouncer::default();
        let mut t = FakeTable::default();
        b.apply(
            true,
            resp(
                vec![
                    d(1, "ban", "Ip", "198.18.0.7", "1h"),
                    d(2, "ban", "Ip", "198.18.0.8", "1h"),
                ],
                vec![],
            ),
            &mut t,
        );
        // A detector ban of its own, and a CrowdSec ban left by an earlier run.
        t.bans.insert(
            "198.18.9.9/32".parse().unwrap(),
            (Duration::from_secs(60), false),
        );
        t.bans.insert(
            "198.18.9.10/32".parse().unwrap(),
            (Duration::from_secs(60), true),
        );
        // The Local API came back with a new database: only decision 10 exists.
        let a = b.apply(
            true,
            resp(vec![d(10, "ban", "Ip", "198.18.0.8", "1h")], vec![]),
            &mut t,
        );
        assert_eq!(a.stale_removed, 2);
        assert_eq!(nets(&t), set(&["198.18.0.8/32", "198.18.9.9/32"]));
        // And its memory is the new set: deleting 10 unbans.
        b.apply(
            false,
            resp(vec![], vec![d(10, "ban", "Ip", "198.18.0.8", "0s")]),
            &mut t,
        );
        assert_eq!(nets(&t), set(&["198.18.9.9/32"]));
    }

    #[test]
    fn own_decisions_and_filters_are_skipped() {
        let mut b = Bouncer::new(Filter {
            origins: vec!["CAPI".into(), "cscli".into()],
            scenarios: vec!["ssh".into(), "manual".into()],
        });
        let mut t = FakeTable::default();
        let mut own = d(1, "ban", "Ip", "198.18.0.1", "1h");
        own.origin = "detector".into();
        let mut own2 = d(2, "ban", "Ip", "198.18.0.2", "1h");
        own2.scenario = "detector/probe-login".into();
        let mut other_origin = d(3, "ban", "Ip", "198.18.0.3", "1h");
        other_origin.origin = "crowdsec".into();
        let mut other_scenario = d(4, "ban", "Ip", "198.18.0.4", "1h");
        other_scenario.scenario = "crowdsecurity/http-probing".into();
        let mut taken = d(5, "ban", "Ip", "198.18.0.5", "1h");
        taken.origin = "CAPI".into();
        taken.scenario = "crowdsecurity/SSH-bf".into();
        b.apply(
            true,
            resp(vec![own, own2, other_origin, other_scenario, taken], vec![]),
            &mut t,
        );
        assert_eq!(nets(&t), set(&["198.18.0.5/32"]));
        assert_eq!((b.counts.own, b.counts.filtered), (2, 2));
    }

    #[test]
    fn protected_addresses_are_cut_out_or_refused() {
        let mut b = Bouncer::default();
        let mut t = FakeTable {
            protected: vec![
                "198.18.5.1/32".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ],
            ..FakeTable::default()
        };
        b.apply(
            true,
            resp(
                vec![
                    d(1, "ban", "Range", "198.18.5.0/24", "1h"),
                    d(2, "ban", "Ip", "198.18.5.1", "1h"),
                    d(3, "ban", "Ip", "127.0.0.1", "1h"),
                ],
                vec![],
            ),
            &mut t,
        );
        assert_eq!(t.bans.len(), 8);
        assert!(
            !t.bans
                .keys()
                .any(|n| n.contains(&"198.18.5.1".parse::<std::net::IpAddr>().unwrap()))
        );
        assert_eq!((b.counts.narrowed, b.counts.refused), (1, 2));
        // Deleting the range removes every piece.
        b.apply(
            false,
            resp(vec![], vec![d(1, "ban", "Range", "198.18.5.0/24", "0s")]),
            &mut t,
        );
        assert!(t.bans.is_empty());
    }
}
