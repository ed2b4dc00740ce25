//! The `--pin-dir` option shared by every command that touches the kernel.
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct PinDirArg {
    /// bpffs directory holding detector's pinned maps and XDP links.
    #[arg(long, env = "DETECTOR_PIN_DIR", value_name = "DIR", default_value = detector_common::PIN_DIR)]
    pub pin_dir: PathBuf,
}
