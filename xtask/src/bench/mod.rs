//! `cargo xtask bench <what>`: throughput measurements (never timed assertions in tests).
//! `cargo xtask bench` alone runs every benchmark of [`ALL`] and prints one summary table.
use std::process::Command;

use anyhow::{Context, Result};
use detector_testkit::bench::{SUMMARY_ENV, read_summary};

mod cluster;
mod dovecot_policy;
mod e2e;
mod engine;
mod fail2ban;
mod import;
mod parse;
mod postfix_policy;
mod sweep;
mod veth;
mod xdp;

#[derive(clap::Args)]
pub struct Args {
    /// One benchmark; none: all of them, then one summary table.
    #[command(subcommand)]
    pub bench: Option<Bench>,
}

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Parser throughput: `detector parse --json` over a generated 1M-line mixed
    /// Postfix+Dovecot log, and the ratio against fail2ban-regex (stock postfix and dovecot
    /// filters) on the first 50,000 of those lines, when it is installed.
    Parse(parse::Options),
    /// ns/packet of the XDP program vs an empty and a bare-lookup program (BPF_PROG_TEST_RUN),
    /// same key (hot cache) and random keys (cache-cold); ends with issue 14's targets, each
    /// case beside the bare reference of the same run.
    Xdp(xdp::Options),
    /// Receiver CPU per packet on a veth pair under a UDP flood (paced and flat out): XDP vs
    /// an nftables set vs no filter.
    Veth(veth::Options),
    /// Log line written -> ban in the kernel map through `detector run`, p50/p99 over 250
    /// bans, for the file and the journal source (with journald's own share).
    E2e(e2e::Options),
    /// Engine memory: bytes per tracked address from the allocator's own counters, for 1M
    /// distinct addresses (half IPv6 /64s; probes, failures, customers, lost connections),
    /// against a bare HashMap<IpAddr, u64> with the same keys; and the snapshot copy time.
    Engine(engine::Options),
    /// Bulk blocklist load: `detector ban --from` entries/s for a generated 1M-entry list,
    /// against one `detector ban` process per entry (the old way) in the same run.
    Import(import::Options),
    /// The daemon's sweep at 1M bans: syscalls and wall time per sweep, one entry at a time
    /// (the old way) against batched, in the same run; and the maps' memory.
    Sweep(sweep::Options),
    /// Postfix policy service: reply round trip at a paced rate (p50/p99) and flat-out
    /// requests/s, against a trivial echo-DUNNO server on the same runtime.
    PostfixPolicy(postfix_policy::Options),
    /// Dovecot auth-policy answers: p50/p99 latency at 5,000 requests/s against a constant
    /// hyper server in the same run.
    DovecotPolicy(dovecot_policy::Options),
    /// Several nodes through a private Redis: ban propagation from one node's kernel map to
    /// another's (p50/p99 over 500 bans), events/s published and consumed per node, and Redis
    /// memory per stored event and ban with the 48 h extrapolation.
    Cluster(cluster::Options),
}

/// What `cargo xtask bench` runs, in this order, each with its default options: the
/// subcommand names above. Adding a benchmark to the summary is adding its name here (and
/// recording its figures with `detector_testkit::bench::summary`).
const ALL: &[&str] = &[
    "xdp",
    "parse",
    "engine",
    "import",
    "sweep",
    "postfix-policy",
    "dovecot-policy",
    "cluster",
    "veth",
    "e2e",
];

pub fn run(args: Args) -> Result<()> {
    match args.bench {
        None => run_all(),
        Some(Bench::Parse(o)) => parse::run(o),
        Some(Bench::Xdp(o)) => xdp::run(o),
        Some(Bench::Veth(o)) => veth::run(o),
        Some(Bench::E2e(o)) => e2e::run(o),
        Some(Bench::Engine(o)) => engine::run(o),
        Some(Bench::Import(o)) => import::run(o),
        Some(Bench::Sweep(o)) => sweep::run(o),
        Some(Bench::PostfixPolicy(o)) => postfix_policy::run(o),
        Some(Bench::DovecotPolicy(o)) => dovecot_policy::run(o),
        Some(Bench::Cluster(o)) => cluster::run(o),
    }
}

/// Runs every benchmark of [`ALL`] as `cargo xtask bench NAME` (so each gets its own defaults),
/// going on past failures, then prints what they recorded.
fn run_all() -> Result<()> {
    let summary = crate::util::workspace_root().join("target/bench-summary.tsv");
    std::fs::create_dir_all(summary.parent().expect("under target/"))?;
    let _ = std::fs::remove_file(&summary);
    let me = std::env::current_exe().context("finding the xtask binary")?;
    let mut failed = Vec::new();
    for name in ALL {
        println!("\n=== cargo xtask bench {name} ===");
        let status = Command::new(&me)
            .args(["bench", name])
            .env(SUMMARY_ENV, &summary)
            .status()
            .with_context(|| format!("running bench {name}"))?;
        if !status.success() {
            failed.push(*name);
        }
    }
    println!(
        "\n=== summary (each figure next to its same-run reference and the issue 14 target) ===\n"
    );
    println!("| what | figure | same-run reference | target |");
    println!("|---|---|---|---|");
    for [what, figure, reference, target] in read_summary(&summary) {
        println!("| {what} | {figure} | {reference} | {target} |");
    }
    for name in &failed {
        println!("| bench {name} | failed (output above) | | |");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("benchmarks failed: {}", failed.join(", "))
    }
}
