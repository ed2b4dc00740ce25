//! `detector ban`: add a ban to the pinned maps.
use std::process::ExitCode;
use std::time::Duration;

use ipnet::IpNet;

use crate::enforce::{
    Allowlist, BanOutcome, Enforcer, Reason, canonical, display_target, host_infrastructure,
};

use super::state_args::StateArgs;

/// Ban an address or CIDR prefix. The ban is enforced by the XDP program at once and expires
/// by itself in the kernel, daemon or not. Banning an already banned address extends its
/// expiry (never shortens it). Loopback, link-local, multicast, this host's own addresses, its
/// nameservers, default gateways and Postfix relayhost, and the configured allowlist are
/// refused.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The ban takes effect at once and expires in the kernel, whether the daemon runs or not. Without --for it lasts 24h; use --permanent for no expiry. Banning an already banned address extends its expiry, never shortens it (unban first). Loopback, link-local, multicast, this host's own addresses, its nameservers, default gateways and Postfix relayhost, and the configuration's engine.allowlist are refused. A /32 or /128 is an exact ban; a wider prefix bans the whole range; an IPv4-mapped IPv6 address (::ffff:a.b.c.d) bans the IPv4 address."
)]
pub struct Args {
    /// IPv4/IPv6 address or CIDR prefix (198.51.100.7, 2001:db8::/48).
    #[arg(value_name = "IP|CIDR", value_parser = parse_target, required_unless_present = "from", conflicts_with = "from")]
    pub target: Option<IpNet>,
    /// Load a blocklist instead: one address or CIDR per line with optional duration and
    /// reason columns (`#` comments), `ipset save` output, or CrowdSec decisions JSON; `-`
    /// reads standard input. Bad lines are reported by number; the rest is applied.
    #[arg(long, value_name = "FILE")]
    pub from: Option<std::path::PathBuf>,
    /// With --from: tag the entries as list NAME (kept in the state directory). Loading the
    /// same list again replaces it: entries no longer in it are unbanned.
    #[arg(long, value_name = "NAME", requires = "from")]
    pub list: Option<String>,
    /// How long the ban lasts (humantime: 90s, 30m, 2h, 7d, "1h 30m").
    #[arg(long = "for", value_name = "DURATION", default_value = "24h", value_parser = parse_ttl,
          conflicts_with = "permanent")]
    pub ttl: Duration,
    /// Never expire (until `detector unban`).
    #[arg(long)]
    pub permanent: bool,
    /// Why (shown by `list`): manual, probe-login, slow-repeat, target-campaign, burst,
    /// blocklist, other. Default: manual, or blocklist with --from.
    #[arg(long, value_name = "REASON")]
    pub reason: Option<Reason>,
    #[command(flatten)]
    pub state: StateArgs,
}

/// The `IP|CIDR` argument (also of `unban` and `trace`): the library's one target parser.
pub use crate::blocklist::parse::target as parse_target;

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); examples: 90s, 30m, 2h, 7d"))?;
    if d.is_zero() {
        return Err("a ban must last longer than 0s (use --permanent for no expiry)".into());
    }
    Ok(d)
}

pub fn run(args: Args) -> crate::Result<ExitCode> {
    let Some(target) = args.target else {
        return super::import::ban_from(&args);
    };
    let (config, _) = args.state.load()?;
    let mut enforcer = Enforcer::open(&args.state.pin.pin_dir)?;
    enforcer.set_allowlist(
        Allowlist::new(config.engine.allowlist).with_infrastructure(host_infrastructure()),
    );
    let ttl = (!args.permanent).then_some(args.ttl);
    // An IPv4-mapped target is the IPv4 address: banned, read back and printed as such.
    let target = canonical(target);
    let outcome = enforcer.ban(target, ttl, args.reason.unwrap_or(Reason::Manual))?;
    // Printed from what the kernel now holds, not from the request: an end beyond what the
    // kernel's clock field can hold was stored as permanent, and an unchanged ban keeps its own.
    let stored = enforcer.entry(target)?;
    let how_long = match stored.as_ref().and_then(|e| e.remaining) {
        // Rounded up: read back microseconds after the write, a 2h ban has 1h59m59.99s left.
        Some(d) => format!(
            "for {}",
            humantime::format_duration(Duration::from_secs(
                d.as_secs() + u64::from(d.subsec_nanos() > 0)
            ))
        ),
        None if stored.is_some() => "permanently".to_string(),
        None => "(no live entry found afterwards)".to_string(),
    };
    let target = display_target(&target);
    match outcome {
        BanOutcome::Added => println!("banned {target} {how_long}"),
        BanOutcome::Extended => println!("{target} was already banned; extended: {how_long}"),
        BanOutcome::Unchanged => {
            println!("{target} is already banned at least that long; unchanged: {how_long}")
        }
    }
    let stored_permanent = stored.as_ref().is_some_and(|e| e.remaining.is_none());
    if let Some(asked) = ttl
        && stored_permanent
        && outcome != BanOutcome::Unchanged
    {
        eprintln!(
            "detector: note: {} is beyond what the kernel's expiry can hold; stored as permanent",
            humantime::format_duration(asked)
        );
    }
    if enforcer.attached_interfaces().is_empty() {
        eprintln!(
            "detector: warning: the XDP program is not attached to any interface; run `detector attach`"
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("198.51.100.7").unwrap().to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            parse_target("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(
            parse_target("198.51.100.0/24").unwrap().to_string(),
            "198.51.100.0/24"
        );
        assert!(
            parse_target("198.51.100.7/24")
                .unwrap_err()
                .contains("198.51.100.0/24")
        );
        assert!(parse_target("nonsense").is_err());
        assert!(parse_target("1.2.3.4/33").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}
