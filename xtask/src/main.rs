//! `cargo xtask <task>`: everything needed to go from a fresh machine to a running detector.
mod build;
mod run;
mod setup;
mod sim;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "detector's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; fast when already done): nightly
    /// rust-src, bpf-linker built against rustc's own libLLVM, and Debian packages.
    Setup(setup::Options),
    /// Build the XDP program and the detector binary.
    Build(build::Options),
    /// Build, then run detector as root: `cargo xtask run [-- ARGS]` (default: `run`).
    Run(run::Options),
    /// Run every test, including the kernel and end-to-end ones (needs root).
    Test(test::Options),
    /// Write simulated mail logs with ground truth: `cargo xtask sim --seed 1 --hours 48 > log`.
    Sim(sim::Options),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup(o) => setup::run(o),
        Task::Build(o) => build::run(o),
        Task::Run(o) => run::run(o),
        Task::Test(o) => test::run(o),
        Task::Sim(o) => sim::run(o),
    }
}
