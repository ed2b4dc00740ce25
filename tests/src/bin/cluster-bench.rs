//! cluster-bench (`cargo xtask bench cluster`): what sharing through Redis costs, with real
//! `detector run --cluster` nodes and a private redis-server (127.0.0.1, no persistence).
//!
//! Nodes: `a` follows a log file, `b` is enforcement-only, both in one cluster; `ref` is a
//! standalone node (no cluster) for the same-run reference. Maps are pinned, no interface is
//! attached (only the kernel maps matter).
//!
//! 1. Propagation: for each of N distinct IPs (198.18.10.0 upwards) an SMTP probe and a
//!    failed login as the probed address are appended to `a`'s log. Both nodes' pinned
//!    BANS_V4 maps are polled directly (one bpf lookup each every 50 µs). Printed: the time
//!    from the entry in `a`'s map to the entry in `b`'s (the propagation), and, as the
//!    same-run reference, from the line written to the entry in `a`'s map (a node's own
//!    reaction, as `cargo xtask bench e2e`).
//! 2. Throughput: a block of successful-login lines (no ban), from 2,000 addresses of
//!    198.19.0.0/16, is appended to `ref`'s log, then to `a`'s. Printed: events/s `ref`
//!    parses and feeds its engine (no Redis), events/s `a` publishes to Redis
//!    (`detector_cluster_published_total`), and events/s `b` takes from Redis
//!    (`detector_cluster_consumed_total`), each from the block's write.
//! 3. Redis memory: `MEMORY USAGE` of the streams and the active-ban hash over their entry
//!    counts gives the bytes per stored event and per ban; `INFO memory` before and after is
//!    printed too. The 48 h figures are extrapolated from those per-entry sizes (nothing is
//!    run for 48 h).
use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use clap::Parser;
use detector_common::{ExactBan, Ipv4Key};
use detector_testkit::redis::Redis;
use detector_tests::cluster_node::{Node, NodeOptions, WorkDir, resp_command, resp_integer};

#[derive(Parser)]
#[command(
    name = "cluster-bench",
    about = "Ban propagation, events/s and Redis memory of a detector cluster"
)]
struct Cli {
    /// Bans whose propagation is measured (distinct IPs).
    #[arg(long, default_value_t = 500)]
    bans: usize,
    /// Pause between two bans, ms (isolated bans, not a burst).
    #[arg(long, default_value_t = 10)]
    gap_ms: u64,
    /// Successful-login lines in the throughput block (one event each).
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// A ban or a block not complete within this long counts as lost.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
    /// Sustained events/s of the 48 h memory estimates, besides the README's 48 h scenario
    /// (comma-separated).
    #[arg(long, default_value = "10,100,1000")]
    rates: String,
}

/// The README's reference load with a 48 h span: the detection scenario of
/// `cargo test -p detector-tests --test scenarios` (300 bots, 655 addresses, 48 simulated
/// hours, about 79,000 lines, all 655 addresses banned).
const README_SCENARIO_LINES: f64 = 79_000.0;
const README_SCENARIO_BANS: f64 = 655.0;
const HORIZON_S: f64 = 48.0 * 3600.0;

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("cluster-bench: {e:#}");
        std::process::exit(1);
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run(cli: &Cli) -> Result<()> {
    if cli.bans == 0 || cli.bans > 250 * 200 {
        bail!("--bans must be 1..=50000");
    }
    let rates: Vec<f64> = cli
        .rates
        .split(',')
        .map(|r| r.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .context("--rates: comma-separated numbers")?;
    let redis = Redis::start()?;
    let addr: SocketAddr = ([127, 0, 0, 1], redis.port).into();
    let tag = format!("cb{:x}", std::process::id());
    let work = WorkDir::new(PathBuf::from(format!("/run/detector-e2e/{tag}")))?;
    let log_a = work.0.join("a-mail.log");
    let log_ref = work.0.join("ref-mail.log");
    for f in [&log_a, &log_ref] {
        std::fs::write(f, "")?;
    }
    let node = |name: &str, cluster: bool, files: Vec<PathBuf>| -> Result<Node> {
        let mut o = NodeOptions::new(name);
        o.cluster = cluster.then(|| redis.url());
        o.files = files;
        o.metrics_port = Some(free_port()?);
        let mut n = Node::new(&work.0, &tag, o)?;
        n.start()?;
        Ok(n)
    };
    let a = node("a", true, vec![log_a.clone()])?;
    let b = node("b", true, Vec::new())?;
    let reference = node("ref", false, vec![log_ref.clone()])?;
    println!(
        "cluster bench: redis-server {} on 127.0.0.1:{}, nodes a (follows a log), b (enforcement only), ref (standalone); detector {}",
        redis_version(addr).unwrap_or_default(),
        redis.port,
        detector_tests::bin::detector_bin().display()
    );
    let info_before = used_memory(addr)?;

    // 1. Propagation
    let map_a = open_bans_v4(&a.pins.path)?;
    let map_b = open_bans_v4(&b.pins.path)?;
    let mut file_a = std::fs::File::options().append(true).open(&log_a)?;
    let (mut own, mut prop, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let mut lost = 0;
    for i in 0..cli.bans {
        let ip = Ipv4Addr::new(198, 18, 10 + (i / 250) as u8, 1 + (i % 250) as u8);
        let user = format!(
            "p{i:05}x{}@example.test",
            detector_tests::mailclient::random_token(4)
        );
        let (probe, failure) = probe_and_failure(ip, &user, i);
        file_a.write_all(probe.as_bytes())?;
        let t0 = Instant::now();
        file_a.write_all(failure.as_bytes())?;
        let key = Ipv4Key { addr: ip.octets() };
        let deadline = t0 + Duration::from_millis(cli.timeout_ms);
        let (mut at_a, mut at_b) = (None, None);
        while at_a.is_none() || at_b.is_none() {
            let now = Instant::now();
            if at_a.is_none() && map_a.get(&key, 0).is_ok() {
                at_a = Some(now);
            }
            if at_b.is_none() && map_b.get(&key, 0).is_ok() {
                at_b = Some(now);
            }
            if now > deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        match (at_a, at_b) {
            (Some(ta), Some(tb)) => {
                own.push(ta.duration_since(t0));
                // b may see it before a (its own engine, fed a's events, can be quicker than
                // a's map write is observed): that counts as 0.
                prop.push(tb.saturating_duration_since(ta));
                total.push(tb.duration_since(t0));
            }
            _ => lost += 1,
        }
        std::thread::sleep(Duration::from_millis(cli.gap_ms));
    }
    println!(
        "\n1. ban propagation ({} bans, {} ms apart):",
        cli.bans, cli.gap_ms
    );
    line(
        "  entry in a's map -> entry in b's map (propagation)",
        &prop,
    );
    line(
        "  reference: line written -> entry in a's map (a's own reaction)",
        &own,
    );
    line("  line written -> entry in b's map", &total);
    if lost > 0 {
        println!("  LOST: {lost} bans did not reach both maps");
        eprintln!("{}\n{}", a.logs(), b.logs());
    }

    // 2. Throughput
    let block = login_block(cli.events);
    println!(
        "\n2. events through Redis ({} successful-login lines, one event each, from 2,000 addresses, written in one go):",
        cli.events
    );
    let deadline = Duration::from_millis(cli.timeout_ms);
    let ref_base = sum_metric(&reference, "detector_events_total{")?;
    let t0 = Instant::now();
    append(&log_ref, &block)?;
    let ref_events = wait_metric(
        &reference,
        "detector_events_total{",
        ref_base,
        cli.events,
        deadline,
    )?;
    let t_ref = t0.elapsed();
    let events = ref_events.round() as usize;
    let own_base = sum_metric(&a, "detector_events_total{")?;
    let pub_base = sum_metric(&a, "detector_cluster_published_total")?;
    let con_base = sum_metric(&b, "detector_cluster_consumed_total")?;
    let t0 = Instant::now();
    append(&log_a, &block)?;
    wait_metric(&a, "detector_events_total{", own_base, events, deadline)?;
    let t_own = t0.elapsed();
    wait_metric(
        &a,
        "detector_cluster_published_total",
        pub_base,
        events,
        deadline,
    )?;
    let t_pub = t0.elapsed();
    wait_metric(
        &b,
        "detector_cluster_consumed_total",
        con_base,
        events,
        deadline,
    )?;
    let t_con = t0.elapsed();
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!(
        "  reference: ref (no cluster) parsed and fed its engine {events} events in {:.2} s: {:.0} events/s",
        t_ref.as_secs_f64(),
        rate(t_ref)
    );
    println!(
        "  a (in the cluster) parsed and fed its engine the same events in {:.2} s: {:.0} events/s",
        t_own.as_secs_f64(),
        rate(t_own)
    );
    println!(
        "  a published {events} events to Redis in {:.2} s: {:.0} events/s",
        t_pub.as_secs_f64(),
        rate(t_pub)
    );
    println!(
        "  b consumed them from Redis (into its engine) in {:.2} s from the write: {:.0} events/s",
        t_con.as_secs_f64(),
        rate(t_con)
    );

    let dropped = sum_metric(&a, "detector_cluster_dropped_total")?;
    println!("  messages a dropped from its full publish buffer: {dropped}");

    // 3. Memory
    let keys = ("detector:events", "detector:bans", "detector:active-bans");
    let ev_len = resp_integer(&resp_command(addr, &["XLEN", keys.0])?)?;
    let ban_len = resp_integer(&resp_command(addr, &["XLEN", keys.1])?)?;
    let active_len = resp_integer(&resp_command(addr, &["HLEN", keys.2])?)?;
    let usage = |k: &str| -> Result<i64> {
        resp_integer(&resp_command(
            addr,
            &["MEMORY", "USAGE", k, "SAMPLES", "0"],
        )?)
    };
    let (ev_bytes, ban_bytes, active_bytes) = (usage(keys.0)?, usage(keys.1)?, usage(keys.2)?);
    let info_after = used_memory(addr)?;
    let per = |bytes: i64, n: i64| bytes as f64 / n.max(1) as f64;
    let per_event = per(ev_bytes, ev_len);
    let per_ban = per(ban_bytes, ban_len) + per(active_bytes, active_len);
    println!("\n3. Redis memory:");
    println!(
        "  {}: {ev_len} entries, {ev_bytes} bytes (MEMORY USAGE): {per_event:.0} bytes per event",
        keys.0
    );
    println!(
        "  {}: {ban_len} entries, {ban_bytes} bytes; {}: {active_len} fields, {active_bytes} bytes: {per_ban:.0} bytes per ban",
        keys.1, keys.2
    );
    println!(
        "  INFO memory used_memory: {:.1} MiB before the bench, {:.1} MiB after ({:.1} MiB more)",
        mib(info_before),
        mib(info_after),
        mib(info_after - info_before)
    );
    println!("  48 h horizon (extrapolated from the per-entry sizes above, not run for 48 h):");
    let scenario = README_SCENARIO_LINES * per_event + README_SCENARIO_BANS * per_ban;
    println!(
        "    README's 48 h detection scenario (~79,000 lines, 655 bans; every line counted as an event): {:.1} MiB",
        mib_f(scenario)
    );
    for r in rates {
        let n = r * HORIZON_S;
        println!(
            "    {r} events/s sustained ({:.1}M events in 48 h), bans 1 per 100 events: {:.0} MiB",
            n / 1e6,
            mib_f(n * per_event + n / 100.0 * per_ban)
        );
    }
    drop((a, b, reference));
    Ok(())
}

fn mib(b: i64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn mib_f(b: f64) -> f64 {
    b / (1024.0 * 1024.0)
}

fn redis_version(addr: SocketAddr) -> Option<String> {
    let info = resp_command(addr, &["INFO", "server"]).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_string())
}

fn used_memory(addr: SocketAddr) -> Result<i64> {
    let info = resp_command(addr, &["INFO", "memory"])?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no used_memory in INFO memory")
}

fn line(label: &str, v: &[Duration]) {
    println!("{}", detector_testkit::bench::latency_line(label, v));
}

fn append(path: &Path, text: &str) -> Result<()> {
    std::fs::File::options()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
        .with_context(|| format!("appending to {}", path.display()))
}

fn sum_metric(node: &Node, prefix: &str) -> Result<f64> {
    let m: HashMap<String, f64> = node.metrics()?;
    Ok(m.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum())
}

/// Polls a node's metric until it grew by `n` since `base`; returns the growth. For the
/// reference node (`n` lines, at most one event each) the growth settles at the event count.
fn wait_metric(node: &Node, prefix: &str, base: f64, n: usize, timeout: Duration) -> Result<f64> {
    let deadline = Instant::now() + timeout;
    let mut last = (0.0, Instant::now());
    loop {
        let grown = sum_metric(node, prefix)? - base;
        if grown >= n as f64 {
            return Ok(grown);
        }
        // Settled below n (some lines gave no event): done once it has not moved for 2 s.
        if grown > 0.0 && grown == last.0 && last.1.elapsed() > Duration::from_secs(2) {
            if prefix.starts_with("detector_events_total") {
                return Ok(grown);
            }
            bail!(
                "{} {prefix} stuck at +{grown} of {n}:\n{}",
                node.name(),
                node.logs()
            );
        }
        if grown != last.0 {
            last = (grown, Instant::now());
        }
        if Instant::now() > deadline {
            bail!(
                "{} {prefix} only +{grown} of {n} after {timeout:?}:\n{}",
                node.name(),
                node.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn open_bans_v4(pin_dir: &Path) -> Result<BpfHashMap<MapData, Ipv4Key, ExactBan>> {
    let path = pin_dir.join("BANS_V4");
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map = Map::from_map_data(data).context("BANS_V4")?;
    BpfHashMap::try_from(map).context("BANS_V4 is not the expected hash map")
}

fn syslog(tag: &str, msg: &str) -> String {
    let ts = chrono::Local::now().format("%b %e %H:%M:%S");
    format!("{ts} mail {tag}: {msg}\n")
}

/// The probe (Postfix) and the failure (Dovecot) of one bot, as the lab's servers log them.
fn probe_and_failure(ip: Ipv4Addr, user: &str, i: usize) -> (String, String) {
    let smtpd = format!("postfix/smtpd[{}]", 20000 + i % 10000);
    let who = format!("unknown[{ip}]");
    let qid = format!("{:010X}", 0xC000_0000u64 + i as u64);
    let probe = [
        syslog(&smtpd, &format!("connect from {who}")),
        syslog(
            &smtpd,
            &format!(
                "NOQUEUE: info: RCPT from {who}: lab-rcpt=<{user}>; from=<probe@bot.invalid> to=<{user}> proto=ESMTP helo=<bot.invalid>"
            ),
        ),
        syslog(&smtpd, &format!("{qid}: client={who}")),
        syslog(
            &smtpd,
            &format!("disconnect from {who} ehlo=1 mail=1 rcpt=1 quit=1 commands=4"),
        ),
    ]
    .concat();
    let session = format!("P{i:015}A");
    let dovecot = format!("dovecot[{}]", 30000 + i % 10000);
    let failure = [
        syslog(
            &dovecot,
            &format!("auth: passwd-file({user},{ip},<{session}>): unknown user"),
        ),
        syslog(
            &dovecot,
            &format!(
                "imap-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 0 secs): user=<{user}>, method=PLAIN, rip={ip}, lip=198.18.0.1, session=<{session}>"
            ),
        ),
    ]
    .concat();
    (probe, failure)
}

/// `n` successful IMAP logins, each of 2,000 addresses (198.19.0.0/16) always as its own
/// user, so no address is shared and nothing is banned.
fn login_block(n: usize) -> String {
    let mut out = String::with_capacity(n * 200);
    for i in 0..n {
        let who = i % 2000;
        let ip = Ipv4Addr::new(198, 19, (who / 250) as u8, 1 + (who % 250) as u8);
        out.push_str(&syslog(
            &format!("dovecot[{}]", 40000 + who),
            &format!(
                "imap-login: Login: user=<u{who:04}@example.test>, method=PLAIN, rip={ip}, lip=198.18.0.1, mpid={}, session=<L{i:015}A>",
                50000 + i % 10000
            ),
        ));
    }
    out
}
