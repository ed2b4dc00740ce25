use std::process::Command;

use anyhow::Result;

use crate::setup::check_build_prereqs;
use crate::util::{ensure_bpffs, require_root, run_cmd, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Extra arguments passed to `cargo test` (e.g. a test name filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    check_build_prereqs()?;
    require_root("the kernel and end-to-end tests need root (XDP, network namespaces)")?;
    ensure_bpffs()?;
    let root = workspace_root();
    // The kernel tests drive the real binary; build it first so they find it.
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .args(["build", "--package", "detector"]),
    )?;
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(&opts.args)
            .env("DETECTOR_BIN", root.join("target/debug/detector")),
    )
}
