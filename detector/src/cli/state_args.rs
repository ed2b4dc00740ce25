//! Options of the commands that read what the daemon left behind (`status`, `explain`).
use std::path::PathBuf;

use crate::cli::pin_dir::PinDirArg;
use crate::config::Config;

#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// Configuration file (for the state directory and the engine settings).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory (overrides the configuration).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub pin: PinDirArg,
}

impl StateArgs {
    /// The configuration and the state directory it (or `--state-dir`) names.
    pub fn load(&self) -> crate::Result<(Config, PathBuf)> {
        let config = Config::load(self.config.as_deref())?;
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| config.daemon.state_dir.clone());
        Ok((config, state_dir))
    }
}
