//! `detector explain <IP>`: why an address is (or is not) banned.
use std::net::IpAddr;
use std::process::ExitCode;

use crate::cli::state_args::StateArgs;
use crate::config::Config;
use crate::enforce::Enforcer;
use crate::engine::Engine;
use crate::store::{self, EngineLoad, StateDir};
use crate::{Error, Result};

/// Explain why an address is or is not banned.
///
/// Reads the engine state the daemon last saved (at most `daemon.persist_interval` old) and the
/// kernel maps: the address's failed logins and SMTP probes within the horizon, the rule and
/// evidence of its ban, its offence count and the length of its next ban.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The address to explain.
    #[arg(value_name = "IP", value_parser = parse_ip)]
    pub ip: IpAddr,
    #[command(flatten)]
    pub state: StateArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_ip(text: &str) -> std::result::Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not an IP address"))
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (config, state_dir) = args.state.load()?;
    let engine = load_engine(&config, &state_dir)?;
    let explanation = engine.explain(args.ip);
    // The kernel's view: a manual ban is only there, and the kernel knows the hit count.
    let kernel: Vec<_> = match Enforcer::open(&args.state.pin.pin_dir).and_then(|e| e.list()) {
        Ok(bans) => bans
            .into_iter()
            .filter(|b| b.net.contains(&args.ip))
            .collect(),
        Err(_) => Vec::new(),
    };
    let labels = crate::cli::list::Labels::load(&args.state);
    // `[cluster]`: the nodes whose events led to the bans covering the address.
    let cluster: Vec<(ipnet::IpNet, crate::cluster::BanOrigin)> =
        match StateDir::open_read_only(&state_dir) {
            Ok(Some(state)) => crate::cluster::read_saved(&state)
                .0
                .map(|c| {
                    (c.bans_covering(args.ip).into_iter())
                        .map(|(p, o)| (p, o.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
    if args.json {
        let kernel_json: Vec<_> = kernel
            .iter()
            .map(|b| {
                serde_json::json!({
                    "prefix": b.net.to_string(),
                    "reason": labels.reason(b),
                    "hits": b.hits,
                    "remaining_s": b.remaining.map(|d| d.as_secs()),
                })
            })
            .collect();
        let mut value =
            serde_json::to_value(&explanation).map_err(|e| Error::Store(e.to_string()))?;
        value["kernel_bans"] = serde_json::Value::Array(kernel_json);
        if !cluster.is_empty() {
            value["cluster"] = (cluster.iter())
                .map(|(p, o)| {
                    serde_json::json!({
                        "prefix": p.to_string(),
                        "nodes": o.nodes,
                        "decided_by": o.decided_by,
                    })
                })
                .collect();
        }
        println!("{value}");
    } else {
        println!("{explanation}");
        if kernel.is_empty() {
            println!("kernel: no ban covers {}", args.ip);
        }
        for (prefix, origin) in &cluster {
            println!(
                "cluster: {prefix} banned on evidence from node(s) {} (decided by {})",
                origin.nodes.join(", "),
                origin.decided_by
            );
        }
        for b in &kernel {
            let left = b.remaining.map_or("permanent".to_string(), |d| {
                humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
            });
            println!(
                "kernel: {} banned ({}), {left} left, {} packets dropped",
                b.net,
                labels.reason(b),
                b.hits
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon's loader, on a read-only view of its state: nothing is created or moved.
pub(crate) fn load_engine(config: &Config, state_dir: &std::path::Path) -> Result<Engine> {
    let state = StateDir::open_read_only(state_dir)?;
    let now = chrono::Utc::now();
    let max_ahead = config.daemon.max_clock_ahead;
    match store::load_engine(state.as_ref(), &config.engine, now, max_ahead)? {
        EngineLoad::Damaged { reason, .. } => Err(Error::Store(format!(
            "engine state in {} unreadable: {reason}",
            state_dir.display()
        ))),
        load => Ok(load.engine()),
    }
}
