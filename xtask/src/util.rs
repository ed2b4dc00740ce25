use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

// The runner shared with the test harness.
pub use detector_testkit::cmd::{is_root, output, run_shown as run_cmd};

/// Mounts bpffs at /sys/fs/bpf when it is missing (pins live there).
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mounting bpffs at /sys/fs/bpf")
}

/// Fails with one clear line when not root; `what` says why root is needed.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what}; rerun as root");
    }
    Ok(())
}

/// Builds the `detector` binary and the given binaries of the tests crate, and returns the
/// directory they are in (`target/release` or `target/debug`).
pub fn build_bins(release: bool, test_bins: &[&str]) -> Result<PathBuf> {
    let root = workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["build", "--package", "detector", "--bin", "detector"]);
    if !test_bins.is_empty() {
        cmd.args(["--package", "detector-tests"]);
        for bin in test_bins {
            cmd.args(["--bin", bin]);
        }
    }
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)?;
    Ok(root
        .join("target")
        .join(if release { "release" } else { "debug" }))
}
