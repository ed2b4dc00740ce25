//! `cargo xtask sim`: the scenario simulator (the `sim` binary of the tests crate). Without
//! arguments: 72 h of every traffic kind, Dovecot 2.3 and 2.4, syslog files and journal JSON,
//! through parser and engine in log time; prints per traffic class what was banned, dropped
//! and alerted. `cargo xtask sim --stdout > mail.log` or `--out DIR` writes the logs instead.
use std::process::Command;

use anyhow::Result;

use crate::util::{run_cmd, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Arguments for the simulator (`--seed N --hours H --dovecot 2.3|2.4|both --envelope
    /// files|journal|both --stdout --out DIR`; see `cargo xtask sim --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    run_cmd(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "detector-tests",
                "--bin",
                "sim",
                "--",
            ])
            .args(opts.args),
    )
}
