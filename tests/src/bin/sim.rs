//! `sim`: simulated Postfix + Dovecot traffic with ground truth.
//!
//! `cargo xtask sim` (no flags): 72 h of every traffic kind of issue 10, with Dovecot 2.3 and
//! 2.4 line shapes, as syslog files and as journal JSON, each run through the parser and the
//! engine in log time with the engine's bans applied (a banned source writes no more lines);
//! prints per traffic class what was banned, dropped and alerted.
//!
//! `--stdout` writes one merged log on stdout instead; `--out DIR` writes the log files and
//! `truth.json` (every address and its class).
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use detector::engine::{Engine, EngineConfig};
use detector_tests::sim::run::{Report, run};
use detector_tests::sim::{DovecotVersion, Envelope, HOST_V4, HOST_V6, Role, Sim, SimConfig};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Versions {
    #[value(name = "2.3")]
    V23,
    #[value(name = "2.4")]
    V24,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Envelopes {
    Files,
    Journal,
    Both,
}

#[derive(Parser)]
#[command(
    about = "Simulated mail-host logs (botnet variants, benign traps) with ground truth, run through parser and engine"
)]
struct Args {
    /// PRNG seed: the same seed gives the same logs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated hours.
    #[arg(long, default_value_t = 72, value_parser = clap::value_parser!(u32).range(1..=24 * 60))]
    hours: u32,
    /// Dovecot line shapes.
    #[arg(long, value_enum, default_value_t = Versions::Both)]
    dovecot: Versions,
    /// Log envelopes: syslog files (Postfix maillog + Dovecot log_path) or journal JSON.
    #[arg(long, value_enum, default_value_t = Envelopes::Both)]
    envelope: Envelopes,
    /// Only the original traffic mix (before issue 10's kinds).
    #[arg(long)]
    original: bool,
    /// TOML file whose `[engine]` table sets the engine (defaults otherwise).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write one merged log (first variant) on stdout instead of the report.
    #[arg(long)]
    stdout: bool,
    /// Write postfix.log, dovecot.log (or journal.json) and truth.json into DIR instead.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let versions: &[DovecotVersion] = match args.dovecot {
        Versions::V23 => &[DovecotVersion::V2_3],
        Versions::V24 => &[DovecotVersion::V2_4],
        Versions::Both => &[DovecotVersion::V2_3, DovecotVersion::V2_4],
    };
    let envelopes: &[Envelope] = match args.envelope {
        Envelopes::Files => &[Envelope::SplitFiles],
        Envelopes::Journal => &[Envelope::Journal],
        Envelopes::Both => &[Envelope::SplitFiles, Envelope::Journal],
    };
    let engine_cfg = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            EngineConfig::from_toml_str(&text)?
        }
        None => EngineConfig::default(),
    };
    let config = |dovecot, envelope| {
        let mut c = SimConfig::issue10(args.seed, dovecot, envelope);
        c.hours = args.hours;
        c.extended = !args.original;
        c
    };
    if args.stdout || args.out.is_some() {
        let sim = Sim::generate(&config(versions[0], envelopes[0]));
        return write_logs(&args, &sim);
    }
    let mut failed = false;
    for &envelope in envelopes {
        for &dovecot in versions {
            let sim = Sim::generate(&config(dovecot, envelope));
            let mut engine = Engine::new(engine_cfg.clone());
            engine.set_host_addrs([IpAddr::V4(HOST_V4), IpAddr::V6(HOST_V6)]);
            let r = Report::from_run(&sim, &run(&sim, engine));
            print!("{r}");
            failed |= r.benign_banned() > 0;
        }
    }
    if failed {
        println!("benign addresses were banned (see above)");
    }
    Ok(())
}

fn write_logs(args: &Args, sim: &Sim) -> Result<()> {
    match &args.out {
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for l in sim.merged() {
                if let Err(e) = writeln!(out, "{}", l.text) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(e.into());
                }
            }
            out.flush().ok();
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            let write = |name: &str, text: String| {
                let p = dir.join(name);
                std::fs::write(&p, text).with_context(|| p.display().to_string())
            };
            if sim.cfg.envelope == Envelope::Journal {
                write("journal.json", Sim::text(&sim.merged()))?;
            } else {
                write("postfix.log", Sim::text(&sim.postfix()))?;
                write("dovecot.log", Sim::text(&sim.dovecot()))?;
            }
            let t = &sim.truth;
            let class = |r: &Role| match r {
                Role::Benign(k) => format!("benign:{k:?}"),
                Role::Bot(k) => format!("bot:{k:?}"),
            };
            let truth = serde_json::json!({
                "seed": args.seed,
                "hours": args.hours,
                "addresses": t.roles.iter().map(|(ip, r)| (ip.to_string(), class(r))).collect::<std::collections::BTreeMap<_, _>>(),
                "injected": t.injected,
            });
            write("truth.json", serde_json::to_string_pretty(&truth)? + "\n")?;
            eprintln!("wrote {}/{{logs,truth.json}}", dir.display());
        }
    }
    Ok(())
}
