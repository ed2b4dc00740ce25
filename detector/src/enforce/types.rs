//! Plain data the enforcer hands out and takes in.
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use detector_common::{
    COUNTERS, CounterInfo, Counters, DEFAULT_EXACT_CAPACITY, DEFAULT_PREFIX_CAPACITY, reason,
};
use ipnet::IpNet;
use serde::Serialize;

/// Map capacities, per address family. Fixed when the maps are first created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Exact (/32, /128) bans per family: BANS_V4, BANS_V6 (preallocated, ~80-100 B each).
    pub exact: u32,
    /// Prefix bans per family: PREFIX_V4, PREFIX_V6.
    pub prefix: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            exact: DEFAULT_EXACT_CAPACITY,
            prefix: DEFAULT_PREFIX_CAPACITY,
        }
    }
}

/// How to attach XDP to an interface (also `xdp.mode` in detector.toml).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode if the driver supports it, else generic.
    #[default]
    Auto,
    /// Driver mode only; fails on drivers without XDP support.
    Native,
    /// Generic (skb) mode: works everywhere, runs after skb allocation.
    Generic,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Auto => "auto",
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

/// Why an address is banned; stored in the kernel map as a code from
/// [`detector_common::reason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Manual,
    ProbeLogin,
    SlowRepeat,
    TargetCampaign,
    Burst,
    CrowdSec,
    Blocklist,
    /// Prefix bans the enforcer folded into the prefix covering them (a full trie).
    Aggregated,
    Other,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Manual,
        Reason::ProbeLogin,
        Reason::SlowRepeat,
        Reason::TargetCampaign,
        Reason::Burst,
        Reason::CrowdSec,
        Reason::Blocklist,
        Reason::Aggregated,
        Reason::Other,
    ];

    pub fn code(self) -> u32 {
        match self {
            Reason::Manual => reason::MANUAL,
            Reason::ProbeLogin => reason::PROBE_LOGIN,
            Reason::SlowRepeat => reason::SLOW_REPEAT,
            Reason::TargetCampaign => reason::TARGET_CAMPAIGN,
            Reason::Burst => reason::BURST,
            Reason::CrowdSec => reason::CROWDSEC,
            Reason::Blocklist => reason::BLOCKLIST,
            Reason::Aggregated => reason::AGGREGATED,
            Reason::Other => reason::OTHER,
        }
    }

    /// Unknown codes (written by a newer build) read back as `Other`.
    pub fn from_code(code: u32) -> Reason {
        Reason::ALL
            .into_iter()
            .find(|r| r.code() == code)
            .unwrap_or(Reason::Other)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Manual => "manual",
            Reason::ProbeLogin => "probe-login",
            Reason::SlowRepeat => "slow-repeat",
            Reason::TargetCampaign => "target-campaign",
            Reason::Burst => "burst",
            Reason::CrowdSec => "crowdsec",
            Reason::Blocklist => "blocklist",
            Reason::Aggregated => "aggregated",
            Reason::Other => "other",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown reason `{s}` (one of: {})", names.join(", "))
            })
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One live ban as `list` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanEntry {
    pub net: IpNet,
    /// Time left; `None` = permanent.
    pub remaining: Option<Duration>,
    /// Wall-clock end; `None` = permanent.
    pub expires_at: Option<SystemTime>,
    pub reason: Reason,
    /// Packets matched (dropped, or passed in observe mode).
    pub hits: u64,
}

impl BanEntry {
    /// The address alone for a host ban (`198.51.100.7`), the prefix otherwise.
    pub fn target(&self) -> String {
        display_target(&self.net)
    }
}

/// The address alone for a /32 or /128, CIDR notation for a prefix.
pub fn display_target(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// What `ban` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanOutcome {
    /// A new entry.
    Added,
    /// The address was already banned; its expiry was extended (never shortened).
    Extended,
    /// The address was already banned at least as long; nothing changed.
    Unchanged,
}

/// A ban the engine holds as active, in kernel terms: what [`super::Enforcer::reconcile`] makes
/// sure the maps hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveBan {
    pub net: IpNet,
    /// Time left; `None` = permanent.
    pub remaining: Option<Duration>,
    pub reason: Reason,
}

/// What [`super::Enforcer::reconcile`] did.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Already in the maps (live); left as they are.
    pub present: Vec<IpNet>,
    /// Missing from fresh maps (after a reboot or a detach) and written again with their time
    /// left.
    pub restored: Vec<IpNet>,
    /// Missing from maps a daemon had already filled: an administrator removed them
    /// (`detector unban`), so the engine should forget them rather than ban again.
    pub removed_by_admin: Vec<IpNet>,
    /// Could not be written (map full, now allowlisted...).
    pub failed: Vec<(IpNet, crate::Error)>,
}

/// The XDP program's counters, summed over CPUs. Serialises as one flat object: `seen`, every
/// counter of [`detector_common::COUNTERS`] by name, and `observe_mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub counters: Counters,
    /// Observe mode is on (matches are counted, not dropped).
    pub observe_mode: bool,
}

impl Stats {
    /// Frames seen: passed + dropped.
    pub fn seen(&self) -> u64 {
        self.counters.seen()
    }

    /// Every counter with its description and value, in the struct's order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static CounterInfo, u64)> + '_ {
        COUNTERS.iter().map(|c| (c, (c.get)(&self.counters)))
    }
}

impl Serialize for Stats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(COUNTERS.len() + 2))?;
        m.serialize_entry("seen", &self.seen())?;
        for (c, v) in self.iter() {
            m.serialize_entry(c.name, &v)?;
        }
        m.serialize_entry("observe_mode", &self.observe_mode)?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_serialise_every_counter_by_name_plus_seen() {
        let stats = Stats {
            counters: Counters {
                passed: 2,
                dropped: 3,
                non_ip: 7,
                ..Counters::default()
            },
            observe_mode: true,
        };
        let v = serde_json::to_value(stats).unwrap();
        assert_eq!(v["seen"], 5);
        assert_eq!(v["non_ip"], 7);
        assert_eq!(v["observe_mode"], true);
        let keys = v.as_object().unwrap().len();
        assert_eq!(keys, COUNTERS.len() + 2, "{v}");
        for c in COUNTERS {
            assert!(v.get(c.name).is_some(), "{} missing: {v}", c.name);
        }
    }
}
