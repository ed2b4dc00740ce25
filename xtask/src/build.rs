use std::process::Command;

use anyhow::Result;

use crate::setup::check_build_prereqs;
use crate::util::{run_cmd, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn run(opts: Options) -> Result<()> {
    build(opts.release)
}

pub fn build(release: bool) -> Result<()> {
    check_build_prereqs()?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).args(["build", "--package", "detector"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)
}
