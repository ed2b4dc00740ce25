//! Reply latency and throughput of the Postfix policy service (`cargo xtask bench
//! postfix-policy` builds this in release and runs it).
//!
//! The service runs as the daemon runs it: `policy::postfix::serve` on a multi-threaded tokio
//! runtime, with a ban table of 10,000 addresses, `banned_action = "reject"` and no XDP (so
//! every request does the ban lookup), its events drained by a task standing in for the
//! engine. Beside it, on the same runtime, a reference server does the least a policy server
//! can: read lines until the empty one and answer `action=DUNNO`. Clients run on their own
//! runtime and thread, one connection each like smtpd processes, sending RCPT and
//! END-OF-MESSAGE requests one at a time and timing each round trip.
//!
//! 1. Paced: `--rate` requests/s spread over `--conns` connections for `--seconds`; p50, p99,
//!    p99.9 and max round trip, for both servers (alternating, twice each).
//! 2. Flat out: `--conns` connections as fast as replies come, for `--seconds`: requests/s.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use detector::policy::postfix::{BannedAction, PolicyMetrics, PostfixPolicyConfig, Shared};
use detector::policy::{BanView, ListenAddr, UnixSocketOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    /// Paced request rate, requests/s over all connections.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Client connections (smtpd processes).
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Server worker threads (the daemon uses the runtime default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(w) = cli.workers {
        builder.worker_threads(w);
    }
    let server_rt = builder.build()?;
    let cancel = CancellationToken::new();
    let metrics = PolicyMetrics::default();
    let (policy, reference) = server_rt.block_on(start_servers(cancel.clone(), metrics.clone()))?;

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "paced: {} requests/s over {} connections, {} s per run",
        cli.rate, cli.conns, cli.seconds
    );
    println!("| server | run | requests | p50 µs | p99 µs | p99.9 µs | max µs |");
    println!("|---|---|---|---|---|---|---|");
    for run in 1..=2 {
        for (name, addr) in [("detector", policy), ("reference (echo DUNNO)", reference)] {
            let mut rtts = client_rt.block_on(paced(addr, cli.rate, cli.conns, cli.seconds))?;
            rtts.sort_unstable();
            let q = |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)];
            println!(
                "| {name} | {run} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                rtts.len(),
                q(0.50) as f64 / 1e3,
                q(0.99) as f64 / 1e3,
                q(0.999) as f64 / 1e3,
                *rtts.last().unwrap_or(&0) as f64 / 1e3
            );
        }
    }
    server_side(&metrics);
    println!();
    println!("flat out: {} connections, {} s", cli.conns, cli.seconds);
    println!("| server | run | requests/s |");
    println!("|---|---|---|");
    for run in 1..=2 {
        for (name, addr) in [("detector", policy), ("reference (echo DUNNO)", reference)] {
            let n = client_rt.block_on(flat_out(addr, cli.conns, cli.seconds))?;
            println!("| {name} | {run} | {:.0} |", n as f64 / cli.seconds as f64);
        }
    }
    cancel.cancel();
    Ok(())
}

/// The service's own reply-time histogram over the paced runs (request read -> reply
/// written, without the client's and the kernel's share of the round trip).
fn server_side(metrics: &PolicyMetrics) {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter(|l| l.starts_with("postfix_policy_reply_seconds_bucket{le=\""))
        .filter_map(|l| {
            let le = l.split('"').nth(1)?.to_string();
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let Some(total) = buckets.last().map(|(_, n)| *n) else {
        return;
    };
    println!();
    println!("detector's own reply time over the paced runs ({total} requests), cumulative:");
    for (le, n) in &buckets {
        println!("  <= {le:>8} s: {:6.2} %", 100.0 * n / total.max(1.0));
    }
}

async fn start_servers(
    cancel: CancellationToken,
    metrics: PolicyMetrics,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let bans = Arc::new(BanView::default());
    let until = Utc::now() + chrono::Duration::hours(1);
    for i in 0..10_000u32 {
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 19, 0, 0)) + i);
        bans.ban(ipnet::IpNet::from(std::net::IpAddr::V4(ip)), until);
    }
    let config = PostfixPolicyConfig {
        banned_action: BannedAction::Reject,
        ..PostfixPolicyConfig::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    // The engine task's stand-in: takes every event.
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let shared = Arc::new(Shared::new(&config, bans, metrics, tx));
    let listener = "127.0.0.1:0"
        .parse::<ListenAddr>()?
        .bind(&UnixSocketOptions::default())
        .await?;
    let ListenAddr::Tcp(policy) = listener.local_addr() else {
        anyhow::bail!("not TCP")
    };
    tokio::spawn(detector::policy::postfix::serve(
        listener,
        shared,
        cancel.clone(),
    ));

    let reference = TcpListener::bind("127.0.0.1:0").await?;
    let reference_addr = reference.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = reference.accept().await else {
                return;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(echo_dunno(s));
        }
    });
    Ok((policy, reference_addr))
}

/// The reference: lines until the empty one, then `action=DUNNO`.
async fn echo_dunno(s: TcpStream) {
    let mut r = BufReader::new(s);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line == b"\n" && r.get_mut().write_all(b"action=DUNNO\n\n").await.is_err() {
            return;
        }
    }
}

/// A request like Postfix 3.7's (its full attribute list); every third is END-OF-MESSAGE.
fn request(conn: usize, n: u64) -> Vec<u8> {
    let state = if n % 3 == 2 { "END-OF-MESSAGE" } else { "RCPT" };
    let ip = format!("198.18.{}.{}", (conn / 250) % 256, conn % 250 + 1);
    format!(
        "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n\
         client_address={ip}\nclient_name=unknown\nclient_port={port}\nreverse_client_name=unknown\n\
         server_address=198.18.0.1\nserver_port=25\nhelo_name=client{conn}.example\n\
         sender=sender{n}@example.net\nrecipient=user{n}@example.test\nrecipient_count=0\n\
         queue_id=\ninstance={conn:x}.6745a1b0.{n:x}.0\nsize=0\netrn_domain=\nstress=\n\
         sasl_method=\nsasl_username=\nsasl_sender=\nccert_subject=\nccert_issuer=\n\
         ccert_fingerprint=\nccert_pubkey_fingerprint=\nencryption_protocol=\n\
         encryption_cipher=\nencryption_keysize=0\npolicy_context=\ncompatibility_level=3.6\n\
         mail_version=3.7.11\n\n",
        port = 30000 + conn
    )
    .into_bytes()
}

/// One request and its reply; the round trip in ns.
async fn ask(r: &mut BufReader<TcpStream>, req: &[u8], reply: &mut String) -> anyhow::Result<u64> {
    let started = Instant::now();
    r.get_mut().write_all(req).await?;
    reply.clear();
    loop {
        let before = reply.len();
        if r.read_line(reply).await? == 0 {
            anyhow::bail!("server closed the connection");
        }
        if &reply[before..] == "\n" {
            break;
        }
    }
    let ns = started.elapsed().as_nanos() as u64;
    anyhow::ensure!(reply.starts_with("action="), "bad reply {reply:?}");
    Ok(ns)
}

async fn connect(addr: SocketAddr) -> anyhow::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(BufReader::new(s))
}

async fn paced(
    addr: SocketAddr,
    rate: u64,
    conns: usize,
    seconds: u64,
) -> anyhow::Result<Vec<u64>> {
    let per_conn = Duration::from_secs_f64(conns as f64 / rate as f64);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut r = connect(addr).await?;
            let mut tick = tokio::time::interval(per_conn);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Spread the connections' phases over one interval.
            tokio::time::sleep(per_conn.mul_f64(c as f64 / conns as f64)).await;
            let mut reply = String::new();
            let mut rtts = Vec::new();
            let mut n = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                rtts.push(ask(&mut r, &request(c, n), &mut reply).await?);
                n += 1;
            }
            anyhow::Ok(rtts)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

async fn flat_out(addr: SocketAddr, conns: usize, seconds: u64) -> anyhow::Result<u64> {
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut r = connect(addr).await?;
            let mut reply = String::new();
            let mut n = 0u64;
            while Instant::now() < end {
                ask(&mut r, &request(c, n), &mut reply).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total)
}
