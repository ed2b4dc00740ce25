//! `detector stats`: the XDP program's counters.
use std::process::ExitCode;

use crate::enforce::Enforcer;

use super::pin_dir::PinDirArg;

/// Show the XDP program's packet counters (since the maps were created), summed over CPUs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pin: PinDirArg,
}

pub fn run(args: Args) -> crate::Result<ExitCode> {
    let enforcer = Enforcer::open(&args.pin.pin_dir)?;
    let s = enforcer.stats()?;
    if args.json {
        let v = serde_json::to_value(s).map_err(|e| crate::Error::bpf("stats", e))?;
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let ifaces = enforcer.attached_interfaces();
    println!(
        "attached to:    {}",
        if ifaces.is_empty() {
            "(nothing)".to_string()
        } else {
            ifaces.join(", ")
        }
    );
    println!(
        "mode:           {}",
        if s.observe_mode {
            "observe (matches pass)"
        } else {
            "enforce"
        }
    );
    println!("{:<16}{}", "seen:", s.seen());
    for (c, value) in s.iter() {
        println!("{:<16}{value}", format!("{}:", c.name.replace('_', " ")));
    }
    Ok(ExitCode::SUCCESS)
}
