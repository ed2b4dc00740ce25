//! `cargo xtask bench cluster`: what sharing evidence and bans through Redis costs, with real
//! `detector run --cluster` nodes (release build) and a private redis-server on 127.0.0.1
//! (tests/src/bin/cluster-bench.rs), as root. Prints ban propagation from one node's kernel
//! map to another's (p50/p99, with a node's own reaction as the same-run reference), events/s
//! each node publishes and consumes (against a standalone node's rate), and Redis memory per
//! stored event and ban with the 48 h extrapolation.
use std::process::Command;

use anyhow::Result;

use crate::setup::{check_build_prereqs, ensure_apt_packages};
use crate::util::{build_bins, ensure_bpffs, require_root, run_cmd};

#[derive(clap::Args)]
pub struct Options {
    /// Bans whose propagation is measured (distinct IPs from 198.18.10.0 upwards).
    #[arg(long, default_value_t = 500)]
    bans: usize,
    /// Pause between two bans, in ms.
    #[arg(long, default_value_t = 10)]
    gap_ms: u64,
    /// Lines (one event each) in the throughput block.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Sustained events/s of the 48 h memory estimates (comma-separated), besides the
    /// README's 48 h scenario.
    #[arg(long, default_value = "10,100,1000")]
    rates: String,
}

pub fn run(opts: Options) -> Result<()> {
    check_build_prereqs()?;
    require_root("the cluster benchmark loads BPF maps for each node")?;
    ensure_apt_packages(&["redis-server"])?;
    let bins = build_bins(true, &["cluster-bench"])?;
    ensure_bpffs()?;
    run_cmd(
        Command::new(bins.join("cluster-bench"))
            .args(["--bans", &opts.bans.to_string()])
            .args(["--gap-ms", &opts.gap_ms.to_string()])
            .args(["--events", &opts.events.to_string()])
            .args(["--rates", &opts.rates])
            .env("DETECTOR_BIN", bins.join("detector")),
    )
}
