//! `detector check-config`: validate a configuration file.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, DEFAULT_CONFIG_PATH};

/// Validate a configuration file and print the effective settings (defaults filled in).
///
/// Exits 0 when the file is valid; otherwise prints one line naming the offending key and
/// exits non-zero. The systemd unit runs it before starting the daemon.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file to check.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Print the effective configuration as JSON instead of TOML.
    #[arg(long)]
    pub json: bool,
    /// Print nothing on success.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: Args) -> crate::Result<ExitCode> {
    let config = Config::from_file(&args.config)?;
    if args.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        let text = serde_json::to_string_pretty(&config)
            .map_err(|e| crate::Error::config("configuration", e.to_string()))?;
        println!("{text}");
    } else {
        println!("# {}: valid. Effective settings:", args.config.display());
        println!("{config:#?}");
    }
    Ok(ExitCode::SUCCESS)
}
