//! `detector list`: the live bans.
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::enforce::{BanEntry, Enforcer};

use super::pin_dir::PinDirArg;

/// List live bans: address, expiry, reason, hits (packets matched). Expired entries are not
/// shown (the kernel already ignores them).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pin: PinDirArg,
}

fn expires_at(e: &BanEntry) -> Option<String> {
    e.expires_at
        .map(|t| DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true))
}

pub fn run(args: Args) -> crate::Result<ExitCode> {
    let enforcer = Enforcer::open(&args.pin.pin_dir)?;
    let bans = enforcer.list()?;
    if args.json {
        let rows: Vec<_> = bans
            .iter()
            .map(|e| {
                json!({
                    "address": e.target(),
                    "expires_at": expires_at(e),
                    "expires_in_s": e.remaining.map(|d| d.as_secs()),
                    "reason": e.reason,
                    "hits": e.hits,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<43} {:<22} {:<12} {:<16} {:>10}",
        "ADDRESS", "EXPIRES (UTC)", "IN", "REASON", "HITS"
    );
    for e in &bans {
        let (at, left) = match e.remaining {
            Some(d) => (
                expires_at(e).unwrap_or_default(),
                humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string(),
            ),
            None => ("never".to_string(), "-".to_string()),
        };
        println!(
            "{:<43} {:<22} {:<12} {:<16} {:>10}",
            e.target(),
            at,
            left,
            e.reason.as_str(),
            e.hits
        );
    }
    Ok(ExitCode::SUCCESS)
}
