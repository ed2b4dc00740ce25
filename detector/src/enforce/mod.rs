//! The only code that touches BPF: loading and attaching the XDP program, pinning it, and
//! reading and writing the ban maps.
//!
//! Two entry points:
//! - [`attach`] / [`detach`] manage the program, its links and the pins under a pin directory
//!   (default [`detector_common::PIN_DIR`]). Everything is pinned, so the XDP program keeps
//!   dropping (and bans keep expiring) with no process running.
//! - [`Enforcer::open`] adopts the pinned maps for `ban`, `unban`, `list`, `stats`, the sweeper
//!   and the daemon.
//!
//! aya reuses existing pins without checking them, so every adoption first compares the pinned
//! maps (type, key/value size, capacity) and the layout version stored in SETTINGS with this
//! build, and refuses with one message on mismatch.
mod allow;
mod attach;
mod clock;
pub mod infra;
mod maps;
mod pins;
mod reban;
mod room;
mod sys;
mod table;
pub mod testrun;
pub mod trace;
mod types;
mod verify;

pub use allow::{Allowlist, host_infrastructure, local_addresses};
pub use attach::{AttachOptions, AttachOutcome, AttachReport, DetachReport, attach, detach};
pub use maps::canonical;
pub use maps::{BulkOutcome, Enforcer, FULL_WALK_EVERY, MISSING_BY_LOOKUP, SweepReport};
pub use pins::PinPaths;
pub use room::{Aggregation, MadeRoom};
pub use types::{
    ActiveBan, AttachMode, BanEntry, BanOutcome, Capacity, Reason, Reconciled, Stats,
    display_target,
};

use std::path::PathBuf;

/// The pin directory: `DETECTOR_PIN_DIR` if set, else [`detector_common::PIN_DIR`].
/// The CLI's `--pin-dir` flag (which also reads that variable) takes precedence.
pub fn default_pin_dir() -> PathBuf {
    std::env::var_os("DETECTOR_PIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(detector_common::PIN_DIR))
}
