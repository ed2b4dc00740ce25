//! `cargo xtask <task>`: everything needed to go from a fresh machine to a running detector.
mod bench;
mod build;
mod demo;
mod dist;
mod lab;
#[path = "../../detector/build/nightly.rs"]
mod nightly;
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
    /// Install what building and testing need (idempotent; fast when already done): the pinned
    /// nightly with rust-src, bpf-linker built against rustc's own libLLVM, and Debian packages.
    Setup(setup::Options),
    /// Build the XDP program and the detector binary.
    Build(build::Options),
    /// Build, then run detector as root: `cargo xtask run [-- ARGS]` (default: `run`).
    Run(run::Options),
    /// Run every test, including the kernel and end-to-end ones (needs root).
    Test(test::Options),
    /// Build the release binary, man pages, shell completions and a .deb under target/dist.
    Dist(dist::Options),
    /// Show detector on a real mail server: lab up, `detector run` attached, a remote MTA, a
    /// customer and a botnet; bans as they happen, dropped SYNs, list and stats; teardown.
    Demo(demo::Options),
    /// Measure: `cargo xtask bench` (every benchmark, then one summary table) or
    /// `cargo xtask bench xdp|parse|import|sweep|cluster|veth|e2e`.
    Bench(bench::Args),
    /// The mail lab (real Postfix + Dovecot in namespaces): `lab up [--journal] [--ipv6]
    /// [--bots N]`, `lab attack [--rounds N]`, `lab client`, `lab logs`, `lab status`, `lab down`.
    Lab(lab::Options),
    /// Write simulated mail logs with ground truth: `cargo xtask sim --seed 1 --hours 48 > log`.
    Sim(sim::Options),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup(o) => setup::run(o),
        Task::Build(o) => build::run(o),
        Task::Run(o) => run::run(o),
        Task::Test(o) => test::run(o),
        Task::Dist(o) => dist::run(o),
        Task::Demo(o) => demo::run(o),
        Task::Bench(b) => bench::run(b),
        Task::Lab(o) => lab::run(o),
        Task::Sim(o) => sim::run(o),
    }
}
