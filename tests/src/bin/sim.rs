//! `sim`: writes simulated Postfix + Dovecot traffic with ground truth.
//!
//! `cargo xtask sim --seed 1 --hours 48 > mail.log` (one merged syslog file on stdout), or
//! `--out DIR` for `DIR/postfix.log`, `DIR/dovecot.log` and `DIR/truth.json`.
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use detector_tests::sim::{Sim, SimConfig};

#[derive(Parser)]
#[command(
    about = "Simulated mail-host logs (botnet, brute forcer, sprayer, benign mix) with ground truth"
)]
struct Args {
    /// PRNG seed: the same seed gives the same logs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated hours.
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..=24 * 60))]
    hours: u32,
    /// Botnet size (IPv4 members; a sixth as many IPv6 members are added).
    #[arg(long, default_value_t = 250)]
    bots: usize,
    /// Write postfix.log, dovecot.log and truth.json into this directory instead of stdout.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = SimConfig {
        seed: args.seed,
        hours: args.hours,
        bots_v4: args.bots,
        bots_v6: args.bots / 5,
        ..SimConfig::default()
    };
    let sim = Sim::generate(&cfg);
    match args.out {
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
            std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
            let write = |name: &str, text: String| {
                let p = dir.join(name);
                std::fs::write(&p, text).with_context(|| p.display().to_string())
            };
            write("postfix.log", Sim::text(&sim.postfix))?;
            write("dovecot.log", Sim::text(&sim.dovecot))?;
            let t = &sim.truth;
            let truth = serde_json::json!({
                "seed": args.seed,
                "hours": args.hours,
                "bots": t.bots.iter().map(|(ip, a)| (ip.to_string(), a.iter().map(|x| x.to_rfc3339()).collect::<Vec<_>>())).collect::<std::collections::BTreeMap<_, _>>(),
                "brute_forcer": t.brute_forcer,
                "sprayers": t.sprayers,
                "injector": t.injector,
                "injected": t.injected,
                "benign": t.benign,
                "phone": t.phone,
                "office_nat": t.office_nat,
            });
            write("truth.json", serde_json::to_string_pretty(&truth)? + "\n")?;
            eprintln!(
                "wrote {}/{{postfix.log,dovecot.log,truth.json}}",
                dir.display()
            );
        }
    }
    Ok(())
}
