//! `detector unban`: remove a ban.
use std::process::ExitCode;

use ipnet::IpNet;

use crate::enforce::{Enforcer, display_target};

use super::state_args::StateArgs;

/// Remove the ban on exactly this address or prefix (unbanning one address inside a banned
/// prefix does not lift the prefix ban; unban the prefix). Exits 1 if there was no such ban.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Unbanning one address inside a banned prefix does not lift the prefix ban; unban the prefix. Exits 1 if there was no such ban."
)]
pub struct Args {
    /// The address or CIDR prefix as it was banned.
    #[arg(value_name = "IP|CIDR", value_parser = super::ban::parse_target,
          required_unless_present_any = ["from", "list"], conflicts_with_all = ["from", "list"])]
    pub target: Option<IpNet>,
    /// Unban every address and prefix of a blocklist file (the formats of `ban --from`).
    #[arg(long, value_name = "FILE", conflicts_with = "list")]
    pub from: Option<std::path::PathBuf>,
    /// Unban exactly what `ban --from FILE --list NAME` loaded (entries another list or a
    /// rule also banned stay) and forget the list.
    #[arg(long, value_name = "NAME")]
    pub list: Option<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn run(args: Args) -> crate::Result<ExitCode> {
    let Some(target) = args.target else {
        return super::import::unban_from(&args);
    };
    let mut enforcer = Enforcer::open(&args.state.pin.pin_dir)?;
    if enforcer.unban(target)? {
        println!("unbanned {}", display_target(&target));
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("detector: {} was not banned", display_target(&target));
        Ok(ExitCode::FAILURE)
    }
}
