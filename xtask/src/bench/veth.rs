//! `cargo xtask bench veth`: receiver CPU per packet on a veth pair under a paced and a
//! flat-out UDP flood, for detector's XDP program, an nftables set and no filter
//! (tests/src/bin/veth-bench.rs), in release mode, as root.
use std::process::Command;

use anyhow::Result;

use crate::setup::{check_build_prereqs, ensure_apt_packages};
use crate::util::{build_bins, ensure_bpffs, require_root, run_cmd};

#[derive(clap::Args)]
pub struct Options {
    /// Configurations to measure: xdp (detector attach, native mode), nft (netdev ingress set),
    /// none (no filter).
    #[arg(long, default_value = "xdp,nft,none")]
    configs: String,
    /// Paced rate in packets/s (each configuration is also measured flat out).
    #[arg(long, default_value_t = 1_000_000)]
    rate: u64,
    /// Seconds of flood per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Rounds over all configurations (each measurement in fresh namespaces).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Filler bans (198.19.0.0/16) next to the banned sender, in the XDP maps and the nft set.
    #[arg(long, default_value_t = 10_000)]
    fillers: u32,
}

pub fn run(opts: Options) -> Result<()> {
    check_build_prereqs()?;
    require_root("the veth benchmark creates namespaces and attaches XDP")?;
    ensure_apt_packages(&["nftables", "ethtool", "iproute2"])?;
    let bins = build_bins(true, &["veth-bench"])?;
    ensure_bpffs()?;
    // Ctrl-C reaches the whole process group: veth-bench stops the flood and tears down its
    // namespaces and pins; wait for it instead of returning to the shell mid-teardown.
    crate::demo::ignore_sigint();
    run_cmd(
        Command::new(bins.join("veth-bench"))
            .args(["--configs", &opts.configs])
            .args(["--rate", &opts.rate.to_string()])
            .args(["--seconds", &opts.seconds.to_string()])
            .args(["--rounds", &opts.rounds.to_string()])
            .args(["--fillers", &opts.fillers.to_string()])
            .env("DETECTOR_BIN", bins.join("detector")),
    )
}
