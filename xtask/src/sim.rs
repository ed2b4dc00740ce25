//! `cargo xtask sim`: simulated Postfix + Dovecot logs with ground truth (the `sim` binary of
//! the tests crate), e.g. `cargo xtask sim --seed 1 --hours 48 > mail.log`.
use std::process::Command;

use anyhow::Result;

use crate::util::{run_cmd, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Arguments for the simulator (`--seed N --hours H --bots N --out DIR`; see `-- --help`).
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
