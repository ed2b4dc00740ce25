//! `detector report`: the daily view of campaigns, compromises and bans; the data and its
//! renderings are [`crate::report`].
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::state_args::StateArgs;
use crate::enforce::{Enforcer, Reason};
use crate::engine::{Engine, EngineConfig};
use crate::parse::Format;
use crate::replay::{Input, replay};
use crate::report::Report;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    Html,
}

/// Report campaigns and the mailboxes they target, possible compromises, bans per rule and
/// origin, top banned networks, and what the known-client and shared-address logic spared.
///
/// Reads the engine state the daemon last saved (read-only), or replays log files with
/// `--replay`. Meant to be mailed daily (packaging/detector-report.timer).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Window before the latest log time the engine saw, e.g. `24h`, `7d`.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub since: Duration,
    /// Output: plain text (control characters replaced), one JSON object, or an HTML page.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Replay these log files (merged by time) instead of reading the daemon's state; the
    /// `[engine]` table of `--config` sets the thresholds.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub replay: Vec<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let report = if args.replay.is_empty() {
        from_state(&args)?
    } else {
        from_replay(&args)?
    };
    let text = match args.format {
        OutputFormat::Text => report.to_text(),
        OutputFormat::Html => report.to_html(),
        OutputFormat::Json => {
            let mut s = serde_json::to_string(&report).map_err(|e| Error::Store(e.to_string()))?;
            s.push('\n');
            s
        }
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(Error::io("stdout", e));
    }
    Ok(ExitCode::SUCCESS)
}

fn from_state(args: &Args) -> Result<Report> {
    let (config, state_dir) = args.state.load()?;
    let snapshot = state_dir.join(crate::store::ENGINE_STATE_FILE);
    if !snapshot.exists() {
        // An empty report would read as a quiet day: say why it is empty.
        eprintln!(
            "detector report: no saved engine state at {} (is the daemon running with this \
             state directory?)",
            snapshot.display()
        );
    }
    let engine = crate::cli::explain::load_engine(&config, &state_dir)?;
    let mut report = Report::build(&engine, &[], args.since);
    // Bans the engine did not make live only in the kernel maps (best effort: without the
    // pins, e.g. on another host, the report shows the engine's bans only).
    if let Ok(bans) = Enforcer::open(&args.state.pin.pin_dir).and_then(|e| e.list()) {
        for b in bans {
            let origin = match b.reason {
                Reason::Manual => "manual",
                Reason::CrowdSec => "crowdsec",
                Reason::Blocklist => "blocklist",
                _ => continue,
            };
            report.add_origin(origin, 1);
        }
    }
    Ok(report)
}

fn from_replay(args: &Args) -> Result<Report> {
    let cfg = match &args.state.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            EngineConfig::from_toml_str(&text)?
        }
        None => EngineConfig::default(),
    };
    let mut inputs = Vec::new();
    for path in &args.replay {
        inputs.push(Input::file(path, Format::Auto)?);
    }
    let done = replay(inputs, Engine::new(cfg), |_| {}, |_| {})?;
    let decisions: Vec<_> = done.decisions.iter().map(|d| d.decision.clone()).collect();
    let engine = done
        .engine
        .unwrap_or_else(|| Engine::new(EngineConfig::default()));
    Ok(Report::build(&engine, &decisions, args.since))
}
