//! Engine state export/import, so a daemon restart keeps correlation state and offences.
//! Entries are sorted, so equal states give byte-identical snapshots.
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::state::{IpState, PrefixState, ProbeMark, SiteOffenders, Tiny, UserState};
use super::table::SharedState;
use super::{Engine, EngineConfig, EngineStats};
use crate::Error;
use triomphe::Arc;

/// Bumped when the snapshot layout changes incompatibly. Version 2 keeps evidence as line
/// references and session ids as hashes; a version-1 snapshot still loads (its evidence as
/// the text it had), so an upgrade loses no ban, offence or correlation state.
pub const SNAPSHOT_VERSION: u32 = 2;
/// The oldest snapshot version [`Engine::restore`] reads.
pub const OLDEST_SNAPSHOT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// Latest log time seen (Unix seconds), `None` before the first event.
    pub now: Option<i64>,
    pub stats: EngineStats,
    pub ips: Vec<(IpAddr, IpState)>,
    pub users: Vec<(Box<str>, UserState)>,
    pub prefixes: Vec<(IpNet, PrefixState)>,
    #[serde(default)]
    pub marks: Vec<(Box<str>, Tiny<ProbeMark>)>,
    #[serde(default)]
    pub sites: Vec<(IpNet, SiteOffenders)>,
}

/// A copy of the engine's state taken at one instant, cheaply: the per-address states are
/// shared with the engine, and so are the values of the other maps (copy-on-write: the engine
/// copies one only when it changes it while the copy lives). [`StateCopy::into_snapshot`] makes the
/// [`Snapshot`] from it, away from the engine (the daemon's writer thread).
#[derive(Clone, Debug)]
pub struct StateCopy {
    now: Option<i64>,
    stats: EngineStats,
    ips: Vec<SharedState>,
    users: Vec<(Box<str>, UserState)>,
    prefixes: Vec<(IpNet, Arc<PrefixState>)>,
    marks: Vec<(Box<str>, Arc<Tiny<ProbeMark>>)>,
    sites: Vec<(IpNet, Arc<SiteOffenders>)>,
}

/// The value, moved out if nothing else holds it, else copied.
fn owned<K, T: Clone>((k, v): (K, Arc<T>)) -> (K, T) {
    (k, Arc::unwrap_or_clone(v))
}

impl StateCopy {
    /// The sorted snapshot of this copy.
    pub fn into_snapshot(self) -> Snapshot {
        let mut s = Snapshot {
            version: SNAPSHOT_VERSION,
            now: self.now,
            stats: self.stats,
            ips: (self.ips.into_iter())
                .map(|r| {
                    let ip = r.ip();
                    (ip, Arc::unwrap_or_clone(r).state)
                })
                .collect(),
            users: self.users,
            prefixes: self.prefixes.into_iter().map(owned).collect(),
            marks: self.marks.into_iter().map(owned).collect(),
            sites: self.sites.into_iter().map(owned).collect(),
        };
        s.sort();
        s
    }
}

impl Snapshot {
    /// Sorts every list by key, so equal states give byte-identical snapshots.
    pub fn sort(&mut self) {
        self.ips.sort_unstable_by_key(|(k, _)| *k);
        self.users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.prefixes.sort_unstable_by_key(|(k, _)| *k);
        self.marks.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.sites.sort_unstable_by_key(|(k, _)| *k);
    }
}

impl Engine {
    /// The whole correlation state (serialise it with serde, e.g. `serde_json`), sorted.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = self.snapshot_unsorted();
        s.sort();
        s
    }

    /// A cheap copy of the state for a save (see [`StateCopy`]): what the daemon's engine
    /// task pays per save is a pointer per record (and the keys of the name-keyed maps).
    pub fn state_copy(&self) -> StateCopy {
        StateCopy {
            now: (self.now != i64::MIN).then_some(self.now),
            stats: self.stats,
            ips: self.ips.shared(),
            users: (self.users.iter())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            prefixes: self.prefixes.iter().map(|(k, v)| (*k, v.clone())).collect(),
            marks: self
                .marks
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            sites: self.sites.iter().map(|(k, v)| (*k, v.clone())).collect(),
        }
    }

    /// The state as it lies in memory, unsorted: the part of [`Engine::snapshot`] that must
    /// run where the engine is (the daemon's engine task); [`Snapshot::sort`] can run
    /// elsewhere (the thread that writes it).
    pub fn snapshot_unsorted(&self) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            now: (self.now != i64::MIN).then_some(self.now),
            stats: self.stats,
            ips: (self.ips.iter()).map(|(k, v)| (k, v.clone())).collect(),
            users: (self.users.iter())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            prefixes: (self.prefixes.iter())
                .map(|(k, v)| (*k, PrefixState::clone(v)))
                .collect(),
            marks: (self.marks.iter())
                .map(|(k, v)| (k.clone(), Tiny::clone(v)))
                .collect(),
            sites: (self.sites.iter())
                .map(|(k, v)| (*k, SiteOffenders::clone(v)))
                .collect(),
        }
    }

    /// An engine with `cfg` (possibly changed since the snapshot) and the snapshot's state.
    /// State beyond the new caps or horizon is dropped on the next event.
    pub fn restore(cfg: EngineConfig, snap: Snapshot) -> crate::Result<Engine> {
        if !(OLDEST_SNAPSHOT_VERSION..=SNAPSHOT_VERSION).contains(&snap.version) {
            return Err(Error::Store(format!(
                "engine snapshot version {} is not supported (this detector reads versions \
                 {OLDEST_SNAPSHOT_VERSION} to {SNAPSHOT_VERSION}); remove it to start with \
                 empty state",
                snap.version
            )));
        }
        let mut engine = Engine::new(cfg);
        engine.now = snap.now.unwrap_or(i64::MIN);
        engine.stats = snap.stats;
        engine.ips = (snap.ips.into_iter())
            .map(|(k, mut s)| {
                // Restored names are separate copies: share them again.
                s.intern(&mut engine.names);
                (k, s)
            })
            .collect();
        engine.clients = (engine.ips.iter())
            .filter(|(_, s)| !s.successes().is_empty())
            .map(|(k, _)| k)
            .collect();
        engine.users = snap.users.into_iter().collect();
        engine.prefixes = (snap.prefixes.into_iter())
            .map(|(k, mut p)| {
                engine.names.intern_note(&mut p.last_note);
                (k, Arc::new(p))
            })
            .collect();
        engine.marks = (snap.marks.into_iter())
            .map(|(k, m)| (k, Arc::new(m)))
            .collect();
        engine.sites = (snap.sites.into_iter())
            .map(|(k, s)| (k, Arc::new(s)))
            .collect();
        engine.pending = engine
            .ips
            .iter()
            .filter_map(|(k, s)| s.pending().map(|p| (p.deadline, k)))
            .collect();
        if engine.now != i64::MIN {
            engine.sweep();
        }
        engine.enforce_caps();
        Ok(engine)
    }
}
