//! `cargo xtask bench e2e`: time from a login failure being logged to the ban being in the
//! kernel map, through the real `detector run` (release build) following a file and a
//! standalone journald (tests/src/bin/e2e-bench.rs), as root. Reports p50/p99/max, and for the
//! journal journald's own share (time until a separate `journalctl --follow` sees the entry).
use std::process::Command;

use anyhow::Result;

use crate::setup::check_build_prereqs;
use crate::util::{build_bins, ensure_bpffs, require_root, run_cmd};

#[derive(clap::Args)]
pub struct Options {
    /// file, journal or both.
    #[arg(long, default_value = "both")]
    source: String,
    /// Bans measured per source (distinct IPs from 198.18.0.0/15).
    #[arg(long, default_value_t = 250)]
    bans: usize,
    /// Pause between two bans, in ms.
    #[arg(long, default_value_t = 20)]
    gap_ms: u64,
}

pub fn run(opts: Options) -> Result<()> {
    check_build_prereqs()?;
    require_root("the end-to-end benchmark attaches XDP and runs the mail lab")?;
    let bins = build_bins(true, &["e2e-bench", "mailbot"])?;
    ensure_bpffs()?;
    run_cmd(
        Command::new(bins.join("e2e-bench"))
            .args(["--source", &opts.source])
            .args(["--bans", &opts.bans.to_string()])
            .args(["--gap-ms", &opts.gap_ms.to_string()])
            .env("DETECTOR_BIN", bins.join("detector"))
            .env("MAILBOT_BIN", bins.join("mailbot")),
    )
}
