//! `cargo xtask bench xdp`: builds and runs the BPF_PROG_TEST_RUN micro-benchmark
//! (tests/src/bin/xdp-bench.rs: same-key and random-key rows, then issue 14's targets, each
//! case beside the bare reference of the same run) in release mode, as root.
use std::process::Command;

use anyhow::Result;

use crate::setup::check_build_prereqs;
use crate::util::{require_root, run_cmd, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Map sizes to measure (entries per family).
    #[arg(long, default_value = "1,10000,1000000")]
    sizes: String,
    /// Runs per case (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Approximate duration of each run, in ms.
    #[arg(long, default_value_t = 100)]
    target_ms: u32,
    /// CPU to pin the benchmark to.
    #[arg(long, default_value_t = 1)]
    cpu: u32,
    /// Prefix bans added for the "with prefix bans" rows; 0 skips those rows.
    #[arg(long, default_value_t = 1000)]
    prefixes: u32,
    /// Calls per program and run for the random-key (cache-cold) rows; 0 skips them.
    #[arg(long, default_value_t = 20000)]
    random_calls: u32,
    /// Skip measuring the real program against its build without trace support.
    #[arg(long)]
    skip_notrace: bool,
}

pub fn run(opts: Options) -> Result<()> {
    check_build_prereqs()?;
    require_root("the XDP benchmark loads BPF programs")?;
    let root = workspace_root();
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "detector-tests",
        "--bin",
        "xdp-bench",
    ]))?;
    run_cmd(
        Command::new(root.join("target/release/xdp-bench"))
            .args(["--sizes", &opts.sizes])
            .args(["--runs", &opts.runs.to_string()])
            .args(["--target-ms", &opts.target_ms.to_string()])
            .args(["--cpu", &opts.cpu.to_string()])
            .args(["--prefixes", &opts.prefixes.to_string()])
            .args(["--random-calls", &opts.random_calls.to_string()])
            .args(["--notrace", &(!opts.skip_notrace).to_string()]),
    )
}
