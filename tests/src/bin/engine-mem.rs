//! `engine-mem`: bytes per tracked address in the engine, from this binary's own allocator
//! counters (`cargo xtask bench engine` builds and runs it in release).
//!
//! A counting global allocator wraps the system allocator and keeps the bytes currently
//! requested (size of every live allocation, as the program asked for it; the allocator's own
//! per-chunk overhead is not included, so the process's RSS is higher). The engine is fed
//! `--addresses` distinct sources (half IPv4, half IPv6 /64s) with a mix of probes, failed
//! logins, successful logins and lost connections; the bytes the engine holds afterwards,
//! divided by the addresses it tracks, is the figure. In the same run, a bare
//! `HashMap<IpAddr, u64>` with the same keys is measured the same way, as the reference. The
//! CPU time of the copy a save takes on the daemon's engine task is printed too, and at the
//! end what each part of the engine held (`Engine::release_for_measurement` frees the parts
//! one at a time; the counter is read after each).
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use anyhow::Result;
use chrono::{DateTime, TimeZone, Utc};
use clap::Parser;
use detector::engine::{Engine, EngineConfig};
use detector::event::{Event, EventKind, Protocol, Service, SmtpCounters};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator with the same arguments; only a
// counter is updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged (the caller upholds `GlobalAlloc::alloc`'s contract).
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// CPU time this thread has used.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

#[derive(Parser)]
struct Args {
    /// Distinct source addresses (half IPv4, half IPv6 /64s).
    #[arg(long, default_value_t = 1_000_000)]
    addresses: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Address `i`: even ones IPv4 in 198.18.0.0/15 and then 10.0.0.0/8 (distinct), odd ones a
/// host in a distinct IPv6 /64 of 2001:db8::/32 with a random interface id.
fn address(i: u32) -> IpAddr {
    let n = i / 2;
    if i.is_multiple_of(2) {
        if n < 131_072 {
            IpAddr::V4(Ipv4Addr::from(0xc612_0000 + n))
        } else {
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
        }
    } else {
        // A /64 per address: 2001:db8:XXXX:XXXX::/64 from a scrambled n.
        let net = (n as u64).wrapping_mul(0x9e37_79b9) as u32;
        let hi = (0x2001_0db8u128 << 96) | ((net as u128) << 64);
        let iid = Rng(u64::from(i) | 1 << 40).next();
        IpAddr::V6(Ipv6Addr::from(hi | (iid as u128 | 1)))
    }
}

struct Mix {
    probes: u32,
    failures: u32,
    banned: u32,
    customers: u32,
    lost: u32,
}

fn event(
    time: DateTime<Utc>,
    kind: EventKind,
    ip: IpAddr,
    user: Option<String>,
    rcpt: Option<String>,
    session: u64,
) -> Event {
    let service = match kind {
        EventKind::AuthFailure | EventKind::AuthUnknownUser | EventKind::AuthSuccess => {
            Service::Dovecot
        }
        _ => Service::Postfix,
    };
    Event {
        time,
        service,
        kind,
        ip,
        user,
        recipient: rcpt,
        protocol: Some(match service {
            Service::Dovecot => Protocol::Imap,
            Service::Postfix => Protocol::Smtp,
        }),
        line: 0,
        session: Some(format!("smtpd:{session}")),
        failures: u32::from(matches!(
            kind,
            EventKind::AuthFailure | EventKind::AuthUnknownUser
        )),
        smtp: (kind == EventKind::TransactionAborted).then_some(SmtpCounters {
            rcpt_ok: 1,
            quit: true,
            ..SmtpCounters::default()
        }),
        peer: None,
    }
}

/// The events of address `i`, at about `at`: a probe (35%), one failed login (20%), two
/// failed logins minutes apart (banned after the grace period; 10%), a customer's login
/// with an occasional typo first (15%), or a lost connection alone (20%).
fn events_of(i: u32, at: DateTime<Utc>, rng: &mut Rng, mix: &mut Mix) -> Vec<Event> {
    let ip = address(i);
    let mailbox = |rng: &mut Rng| format!("user{}@example.test", rng.below(20_000));
    let guess = |rng: &mut Rng| format!("guess{}", rng.below(50_000));
    let s = i as u64;
    let sec = chrono::Duration::seconds;
    match rng.below(100) {
        0..35 => {
            mix.probes += 1;
            let r = mailbox(rng);
            vec![
                event(at, EventKind::Rcpt, ip, None, Some(r), s),
                event(
                    at + sec(1),
                    EventKind::TransactionAborted,
                    ip,
                    None,
                    None,
                    s,
                ),
            ]
        }
        35..55 => {
            mix.failures += 1;
            vec![event(
                at,
                EventKind::AuthFailure,
                ip,
                Some(guess(rng)),
                None,
                s,
            )]
        }
        55..65 => {
            mix.banned += 1;
            let u = guess(rng);
            vec![
                event(at, EventKind::AuthFailure, ip, Some(u.clone()), None, s),
                event(at + sec(120), EventKind::AuthFailure, ip, Some(u), None, s),
            ]
        }
        65..80 => {
            mix.customers += 1;
            let u = mailbox(rng);
            let mut out = Vec::new();
            if rng.below(4) == 0 {
                out.push(event(
                    at,
                    EventKind::AuthFailure,
                    ip,
                    Some(u.clone()),
                    None,
                    s,
                ));
            }
            out.push(event(
                at + sec(5),
                EventKind::AuthSuccess,
                ip,
                Some(u),
                None,
                s,
            ));
            out
        }
        _ => {
            mix.lost += 1;
            vec![event(at, EventKind::LostConnection, ip, None, None, s)]
        }
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    let n = a.addresses.max(1);
    let cfg = EngineConfig {
        max_tracked_ips: n as usize * 2,
        max_tracked_users: n as usize * 2,
        max_tracked_prefixes: n as usize * 2,
        ..EngineConfig::default()
    };
    let start = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    // Four hours of log time: nothing reaches the horizon.
    let step_ms = (4 * 3600 * 1000 / n as i64).max(1);
    let mut mix = Mix {
        probes: 0,
        failures: 0,
        banned: 0,
        customers: 0,
        lost: 0,
    };

    let before = live();
    let mut engine = Engine::new(cfg);
    let mut rng = Rng(a.seed.max(1));
    let mut events = 0u64;
    let mut decisions = 0u64;
    let started = Instant::now();
    let started_cpu = thread_cpu();
    // Events of neighbouring addresses interleave a little, as in a log (the second failure
    // of a banned address comes two minutes after its first).
    let mut later: std::collections::BTreeMap<(DateTime<Utc>, u64), Event> = Default::default();
    let mut seq = 0u64;
    for i in 0..n {
        let at = start + chrono::Duration::milliseconds(i as i64 * step_ms);
        let at = DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at);
        while let Some(entry) = later.first_entry() {
            if entry.key().0 > at {
                break;
            }
            let ev = entry.remove();
            events += 1;
            decisions += engine.observe(&ev).len() as u64;
        }
        for ev in events_of(i, at, &mut rng, &mut mix) {
            if ev.time > at {
                seq += 1;
                later.insert((ev.time, seq), ev);
            } else {
                events += 1;
                decisions += engine.observe(&ev).len() as u64;
            }
        }
    }
    for (_, ev) in std::mem::take(&mut later) {
        events += 1;
        decisions += engine.observe(&ev).len() as u64;
    }
    decisions += engine.flush_pending().len() as u64;
    let took = started.elapsed();
    let took_cpu = thread_cpu() - started_cpu;
    let engine_bytes = live() - before;
    let (ips, users, prefixes) = engine.tracked();

    // The copy the daemon's persist takes on the engine task, then the sort that now runs on
    // the writer's thread; CPU time of this thread (wall time on a shared machine is noise).
    let cpu0 = thread_cpu();
    let copy = engine.state_copy();
    let copy_cpu = thread_cpu() - cpu0;
    let cpu0 = thread_cpu();
    let snapshot = copy.into_snapshot();
    let writer_cpu = thread_cpu() - cpu0;
    drop(snapshot);
    // The deep copy the daemon used to take on the engine task (`Engine::snapshot`).
    let cpu0 = thread_cpu();
    let snapshot = engine.snapshot();
    let deep_cpu = thread_cpu() - cpu0;
    drop(snapshot);

    // The reference: the same keys in a bare map.
    let before = live();
    let mut bare: HashMap<IpAddr, u64> = HashMap::new();
    for i in 0..n {
        // The engine keys IPv6 state by /64.
        bare.insert(engine.state_key(address(i)), u64::from(i));
    }
    let bare_bytes = live() - before;

    println!(
        "engine: {n} addresses ({} probes, {} one failure, {} banned after two failures, {} customers, {} lost connections), {events} events, {decisions} decisions in {:.2?} CPU ({:.2?} wall)",
        mix.probes, mix.failures, mix.banned, mix.customers, mix.lost, took_cpu, took
    );
    println!("tracked: {ips} addresses, {users} user names, {prefixes} ban prefixes");
    println!(
        "engine heap (allocator counters): {:.1} MiB = {} B per tracked address",
        engine_bytes as f64 / (1 << 20) as f64,
        engine_bytes / ips.max(1) as isize
    );
    println!(
        "reference HashMap<IpAddr, u64>, same {} keys: {:.1} MiB = {} B per address",
        bare.len(),
        bare_bytes as f64 / (1 << 20) as f64,
        bare_bytes / bare.len().max(1) as isize
    );
    println!(
        "persist: copy on the engine task (Engine::state_copy) {copy_cpu:.2?} CPU; snapshot made from it on the writer's thread {writer_cpu:.2?} CPU; a full Engine::snapshot {deep_cpu:.2?} CPU"
    );
    detector_testkit::bench::summary(
        &format!("engine memory per tracked address, {ips} addresses (allocator counters)"),
        &format!("{} B", engine_bytes / ips.max(1) as isize),
        &format!(
            "bare HashMap<IpAddr, u64>, same keys: {} B",
            bare_bytes / bare.len().max(1) as isize
        ),
        "<= 256 B",
    );
    detector_testkit::bench::summary(
        "persist: copy on the engine task (CPU)",
        &format!("{copy_cpu:.0?}"),
        &format!("full Engine::snapshot: {deep_cpu:.0?}"),
        "no stall",
    );
    // What each part of the engine held: freed one at a time, the allocator's counter read
    // after each.
    let mut parts: Vec<(&'static str, isize)> = Vec::new();
    let mut mark = live();
    engine.release_for_measurement(|part| {
        let now = live();
        parts.push((part, mark - now));
        mark = now;
    });
    for (part, bytes) in &parts {
        println!(
            "  {part:<48} {:>7.1} MiB {:>5} B per address",
            *bytes as f64 / (1 << 20) as f64,
            bytes / ips.max(1) as isize
        );
    }
    Ok(())
}
