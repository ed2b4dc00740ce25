//! `[cluster]` in detector.toml.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The default prefix of the stream and key names (`detector:events`, `detector:bans`,
/// `detector:active-bans`).
pub const DEFAULT_PREFIX: &str = "detector";

/// `[cluster]`: share evidence and bans with other nodes through Redis Streams.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user[:password]@]host[:port][/db]` or `rediss://...` (TLS); absent = no
    /// cluster.
    pub redis: Option<String>,
    /// This node's name in the streams; default: the host name. Unique per node.
    pub node: Option<String>,
    /// File holding the Redis password (first line), instead of one in the URL. The ACL user
    /// name, if any, stays in the URL (`redis://detector@host/`).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the Redis server's certificate (`rediss://`); absent =
    /// the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Prefix of the stream and key names: `<prefix>:events`, `<prefix>:bans`,
    /// `<prefix>:active-bans`.
    pub prefix: String,
    /// How many messages to keep for Redis while it is unreachable; the oldest events go
    /// first when it is full (bans are kept over events).
    pub buffer: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: None,
            node: None,
            password_file: None,
            ca_file: None,
            prefix: DEFAULT_PREFIX.to_string(),
            buffer: 100_000,
        }
    }
}

/// The Redis keys one cluster uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// Stream of parsed events, trimmed to the engine's horizon.
    pub events: String,
    /// Stream of ban decisions, trimmed to the engine's horizon.
    pub bans: String,
    /// Hash prefix -> the latest ban message for it: what a new node starts from.
    pub active: String,
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        self.redis.is_some()
    }

    pub fn keys(&self) -> Keys {
        Keys {
            events: format!("{}:events", self.prefix),
            bans: format!("{}:bans", self.prefix),
            active: format!("{}:active-bans", self.prefix),
        }
    }

    /// The configured node name, or the host name.
    pub fn node_name(&self) -> String {
        if let Some(node) = &self.node {
            return node.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "detector".to_string())
    }

    pub fn validate(&self) -> crate::Result<()> {
        let Some(url) = &self.redis else {
            return Ok(());
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(Error::config(
                "cluster.redis",
                "must be a redis:// or rediss:// URL",
            ));
        }
        if let Some(node) = &self.node
            && (node.is_empty()
                || node.len() > 64
                || !node
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Err(Error::config(
                "cluster.node",
                format!("{node:?}: use 1-64 letters, digits, '-', '_' or '.'"),
            ));
        }
        if self.prefix.is_empty() {
            return Err(Error::config("cluster.prefix", "must not be empty"));
        }
        if self.buffer == 0 {
            return Err(Error::config("cluster.buffer", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_the_prefix() {
        let c = ClusterConfig {
            prefix: "mx".into(),
            ..ClusterConfig::default()
        };
        assert_eq!(c.keys().events, "mx:events");
        assert_eq!(c.keys().bans, "mx:bans");
        assert_eq!(c.keys().active, "mx:active-bans");
    }

    #[test]
    fn validation_names_the_key() {
        let bad = |c: ClusterConfig| c.validate().unwrap_err().to_string();
        let url = Some("redis://127.0.0.1/".to_string());
        assert!(
            bad(ClusterConfig {
                redis: Some("http://x".into()),
                ..ClusterConfig::default()
            })
            .contains("cluster.redis")
        );
        assert!(
            bad(ClusterConfig {
                redis: url.clone(),
                node: Some("a b".into()),
                ..ClusterConfig::default()
            })
            .contains("cluster.node")
        );
        assert!(
            ClusterConfig {
                redis: url,
                node: Some("mx-1.example".into()),
                ..ClusterConfig::default()
            }
            .validate()
            .is_ok()
        );
    }
}
