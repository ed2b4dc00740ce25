//! The daily report an admin reads: campaigns and the mailboxes they target, possible
//! compromises, bans per rule and origin, top banned networks, and what the known-client and
//! shared-address logic spared. Built from what the engine knows (its state, from the daemon's
//! snapshot or a replay) plus the decisions a replay printed; rendered as text, JSON or HTML.
//!
//! User names and recipients are attacker-controlled: the text renderer replaces control
//! characters, the HTML renderer escapes everything it prints.
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::Serialize;

use crate::engine::{Action, AlertKind, Decision, Engine, mailbox_key};

/// Number of networks listed under "top networks".
pub const TOP_NETWORKS: usize = 10;

/// Everything the report shows; serialised as is for `--format json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Latest log time the engine saw (the report's "now").
    pub until: Option<DateTime<Utc>>,
    /// Start of the window: `until` minus `--since`.
    pub since: Option<DateTime<Utc>>,
    /// Mailboxes under attack in the window.
    pub campaigns: Vec<Campaign>,
    pub compromises: Vec<Compromise>,
    /// Banned prefixes in the window by the engine rule that banned them last.
    pub bans_per_rule: BTreeMap<String, usize>,
    /// Bans by origin: `detector` (the engine) and, from the kernel maps, manual, CrowdSec and
    /// blocklist bans.
    pub bans_per_origin: BTreeMap<String, usize>,
    pub bans: Vec<Ban>,
    /// Banned prefixes aggregated to /24 (IPv4) and /48 (IPv6), most bans first.
    pub top_networks: Vec<Network>,
    pub spared: Spared,
}

#[derive(Clone, Debug, Serialize)]
pub struct Campaign {
    pub mailbox: String,
    /// `exists` (someone logged in as it), `unknown-user` (the server said it does not
    /// exist), or `unknown`.
    pub mailbox_status: &'static str,
    /// Distinct addresses that failed on it inside the engine's horizon.
    pub failing_ips: usize,
    /// Addresses whose failure on it was tied to a probe.
    pub probe_linked_ips: usize,
    pub attacked_until: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Compromise {
    pub time: DateTime<Utc>,
    pub ip: IpAddr,
    pub user: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ban {
    pub prefix: IpNet,
    pub rule: String,
    pub offences: u32,
    pub time: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub note: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Network {
    pub network: IpNet,
    pub bans: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Spared {
    /// Since the daemon's state began: bans a rule wanted on the allowlist, loopback or a
    /// host address.
    pub protected_total: u64,
    /// Since the daemon's state began: bans a rule wanted on a shared address.
    pub shared_total: u64,
    /// Shared addresses (many users log in there) noticed in the window.
    pub shared_addresses: Vec<SharedAddress>,
    /// Known clients (a trusted login) with failed logins in the window: lenient, not banned.
    pub known_clients: Vec<KnownClient>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SharedAddress {
    pub ip: IpAddr,
    pub users: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct KnownClient {
    pub ip: IpAddr,
    pub users: Vec<String>,
    pub failures: u64,
}

impl Report {
    /// The report over the `window` before the engine's latest log time. `decisions` are the
    /// ones a replay printed (empty when reading the daemon's snapshot): they add alerts and
    /// bans the engine no longer holds.
    pub fn build(engine: &Engine, decisions: &[Decision], window: std::time::Duration) -> Report {
        let snap = engine.snapshot();
        let until = snap.now;
        let since = until.map(|t| t.saturating_sub(window.as_secs().min(i64::MAX as u64) as i64));
        let from = since.unwrap_or(i64::MIN);
        let time = |t: i64| DateTime::from_timestamp(t, 0).unwrap_or_default();

        // Mailboxes the server said do not exist, from the failures that named them.
        let mut unknown_users: BTreeSet<Box<str>> = BTreeSet::new();
        for (_, ip) in &snap.ips {
            for f in &ip.failures {
                if let Some(user) = f.user.as_deref().filter(|_| f.unknown_user) {
                    unknown_users.insert(mailbox_key(user));
                }
            }
        }
        let mut campaigns: Vec<Campaign> = (snap.users.iter())
            .filter(|(_, u)| u.attacked_until.is_some_and(|t| t >= from))
            .map(|(name, u)| Campaign {
                mailbox: name.to_string(),
                mailbox_status: if u.owner_seen.is_some() {
                    "exists"
                } else if unknown_users.contains(name) {
                    "unknown-user"
                } else {
                    "unknown"
                },
                failing_ips: u.failures.len(),
                probe_linked_ips: u.linked.len(),
                attacked_until: u.attacked_until.map(|t| time(t.get())),
            })
            .collect();
        campaigns.sort_by(|a, b| {
            b.failing_ips
                .cmp(&a.failing_ips)
                .then(a.mailbox.cmp(&b.mailbox))
        });

        let mut seen = BTreeSet::new();
        let mut compromises = Vec::new();
        for (ip, s) in &snap.ips {
            if let Some((t, user)) = s.compromise()
                && *t >= from
                && seen.insert((*ip, user.to_string()))
            {
                compromises.push(Compromise {
                    time: time(t.get()),
                    ip: *ip,
                    user: user.to_string(),
                });
            }
        }
        for d in decisions {
            if d.action == Action::Alert
                && d.kind == Some(AlertKind::PossibleCompromise)
                && d.time.timestamp() >= from
            {
                let user = d.user.clone().unwrap_or_default();
                if seen.insert((engine.state_key(d.ip), user.clone())) {
                    compromises.push(Compromise {
                        time: d.time,
                        ip: d.ip,
                        user,
                    });
                }
            }
        }
        compromises.sort_by_key(|c| (c.time, c.ip));

        let mut bans: Vec<Ban> = (snap.prefixes.iter())
            .filter(|(_, p)| p.offences > 0 && p.last_offence >= from)
            .map(|(n, p)| Ban {
                prefix: *n,
                rule: p.last_rule.name().to_string(),
                offences: p.offences,
                time: time(p.last_offence.get()),
                until: time(p.banned_until.get()),
                note: p.last_note.to_string(),
            })
            .collect();
        let held: BTreeSet<IpNet> = bans.iter().map(|b| b.prefix).collect();
        let mut extra: BTreeMap<IpNet, Ban> = BTreeMap::new();
        for d in decisions {
            if d.action == Action::Ban && d.time.timestamp() >= from && !held.contains(&d.prefix) {
                extra.insert(
                    d.prefix,
                    Ban {
                        prefix: d.prefix,
                        rule: d.rule.name().to_string(),
                        offences: d.offence,
                        time: d.time,
                        until: d.expires(),
                        note: d.note.clone(),
                    },
                );
            }
        }
        bans.extend(extra.into_values());
        bans.sort_by_key(|b| (b.time, b.prefix));

        let mut bans_per_rule = BTreeMap::new();
        for b in &bans {
            *bans_per_rule.entry(b.rule.clone()).or_insert(0) += 1;
        }
        let mut bans_per_origin = BTreeMap::new();
        if !bans.is_empty() {
            bans_per_origin.insert("detector".to_string(), bans.len());
        }

        let mut nets: BTreeMap<IpNet, usize> = BTreeMap::new();
        for b in &bans {
            *nets.entry(aggregate(b.prefix)).or_insert(0) += 1;
        }
        let mut top_networks: Vec<Network> = (nets.into_iter())
            .map(|(network, bans)| Network { network, bans })
            .collect();
        top_networks.sort_by(|a, b| b.bans.cmp(&a.bans).then(a.network.cmp(&b.network)));
        top_networks.truncate(TOP_NETWORKS);

        let lenient_since = until
            .unwrap_or(i64::MIN)
            .saturating_sub(engine.config().lenient_period.as_secs() as i64);
        let mut spared = Spared {
            protected_total: snap.stats.spared,
            shared_total: snap.stats.spared_shared,
            ..Spared::default()
        };
        for (ip, s) in &snap.ips {
            let users: BTreeSet<String> =
                s.known_users(lenient_since).map(str::to_string).collect();
            if s.shared_noticed().is_some_and(|t| t >= from) {
                spared.shared_addresses.push(SharedAddress {
                    ip: *ip,
                    users: users.len(),
                });
                continue;
            }
            let failures: u64 = (s.failures.iter())
                .filter(|f| f.time >= from)
                .map(|f| u64::from(f.count))
                .sum();
            if !users.is_empty() && failures > 0 {
                spared.known_clients.push(KnownClient {
                    ip: *ip,
                    users: users.into_iter().collect(),
                    failures,
                });
            }
        }

        Report {
            until: until.map(time),
            since: since.map(time),
            campaigns,
            compromises,
            bans_per_rule,
            bans_per_origin,
            bans,
            top_networks,
            spared,
        }
    }

    /// Adds bans counted by origin elsewhere (the kernel maps: manual, CrowdSec, blocklists).
    pub fn add_origin(&mut self, origin: &str, count: usize) {
        *self.bans_per_origin.entry(origin.to_string()).or_insert(0) += count;
    }
}

/// The network a banned prefix is counted under: its /24 (IPv4) or /48 (IPv6), or the prefix
/// itself when it is already wider.
pub fn aggregate(prefix: IpNet) -> IpNet {
    let len = match prefix {
        IpNet::V4(_) => 24,
        IpNet::V6(_) => 48,
    };
    if prefix.prefix_len() <= len {
        prefix
    } else {
        IpNet::new(prefix.network(), len)
            .map(|n| n.trunc())
            .unwrap_or(prefix)
    }
}

#[cfg(test)]
mod tests;
