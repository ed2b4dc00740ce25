//! `cargo xtask bench engine`: bytes per tracked address in the engine, from the allocator's
//! own counters (a counting global allocator in the `engine-mem` bench binary), next to a
//! bare `HashMap<IpAddr, u64>` with the same keys measured the same way in the same run, and
//! the time `Engine::snapshot` takes (the copy the daemon's persist makes on the engine task).
//! No root, no kernel: release build of `detector-tests`' `engine-mem`.
use std::process::Command;

use anyhow::Result;

use crate::util::{build_bins, run_cmd};

#[derive(clap::Args)]
pub struct Options {
    /// Distinct source addresses fed to the engine (half IPv4, half IPv6 /64s).
    #[arg(long, default_value_t = 1_000_000)]
    addresses: u32,
}

pub fn run(opts: Options) -> Result<()> {
    let bins = build_bins(true, &["engine-mem"])?;
    run_cmd(
        Command::new(bins.join("engine-mem")).args(["--addresses", &opts.addresses.to_string()]),
    )?;
    Ok(())
}
