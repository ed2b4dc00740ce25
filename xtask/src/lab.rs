//! `cargo xtask lab up|attack|client|logs|status|down`: the mail lab (real Postfix + Dovecot in
//! network namespaces, see tests/src/lab/) kept up between commands, for the demo and for
//! poking at by hand. Builds and runs the `labctl` binary of the tests crate.
use std::process::Command;

use anyhow::Result;

use crate::util::{require_root, run_cmd, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// labctl arguments, e.g. `up --journal --ipv6`, `attack --rounds 3`, `down` (see `lab help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    require_root("the mail lab needs root (network namespaces, mounts)")?;
    let root = workspace_root();
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--package",
        "detector-tests",
        "--bin",
        "labctl",
        "--bin",
        "mailbot",
    ]))?;
    run_cmd(Command::new(root.join("target/debug/labctl")).args(&opts.args))
}
