//! The cluster's health as `detector status` shows it: written by the running daemon to
//! `cluster-status.json` in its state directory every few seconds.
use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The file in the state directory.
pub const FILE_NAME: &str = "cluster-status.json";

/// Peers heard from within this long count as "seen recently".
pub const RECENT_S: i64 = 60;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterStatus {
    pub node: String,
    /// The Redis URL without its password.
    pub redis: String,
    /// Both the publisher and the consumer are connected.
    pub connected: bool,
    pub publisher_connected: bool,
    pub consumer_connected: bool,
    /// When the current outage began (either connection down).
    pub down_since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub reconnects: u64,
    pub published: u64,
    pub consumed: u64,
    /// Messages waiting for Redis, and those dropped because the buffer was full.
    pub buffered: u64,
    pub dropped: u64,
    /// How far behind the newest stream entry the consumer is, in seconds.
    pub lag_s: f64,
    pub peers: BTreeMap<String, Peer>,
    pub written_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Peer {
    /// When a message from it last arrived (wall clock).
    pub last_seen: Option<DateTime<Utc>>,
    /// The log time of its last event.
    pub last_event: Option<DateTime<Utc>>,
    pub events: u64,
    pub bans: u64,
}

/// Shared between the cluster tasks and the engine task.
#[derive(Debug, Default)]
pub struct Board(Mutex<ClusterStatus>);

impl Board {
    pub fn new(node: String, redis: String) -> Self {
        Board(Mutex::new(ClusterStatus {
            node,
            redis,
            down_since: Some(Utc::now()),
            ..ClusterStatus::default()
        }))
    }

    pub fn update<T>(&self, f: impl FnOnce(&mut ClusterStatus) -> T) -> T {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn snapshot(&self) -> ClusterStatus {
        self.update(|s| s.clone())
    }
}

impl ClusterStatus {
    /// Records a connection's state; returns true when the whole link changed.
    pub fn set_link(&mut self, publisher: bool, up: bool, error: Option<String>) -> bool {
        let before = self.connected;
        if publisher {
            self.publisher_connected = up;
        } else {
            self.consumer_connected = up;
        }
        if let Some(e) = error {
            self.last_error = Some(e);
        }
        self.connected = self.publisher_connected && self.consumer_connected;
        if self.connected {
            self.down_since = None;
        } else if self.down_since.is_none() {
            self.down_since = Some(Utc::now());
        }
        before != self.connected
    }

    /// Peers heard from within [`RECENT_S`] of `now`.
    pub fn recent_peers(&self, now: DateTime<Utc>) -> Vec<(&String, &Peer)> {
        (self.peers.iter())
            .filter(|(_, p)| {
                p.last_seen
                    .is_some_and(|t| (now - t).num_seconds() <= RECENT_S)
            })
            .collect()
    }
}

/// The URL with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                // `redis://secret@host`: a lone userinfo is a password to Redis.
                "***".to_string()
            };
            format!("{scheme}://{shown}@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("rediss://detector:s3cret@198.18.0.1:6380/2"),
            "rediss://detector:***@198.18.0.1:6380/2"
        );
        assert_eq!(redact("redis://s3cret@h/"), "redis://***@h/");
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }

    #[test]
    fn the_link_is_up_only_when_both_connections_are() {
        let mut s = ClusterStatus::default();
        assert!(!s.set_link(true, true, None));
        assert!(!s.connected);
        assert!(s.set_link(false, true, None));
        assert!(s.connected && s.down_since.is_none());
        assert!(s.set_link(true, false, Some("refused".into())));
        assert!(s.down_since.is_some());
        assert_eq!(s.last_error.as_deref(), Some("refused"));
    }
}
