//! demo: what `cargo xtask demo` runs. A real Postfix + Dovecot in network namespaces,
//! `detector run` attached to the mail host's interfaces and following its log files, a
//! remote MTA, a customer and a small botnet; prints what happens as it happens, then tears
//! everything down (also on Ctrl-C or an error).
//!
//! Needs root, the detector binary (`DETECTOR_BIN`, default target/debug/detector) and the
//! mailbot next to this binary.
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use detector_tests::bin::detector_bin;
use detector_tests::e2e::{E2e, E2eOptions, ban_lines_of};
use detector_tests::lab::{self, LogMode, Peer};
use detector_tests::mailclient::{Outcome, Report, random_token};

#[derive(Parser)]
#[command(
    name = "demo",
    about = "detector on a real mail server, start to finish"
)]
struct Cli {
    /// bpffs directory for the demo's pins (removed at the end).
    #[arg(long, default_value = "/sys/fs/bpf/detector-demo")]
    pin_dir: PathBuf,
    /// Number of bots (198.18.0.10 upwards).
    #[arg(long, default_value_t = 3)]
    bots: usize,
    /// Keep everything up until Enter is pressed (to poke at it with detector/bpftool).
    #[arg(long)]
    pause: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() {
    // Ctrl-C / SIGTERM: finish the current step, then tear down through the guards' Drop.
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let cli = Cli::parse();
    let t0 = Instant::now();
    let result = run(&cli, t0);
    match result {
        Ok(()) => println!(
            "\n[{:>5.1}s] everything torn down: namespaces, daemons, XDP, pins. Done.",
            t0.elapsed().as_secs_f64()
        ),
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("\ndemo: interrupted; everything started was torn down");
            std::process::exit(130);
        }
        Err(e) => {
            eprintln!("\ndemo: {e:#}\n(everything started was torn down)");
            std::process::exit(1);
        }
    }
}

/// Prints a step header with the time since the start.
struct Clock(Instant);

impl Clock {
    fn say(&self, text: &str) {
        println!("[{:>5.1}s] {text}", self.0.elapsed().as_secs_f64());
    }
}

fn run(cli: &Cli, t0: Instant) -> Result<()> {
    if !lab::is_root() {
        bail!("the demo needs root (network namespaces, XDP); rerun as root");
    }
    let clock = Clock(t0);
    println!("detector demo: a real Postfix + Dovecot, a botnet, a customer, and XDP bans.\n");
    clock.say("bringing up the mail lab (Postfix + Dovecot in network namespaces)...");
    let tag = format!("demo{:x}", std::process::id() & 0xffff);
    let mut e = E2e::up_without_daemon(E2eOptions {
        bots: cli.bots,
        pin_dir: Some(cli.pin_dir.clone()),
        ..E2eOptions::new(&tag, LogMode::File)
    })?;
    let bots: Vec<Peer> = e.lab.bots().into_iter().cloned().collect();
    clock.say(&format!(
        "mail host {} in {} (Postfix 25/587, Dovecot 143/110); customer alice at {}; bots {}",
        e.lab.mail_ip(),
        e.lab.mail_ns(),
        e.lab.client().ip,
        bots.iter()
            .map(|b| b.ip.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    check_interrupt()?;
    e.start_daemon()?;
    let log = e.daemon()?.log.clone();
    clock.say(&format!(
        "detector run: XDP attached to {} inside the mail namespace, pins in {}, following\n          {}\n          {}",
        e.lab.mail_ifaces().join(" "),
        cli.pin_dir.display(),
        e.lab.postfix_log().unwrap_or_default().display(),
        e.lab.dovecot_log().unwrap_or_default().display(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let tail = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || tail_bans(&log, &stop, t0))
    };
    let result = scenes(&e, &bots, &clock, cli);
    // Give the tail a moment to print the last ban lines.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let _ = tail.join();
    result?;
    clock.say("stopping the daemon (SIGTERM: state and positions saved), detaching XDP...");
    let st = e.stop_daemon()?;
    if !st.success() {
        bail!("detector run exited with {st}:\n{}", e.daemon_logs());
    }
    Ok(())
}

fn scenes(e: &E2e, bots: &[Peer], clock: &Clock, cli: &Cli) -> Result<()> {
    let client = e.lab.client().clone();
    let mta = bots.first().context("the demo needs at least one bot")?;

    println!();
    clock.say(&format!(
        "1. a remote MTA at {} verifies sender addresses (RCPT TO, then QUIT; no login), three times",
        mta.ip
    ));
    for rcpt in [
        "alice@example.test",
        "bob@example.test",
        "nobody@example.test",
    ] {
        show(&[e.lab.probe(mta, rcpt, false)?]);
    }
    check_interrupt()?;

    println!();
    clock.say("2. customer alice mistypes her password once, then logs in and sends bob a message");
    show(&[e
        .lab
        .imap_login(&client, "alice@example.test", "AlicePass12")?]);
    alice_reads_and_sends(e, &client)?;
    check_interrupt()?;

    println!();
    let bot = bots.get(1).unwrap_or(mta);
    let local = random_token(10);
    clock.say(&format!(
        "3. a bot at {} does the botnet's round: RCPT TO <{local}@example.test> (catch-all), QUIT,\n          then IMAP, POP3 and submission logins as that address",
        bot.ip
    ));
    let addr = format!("{local}@example.test");
    show(&[e.lab.probe(bot, &addr, false)?]);
    let pw = "Summer2026!";
    for step in ["imap", "pop3", "smtp-auth"] {
        show(&e.mailbot_fast(bot, &[step, "--user", &addr, "--password", pw])?);
    }
    let banned = e.wait_banned(&bot.ip.to_string(), Duration::from_secs(20))?;
    clock.say(&format!(
        "   {} is banned ({}, expires in {}s) right after its failed IMAP login: that session's\n          LOGOUT was already dropped (3 s I/O timeout), and its next SYNs time out",
        banned.address,
        banned.reason,
        banned.expires_in_s.unwrap_or(0)
    ));
    check_interrupt()?;

    println!();
    clock.say(&format!(
        "4. the bot comes back: every SYN from {} is dropped by XDP before the kernel's TCP stack",
        bot.ip
    ));
    for args in [
        vec!["probe", "--to", "x@example.test"],
        vec!["imap", "--user", "x@example.test", "--password", "x"],
    ] {
        show(&e.mailbot_fast(bot, &args)?);
    }
    check_interrupt()?;

    if bots.len() > 2 {
        println!();
        clock.say(&format!(
            "5. the rest of the botnet attacks at once ({})",
            bots[2..]
                .iter()
                .map(|b| b.ip.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = bots[2..]
                .iter()
                .map(|b| s.spawn(move || e.mailbot_fast(b, &["round"])))
                .collect();
            for h in handles {
                let reports = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("bot thread panicked"))??;
                show(&reports);
            }
            Ok(())
        })?;
        for b in &bots[2..] {
            e.wait_banned(&b.ip.to_string(), Duration::from_secs(20))?;
        }
        check_interrupt()?;
    }

    println!();
    clock.say("6. alice is still fine");
    alice_reads_and_sends(e, &client)?;

    println!();
    clock.say(&format!(
        "7. what the kernel holds: detector list --pin-dir {}",
        e.pins.path.display()
    ));
    print_cmd(&["list"], &e.pins.path)?;
    clock.say("   detector stats (packets seen by XDP, passed, dropped):");
    print_cmd(&["stats"], &e.pins.path)?;
    let bans = e.list()?;
    if bans.iter().any(|b| b.address == mta.ip.to_string()) {
        bail!("the remote MTA {} was banned", mta.ip);
    }
    if bans.iter().any(|b| b.address == client.ip.to_string()) {
        bail!("the customer {} was banned", client.ip);
    }
    clock.say(&format!(
        "   banned: {} bot(s); not banned: the remote MTA {} and the customer {}",
        bans.len(),
        mta.ip,
        client.ip
    ));
    if cli.pause {
        println!(
            "\nEverything is up. Try: target/debug/detector list --pin-dir {}\n                      bpftool map dump pinned {}/BANS_V4\nPress Enter to tear down.",
            e.pins.path.display(),
            e.pins.path.display()
        );
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    println!();
    Ok(())
}

/// One line per mailbot step.
/// The customer's good day: IMAP login, then a mail to bob over submission.
fn alice_reads_and_sends(e: &E2e, client: &Peer) -> Result<()> {
    show(&[e
        .lab
        .imap_login(client, "alice@example.test", "AlicePass123")?]);
    show(&[e.lab.send_mail(
        client,
        "alice@example.test",
        "AlicePass123",
        "bob@example.test",
    )?]);
    Ok(())
}

fn show(reports: &[Report]) {
    for r in reports {
        let what = match r.outcome {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::Refused => "refused",
            Outcome::Timeout => "TIMEOUT (SYN dropped)",
            Outcome::Error => "error",
        };
        let mut detail: String = r.detail.chars().take(60).collect();
        if r.detail.chars().count() > 60 {
            detail.push('…');
        }
        println!(
            "          {:<10} {:<22} {:>5.2}s  {}",
            r.step, what, r.secs, detail
        );
    }
}

/// Runs a detector subcommand on the demo's pins and prints its output, indented.
fn print_cmd(args: &[&str], pins: &Path) -> Result<()> {
    let out = Command::new(detector_bin())
        .args(args)
        .arg("--pin-dir")
        .arg(pins)
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("          {line}");
    }
    if !out.status.success() {
        bail!(
            "detector {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Follows the daemon's JSON log and prints each ban as it is written to the kernel map.
fn tail_bans(log: &Path, stop: &AtomicBool, t0: Instant) {
    let Ok(file) = std::fs::File::open(log) else {
        return;
    };
    let mut reader = BufReader::new(file);
    let _ = reader.seek(SeekFrom::Start(0));
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(_) if !line.ends_with('\n') => {
                // A partial line: wait for the rest.
                let _ = reader.seek(SeekFrom::Current(-(line.len() as i64)));
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(_) => {
                for ban in ban_lines_of(&line) {
                    println!(
                        "[{:>5.1}s]   >> detector: BAN {} rule={} for {} (offence {}): {}",
                        t0.elapsed().as_secs_f64(),
                        ban["prefix"].as_str().unwrap_or("?"),
                        ban["rule"].as_str().unwrap_or("?"),
                        ban["duration"].as_str().unwrap_or("?"),
                        ban["offence"],
                        ban["note"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
}
