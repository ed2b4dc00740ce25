//! What a node keeps of the cluster in its state directory (`cluster.json`), saved with the
//! engine snapshot (just before it, so that a crash between the two writes never feeds a
//! peer's event twice): where it is in each stream, the
//! highest origin stamp it took from every peer (so a message delivered twice is counted
//! once), its own last start stamp (so its stamps keep growing across restarts even if the
//! clock went back), and which nodes contributed to each active ban (for `detector explain`).
use std::collections::BTreeMap;

use chrono::Utc;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::wire::Stamp;
use crate::store::{Loaded, StateDir};

/// The file in the state directory.
pub const FILE_NAME: &str = "cluster.json";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterState {
    /// Last entry id taken from the events stream; empty = never read (a new node).
    pub events_id: String,
    /// Last entry id taken from the bans stream.
    pub bans_id: String,
    /// Per peer: the highest stamp taken from each stream.
    pub marks: BTreeMap<String, Marks>,
    /// This node's boot stamp of its last start.
    pub own_boot: u64,
    /// Active bans and the nodes whose events led to them.
    pub bans: BTreeMap<IpNet, BanOrigin>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Marks {
    pub events: Stamp,
    pub bans: Stamp,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanOrigin {
    /// The nodes whose events led to the ban.
    pub nodes: Vec<String>,
    /// The node that decided it first here (this node, or the peer whose ban was applied).
    pub decided_by: String,
    /// Wall-clock end, ms since the epoch.
    pub until_ms: i64,
}

impl ClusterState {
    /// Reads the file; missing or damaged (quarantined, logged) = a new node.
    pub fn load(state: &StateDir) -> crate::Result<ClusterState> {
        Ok(match state.read_json::<ClusterState>(FILE_NAME)? {
            Loaded::Found(s) => s,
            _ => ClusterState::default(),
        })
    }

    pub fn save(&self, state: &StateDir) -> crate::Result<()> {
        state.write_json(FILE_NAME, self)
    }

    /// True when nothing was ever read: start from the active bans, not from the beginning.
    pub fn is_new(&self) -> bool {
        self.events_id.is_empty() && self.bans_id.is_empty()
    }

    /// The boot stamp of this start: now in ms, but always above the last one.
    pub fn next_boot(&mut self, now_ms: u64) -> u64 {
        self.own_boot = now_ms.max(self.own_boot + 1);
        self.own_boot
    }

    /// Whether a message with `stamp` from `node` on `stream` is new; records it if so.
    pub fn accept(&mut self, node: &str, events: bool, stamp: Stamp) -> bool {
        let marks = self.marks.entry(node.to_string()).or_default();
        let mark = if events {
            &mut marks.events
        } else {
            &mut marks.bans
        };
        if stamp <= *mark {
            return false;
        }
        *mark = stamp;
        true
    }

    /// Records who contributed to a ban (kept until it ends). An existing record with a later
    /// end keeps its nodes; the union is kept otherwise.
    pub fn record_ban(&mut self, prefix: IpNet, origin: BanOrigin) {
        let now = Utc::now().timestamp_millis();
        self.bans.retain(|_, b| b.until_ms > now);
        let slot = self.bans.entry(prefix).or_insert_with(|| BanOrigin {
            decided_by: origin.decided_by.clone(),
            ..BanOrigin::default()
        });
        for n in origin.nodes {
            if !slot.nodes.contains(&n) {
                slot.nodes.push(n);
            }
        }
        slot.nodes.sort();
        slot.until_ms = slot.until_ms.max(origin.until_ms);
    }

    /// The recorded origins of active bans covering `ip`.
    pub fn bans_covering(&self, ip: std::net::IpAddr) -> Vec<(IpNet, &BanOrigin)> {
        let now = Utc::now().timestamp_millis();
        (self.bans.iter())
            .filter(|(p, b)| p.contains(&ip) && b.until_ms > now)
            .map(|(p, b)| (*p, b))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_seen_twice_is_taken_once_per_node_and_stream() {
        let mut s = ClusterState::default();
        assert!(s.accept("mx", true, Stamp(10, 1)));
        assert!(s.accept("mx", true, Stamp(10, 2)));
        // Redelivered, or republished after a lost acknowledgement.
        assert!(!s.accept("mx", true, Stamp(10, 2)));
        assert!(!s.accept("mx", true, Stamp(10, 1)));
        // Another stream and another node have their own marks.
        assert!(s.accept("mx", false, Stamp(10, 1)));
        assert!(s.accept("imap", true, Stamp(3, 1)));
        // A restarted node's stamps start above its old ones.
        assert!(s.accept("mx", true, Stamp(11, 1)));
        assert!(!s.accept("mx", true, Stamp(10, 3)));
    }

    #[test]
    fn boot_stamps_grow_even_when_the_clock_goes_back() {
        let mut s = ClusterState::default();
        assert_eq!(s.next_boot(1000), 1000);
        assert_eq!(s.next_boot(500), 1001);
        assert_eq!(s.next_boot(2000), 2000);
    }

    #[test]
    fn the_state_round_trips_and_a_new_node_is_new() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let mut s = ClusterState::load(&dir).unwrap();
        assert!(s.is_new());
        s.events_id = "1-0".into();
        s.accept("mx", true, Stamp(1, 1));
        s.record_ban(
            "198.18.0.7/32".parse().unwrap(),
            BanOrigin {
                nodes: vec!["mx".into(), "imap".into()],
                decided_by: "imap".into(),
                until_ms: Utc::now().timestamp_millis() + 60_000,
            },
        );
        s.save(&dir).unwrap();
        let back = ClusterState::load(&dir).unwrap();
        assert_eq!(back, s);
        assert!(!back.is_new());
        let covering = back.bans_covering("198.18.0.7".parse().unwrap());
        assert_eq!(covering.len(), 1);
        assert_eq!(covering[0].1.nodes, ["imap", "mx"]);
    }
}
