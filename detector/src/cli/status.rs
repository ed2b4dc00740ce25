//! `detector status`: a one-screen health view.
use std::process::{Command, ExitCode};
use std::time::SystemTime;

use serde::Serialize;

use crate::Result;
use crate::cli::state_args::StateArgs;
use crate::enforce::{Enforcer, PinPaths};
use crate::source::Position;
use crate::store::{Checkpoints, DaemonCounters, ENGINE_STATE_FILE, Loaded, StateDir};

/// Show whether the XDP program is attached (where, native or generic), how full the ban maps
/// are, the active bans, whether the daemon runs, how far behind each log source is, and the
/// input the daemon did not trust.
///
/// Changes nothing: the state directory is only read (not created, no file moved).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub state: StateArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Status {
    pin_dir: String,
    attached: Vec<Attachment>,
    maps: Option<MapFill>,
    daemon_pid: Option<u32>,
    sources: Vec<SourceState>,
    engine_state_age_s: Option<u64>,
    /// What the daemon counted and did not trust, as of its last save.
    untrusted: Option<DaemonCounters>,
    /// `[cluster]`: as the running daemon last wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<crate::cluster::ClusterStatus>,
    problems: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Attachment {
    iface: String,
    /// "native", "generic", or "unknown" (interface gone, or `ip` could not tell).
    mode: String,
}

#[derive(Debug, Serialize)]
struct MapFill {
    exact_v4: usize,
    exact_v6: usize,
    prefix: usize,
    exact_capacity: u32,
    prefix_capacity: u32,
    hits: u64,
    dropped: u64,
    passed: u64,
    observe_mode: bool,
}

#[derive(Debug, Serialize)]
struct SourceState {
    source: String,
    position: String,
    /// For the journal: age of the last entry processed (from the cursor's timestamp).
    lag_s: Option<u64>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (_config, state_dir) = args.state.load()?;
    let pin_dir = args.state.pin.pin_dir.clone();
    let mut problems = Vec::new();

    let attached = PinPaths::new(&pin_dir)
        .linked_interfaces()
        .into_iter()
        .map(|iface| Attachment {
            mode: xdp_mode(&iface),
            iface,
        })
        .collect::<Vec<_>>();
    if attached.is_empty() {
        problems
            .push("the XDP program is not attached anywhere (detector attach --iface IF)".into());
    }
    let maps = match Enforcer::open(&pin_dir) {
        Ok(enforcer) => map_fill(&enforcer)
            .map_err(|e| problems.push(e.to_string()))
            .ok(),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };

    let mut daemon_pid = None;
    let mut sources = Vec::new();
    let mut engine_state_age_s = None;
    let mut untrusted = None;
    let mut cluster = None;
    match StateDir::open_read_only(&state_dir) {
        Ok(Some(state)) => {
            daemon_pid = state.running_pid();
            cluster = crate::cluster::read_saved(&state).1;
            match Checkpoints::read(&state) {
                Ok(Loaded::Found(c)) => {
                    sources = c.iter().map(|(id, pos)| source_state(id, pos)).collect();
                }
                Ok(Loaded::Missing) => {}
                Ok(Loaded::Unreadable { reason } | Loaded::Quarantined { reason, .. }) => {
                    problems.push(format!("{} is damaged: {reason}", Checkpoints::FILE_NAME));
                }
                Err(e) => problems.push(e.to_string()),
            }
            engine_state_age_s = std::fs::metadata(state.file(ENGINE_STATE_FILE))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map(|d| d.as_secs());
            match DaemonCounters::read(&state) {
                Ok(Loaded::Found(c)) => untrusted = Some(c),
                Ok(Loaded::Missing) => {}
                Ok(Loaded::Unreadable { reason } | Loaded::Quarantined { reason, .. }) => {
                    problems.push(format!(
                        "{} is damaged: {reason}",
                        DaemonCounters::FILE_NAME
                    ));
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        Ok(None) => problems.push(format!(
            "no state directory {} (the daemon has not run with it)",
            state_dir.display()
        )),
        Err(e) => problems.push(e.to_string()),
    }
    if daemon_pid.is_none() {
        problems
            .push("the daemon is not running (bans in the kernel still drop and expire)".into());
    }

    if let Some(c) = &cluster
        && daemon_pid.is_some()
        && !c.connected
    {
        problems.push(format!(
            "the cluster's Redis is unreachable{}; detecting and banning on local evidence",
            c.last_error
                .as_ref()
                .map_or(String::new(), |e| format!(" ({e})"))
        ));
    }
    let status = Status {
        cluster,
        pin_dir: pin_dir.display().to_string(),
        attached,
        maps,
        daemon_pid,
        sources,
        engine_state_age_s,
        untrusted,
        problems,
    };
    if args.json {
        println!("{}", serde_json::to_string(&status).unwrap_or_default());
    } else {
        print_human(&status);
    }
    Ok(ExitCode::SUCCESS)
}

fn map_fill(enforcer: &Enforcer) -> Result<MapFill> {
    let bans = enforcer.list()?;
    let stats = enforcer.stats()?;
    let capacity = enforcer.capacity();
    let full = |n: &ipnet::IpNet| n.prefix_len() == n.max_prefix_len();
    Ok(MapFill {
        exact_v4: bans
            .iter()
            .filter(|b| full(&b.net) && b.net.addr().is_ipv4())
            .count(),
        exact_v6: bans
            .iter()
            .filter(|b| full(&b.net) && b.net.addr().is_ipv6())
            .count(),
        prefix: bans.iter().filter(|b| !full(&b.net)).count(),
        exact_capacity: capacity.exact,
        prefix_capacity: capacity.prefix,
        hits: bans.iter().map(|b| b.hits).sum(),
        dropped: stats.counters.dropped,
        passed: stats.counters.passed,
        observe_mode: stats.observe_mode,
    })
}

/// Native or generic, from `ip -details -json link show` (`xdp.mode`: 1 driver, 2 generic,
/// 3 offload). Interfaces in other network namespaces are not visible from here.
fn xdp_mode(iface: &str) -> String {
    let output = Command::new("ip")
        .args(["-details", "-json", "link", "show", "dev", iface])
        .output();
    let Ok(output) = output else {
        return "unknown".into();
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
        return "unknown".into();
    };
    match json[0]["xdp"]["mode"].as_u64() {
        Some(1) => "native".into(),
        Some(2) => "generic".into(),
        Some(3) => "offload".into(),
        _ => "unknown".into(),
    }
}

fn source_state(id: &str, position: &Position) -> SourceState {
    match position {
        Position::Journal { cursor } => SourceState {
            source: id.to_string(),
            position: "journal cursor".into(),
            lag_s: cursor_age(cursor),
        },
        Position::File { path, offset, .. } => SourceState {
            source: id.to_string(),
            position: format!("{} at byte {offset}", path.display()),
            lag_s: None,
        },
        Position::Stdin { line } => SourceState {
            source: id.to_string(),
            position: format!("line {line}"),
            lag_s: None,
        },
    }
}

/// A journal cursor carries the entry's realtime timestamp as `t=<hex µs>`.
fn cursor_age(cursor: &str) -> Option<u64> {
    let hex = cursor.split(';').find_map(|f| f.strip_prefix("t="))?;
    let us = u64::from_str_radix(hex, 16).ok()?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_micros() as u64;
    Some(now.saturating_sub(us) / 1_000_000)
}

fn print_human(s: &Status) {
    println!("pin dir      {}", s.pin_dir);
    if s.attached.is_empty() {
        println!("attached     nowhere");
    }
    for a in &s.attached {
        println!("attached     {} ({})", a.iface, a.mode);
    }
    if let Some(m) = &s.maps {
        let pct = |n: usize, cap: u32| 100.0 * n as f64 / cap.max(1) as f64;
        println!(
            "bans         {} IPv4 ({:.2}% of {}), {} IPv6 ({:.2}%), {} prefixes (of {})",
            m.exact_v4,
            pct(m.exact_v4, m.exact_capacity),
            m.exact_capacity,
            m.exact_v6,
            pct(m.exact_v6, m.exact_capacity),
            m.prefix,
            m.prefix_capacity
        );
        println!(
            "packets      {} dropped, {} passed, {} hits on active bans",
            m.dropped, m.passed, m.hits
        );
        if m.observe_mode {
            println!("mode         OBSERVE (dry run): matches are counted, not dropped");
        }
    }
    match s.daemon_pid {
        Some(pid) => println!("daemon       running (pid {pid})"),
        None => println!("daemon       not running"),
    }
    for src in &s.sources {
        match src.lag_s {
            Some(lag) => println!(
                "source       {}: {} ({lag} s behind)",
                src.source, src.position
            ),
            None => println!("source       {}: {}", src.source, src.position),
        }
    }
    if let Some(age) = s.engine_state_age_s {
        println!("engine state saved {age} s ago");
    }
    if let Some(c) = &s.untrusted {
        println!(
            "untrusted    {} journal entries not from the mail servers{}",
            c.journal_untrusted,
            c.journal_untrusted_last
                .as_ref()
                .map_or(String::new(), |l| format!(" (last: {l})"))
        );
        println!(
            "untrusted    {} lines stamped ahead of the wall clock{}",
            c.lines_ahead_of_clock,
            if c.lines_ahead_of_clock > 0 {
                format!(" (by up to {} s)", c.max_ahead_s)
            } else {
                String::new()
            }
        );
        println!(
            "untrusted    {} lines longer than the line limit (not parsed)",
            c.truncated_lines
        );
    }
    if let Some(c) = &s.untrusted
        && c.max_tracked_ips > 0
    {
        println!(
            "engine       {} addresses tracked (cap {}); {} evicted for space, {} of them with \
             evidence toward a ban{}",
            c.tracked_ips,
            c.max_tracked_ips,
            c.evicted_for_space,
            c.evicted_with_evidence,
            if c.evicted_with_evidence > 0 {
                " (raise engine.max_tracked_ips)"
            } else {
                ""
            }
        );
    }
    if let Some(c) = &s.cluster {
        print_cluster(c, s.daemon_pid.is_some());
    }
    for p in &s.problems {
        println!("problem      {p}");
    }
}

fn print_cluster(c: &crate::cluster::ClusterStatus, running: bool) {
    let link = if !running {
        "as of the daemon's last run".to_string()
    } else if c.connected {
        "connected".to_string()
    } else {
        match c.down_since {
            Some(t) => format!("NOT connected since {}", t.format("%Y-%m-%d %H:%M:%S UTC")),
            None => "NOT connected".to_string(),
        }
    };
    println!("cluster      node {} via {}: {link}", c.node, c.redis);
    println!(
        "cluster      {} published, {} consumed, {} buffered, {} dropped, {} reconnects, lag {:.1} s",
        c.published, c.consumed, c.buffered, c.dropped, c.reconnects, c.lag_s
    );
    let now = c.written_at.unwrap_or_else(chrono::Utc::now);
    for (name, p) in c.recent_peers(now) {
        println!(
            "peer         {name}: last seen {}, last event {}, {} events, {} bans",
            p.last_seen
                .map_or("never".into(), |t| t.format("%H:%M:%S").to_string()),
            p.last_event
                .map_or("none".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
            p.events,
            p.bans
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_age_reads_the_realtime_field() {
        let now_us = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let cursor = format!("s=abc;i=1f;b=def;m=12;t={:x};x=99", now_us - 90_000_000);
        let age = cursor_age(&cursor).unwrap();
        assert!((89..=91).contains(&age), "{age}");
        assert_eq!(cursor_age("s=abc;i=1"), None);
        assert_eq!(cursor_age("t=zz"), None);
    }
}
