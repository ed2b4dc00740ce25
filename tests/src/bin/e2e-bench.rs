//! e2e-bench (`cargo xtask bench e2e`): latency from a login failure being logged to the ban
//! being in the kernel map, through the real daemon.
//!
//! For each of N distinct IPs (198.18.0.0/15) it writes a realistic SMTP probe (connect,
//! RCPT logged by Postfix, client=, disconnect rcpt=1 quit=1), then, timed, the Dovecot
//! failure (auth "unknown user" + imap-login "Disconnected ... auth failed") with the probed
//! address, and polls the pinned BANS_V4 map directly (one bpf lookup every 100 µs) until the
//! IP is there.
//!
//! - file source: the lines are appended (one write(2) per group) to a file `detector run`
//!   follows.
//! - journal source: the lines are sent as syslog datagrams (facility mail) to a standalone
//!   systemd-journald (the mail lab's), which `detector run --journal-dir` follows through
//!   `journalctl --follow`. A separate `journalctl --follow` measures journald's own share:
//!   time from the datagram to the entry reaching a follower.
//!
//! The daemon runs in the lab's mail namespace, attached to its interfaces; the IPs never
//! send a packet (only their log lines exist).
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use clap::{Parser, ValueEnum};
use detector_common::{ExactBan, Ipv4Key};
use detector_tests::e2e::{E2e, E2eOptions};
use detector_tests::lab::LogMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    File,
    Journal,
    Both,
}

#[derive(Parser)]
#[command(
    name = "e2e-bench",
    about = "Log line written -> ban in the kernel map, through detector run"
)]
struct Cli {
    /// Which source to measure.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    source: Which,
    /// Bans to measure per source (distinct IPs).
    #[arg(long, default_value_t = 250)]
    bans: usize,
    /// Pause between two bans, ms (latency of isolated bans, not throughput).
    #[arg(long, default_value_t = 20)]
    gap_ms: u64,
    /// A ban not seen within this long counts as lost.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("e2e-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<()> {
    if cli.bans == 0 || cli.bans > 250 * 250 {
        bail!("--bans must be 1..=62500");
    }
    println!(
        "log line written -> entry in BANS_V4 ({} bans per source, {} ms apart, detector {})",
        cli.bans,
        cli.gap_ms,
        detector_tests::bin::detector_bin().display()
    );
    if matches!(cli.source, Which::File | Which::Both) {
        let r = bench(cli, LogMode::File)?;
        r.print("file");
    }
    if matches!(cli.source, Which::Journal | Which::Both) {
        let r = bench(cli, LogMode::Journal)?;
        r.print("journal");
    }
    Ok(())
}

struct Results {
    /// Failure written -> IP in the map.
    to_map: Vec<Duration>,
    /// Failure written -> entry seen by a journalctl follower (journal only).
    to_journalctl: Vec<Duration>,
    lost: usize,
}

impl Results {
    fn print(&self, name: &str) {
        println!("\n{name} source:");
        line("  written -> in kernel map", &self.to_map);
        if !self.to_journalctl.is_empty() {
            line("  written -> journalctl -f", &self.to_journalctl);
            // Per ban: what detector adds after the entry reached a journalctl follower
            // (its own journalctl sees it at about the same moment).
            let mut own: Vec<f64> = self
                .to_map
                .iter()
                .zip(&self.to_journalctl)
                .map(|(m, j)| (m.as_secs_f64() - j.as_secs_f64()) * 1000.0)
                .collect();
            own.sort_by(f64::total_cmp);
            let share: f64 = self
                .to_journalctl
                .iter()
                .map(Duration::as_secs_f64)
                .sum::<f64>()
                / self
                    .to_map
                    .iter()
                    .map(Duration::as_secs_f64)
                    .sum::<f64>()
                    .max(1e-9);
            if !own.is_empty() {
                println!(
                    "  detector after journalctl -f: p50={:.2} ms p99={:.2} ms; journald's share of the total: {:.1} %",
                    own[own.len() / 2],
                    detector_testkit::bench::nearest_rank(&own, 0.99),
                    share * 100.0
                );
            }
        }
        if self.lost > 0 {
            println!("  LOST: {} bans never appeared", self.lost);
        }
    }
}

fn line(label: &str, v: &[Duration]) {
    println!("{}", detector_testkit::bench::latency_line(label, v));
}

/// Where the synthetic lines go.
enum Sink {
    File(std::fs::File),
    Journal(UnixDatagram),
}

impl Sink {
    /// One group of lines; for the file one write(2), for the journal one datagram per line.
    fn send(&mut self, lines: &[String]) -> Result<()> {
        match self {
            Sink::File(f) => {
                let mut buf = String::new();
                for l in lines {
                    buf.push_str(l);
                    buf.push('\n');
                }
                f.write_all(buf.as_bytes())?;
            }
            Sink::Journal(sock) => {
                for l in lines {
                    sock.send(l.as_bytes())?;
                }
            }
        }
        Ok(())
    }
}

fn bench(cli: &Cli, mode: LogMode) -> Result<Results> {
    let tag = match mode {
        LogMode::File => "bf",
        LogMode::Journal => "bj",
    };
    let mut opts = E2eOptions::new(tag, mode);
    opts.bots = 0;
    let file_path = PathBuf::from(format!(
        "{}/{}/bench-mail.log",
        detector_tests::e2e::WORK_ROOT,
        opts.tag
    ));
    if mode == LogMode::File {
        opts.source_args = Some(vec!["--file".into(), file_path.display().to_string()]);
    }
    let mut e = E2e::up_without_daemon(opts)?;
    let mut sink = match mode {
        LogMode::File => Sink::File(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(&file_path)?,
        ),
        LogMode::Journal => {
            let sock = UnixDatagram::unbound()?;
            let path = e.lab.journal_syslog_socket().context("no journal socket")?;
            sock.connect(&path)
                .with_context(|| format!("connecting to {}", path.display()))?;
            Sink::Journal(sock)
        }
    };
    e.start_daemon()?;
    let map = open_bans_v4(&e.pins.path)?;

    // journald's share: an independent follower timestamps each failure entry's arrival.
    let seen: Arc<Mutex<HashMap<Ipv4Addr, Instant>>> = Arc::default();
    let mut follower = None;
    if mode == LogMode::Journal {
        let dir = e.lab.journal_dir().context("journal dir")?;
        let mut child = Command::new("journalctl")
            .arg(format!("--directory={}", dir.display()))
            .args(["--follow", "--lines=0", "--output=cat", "SYSLOG_FACILITY=2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().context("journalctl stdout")?;
        let seen = Arc::clone(&seen);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                let now = Instant::now();
                if l.contains("bench-ready") {
                    let _ = ready_tx.send(());
                } else if let Some(ip) = failure_ip(&l) {
                    seen.lock().unwrap().entry(ip).or_insert(now);
                }
            }
        });
        // Wait until the follower (and so, about, the daemon's) sees new entries.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            sink.send(&[syslog(mode, "postfix/smtpd[1]", "bench-ready")])?;
            if ready_rx.recv_timeout(Duration::from_millis(500)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("the journalctl follower saw nothing within 10 s");
            }
        }
        follower = Some(child);
    }
    // Let the daemon catch up with the lab's startup lines.
    std::thread::sleep(Duration::from_millis(500));

    let mut to_map = Vec::new();
    let mut written: Vec<(Ipv4Addr, Instant)> = Vec::new();
    let mut lost = 0;
    for i in 0..cli.bans {
        let ip = Ipv4Addr::new(198, 18, 10 + (i / 250) as u8, 1 + (i % 250) as u8);
        let user = format!(
            "b{i:05}x{}@example.test",
            detector_tests::mailclient::random_token(4)
        );
        let (probe, failure) = lines_for(mode, ip, &user, i);
        sink.send(&probe)?;
        let t0 = Instant::now();
        sink.send(&failure)?;
        written.push((ip, t0));
        let key = Ipv4Key { addr: ip.octets() };
        let deadline = t0 + Duration::from_millis(cli.timeout_ms);
        loop {
            if map.get(&key, 0).is_ok() {
                to_map.push(t0.elapsed());
                break;
            }
            if Instant::now() > deadline {
                lost += 1;
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        std::thread::sleep(Duration::from_millis(cli.gap_ms));
    }
    let mut to_journalctl = Vec::new();
    if let Some(mut child) = follower {
        std::thread::sleep(Duration::from_millis(500));
        let seen = seen.lock().unwrap();
        for (ip, t0) in &written {
            if let Some(t) = seen.get(ip) {
                to_journalctl.push(t.duration_since(*t0));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let st = e.stop_daemon()?;
    if !st.success() {
        bail!("detector run exited with {st}:\n{}", e.daemon_logs());
    }
    if lost > 0 {
        eprintln!("{}", e.daemon_logs());
    }
    Ok(Results {
        to_map,
        to_journalctl,
        lost,
    })
}

fn open_bans_v4(pin_dir: &Path) -> Result<BpfHashMap<MapData, Ipv4Key, ExactBan>> {
    let path = pin_dir.join("BANS_V4");
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map = Map::from_map_data(data).context("BANS_V4")?;
    BpfHashMap::try_from(map).context("BANS_V4 is not the expected hash map")
}

/// The `rip=` address of a Dovecot failure line.
fn failure_ip(line: &str) -> Option<Ipv4Addr> {
    if !line.contains("auth failed") {
        return None;
    }
    let rest = &line[line.find("rip=")? + 4..];
    rest.split(',').next()?.parse().ok()
}

/// A syslog line: in the file as rsyslog writes mail.log, to journald as a datagram with
/// facility mail (PRI 22 = mail.info).
fn syslog(mode: LogMode, tag: &str, msg: &str) -> String {
    let ts = chrono::Local::now().format("%b %e %H:%M:%S");
    match mode {
        LogMode::File => format!("{ts} mail {tag}: {msg}"),
        LogMode::Journal => format!("<22>{ts} {tag}: {msg}"),
    }
}

/// The probe (Postfix) and the failure (Dovecot) lines of one bot, as the lab's servers log
/// them (see docs/lab.md, "What one round logs").
fn lines_for(mode: LogMode, ip: Ipv4Addr, user: &str, i: usize) -> (Vec<String>, Vec<String>) {
    let smtpd = format!("postfix/smtpd[{}]", 20000 + i % 10000);
    let who = format!("unknown[{ip}]");
    let qid = format!("{:010X}", 0xB000_0000u64 + i as u64);
    let probe = vec![
        syslog(mode, &smtpd, &format!("connect from {who}")),
        syslog(
            mode,
            &smtpd,
            &format!(
                "NOQUEUE: info: RCPT from {who}: lab-rcpt=<{user}>; from=<probe@bot.invalid> to=<{user}> proto=ESMTP helo=<bot.invalid>"
            ),
        ),
        syslog(mode, &smtpd, &format!("{qid}: client={who}")),
        syslog(
            mode,
            &smtpd,
            &format!("disconnect from {who} ehlo=1 mail=1 rcpt=1 quit=1 commands=4"),
        ),
    ];
    let session = format!("S{i:015}A");
    let dovecot = format!("dovecot[{}]", 30000 + i % 10000);
    let failure = vec![
        syslog(
            mode,
            &dovecot,
            &format!("auth: passwd-file({user},{ip},<{session}>): unknown user"),
        ),
        syslog(
            mode,
            &dovecot,
            &format!(
                "imap-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 0 secs): user=<{user}>, method=PLAIN, rip={ip}, lip=198.18.0.1, session=<{session}>"
            ),
        ),
    ];
    (probe, failure)
}
