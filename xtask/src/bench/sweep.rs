//! `cargo xtask bench sweep`: builds and runs tests/src/bin/sweep-bench.rs in release mode, as
//! root: syscalls and wall time of the daemon's sweep at a million bans, old (one entry at a
//! time) against batched, in the same run; and the maps' memory (memlock), empty and full.
use std::process::Command;

use anyhow::Result;

use crate::setup::check_build_prereqs;
use crate::util::{require_root, run_cmd, workspace_root};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Bans in the maps: half IPv4 addresses, half IPv6 /64s.
    #[arg(long, default_value_t = 1_000_000)]
    bans: u32,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

pub fn run(opts: Options) -> Result<()> {
    check_build_prereqs()?;
    require_root("the sweep benchmark loads BPF maps")?;
    let root = workspace_root();
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "detector-tests",
        "--bin",
        "sweep-bench",
    ]))?;
    run_cmd(
        Command::new(root.join("target/release/sweep-bench"))
            .args(["--bans", &opts.bans.max(2).to_string()])
            .args(["--runs", &opts.runs.max(1).to_string()]),
    )
}
