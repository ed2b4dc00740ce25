use std::process::Command;

use anyhow::Result;

use crate::util::{ensure_bpffs, require_root, run_cmd, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Arguments for detector (default: `run`, on the default config).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    require_root("detector needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) to load XDP")?;
    crate::build::build(true)?;
    ensure_bpffs()?;
    let args = if opts.args.is_empty() {
        vec!["run".to_string()]
    } else {
        opts.args
    };
    run_cmd(Command::new(workspace_root().join("target/release/detector")).args(args))
}
