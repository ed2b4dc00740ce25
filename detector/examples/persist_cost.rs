//! Measures what a daemon save costs, and how much of it still runs on the engine task: the
//! copy of the engine state (on the task) against encoding and the atomic, fsynced write (on a
//! blocking thread since the save moved off the task).
//!
//! `cargo run --release -p detector --example persist_cost [failed logins]`
//! (each from its own address and user; 200000 tracks about 100k of each)
use std::time::Instant;

use chrono::{TimeZone, Utc};
use detector::engine::{Engine, EngineConfig};
use detector::event::{Event, EventKind, Protocol, Service};
use detector::store::{ENGINE_STATE_FILE, StateDir};

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    // Thresholds out of reach: the state grows without bans.
    let cfg = EngineConfig {
        slow_repeat_score: 1000,
        burst_failures: 1000,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(cfg);
    let t0 = Utc.timestamp_opt(1_795_000_000, 0).unwrap();
    for i in 0..n {
        // 198.18.0.0/15: 131072 addresses.
        let ip = std::net::Ipv4Addr::from(0xC612_0000u32 + (i % 131_072)).into();
        let _ = engine.observe(&Event {
            time: t0 + chrono::Duration::seconds(i64::from(i) / 100),
            service: Service::Dovecot,
            kind: EventKind::AuthFailure,
            ip,
            user: Some(format!("u{i}@example.test")),
            recipient: None,
            protocol: Some(Protocol::Imap),
            line: u64::from(i),
            session: None,
            failures: 1,
            smtp: None,
            peer: None,
        });
    }
    let started = Instant::now();
    let snapshot = engine.snapshot();
    let copy = started.elapsed();
    let started = Instant::now();
    let bytes = serde_json::to_vec(&snapshot).expect("encode");
    let encode = started.elapsed();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = StateDir::open(dir.path()).expect("state dir");
    let started = Instant::now();
    state
        .write_atomic(ENGINE_STATE_FILE, &bytes)
        .expect("write");
    let write = started.elapsed();
    let (ips, users, _) = engine.tracked();
    println!(
        "{ips} IPs, {users} users tracked, snapshot {:.1} MB: on the engine task: copy {copy:?}; \
         on a blocking thread: encode {encode:?}, write+fsync {write:?}",
        bytes.len() as f64 / 1e6
    );
}
