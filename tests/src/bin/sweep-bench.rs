//! `cargo xtask bench sweep`: what the daemon's sweep costs at a million bans, in syscalls and
//! wall time, the old way (two syscalls per entry: get-next-key + lookup; one lookup per ban
//! for the admin-unban check) against the batched way (BPF_MAP_LOOKUP_BATCH /
//! BPF_MAP_DELETE_BATCH; one batched walk for the admin-unban check), in the same run on the
//! same maps. Also the memory the maps cost (`memlock`, as `bpftool map show` reports it, read
//! from /proc/self/fdinfo), empty and full.
//!
//! Syscalls are counted by the kernel: a perf counter on the `raw_syscalls:sys_enter`
//! tracepoint for this thread, read before and after each measured call (independent of the
//! code measured; it counts every syscall, not just bpf(2)).
//!
//! The maps have the default capacity (1M entries per family). The load: `--bans` bans, half
//! IPv4 addresses (exact map), half IPv6 /64s (prefix trie), timed (1 h), plus 1 % of them
//! expired and not swept yet (put back before every measured sweep, so each sweep deletes
//! them).
//!
//! usage: sweep-bench [--bans 1000000] [--runs 3]
use std::time::Instant;

use anyhow::{Context, Result, bail};
use detector::enforce::testrun::TestObject;
use detector::enforce::{Capacity, Enforcer};
use ipnet::IpNet;

/// Counts this thread's syscalls through a perf counter on `raw_syscalls:sys_enter`.
struct SyscallCounter {
    /// Kept open: reading through a fresh dup would add a dup and a close to every count.
    file: std::fs::File,
}

impl SyscallCounter {
    fn new() -> Result<Self> {
        use std::os::fd::FromRawFd;
        let id: u64 = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .find_map(|d| std::fs::read_to_string(format!("{d}/events/raw_syscalls/sys_enter/id")).ok())
            .context("no tracefs with raw_syscalls:sys_enter (mount -t tracefs none /sys/kernel/tracing)")?
            .trim()
            .parse()?;
        // struct perf_event_attr, zeroed: type (u32) at 0, size (u32) at 4, config (u64) at 8;
        // flags all clear (enabled from the start, kernel events included).
        let mut attr = [0u64; 17];
        attr[0] = 2 /* PERF_TYPE_TRACEPOINT */ | ((size_of_val(&attr) as u64) << 32);
        attr[1] = id;
        // SAFETY: attr is a zero-initialised perf_event_attr of the size it declares; pid 0 and
        // cpu -1 = this thread on any CPU; no group, no flags.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                0 as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                0 as libc::c_ulong,
            )
        };
        if fd < 0 {
            bail!("perf_event_open: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a new fd this process owns.
        Ok(SyscallCounter {
            file: unsafe { std::fs::File::from_raw_fd(fd as i32) },
        })
    }

    fn read(&self) -> Result<u64> {
        use std::io::Read;
        let mut b = [0u8; 8];
        (&self.file).read_exact(&mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    /// Syscalls made and wall time taken by `f`, minus the counter's own second read (the
    /// first one is counted on entry, before it samples). Also records the thread's CPU time
    /// (user + system) in `CPU_SECS`: on a loaded machine the wall time is mostly waiting.
    fn measure<R>(&self, f: impl FnOnce() -> R) -> Result<(u64, f64, R)> {
        let cpu0 = thread_cpu_secs();
        let before = self.read()?;
        let start = Instant::now();
        let r = f();
        let secs = start.elapsed().as_secs_f64();
        let after = self.read()?;
        CPU_SECS.with(|c| c.set(thread_cpu_secs() - cpu0));
        Ok((after - before - 1, secs, r))
    }
}

thread_local! {
    static CPU_SECS: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// CPU time (user + system) of this thread so far.
fn thread_cpu_secs() -> f64 {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// memlock of every BPF map this process holds, from /proc/self/fdinfo: (type, key size,
/// max_entries, memlock bytes).
fn map_memory() -> Vec<(u32, u32, u32, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(t), Some(k), Some(m), Some(mem)) = (
            field("map_type:"),
            field("key_size:"),
            field("max_entries:"),
            field("memlock:"),
        ) {
            out.push((t as u32, k as u32, m as u32, mem));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn print_memory(when: &str) {
    for (t, k, max, mem) in map_memory() {
        let name = match (t, k) {
            (1, 4) => "BANS_V4 (hash, preallocated)",
            (1, 16) => "BANS_V6 (hash, preallocated)",
            (11, 8) => "PREFIX_V4 (LPM trie, per entry)",
            (11, 20) => "PREFIX_V6 (LPM trie, per entry)",
            _ => continue,
        };
        println!(
            "memlock {when}: {name:<32} {max:>8} entries max: {:>7.1} MiB",
            mem as f64 / (1024.0 * 1024.0)
        );
    }
}

fn key4(i: u32) -> [u8; 4] {
    // Spread over 10.0.0.0/8-like space without caring about meaning: the maps never see a
    // packet here.
    (i.wrapping_mul(0x9E37_79B1) | 1).to_be_bytes()
}

fn key6(i: u32) -> [u8; 16] {
    let m = i.wrapping_mul(0x9E37_79B1).to_be_bytes();
    [
        0x20, 0x01, 0x0d, 0xb8, m[0], m[1], m[2], m[3], 0, 0, 0, 0, 0, 0, 0, 0,
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Row {
    what: &'static str,
    calls: Vec<f64>,
    secs: Vec<f64>,
    cpu: Vec<f64>,
}

fn main() -> Result<()> {
    let mut bans: u32 = 1_000_000;
    let mut runs = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bans" => bans = args.next().context("--bans N")?.parse()?,
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            other => bail!("unknown argument {other}; usage: sweep-bench [--bans N] [--runs N]"),
        }
    }
    let counter = SyscallCounter::new()?;
    let mut obj =
        TestObject::load(Capacity::default()).context("loading the XDP object (root?)")?;
    print_memory("empty");
    let half = bans / 2;
    let dead = (bans / 100).max(1);
    let now_ns = {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-parameter.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    let hour_ns = now_ns + 3_600_000_000_000;
    let hour_s = (hour_ns / 1_000_000_000) as u32;
    let start = Instant::now();
    for i in 0..half {
        obj.insert_exact_v4(key4(i), hour_ns)?;
        obj.insert_prefix_v6(key6(i), 64, hour_s)?;
    }
    println!(
        "filled {} bans ({} IPv4 addresses, {} IPv6 /64s) in {:.1} s",
        2 * half,
        half,
        half,
        start.elapsed().as_secs_f64()
    );
    print_memory("full");
    // The nets the daemon would have written (its admin-unban check looks for these).
    let written: Vec<IpNet> = (0..half)
        .map(|i| IpNet::from(std::net::IpAddr::from(key4(i))))
        .chain((0..half).map(|i| IpNet::new(std::net::IpAddr::from(key6(i)), 64).expect("/64")))
        .collect();
    let put_back_dead = |obj: &mut TestObject| -> Result<()> {
        for i in 0..dead {
            obj.insert_exact_v4(key4(half + i), 1)?;
        }
        Ok(())
    };
    let mut rows = vec![
        Row {
            what: "sweep walk, one entry at a time (old)",
            calls: vec![],
            secs: vec![],
            cpu: vec![],
        },
        Row {
            what: "sweep walk, batched",
            calls: vec![],
            secs: vec![],
            cpu: vec![],
        },
        Row {
            what: "admin-unban check, one lookup per ban (old)",
            calls: vec![],
            secs: vec![],
            cpu: vec![],
        },
        Row {
            what: "admin-unban check, one batched walk",
            calls: vec![],
            secs: vec![],
            cpu: vec![],
        },
        Row {
            what: "sweep tick with no ban due (skips the walk)",
            calls: vec![],
            secs: vec![],
            cpu: vec![],
        },
    ];
    for _ in 0..runs {
        for (i, batched) in [(0, false), (1, true)] {
            put_back_dead(&mut obj)?;
            let e: &mut Enforcer = obj.enforcer();
            e.set_batch_walks(batched);
            let (calls, secs, removed) = counter.measure(|| e.sweep_expired())?;
            let removed = removed?;
            if removed != dead as usize {
                bail!("the sweep removed {removed} entries, expected {dead}");
            }
            rows[i].calls.push(calls as f64);
            rows[i].secs.push(secs);
            rows[i].cpu.push(CPU_SECS.with(|c| c.get()));
        }
        let e = obj.enforcer();
        e.set_batch_walks(true);
        // The old check: one lookup per ban (the chunk size keeps `missing` on lookups).
        let (calls, secs, gone) = counter.measure(|| -> Result<usize> {
            let mut gone = 0;
            for chunk in written.chunks(detector::enforce::MISSING_BY_LOOKUP) {
                gone += e.missing(chunk.iter().copied())?.len();
            }
            Ok(gone)
        })?;
        if gone? != 0 {
            bail!("bans missing that were never removed");
        }
        rows[2].calls.push(calls as f64);
        rows[2].secs.push(secs);
        rows[2].cpu.push(CPU_SECS.with(|c| c.get()));
        let (calls, secs, gone) = counter.measure(|| e.missing(written.iter().copied()))?;
        if !gone?.is_empty() {
            bail!("bans missing that were never removed");
        }
        rows[3].calls.push(calls as f64);
        rows[3].secs.push(secs);
        rows[3].cpu.push(CPU_SECS.with(|c| c.get()));
        e.sweep_due()?; // walks (or not): the next one has nothing due for an hour
        let (calls, secs, walked) = counter.measure(|| e.sweep_due())?;
        if walked?.is_some() {
            bail!("a sweep with nothing due walked the maps");
        }
        rows[4].calls.push(calls as f64);
        rows[4].secs.push(secs);
        rows[4].cpu.push(CPU_SECS.with(|c| c.get()));
    }
    println!();
    println!("{} bans, median of {runs} runs:", 2 * half);
    println!("| what | syscalls | wall time | CPU time (user + system) |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.1} ms | {:.1} ms |",
            r.what,
            median(r.calls.clone()),
            median(r.secs.clone()) * 1e3,
            median(r.cpu.clone()) * 1e3
        );
    }
    let walk_old = median(rows[0].calls.clone());
    let walk_new = median(rows[1].calls.clone());
    let check_old = median(rows[2].calls.clone());
    let check_new = median(rows[3].calls.clone());
    let ms = |r: &Row| median(r.secs.clone()) * 1e3;
    use detector_testkit::bench::summary;
    summary(
        &format!("sweep at {} bans: syscalls per full walk", 2 * half),
        &format!("{walk_new:.0} ({:.1} ms)", ms(&rows[1])),
        &format!("{walk_old:.0} ({:.1} ms) one entry at a time", ms(&rows[0])),
        "far below one per ban",
    );
    summary(
        &format!("admin-unban check of {} daemon bans: syscalls", 2 * half),
        &format!("{check_new:.0} ({:.1} ms)", ms(&rows[3])),
        &format!("{check_old:.0} ({:.1} ms) one lookup per ban", ms(&rows[2])),
        "far below one per ban",
    );
    summary(
        &format!("sweep tick with no ban due, {} bans: syscalls", 2 * half),
        &format!("{:.0}", median(rows[4].calls.clone())),
        "-",
        "0 (the kernel's expiry check does the work)",
    );
    Ok(())
}
