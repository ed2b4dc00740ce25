//! The daemon's counters of input it did not trust and of engine state churn, saved beside
//! the engine snapshot so that `detector status` can show them without asking the daemon
//! (or reading the whole snapshot).
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Loaded, StateDir};
use crate::Result;

/// `counters.json`: since the daemon's start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DaemonCounters {
    /// When the daemon wrote this file.
    pub saved_at: Option<DateTime<Utc>>,
    /// When the daemon started.
    pub started_at: Option<DateTime<Utc>>,
    /// Lines whose time was further ahead of the wall clock than `daemon.max_clock_ahead`.
    pub lines_ahead_of_clock: u64,
    /// The largest such lead, in seconds.
    pub max_ahead_s: u64,
    /// Journal entries from processes that are not the mail servers (dropped).
    pub journal_untrusted: u64,
    /// The last of those, described by its trusted fields (`_UID`, `_COMM`, ...).
    pub journal_untrusted_last: Option<String>,
    /// Addresses the engine tracks, and its cap (`engine.max_tracked_ips`).
    pub tracked_ips: u64,
    pub max_tracked_ips: u64,
    /// Addresses evicted to stay within the cap (the least evidence first), and how many of
    /// those carried evidence toward a ban or a customer's login: state churn (see
    /// `EngineStats::evicted_with_evidence`).
    pub evicted_for_space: u64,
    pub evicted_with_evidence: u64,
    /// Lines longer than the line limit: cut by their source and not parsed.
    pub truncated_lines: u64,
}

impl DaemonCounters {
    pub const FILE_NAME: &'static str = "counters.json";

    pub fn save(&self, dir: &StateDir) -> Result<()> {
        dir.write_json(Self::FILE_NAME, self)
    }

    pub fn read(dir: &StateDir) -> Result<Loaded<Self>> {
        dir.read_json(Self::FILE_NAME)
    }
}
