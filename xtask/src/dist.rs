//! `cargo xtask dist`: release binary, man pages, completions and a .deb (via cargo-deb).
use std::process::Command;

use anyhow::Result;

use crate::util::{run_cmd, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Only build the binary, man pages and completions; skip the .deb.
    #[arg(long)]
    no_deb: bool,
}

pub fn run(opts: Options) -> Result<()> {
    let root = workspace_root();
    crate::build::build(true)?;
    run_cmd(
        Command::new(root.join("target/release/detector"))
            .args(["generate", "--out"])
            .arg(root.join("target/dist")),
    )?;
    if opts.no_deb {
        return Ok(());
    }
    let has_cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_deb {
        run_cmd(Command::new("cargo").args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            "^3",
        ]))?;
    }
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .args(["deb", "--package", "detector", "--no-build", "--output"])
            .arg(root.join("target/dist")),
    )
}
