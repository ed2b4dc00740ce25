//! `detector unban`: remove a ban.
use std::process::ExitCode;

use ipnet::IpNet;

use crate::enforce::{Enforcer, display_target};

use super::pin_dir::PinDirArg;

/// Remove the ban on exactly this address or prefix (unbanning one address inside a banned
/// prefix does not lift the prefix ban; unban the prefix). Exits 1 if there was no such ban.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Unbanning one address inside a banned prefix does not lift the prefix ban; unban the prefix. Exits 1 if there was no such ban."
)]
pub struct Args {
    /// The address or CIDR prefix as it was banned.
    #[arg(value_name = "IP|CIDR", value_parser = super::ban::parse_target)]
    pub target: IpNet,
    #[command(flatten)]
    pub pin: PinDirArg,
}

pub fn run(args: Args) -> crate::Result<ExitCode> {
    let mut enforcer = Enforcer::open(&args.pin.pin_dir)?;
    if enforcer.unban(args.target)? {
        println!("unbanned {}", display_target(&args.target));
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("detector: {} was not banned", display_target(&args.target));
        Ok(ExitCode::FAILURE)
    }
}
