//! `cargo xtask bench parse`.
use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

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
    println!(
        "target: >= 500000 lines/s -> {}",
        if ours >= 500_000.0 { "met" } else { "NOT met" }
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
    println!(
        "comparison on the first {n} lines ({}): fail2ban-regex's own [processed in] time per stock filter, \
         detector parse --json wall time (process start included, best of {}){}",
        subset.display(),
        o.runs.max(3),
        if one_core {
            ", both pinned to one core"
        } else {
            ""
        }
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
    println!(
        "CPU:  fail2ban-regex postfix+dovecot {theirs_cpu:.0} lines/s, detector parse {ours_head_cpu:.0} lines/s: \
         detector is {:.1}x faster on the same lines",
        ours_head_cpu / theirs_cpu
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

/// SplitMix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn hex(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len);
        for _ in 0..len {
            s.push(b"0123456789ABCDEF"[self.below(16) as usize] as char);
        }
        s
    }
    fn session(&mut self) -> String {
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        (0..16)
            .map(|_| B64[self.below(64) as usize] as char)
            .collect()
    }
}

/// A realistic busy-MX mix: legitimate deliveries with their queue lines, spam rejects,
/// postscreen, SASL guessing on submission, Dovecot logins (good and bad) with auth lines,
/// plus daemon noise. Every line is a syslog line as in /var/log/mail.log.
fn generate(path: &PathBuf, lines: usize, seed: u64) -> Result<()> {
    let mut rng = Rng(seed);
    let mut out = BufWriter::with_capacity(1 << 20, fs::File::create(path)?);
    let mut written = 0usize;
    let mut t = 0u64; // seconds since Nov 27 00:00:00
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
    let mut buf = String::with_capacity(4096);
    while written < lines {
        buf.clear();
        t += rng.below(2);
        let ts = format!(
            "Nov 27 {:02}:{:02}:{:02}",
            (t / 3600) % 24,
            (t / 60) % 60,
            t % 60
        );
        let ip = if rng.below(10) == 0 {
            format!("2001:db8:{:x}::{:x}", rng.below(65536), rng.below(65536))
        } else {
            format!(
                "198.{}.{}.{}",
                18 + rng.below(2),
                rng.below(256),
                1 + rng.below(254)
            )
        };
        let host = if rng.below(3) == 0 {
            "unknown".to_owned()
        } else {
            format!("mx{}.example.net", rng.below(1000))
        };
        let pid = 1000 + rng.below(30000);
        let user = users[rng.below(users.len() as u64) as usize];
        let qid = rng.hex(10);
        let h = "mail";
        match rng.below(100) {
            0..=29 => {
                // Legitimate inbound delivery.
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/smtpd[{pid}]: connect from {host}[{ip}]"
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/smtpd[{pid}]: Anonymous TLS connection established from {host}[{ip}]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256"
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/smtpd[{pid}]: {qid}: client={host}[{ip}]"
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/cleanup[{}]: {qid}: message-id=<{}@{host}>",
                    pid + 1,
                    rng.hex(12)
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/qmgr[900]: {qid}: from=<news@{host}>, size={}, nrcpt=1 (queue active)",
                    1000 + rng.below(90000)
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/smtpd[{pid}]: disconnect from {host}[{ip}] ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 commands=7"
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/lmtp[{}]: {qid}: to=<{user}@example.test>, relay=mail.example.test[private/dovecot-lmtp], delay=0.1, delays=0.05/0/0.02/0.03, dsn=2.0.0, status=sent (250 2.0.0 <{user}@example.test> Saved)",
                    pid + 2
                );
                let _ = writeln!(buf, "{ts} {h} postfix/qmgr[900]: {qid}: removed");
            }
            30..=44 => {
                // Spam run: reject at RCPT.
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/smtpd[{pid}]: connect from {host}[{ip}]"
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from {host}[{ip}]: 554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; from=<x{}@spam.example> to=<{user}@example.test> proto=ESMTP helo=<{host}>",
                    rng.below(1000)
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/smtpd[{pid}]: disconnect from {host}[{ip}] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4"
                );
            }
            45..=54 => {
                // postscreen.
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/postscreen[800]: CONNECT from [{ip}]:{} to [198.18.0.1]:25",
                    1024 + rng.below(60000)
                );
                if rng.below(2) == 0 {
                    let _ = writeln!(
                        buf,
                        "{ts} {h} postfix/postscreen[800]: PASS OLD [{ip}]:{}",
                        1024 + rng.below(60000)
                    );
                } else {
                    let _ = writeln!(
                        buf,
                        "{ts} {h} postfix/postscreen[800]: PREGREET 14 after 0.08 from [{ip}]:{}: EHLO ylmf-pc\\r\\n",
                        1024 + rng.below(60000)
                    );
                    let _ = writeln!(
                        buf,
                        "{ts} {h} postfix/postscreen[800]: DISCONNECT [{ip}]:{}",
                        1024 + rng.below(60000)
                    );
                }
            }
            55..=66 => {
                // SASL guessing on submission.
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/submission/smtpd[{pid}]: connect from {host}[{ip}]"
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} dovecot: auth: passwd-file({user}@example.test,{ip}): Password mismatch"
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/submission/smtpd[{pid}]: warning: {host}[{ip}]: SASL LOGIN authentication failed: (reason unavailable), sasl_username={user}@example.test"
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/submission/smtpd[{pid}]: lost connection after AUTH from {host}[{ip}]"
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/submission/smtpd[{pid}]: disconnect from {host}[{ip}] ehlo=1 auth=0/1 commands=1/2"
                );
            }
            67..=81 => {
                // Dovecot IMAP/POP3 login, good.
                let s = rng.session();
                let p = if rng.below(3) == 0 { "pop3" } else { "imap" };
                let _ = writeln!(
                    buf,
                    "{ts} {h} dovecot: {p}-login: Login: user=<{user}@example.test>, method=PLAIN, rip={ip}, lip=198.18.0.1, mpid={pid}, TLS, session=<{s}>"
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} dovecot: {p}({user}@example.test)<{pid}><{s}>: Disconnected: Logged out in=120 out=2400 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0"
                );
            }
            82..=93 => {
                // Dovecot failed login with auth line.
                let s = rng.session();
                let what = if rng.below(2) == 0 {
                    "unknown user"
                } else {
                    "Password mismatch"
                };
                let _ = writeln!(
                    buf,
                    "{ts} {h} dovecot: auth: passwd-file({user}{}@example.test,{ip},<{s}>): {what}",
                    rng.below(100)
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} dovecot: imap-login: Disconnected: Connection closed (auth failed, 1 attempts in 2 secs): user=<{user}@example.test>, method=PLAIN, rip={ip}, lip=198.18.0.1, TLS, session=<{s}>"
                );
            }
            _ => {
                // Noise.
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/anvil[700]: statistics: max connection rate 3/60s for (smtp:{ip}) at {ts}"
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} postfix/smtpd[{pid}]: lost connection after CONNECT from {host}[{ip}]"
                );
                let _ = writeln!(
                    buf,
                    "{ts} {h} dovecot: imap-login: Disconnected (no auth attempts in 0 secs): user=<>, rip={ip}, lip=198.18.0.1, TLS handshaking: SSL_accept() failed: error:0A00006C:SSL routines::bad key share, session=<{}>",
                    rng.session()
                );
            }
        }
        for l in buf.lines() {
            if written == lines {
                break;
            }
            out.write_all(l.as_bytes())?;
            out.write_all(b"\n")?;
            written += 1;
        }
    }
    out.flush()?;
    Ok(())
}
