//! `cargo xtask demo`: the first thing to run after the README. Builds detector and the lab
//! tools, brings up a real Postfix + Dovecot in network namespaces, starts `detector run`
//! attached to the mail host, and shows a remote MTA, a customer and a botnet: bans as they
//! happen, SYNs dropped at XDP, `detector list` and `detector stats`. Everything is torn down
//! at the end, also on Ctrl-C or an error (the `demo` binary of the tests crate owns that).
use std::process::Command;

use anyhow::Result;

use crate::util::{build_bins, ensure_bpffs, require_root, run_cmd};

#[derive(clap::Args)]
pub struct Options {
    /// Arguments for the demo binary: `--bots N`, `--pause` (keep everything up until Enter),
    /// `--pin-dir DIR` (default /sys/fs/bpf/detector-demo).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    require_root("the demo needs root (network namespaces, XDP)")?;
    let bins = build_bins(false, &["mailbot", "demo"])?;
    ensure_bpffs()?;
    // Ctrl-C reaches the whole foreground process group: let the demo handle it (it tears
    // everything down) and wait for it, instead of returning to the shell mid-teardown.
    ignore_sigint();
    run_cmd(
        Command::new(bins.join("demo"))
            .args(&opts.args)
            .env("DETECTOR_BIN", bins.join("detector"))
            .env("MAILBOT_BIN", bins.join("mailbot")),
    )
}

pub(crate) fn ignore_sigint() {
    // SAFETY: signal(2) with SIG_IGN (1) for SIGINT (2) has no preconditions. Avoids a libc
    // dependency for one call. The demo installs its own handler, which replaces the
    // inherited "ignore".
    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    unsafe {
        signal(2, 1);
    }
}
