//! `cargo xtask bench parse`.
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail};
use chrono::{TimeZone, Utc};
use detector_testkit::loggen::{DovecotVersion, Envelope, Msg, dovecot, postfix, render};
use detector_testkit::rng::Rng;

use super::fail2ban;
use crate::util::{run_cmd, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Lines in the generated log.
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: usize,
    /// PRNG seed of the generator (same seed, same file).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Timed runs of the detector; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Do not run fail2ban-regex even when it is installed.
    #[arg(long)]
    pub skip_fail2ban: bool,
    /// Lines (the head of the generated log) that fail2ban-regex and, for the ratio, the
    /// detector parse; long enough that neither's start-up matters, short enough to be quick.
    #[arg(long, default_value_t = 50_000)]
    pub fail2ban_lines: usize,
}

pub fn run(o: Options) -> Result<()> {
    let root = workspace_root();
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "detector",
    ]))?;
    let bin = root.join("target/release/detector");
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let log = dir.join(format!("parse-{}-{}.log", o.lines, o.seed));
    if !log.exists() {
        eprintln!(
            "generating {} ({} lines, seed {})",
            log.display(),
            o.lines,
            o.seed
        );
        generate(&log, o.lines, o.seed)?;
    }
    let size = fs::metadata(&log)?.len();

    let one_core = which("taskset");
    let whole = time_detector(&bin, &log, o.runs, one_core)?;
    let ours = o.lines as f64 / whole.wall.as_secs_f64();
    println!(
        "detector parse --json CPU time (user+sys, unaffected by other load): {:.3} s = {:.0} lines/s",
        whole.cpu.as_secs_f64(),
        o.lines as f64 / whole.cpu.as_secs_f64()
    );
    println!(
        "detector parse --json: {} lines ({:.1} MB) in {:.3} s = {:.0} lines/s ({:.1} MB/s){}",
        o.lines,
        size as f64 / 1e6,
        whole.wall.as_secs_f64(),
        ours,
        size as f64 / 1e6 / whole.wall.as_secs_f64(),
        if one_core { ", pinned to one core" } else { "" }
    );
    let ours_cpu = o.lines as f64 / whole.cpu.as_secs_f64();
    println!(
        "target: >= 2100000 lines/s (CPU time; wall times stretch with the machine's load) -> {}",
        if ours_cpu >= 2_100_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    detector_testkit::bench::summary(
        &format!(
            "parse: `detector parse --json`, {} lines, CPU time",
            o.lines
        ),
        &format!(
            "{:.2}M lines/s ({:.2}M wall)",
            o.lines as f64 / whole.cpu.as_secs_f64() / 1e6,
            ours / 1e6
        ),
        "-",
        ">= 2.1M lines/s",
    );

    if o.skip_fail2ban {
        return Ok(());
    }
    if let Some(why) = fail2ban::unavailable() {
        println!("{why}");
        return Ok(());
    }
    let n = o.fail2ban_lines.min(o.lines);
    let subset = dir.join(format!("parse-{}-{}-head{}.log", o.lines, o.seed, n));
    if !subset.exists() {
        let text = fs::read_to_string(&log)?;
        let mut s = String::new();
        for l in text.lines().take(n) {
            s.push_str(l);
            s.push('\n');
        }
        fs::write(&subset, s)?;
    }
    let pin = if one_core { "taskset -c 0 " } else { "" };
    println!(
        "comparison, same work on the same lines:\n\
         \x20 input:    the first {n} lines of the log above ({}), generated busy-MX mix of Postfix\n\
         \x20           (smtpd, postscreen, qmgr, ...) and Dovecot (login, auth) syslog lines\n\
         \x20 fail2ban: {} (Debian package), both stock filters, one run each, every line through both:\n\
         \x20           {pin}fail2ban-regex --print-no-missed --print-no-ignored LOG /etc/fail2ban/filter.d/postfix.conf\n\
         \x20           {pin}fail2ban-regex --print-no-missed --print-no-ignored LOG /etc/fail2ban/filter.d/dovecot.conf\n\
         \x20           rate = {n} / (time postfix + time dovecot); time = its own [processed in S sec] (wall),\n\
         \x20           and CPU time (user+sys) minus the same command's CPU time on a one-line file\n\
         \x20 detector: {pin}detector parse --json LOG > /dev/null: envelope, both daemons' parsers,\n\
         \x20           cross-line de-duplication, JSON per event; process start included; best of {}",
        subset.display(),
        fail2ban::version(),
        o.runs.max(3),
    );
    let one_line = dir.join("parse-one-line.log");
    fs::write(&one_line, format!("{}\n", text_head(&subset)?))?;
    let mut runs = Vec::new();
    let mut f2b_cpu = Duration::ZERO;
    for filter in fail2ban::FILTERS {
        let run = fail2ban::run_filter(&subset, filter, one_core)?;
        let start_up = fail2ban::run_filter(&one_line, filter, one_core)?;
        let cpu = run.cpu.saturating_sub(start_up.cpu);
        println!(
            "  fail2ban-regex {filter}.conf: processed in {:.2} s (command wall {:.2} s; CPU {:.2} s minus {:.2} s start-up on one line) ({})",
            run.processed.as_secs_f64(),
            run.wall.as_secs_f64(),
            run.cpu.as_secs_f64(),
            start_up.cpu.as_secs_f64(),
            run.summary
        );
        f2b_cpu += cpu;
        runs.push(run);
    }
    let theirs = fail2ban::rate(n, &runs)?;
    let theirs_cpu = n as f64 / f2b_cpu.as_secs_f64();
    let head = time_detector(&bin, &subset, o.runs.max(3), one_core)?;
    let ours_head = n as f64 / head.wall.as_secs_f64();
    let ours_head_cpu = n as f64 / head.cpu.as_secs_f64();
    println!(
        "  detector parse --json: {n} lines in {:.3} s wall, {:.3} s CPU",
        head.wall.as_secs_f64(),
        head.cpu.as_secs_f64()
    );
    let ratio = ours_head / theirs;
    println!(
        "wall: fail2ban-regex postfix+dovecot {theirs:.0} lines/s, detector parse {ours_head:.0} lines/s: \
         detector is {ratio:.1}x faster on the same lines (target >= 50x -> {})",
        if ratio >= 50.0 { "met" } else { "NOT met" }
    );
    let ratio_cpu = ours_head_cpu / theirs_cpu;
    println!(
        "CPU:  fail2ban-regex postfix+dovecot {theirs_cpu:.0} lines/s, detector parse {ours_head_cpu:.0} lines/s: \
         detector is {ratio_cpu:.1}x faster on the same lines (target >= 50x -> {})",
        if ratio_cpu >= 50.0 { "met" } else { "NOT met" }
    );
    detector_testkit::bench::summary(
        &format!("parse vs fail2ban-regex (both stock filters), first {n} lines, CPU time"),
        &format!(
            "{:.1}x ({ours_head_cpu:.0} lines/s)",
            ours_head_cpu / theirs_cpu
        ),
        &format!("fail2ban-regex {theirs_cpu:.0} lines/s"),
        ">= 50x",
    );
    Ok(())
}

/// The first line of a file.
fn text_head(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// The best of `runs` timed `detector parse --json LOG > /dev/null`.
struct Timing {
    wall: Duration,
    cpu: Duration,
}

fn time_detector(bin: &Path, log: &Path, runs: usize, one_core: bool) -> Result<Timing> {
    let mut best = Timing {
        wall: Duration::MAX,
        cpu: Duration::MAX,
    };
    for _ in 0..runs.max(1) {
        let mut cmd = if one_core {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.args(["parse", "--json"])
            .arg(log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let cpu0 = children_cpu();
        let t = Instant::now();
        let out = cmd.output().context("running detector parse")?;
        let dt = t.elapsed();
        let cpu = children_cpu().saturating_sub(cpu0);
        if !out.status.success() {
            bail!(
                "detector parse failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprint!(
            "  run: wall {:.3} s, cpu {:.3} s  {}",
            dt.as_secs_f64(),
            cpu.as_secs_f64(),
            String::from_utf8_lossy(&out.stderr)
        );
        best.wall = best.wall.min(dt);
        best.cpu = best.cpu.min(cpu);
    }
    Ok(best)
}

/// User+system CPU time of all waited-for children so far (getrusage(RUSAGE_CHILDREN)).
pub(super) fn children_cpu() -> Duration {
    #[repr(C)]
    struct Rusage {
        utime: [i64; 2],
        stime: [i64; 2],
        rest: [i64; 14],
    }
    unsafe extern "C" {
        fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    }
    let mut r = Rusage {
        utime: [0; 2],
        stime: [0; 2],
        rest: [0; 14],
    };
    // SAFETY: `r` matches struct rusage on 64-bit Linux; RUSAGE_CHILDREN = -1.
    if unsafe { getrusage(-1, &mut r) } != 0 {
        return Duration::ZERO;
    }
    let us = |t: [i64; 2]| {
        Duration::from_secs(t[0].max(0) as u64) + Duration::from_micros(t[1].max(0) as u64)
    };
    us(r.utime) + us(r.stime)
}

pub(super) fn which(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A realistic busy-MX mix: legitimate deliveries with their queue lines, spam rejects,
/// postscreen, SASL guessing on submission, Dovecot logins (good and bad) with auth lines,
/// plus daemon noise. Every line is a syslog line as in /var/log/mail.log, written by the
/// same generator as the scenario simulator (`detector_testkit::loggen`).
fn generate(path: &PathBuf, lines: usize, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let mut out = BufWriter::with_capacity(1 << 20, fs::File::create(path)?);
    let mut written = 0usize;
    let start = Utc
        .with_ymd_and_hms(2026, 11, 27, 0, 0, 0)
        .single()
        .context("start time")?;
    let mut t = 0i64; // seconds since Nov 27 00:00:00
    let users = [
        "alice",
        "bob",
        "carol",
        "dave",
        "admin",
        "info",
        "test",
        "sales",
        "support",
        "webmaster",
    ];
    let v = DovecotVersion::V2_3;
    let host_v4: IpAddr = Ipv4Addr::new(198, 18, 0, 1).into();
    let mut batch: Vec<Msg> = Vec::with_capacity(8);
    while written < lines {
        batch.clear();
        t += rng.range(0, 1);
        let time = start + chrono::Duration::seconds(t);
        let ip: IpAddr = if rng.below(10) == 0 {
            Ipv6Addr::new(
                0x2001,
                0xdb8,
                rng.below(65536) as u16,
                0,
                0,
                0,
                0,
                rng.below(65536) as u16,
            )
            .into()
        } else {
            Ipv4Addr::new(
                198,
                18 + rng.below(2) as u8,
                rng.below(256) as u8,
                1 + rng.below(254) as u8,
            )
            .into()
        };
        let host = if rng.below(3) == 0 {
            "unknown".to_owned()
        } else {
            format!("mx{}.example.net", rng.below(1000))
        };
        let peer = postfix::peer(&host, ip);
        let pid = 1000 + rng.below(30000) as u32;
        let user = format!(
            "{}@example.test",
            users[rng.below(users.len() as u64) as usize]
        );
        let qid = rng.hex(10);
        let port = 1024 + rng.below(60000) as u16;
        match rng.below(100) {
            0..=29 => {
                // Legitimate inbound delivery.
                let smtpd = |text| postfix::msg("smtpd", pid, text);
                batch.push(smtpd(postfix::connect(&peer)));
                batch.push(smtpd(postfix::tls_established(&peer)));
                batch.push(smtpd(postfix::client(&qid, &peer)));
                let id = format!("{}@{host}", rng.hex(12));
                batch.push(postfix::msg(
                    "cleanup",
                    pid + 1,
                    postfix::message_id(&qid, &id),
                ));
                let from = format!("news@{host}");
                let size = 1000 + rng.below(90000);
                batch.push(postfix::msg(
                    "qmgr",
                    900,
                    postfix::queue_active(&qid, &from, size),
                ));
                batch.push(smtpd(postfix::disconnect(
                    &peer,
                    "ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 commands=7",
                )));
                batch.push(postfix::msg(
                    "lmtp",
                    pid + 2,
                    postfix::lmtp_saved(&qid, &user),
                ));
                batch.push(postfix::msg("qmgr", 900, postfix::removed(&qid)));
            }
            30..=44 => {
                // Spam run: reject at RCPT.
                let smtpd = |text| postfix::msg("smtpd", pid, text);
                let from = format!("x{}@spam.example", rng.below(1000));
                batch.push(smtpd(postfix::connect(&peer)));
                batch.push(smtpd(postfix::reject_rbl(&peer, ip, &from, &user, &host)));
                batch.push(smtpd(postfix::disconnect(
                    &peer,
                    "ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4",
                )));
            }
            45..=54 => {
                // postscreen.
                let ps = |text| postfix::msg("postscreen", 800, text);
                batch.push(ps(postfix::postscreen_connect(ip, port, host_v4)));
                if rng.below(2) == 0 {
                    batch.push(ps(postfix::postscreen_pass_old(ip, port)));
                } else {
                    batch.push(ps(postfix::postscreen_pregreet(ip, port)));
                    batch.push(ps(postfix::postscreen_disconnect(ip, port)));
                }
            }
            55..=66 => {
                // SASL guessing on submission.
                let sub = |text| postfix::msg("submission/smtpd", pid, text);
                batch.push(sub(postfix::connect(&peer)));
                batch.push(dovecot::auth_failure(
                    v,
                    "passwd-file",
                    &user,
                    ip,
                    None,
                    "login",
                    false,
                ));
                batch.push(sub(postfix::sasl_failed(&peer, "LOGIN", &user)));
                batch.push(sub(postfix::lost_connection("AUTH", &peer)));
                batch.push(sub(postfix::disconnect(
                    &peer,
                    "ehlo=1 auth=0/1 commands=1/2",
                )));
            }
            67..=81 => {
                // Dovecot IMAP/POP3 login, good.
                let s = rng.session();
                let p = if rng.below(3) == 0 { "pop3" } else { "imap" };
                batch.push(dovecot::login_ok(v, p, &user, ip, host_v4, pid, &s, true));
                batch.push(dovecot::logout(p, &user, pid, &s, 120, 2400));
            }
            82..=93 => {
                // Dovecot failed login with auth line.
                let s = rng.session();
                let unknown = rng.below(2) == 0;
                let guessed = user.replacen('@', &format!("{}@", rng.below(100)), 1);
                batch.push(dovecot::auth_failure(
                    v,
                    "passwd-file",
                    &guessed,
                    ip,
                    Some(&s),
                    "plain",
                    unknown,
                ));
                batch.push(dovecot::login_failed(
                    v,
                    "imap",
                    &user,
                    ip,
                    host_v4,
                    &s,
                    dovecot::Ending::Closed,
                    1,
                    2,
                    true,
                ));
            }
            _ => {
                // Noise.
                let at = time.format("%b %e %H:%M:%S").to_string();
                batch.push(postfix::msg("anvil", 700, postfix::anvil_rate(ip, &at)));
                batch.push(postfix::msg(
                    "smtpd",
                    pid,
                    postfix::lost_connection("CONNECT", &peer),
                ));
                let s = rng.session();
                batch.push(dovecot::tls_failed(v, "imap", ip, host_v4, &s));
            }
        }
        for m in &batch {
            if written == lines {
                break;
            }
            out.write_all(render(Envelope::Syslog, time, "mail", m).as_bytes())?;
            out.write_all(b"\n")?;
            written += 1;
        }
    }
    out.flush()?;
    Ok(())
}
