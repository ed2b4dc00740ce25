//! `detector detach`: remove XDP links, the program and the pins.
use std::process::ExitCode;

use crate::enforce;

use super::pin_dir::PinDirArg;

/// Detach the XDP program. Without --iface: from every interface, and remove the program and
/// all maps (every ban is dropped). With --iface: from that interface only (bans stay).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without --iface, every ban is dropped with the maps. To stop filtering but keep the bans, detach each interface with --iface."
)]
pub struct Args {
    /// Detach from this interface only and keep the maps.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
    #[command(flatten)]
    pub pin: PinDirArg,
}

pub fn run(args: Args) -> crate::Result<ExitCode> {
    let report = enforce::detach(&args.pin.pin_dir, args.iface.as_deref())?;
    for iface in &report.links {
        println!("{iface}: detached");
    }
    if report.maps_removed {
        println!(
            "removed the program and maps in {} (all bans dropped)",
            args.pin.pin_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
