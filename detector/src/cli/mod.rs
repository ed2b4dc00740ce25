//! Command-line interface: one file per subcommand, each with its `Args` and `run`.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod attach;
pub mod ban;
pub mod check_config;
pub mod detach;
pub mod explain;
pub mod generate;
mod import;
pub mod list;
pub mod parse;
pub mod pin_dir;
pub mod replay;
pub mod report;
pub mod run;
pub mod state_args;
pub mod stats;
pub mod status;
pub mod trace;
pub mod unban;

/// detector: catches low-and-slow mail login botnets in Postfix/Dovecot logs and drops them at XDP.
///
/// Bans live in pinned BPF maps under /sys/fs/bpf/detector, so they keep being enforced (and
/// expire) even when the daemon is not running. `ban`, `unban`, `list` and `stats` work on those
/// maps directly.
#[derive(Debug, Parser)]
#[command(
    name = "detector",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: follow logs, correlate, ban in the kernel maps.
    Run(run::Args),
    /// Load the XDP program, attach it to interfaces and pin it, without starting the daemon.
    Attach(attach::Args),
    /// Detach the XDP program and remove all pins (bans are dropped).
    Detach(detach::Args),
    /// Ban an address or CIDR prefix in the kernel maps.
    Ban(ban::Args),
    /// Remove a ban.
    Unban(unban::Args),
    /// List active bans: address, expiry, reason, hits.
    List(list::Args),
    /// Show the XDP program's packet counters.
    Stats(stats::Args),
    /// Parse logs and print one event per recognised line.
    Parse(parse::Args),
    /// Run the correlation engine over logs in log time and print its decisions (no kernel).
    Replay(replay::Args),
    /// Daily report: campaigns, possible compromises, bans per rule and origin, top networks.
    Report(report::Args),
    /// One-screen health view: attachment, map fill, bans, daemon, journal cursor.
    Status(status::Args),
    /// Explain why an address is or is not banned.
    Explain(explain::Args),
    /// Watch live the XDP program's verdict on each packet from an address or prefix.
    Trace(trace::Args),
    /// Validate a configuration file and print the effective settings.
    CheckConfig(check_config::Args),
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    Generate(generate::Args),
}

impl Cli {
    pub fn run(self) -> crate::Result<ExitCode> {
        match self.command {
            Command::Run(a) => run::run(a),
            Command::Attach(a) => attach::run(a),
            Command::Detach(a) => detach::run(a),
            Command::Ban(a) => ban::run(a),
            Command::Unban(a) => unban::run(a),
            Command::List(a) => list::run(a),
            Command::Stats(a) => stats::run(a),
            Command::Parse(a) => parse::run(a),
            Command::Replay(a) => replay::run(a),
            Command::Report(a) => report::run(a),
            Command::Status(a) => status::run(a),
            Command::Explain(a) => explain::run(a),
            Command::Trace(a) => trace::run(a),
            Command::CheckConfig(a) => check_config::run(a),
            Command::Generate(a) => generate::run(a),
        }
    }
}
