//! `detector attach`: load the XDP program, attach it, pin everything, exit.
use std::process::ExitCode;

use crate::enforce::{self, AttachMode, AttachOptions, AttachOutcome, Capacity};

use super::pin_dir::PinDirArg;

/// Attach detector's XDP program to interfaces and pin it (it stays attached after this
/// command exits). Running it again is safe: pinned bans are adopted, interfaces that already
/// have the program are left alone, and an older program is replaced in place.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Everything is pinned under --pin-dir, so the program stays attached after this command exits. Running attach again is safe: existing bans are adopted, interfaces that already have the program are left alone, and a program from an older build is replaced in place. Pins from an incompatible build are refused (run `detector detach` first)."
)]
pub struct Args {
    /// Interface to attach to; repeat for several.
    #[arg(long = "iface", value_name = "IFACE", required = true)]
    pub ifaces: Vec<String>,
    /// XDP mode: auto tries native (driver) mode and falls back to generic.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub mode: AttachMode,
    /// Capacity of each exact-ban map (IPv4 and IPv6 each). Fixed when the maps are first
    /// created; a different value for existing maps is refused. [default: 1048576]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_bans: Option<u32>,
    /// Capacity of each prefix (CIDR) trie. [default: 1048576]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_prefix_bans: Option<u32>,
    #[command(flatten)]
    pub pin: PinDirArg,
}

pub fn run(args: Args) -> crate::Result<ExitCode> {
    let capacity = (args.max_bans.is_some() || args.max_prefix_bans.is_some()).then(|| {
        let d = Capacity::default();
        Capacity {
            exact: args.max_bans.unwrap_or(d.exact),
            prefix: args.max_prefix_bans.unwrap_or(d.prefix),
        }
    });
    let opts = AttachOptions {
        pin_dir: args.pin.pin_dir.clone(),
        ifaces: args.ifaces,
        mode: args.mode,
        capacity,
    };
    let report = enforce::attach(&opts)?;
    if report.adopted {
        println!(
            "adopted the pinned maps in {} (existing bans kept)",
            opts.pin_dir.display()
        );
    }
    for iface in &report.upgraded_links {
        println!("{iface}: replaced the running XDP program with this build's (in place)");
    }
    for (iface, outcome) in &report.ifaces {
        match outcome {
            AttachOutcome::Attached(mode) => println!("{iface}: attached ({mode} mode)"),
            AttachOutcome::AlreadyAttached => println!("{iface}: already attached"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
