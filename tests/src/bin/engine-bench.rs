//! `engine-bench`: engine throughput and memory on simulated traffic (run with `--release`):
//! `cargo run --release -p detector-tests --bin engine-bench -- --bots 5000 --hours 48`.
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use detector::engine::{Engine, EngineConfig};
use detector_tests::sim::{Sim, SimConfig};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 48)]
    hours: u32,
    /// IPv4 botnet members (a fifth as many IPv6 members are added).
    #[arg(long, default_value_t = 5000)]
    bots: usize,
    /// Passes over the events (fresh engine each time); the best is reported.
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let cfg = SimConfig {
        seed: a.seed,
        hours: a.hours,
        bots_v4: a.bots,
        bots_v6: a.bots / 5,
        ..SimConfig::default()
    };
    let t = Instant::now();
    let sim = Sim::generate(&cfg);
    let events = sim.merged_events();
    eprintln!("simulated {} events in {:.2?}", events.len(), t.elapsed());
    let mut best = f64::MAX;
    let mut decisions = 0;
    let mut engine = Engine::new(EngineConfig::default());
    for _ in 0..a.runs.max(1) {
        engine = Engine::new(EngineConfig::default());
        let t = Instant::now();
        decisions = 0;
        for ev in &events {
            decisions += engine.observe(ev).len();
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let (ips, users, prefixes) = engine.tracked();
    let snap = serde_json::to_vec(&engine.snapshot())?;
    let state_bytes: usize = engine
        .snapshot()
        .ips
        .iter()
        .map(|(_, s)| s.approx_bytes())
        .sum();
    println!(
        "engine: {} events, {decisions} decisions in {:.3} s = {:.0} events/s ({:.2} µs/event)",
        events.len(),
        best,
        events.len() as f64 / best,
        best * 1e6 / events.len() as f64
    );
    println!(
        "tracked at end: {ips} IPs, {users} user names, {prefixes} prefixes; IP state ≈ {} KiB ({} B/IP); snapshot {} KiB JSON",
        state_bytes / 1024,
        state_bytes / ips.max(1),
        snap.len() / 1024
    );
    Ok(())
}
