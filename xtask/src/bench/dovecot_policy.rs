//! `cargo xtask bench dovecot-policy`: p50/p99 answer latency of the Dovecot auth-policy server
//! at 5,000 requests/s (open loop, keep-alive connections like Dovecot's pool), against a
//! trivial hyper server answering a constant in the same run. The measuring program is
//! `tests/src/bin/policy-bench.rs` (release build); no root needed, loopback only.
use std::process::Command;

use anyhow::Result;

use crate::util::{build_bins, run_cmd};

#[derive(clap::Args)]
pub struct Options {
    /// Requests per second, in total.
    #[arg(long, default_value_t = 5000)]
    rate: u32,
    /// Seconds measured per server.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: u32,
}

pub fn run(opts: Options) -> Result<()> {
    let bins = build_bins(true, &["policy-bench"])?;
    run_cmd(
        Command::new(bins.join("policy-bench"))
            .arg("--rate")
            .arg(opts.rate.to_string())
            .arg("--seconds")
            .arg(opts.seconds.to_string())
            .arg("--connections")
            .arg(opts.connections.to_string()),
    )?;
    Ok(())
}
