//! `detector trace`: watch live what the XDP program does with one address or prefix.
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{Interest, unix::AsyncFd};
use tokio::signal::unix::{SignalKind, signal};

use crate::Error;
use crate::enforce::display_target;
use crate::enforce::trace::{TraceReader, TraceSwitch};

use super::pin_dir::PinDirArg;

/// The longest trace: it holds a per-packet check on, so it must end.
const MAX_TRACE: Duration = Duration::from_secs(24 * 3600);

/// Print, for each packet from an address or prefix, the XDP program's verdict and the ban
/// that decided it, while the daemon keeps running.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Tracing is switched on in the running XDP program for the given source and off again when --for runs out or on Ctrl-C. If this process is killed, the program switches the trace off by itself at its deadline. One trace at a time."
)]
pub struct Args {
    /// IPv4/IPv6 address or CIDR prefix to trace.
    #[arg(value_name = "IP|CIDR", value_parser = super::ban::parse_target,
          required_unless_present_any = ["stop", "status"])]
    pub target: Option<IpNet>,
    /// How long to trace (humantime: 30s, 5m; at most 24h).
    #[arg(long = "for", value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Switch off a trace left on by another `detector trace`.
    #[arg(long, conflicts_with_all = ["target", "status"])]
    pub stop: bool,
    /// Say whether a trace is on; change nothing.
    #[arg(long, conflicts_with = "target")]
    pub status: bool,
    #[command(flatten)]
    pub pin: PinDirArg,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); examples: 30s, 5m"))?;
    if d.is_zero() || d > MAX_TRACE {
        return Err(format!(
            "a trace lasts more than 0s and at most 24h, not `{s}`"
        ));
    }
    Ok(d)
}

pub fn run(args: Args) -> crate::Result<ExitCode> {
    let mut switch = TraceSwitch::open(&args.pin.pin_dir)?;
    if args.status {
        println!("{}", switch.state()?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.stop {
        let before = switch.stop()?;
        println!("{before}; now off");
        return Ok(ExitCode::SUCCESS);
    }
    let target = args
        .target
        .ok_or_else(|| Error::Usage("trace needs an IP or CIDR".into()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("starting the async runtime: {e}")))?;
    runtime.block_on(watch(switch, target, args.duration))
}

async fn watch(
    mut switch: TraceSwitch,
    target: IpNet,
    duration: Duration,
) -> crate::Result<ExitCode> {
    let reader = TraceReader::open(switch.program_id(), |line| {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
        let mut out = std::io::stdout().lock();
        let _ = match line {
            Ok(line) => writeln!(out, "{now} {line}"),
            Err(raw) => writeln!(out, "{now} {raw}"),
        };
    })?;
    // SAFETY: the fd is the ring buffer map's, owned by `reader` (moved into the AsyncFd), so
    // it stays open and the same for the AsyncFd's whole life.
    let mut reader = unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) }
        .map_err(|e| Error::Usage(format!("watching the trace log: {e}")))?;
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| Error::Usage(format!("installing a SIGTERM handler: {e}")))?;
    let entry = switch.start(target, duration)?;
    println!(
        "tracing {} for {} (Ctrl-C to stop)",
        display_target(&target),
        humantime::format_duration(duration)
    );
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    let outcome = loop {
        tokio::select! {
            _ = &mut deadline => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            ready = reader.readable_mut() => match ready {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => break Err(Error::Usage(format!("reading the trace log: {e}"))),
            },
        }
    };
    // Whatever ended the watch, switch off first, then print what was still queued.
    let stopped = switch.stop_if_ours(&entry);
    reader.get_mut().flush();
    reader.get_ref().disarm();
    outcome?;
    if stopped? {
        println!("tracing off");
    } else {
        println!("tracing off (the switch had already been changed by someone else)");
    }
    Ok(ExitCode::SUCCESS)
}
