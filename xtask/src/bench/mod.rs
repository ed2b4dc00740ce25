//! `cargo xtask bench <what>`: throughput measurements (never timed assertions in tests).
use anyhow::Result;

mod parse;
mod xdp;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub bench: Bench,
}

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Parser throughput: `detector parse --json` over a generated 1M-line mixed
    /// Postfix+Dovecot log, and the ratio against fail2ban-regex when it is installed.
    Parse(parse::Options),
    /// ns/packet of the XDP program vs an empty and a bare-lookup program (BPF_PROG_TEST_RUN).
    Xdp(xdp::Options),
}

pub fn run(args: Args) -> Result<()> {
    match args.bench {
        Bench::Parse(o) => parse::run(o),
        Bench::Xdp(o) => xdp::run(o),
    }
}
