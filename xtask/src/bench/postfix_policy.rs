//! `cargo xtask bench postfix-policy`: round-trip time of the Postfix policy service at a
//! paced rate (p50/p99/p99.9/max) and its flat-out requests/s, against a trivial
//! echo-`DUNNO` server on the same runtime in the same run
//! (detector/examples/postfix_policy_bench.rs, release build). Needs no root.
use std::process::Command;

use anyhow::Result;

use crate::util::{run_cmd, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Paced request rate over all connections (requests/s).
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Client connections (one per smtpd process).
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

pub fn run(opts: Options) -> Result<()> {
    let root = workspace_root();
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "detector",
        "--example",
        "postfix_policy_bench",
    ]))?;
    run_cmd(
        Command::new(root.join("target/release/examples/postfix_policy_bench"))
            .args(["--rate", &opts.rate.to_string()])
            .args(["--conns", &opts.conns.to_string()])
            .args(["--seconds", &opts.seconds.to_string()]),
    )
}
