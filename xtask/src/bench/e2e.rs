//! `cargo xtask bench e2e`: time from a login failure being logged to the ban being in the
//! kernel map, through the real `detector run` (release build) following a file and a
//! standalone journald (tests/src/bin/e2e-bench.rs), as root. Reports p50/p99/max, and for the
//! journal journald's own share (time until a separate `journalctl --follow` sees the entry).
use std::process::Command;

use anyhow::{Result, bail};

use crate::setup::check_build_prereqs;
use crate::util::{ensure_bpffs, is_root, run_cmd, workspace_root};

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
    if !is_root() {
        bail!("the end-to-end benchmark attaches XDP and runs the mail lab; rerun as root");
    }
    let root = workspace_root();
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "detector",
        "--package",
        "detector-tests",
        "--bin",
        "detector",
        "--bin",
        "e2e-bench",
        "--bin",
        "mailbot",
    ]))?;
    ensure_bpffs()?;
    run_cmd(
        Command::new(root.join("target/release/e2e-bench"))
            .args(["--source", &opts.source])
            .args(["--bans", &opts.bans.to_string()])
            .args(["--gap-ms", &opts.gap_ms.to_string()])
            .env("DETECTOR_BIN", root.join("target/release/detector"))
            .env("MAILBOT_BIN", root.join("target/release/mailbot")),
    )
}
