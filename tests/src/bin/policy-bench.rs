//! `cargo xtask bench dovecot-policy`: answer latency of the Dovecot auth-policy server at a
//! fixed request rate, against a trivial hyper server answering a constant, in the same run.
//!
//! Both servers run in this process on loopback, on a 2-thread runtime. The policy server is
//! the real one ([`detector::policy::dovecot::Server`]) answering from a view that holds
//! `--bans` bans, `--campaigns` mailboxes under attack and known clients, while a "daemon"
//! thread feeds every report through a real pipeline and engine (which updates the view, as
//! in `detector run`). The load is open-loop: `--connections` keep-alive connections (Dovecot
//! keeps a pool), requests sent on a fixed schedule at `--rate` per second in total (1 in 5 a
//! report, 4 in 5 an allow). Latency is counted from the moment a request is written to the
//! moment its whole answer is read (what Dovecot waits). The generator's own lag behind its
//! schedule (tokio timers have 1 ms granularity; a stalled server also holds its connection)
//! is reported beside it, so a run that did not hold the rate shows it.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use detector::engine::{Engine, EngineConfig};
use detector::parse::{Format, LineParser};
use detector::pipeline::{NullSink, Pipeline};
use detector::policy::dovecot::report::Reports;
use detector::policy::dovecot::{CampaignAction, PolicyMetrics, PolicyView, Server, ViewUpdater};
use detector::policy::{ListenAddr, UnixSocketOptions};

#[derive(Parser)]
struct Args {
    /// Requests per second, in total.
    #[arg(long, default_value_t = 5000)]
    rate: u32,
    /// Seconds measured (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Keep-alive connections the load is spread over.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Bans in the view.
    #[arg(long, default_value_t = 10_000)]
    bans: u32,
    /// Mailboxes under a campaign in the view.
    #[arg(long, default_value_t = 100)]
    campaigns: u32,
}

fn allow_body(i: u64) -> String {
    // Addresses spread over 198.18.0.0/15; some banned, some on attacked mailboxes.
    let ip = format!("198.{}.{}.{}", 18 + (i >> 16) % 2, (i >> 8) & 255, i & 255);
    format!(
        r#"{{"device_id":"","login":"user{}@example.test","protocol":"imap","pwhash":"{:04x}","remote":"{ip}","session_id":"s{i}","tls":false}}"#,
        i % 1000,
        i % 4096
    )
}

fn report_body(i: u64) -> String {
    allow_body(i).replace(
        r#""tls":false"#,
        r#""tls":false,"success":false,"policy_reject":false"#,
    )
}

/// Sends one request on `stream` and reads the whole answer; returns the HTTP status.
async fn request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    command: &str,
    body: &str,
) -> Result<u16> {
    let head = format!(
        "POST /?command={command} HTTP/1.1\r\nHost: policy\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    buf.clear();
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end])?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .context("no content-length")?;
        if buf.len() >= end + 4 + len {
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("no status")?;
            return Ok(status);
        }
    }
}

/// Open-loop load against `addr`: (answer latency, lag behind the schedule) in microseconds
/// of the measured requests.
fn load(addr: SocketAddr, args: &Args) -> Result<Vec<(u64, u64)>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let per_conn = f64::from(args.rate) / f64::from(args.connections);
        let interval = Duration::from_secs_f64(1.0 / per_conn);
        let warm = Duration::from_secs(1);
        let total = warm + Duration::from_secs(u64::from(args.seconds));
        let start = Instant::now() + Duration::from_millis(100);
        let mut tasks = Vec::new();
        for c in 0..args.connections {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let offset = interval.mul_f64(f64::from(c) / f64::from(args.connections));
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut buf = Vec::with_capacity(1024);
                let mut k: u64 = 0;
                loop {
                    let due = start + offset + interval.mul_f64(k as f64);
                    if due >= start + total {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    let i = k * 64 + u64::from(c);
                    let (command, body) = if k % 5 == 4 {
                        ("report", report_body(i))
                    } else {
                        ("allow", allow_body(i))
                    };
                    let sent = Instant::now();
                    let status = request(&mut stream, &mut buf, command, &body).await?;
                    if status != 200 {
                        bail!("HTTP {status}");
                    }
                    if due >= start + warm {
                        let lag = sent.saturating_duration_since(due).as_micros() as u64;
                        lat.push((sent.elapsed().as_micros() as u64, lag));
                    }
                    k += 1;
                }
                Ok::<_, anyhow::Error>(lat)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        Ok(all)
    })
}

/// The reference: hyper reading the body and answering a constant, same runtime, no JSON.
async fn reference_server(listener: tokio::net::TcpListener, cancel: CancellationToken) {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            s = listener.accept() => match s { Ok((s, _)) => s, Err(_) => continue },
        };
        tokio::spawn(async move {
            // Reads the body (so the connection stays open, as for the real server) and
            // answers a constant.
            let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                use http_body_util::BodyExt;
                let _ = req.into_body().collect().await;
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(br#"{"status":0,"msg":""}"#),
                )))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn percentiles(name: &str, samples: Vec<(u64, u64)>, rate: u32) {
    let sorted = |mut v: Vec<u64>| {
        v.sort_unstable();
        v
    };
    let lat = sorted(samples.iter().map(|s| s.0).collect());
    let lag = sorted(samples.iter().map(|s| s.1).collect());
    let p = |v: &[u64], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    println!(
        "{name:<22} {:>6} requests at {rate}/s: answer p50 {:>5} µs  p90 {:>5} µs  p99 {:>5} µs  p99.9 {:>6} µs  max {:>6} µs  (generator lag p50 {} µs, p99 {} µs)",
        lat.len(),
        p(&lat, 0.5),
        p(&lat, 0.9),
        p(&lat, 0.99),
        p(&lat, 0.999),
        lat[lat.len() - 1],
        p(&lag, 0.5),
        p(&lag, 0.99),
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.rate == 0 || args.connections == 0 || args.seconds == 0 {
        bail!("--rate, --connections and --seconds must be positive");
    }
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cancel = CancellationToken::new();

    // The real server, its view filled, and a daemon thread feeding reports to the engine.
    let cfg = EngineConfig::default();
    let view = Arc::new(PolicyView::new(cfg.clone(), CampaignAction::Reject));
    let far = chrono::Utc::now().timestamp() + 86_400;
    for i in 0..args.bans {
        let ip = format!(
            "198.{}.{}.{}",
            18 + (i >> 16) % 2,
            (i >> 8) & 255,
            (i * 7) & 255
        );
        view.test_ban(ip.parse::<std::net::IpAddr>()?.into(), far);
    }
    for i in 0..args.campaigns {
        view.test_campaign(&format!("user{i}"), far);
    }
    let (tx, mut rx) = mpsc::channel(4096);
    let server = Arc::new(Server {
        view: Arc::clone(&view),
        api_key: None,
        reports: tx,
        metrics: PolicyMetrics::default(),
    });
    let updater = ViewUpdater(Arc::clone(&view));
    let daemon = std::thread::spawn(move || {
        let mut pipeline = Pipeline::new(LineParser::new(Format::Auto), Engine::new(cfg.clone()))
            .with_policy_reports()
            .with_observer(Box::new(updater));
        let mut reports = Reports::new(cfg.horizon);
        let mut n = 0u64;
        while let Some(r) = rx.blocking_recv() {
            if let Some(ev) = reports.event(&r.request, r.time) {
                pipeline.feed_dovecot_report(ev, "bench", String::new, &mut NullSink);
                n += 1;
            }
        }
        n
    });
    let (policy_addr, reference_addr) = server_rt.block_on(async {
        let listener = ListenAddr::parse("bench", "127.0.0.1:0")?
            .bind(&UnixSocketOptions::default())
            .await?;
        let policy_addr: SocketAddr = listener.local_addr().to_string().parse()?;
        tokio::spawn(Arc::clone(&server).serve(listener, cancel.clone()));
        let reference = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let reference_addr = reference.local_addr()?;
        tokio::spawn(reference_server(reference, cancel.clone()));
        Ok::<_, anyhow::Error>((policy_addr, reference_addr))
    })?;

    println!(
        "{} s at {}/s over {} connections; view: {} bans, {} campaigns",
        args.seconds, args.rate, args.connections, args.bans, args.campaigns
    );
    let reference = load(reference_addr, &args)?;
    percentiles("reference (constant)", reference, args.rate);
    let policy = load(policy_addr, &args)?;
    percentiles("dovecot policy", policy, args.rate);
    cancel.cancel();
    drop(server);
    server_rt.shutdown_timeout(Duration::from_secs(2));
    let fed = daemon
        .join()
        .map_err(|_| anyhow::anyhow!("daemon thread panicked"))?;
    println!("reports fed through the pipeline: {fed}");
    Ok(())
}
