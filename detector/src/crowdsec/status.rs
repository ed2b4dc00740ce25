//! `crowdsec.json` in the state directory: which CrowdSec origin and scenario put each prefix
//! in the maps (the kernel only stores the reason code `crowdsec`), and the bouncer's counts.
//! Written by the daemon after each pull that changed something; read by `list` and `explain`.
use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{BanTable, Bouncer, Counts, Pull};
use crate::store::StateDir;

pub const STATUS_FILE: &str = "crowdsec.json";

#[derive(Debug, Serialize)]
struct StatusOut<'a> {
    updated_at: DateTime<Utc>,
    /// prefix -> `crowdsec/<origin>/<scenario>`
    labels: BTreeMap<IpNet, String>,
    counts: &'a Counts,
}

#[derive(Debug, Default, Deserialize)]
struct StatusIn {
    #[serde(default)]
    labels: BTreeMap<IpNet, String>,
}

/// Applies one pull, logs what it changed and saves the status file.
pub fn apply_pull(bouncer: &mut Bouncer, pull: Pull, table: &mut impl BanTable, state: &StateDir) {
    let startup = pull.startup;
    let new = pull.response.new.as_ref().map_or(0, Vec::len);
    let deleted = pull.response.deleted.as_ref().map_or(0, Vec::len);
    let applied = bouncer.apply(startup, pull.response, table);
    let changed = applied.banned + applied.unbanned + applied.stale_removed + applied.skipped > 0;
    if startup || changed {
        tracing::info!(
            startup,
            new,
            deleted,
            banned = applied.banned,
            unbanned = applied.unbanned,
            stale_removed = applied.stale_removed,
            skipped = applied.skipped,
            ignored_types = ?bouncer.counts.ignored_types,
            "CrowdSec decisions applied"
        );
        let status = StatusOut {
            updated_at: Utc::now(),
            labels: bouncer.labels(),
            counts: &bouncer.counts,
        };
        if let Err(e) = state.write_json(STATUS_FILE, &status) {
            tracing::warn!(error = %e, "saving the CrowdSec status failed");
        }
    }
}

/// The labels of the last status file under `state_dir`; empty if there is none (no bouncer,
/// or `list` run without access to the state directory).
pub fn read_labels(state_dir: &Path) -> BTreeMap<IpNet, String> {
    let Ok(text) = std::fs::read(state_dir.join(STATUS_FILE)) else {
        return BTreeMap::new();
    };
    serde_json::from_slice::<StatusIn>(&text)
        .map(|s| s.labels)
        .unwrap_or_default()
}
