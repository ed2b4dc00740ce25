//! `detector replay`: its arguments and its output; the replay itself is [`crate::replay`].
use std::io::{BufReader, IsTerminal};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::engine::{Engine, EngineConfig};
use crate::parse::Format;
use crate::replay::output::{Printer, Style};
use crate::replay::{Input, replay_into};
use crate::{Error, Result};

/// Replay logs through the correlation engine, in log time, without touching the kernel.
///
/// Prints one line per decision (or one JSON object per line with --json) on stdout and a
/// summary on stderr: bans per rule and how many failed logins each banned address made
/// before its ban.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Log files to replay, merged by time; `-` or nothing reads standard input.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// TOML file whose `[engine]` table sets the thresholds (defaults otherwise).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// One JSON object per decision and line:
    /// {"action","ip","prefix","time","rule","duration_s","evidence":[raw lines],...}.
    #[arg(long)]
    pub json: bool,
    /// Input envelope.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// After the replay, explain what the engine knows about this address (repeatable); the
    /// explanation goes to stderr after the summary.
    #[arg(long, value_name = "IP")]
    pub explain: Vec<IpAddr>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            EngineConfig::from_toml_str(&text)?
        }
        None => EngineConfig::default(),
    };
    let mut inputs = Vec::new();
    let mut total_bytes = 0u64;
    let files = if args.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.files.clone()
    };
    for path in files {
        if path.as_os_str() == "-" {
            inputs.push(Input::new(
                "-".into(),
                Box::new(BufReader::new(std::io::stdin())),
                args.format,
            ));
        } else {
            total_bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            inputs.push(Input::file(&path, args.format)?);
        }
    }
    let progress = progress_bar(total_bytes);
    let style = if args.json { Style::Json } else { Style::Human };
    let mut printer = Printer::new(std::io::stdout().lock(), style);
    let report = replay_into(inputs, Engine::new(cfg), &mut printer, |bytes| {
        if let Some(p) = &progress {
            p.set_position(bytes);
        }
    })?;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    if let Err(e) = printer.finish() {
        // A closed pipe (`| head`) is not an error worth a message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(Error::io("stdout", e));
        }
    }
    eprint!("{}", report.summary());
    if let Some(engine) = &report.engine {
        for ip in &args.explain {
            eprint!("{}", engine.explain(*ip));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr for inputs over 16 MiB, only when stderr is a terminal.
fn progress_bar(total_bytes: u64) -> Option<indicatif::ProgressBar> {
    if total_bytes < 16 << 20 || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total_bytes);
    let style =
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {eta} left")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}
