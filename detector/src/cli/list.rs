//! `detector list`: the live bans.
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::enforce::{BanEntry, Enforcer};

use super::state_args::StateArgs;

/// List live bans: address, expiry, reason, hits (packets matched). Expired entries are not
/// shown (the kernel already ignores them).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only the entries of this blocklist (`ban --from FILE --list NAME`).
    #[arg(long, value_name = "NAME")]
    pub list: Option<String>,
    /// The state directory names where `crowdsec` bans came from (origin and scenario).
    #[command(flatten)]
    pub state: StateArgs,
}

fn expires_at(e: &BanEntry) -> Option<String> {
    e.expires_at
        .map(|t| DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true))
}

pub fn run(args: Args) -> crate::Result<ExitCode> {
    let enforcer = Enforcer::open(&args.state.pin.pin_dir)?;
    let mut bans = enforcer.list()?;
    let labels = Labels::load(&args.state);
    if let Some(name) = &args.list {
        crate::blocklist::lists::check_name(name)?;
        bans.retain(|b| {
            b.reason == crate::enforce::Reason::Blocklist
                && labels
                    .lists
                    .get(&b.net)
                    .is_some_and(|names| names.contains(name))
        });
    }
    if args.json {
        let rows: Vec<_> = bans
            .iter()
            .map(|e| {
                json!({
                    "address": e.target(),
                    "expires_at": expires_at(e),
                    "expires_in_s": e.remaining.map(|d| d.as_secs()),
                    "reason": labels.reason(e),
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
            labels.reason(e),
            e.hits
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What the state directory says about bans the kernel only knows by reason code.
pub struct Labels {
    crowdsec: std::collections::BTreeMap<ipnet::IpNet, String>,
    lists: std::collections::HashMap<ipnet::IpNet, Vec<String>>,
}

impl Labels {
    /// Best effort: without a readable state directory, reasons are the bare codes.
    pub fn load(state: &StateArgs) -> Labels {
        let dir = state
            .load()
            .map(|(_, dir)| dir)
            .unwrap_or_else(|_| std::path::PathBuf::from(crate::store::DEFAULT_STATE_DIR));
        Labels {
            crowdsec: crate::crowdsec::status::read_labels(&dir),
            lists: crate::blocklist::lists::membership(&dir),
        }
    }

    /// `crowdsec/<origin>/<scenario>` for a CrowdSec ban, else the reason's name.
    pub fn reason(&self, e: &BanEntry) -> String {
        match e.reason {
            crate::enforce::Reason::CrowdSec => self
                .crowdsec
                .get(&e.net)
                .cloned()
                .unwrap_or_else(|| "crowdsec".to_string()),
            crate::enforce::Reason::Blocklist => match self.lists.get(&e.net) {
                Some(names) => format!("blocklist/{}", names.join(",")),
                None => "blocklist".to_string(),
            },
            other => other.as_str().to_string(),
        }
    }
}
