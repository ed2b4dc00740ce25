//! `cargo xtask bench <what>`: throughput measurements (never timed assertions in tests).
use anyhow::Result;

mod cluster;
mod e2e;
mod engine;
mod fail2ban;
mod import;
mod parse;
mod veth;
mod xdp;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub bench: Bench,
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
    /// Several nodes through a private Redis: ban propagation from one node's kernel map to
    /// another's (p50/p99 over 500 bans), events/s published and consumed per node, and Redis
    /// memory per stored event and ban with the 48 h extrapolation.
    Cluster(cluster::Options),
}

pub fn run(args: Args) -> Result<()> {
    match args.bench {
        Bench::Parse(o) => parse::run(o),
        Bench::Xdp(o) => xdp::run(o),
        Bench::Veth(o) => veth::run(o),
        Bench::E2e(o) => e2e::run(o),
        Bench::Engine(o) => engine::run(o),
        Bench::Import(o) => import::run(o),
        Bench::Cluster(o) => cluster::run(o),
    }
}
