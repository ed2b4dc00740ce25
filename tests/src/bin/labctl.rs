//! labctl: keeps a mail lab up between commands (for `cargo xtask lab` and the demo).
//!
//!   labctl up [--journal | --split] [--ipv6] [--bots N] [--tag demo]   start and detach; prints KEY=value lines
//!   labctl attack [--tag demo] [--bot 0|6 | --all-bots] [--rounds N] [--delay S] [--pause S]
//!   labctl client [--tag demo]                                alice: IMAP login + a mail to bob
//!   labctl logs [--tag demo]                                  the log lines so far
//!   labctl status                                             labs that are up
//!   labctl down [--tag demo | --all]
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use detector_tests::lab::{self, Lab, LabInfo, LabOptions, LogMode, Peer};

#[derive(Parser)]
#[command(
    name = "labctl",
    about = "Start, attack and stop the detector mail lab"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring a lab up and leave it running (tear it down with `down`).
    Up {
        /// Log to a standalone systemd journal instead of files.
        #[arg(long, conflicts_with = "split")]
        journal: bool,
        /// Two mail hosts: an MX (Postfix, 198.18.0.1) and an IMAP host (Dovecot, 198.18.1.1).
        #[arg(long)]
        split: bool,
        /// Add an IPv6 bot (2001:db8:1:6::6).
        #[arg(long)]
        ipv6: bool,
        /// Number of IPv4 bots (198.18.0.10 upwards).
        #[arg(long, default_value_t = 1)]
        bots: usize,
        #[arg(long, default_value = "demo")]
        tag: String,
    },
    /// Run botnet rounds from one bot: RCPT probe, then IMAP/POP3/submission logins.
    Attack {
        #[arg(long, default_value = "demo")]
        tag: String,
        /// Bot number; 6 means the IPv6 bot when the lab has one and fewer than 7 bots.
        #[arg(long, default_value_t = 0, conflicts_with = "all_bots")]
        bot: usize,
        /// Every bot of the lab at once (one thread per bot), like a botnet.
        #[arg(long)]
        all_bots: bool,
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        /// Seconds between the probe and the logins of a round.
        #[arg(long, default_value_t = 0.0)]
        delay: f64,
        /// Seconds between rounds.
        #[arg(long, default_value_t = 0.0)]
        pause: f64,
    },
    /// The legitimate client: alice logs in on IMAP and sends bob a mail via submission.
    Client {
        #[arg(long, default_value = "demo")]
        tag: String,
    },
    /// Print the lab's log lines so far.
    Logs {
        #[arg(long, default_value = "demo")]
        tag: String,
    },
    /// List the labs that are up.
    Status,
    /// Tear a lab down.
    Down {
        #[arg(long, default_value = "demo", conflicts_with = "all")]
        tag: String,
        /// Every lab that is up (also ones of crashed tests).
        #[arg(long)]
        all: bool,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("labctl: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Up {
            journal,
            split,
            ipv6,
            bots,
            tag,
        } => {
            let t0 = Instant::now();
            let log_mode = if journal {
                LogMode::Journal
            } else {
                LogMode::File
            };
            let lab = Lab::up(LabOptions {
                topology: if split {
                    lab::Topology::Split
                } else {
                    lab::Topology::OneHost
                },
                log_mode,
                ipv6,
                bots,
                tag: Some(tag),
                ..Default::default()
            })?;
            let info = lab.info();
            lab.detach()?;
            for l in info.env_lines() {
                println!("{l}");
            }
            eprintln!("labctl: up in {:.2} s", t0.elapsed().as_secs_f64());
        }
        Cmd::Attack {
            tag,
            bot,
            all_bots,
            rounds,
            delay,
            pause,
        } => {
            let info = LabInfo::read(&tag)?;
            let peers = if all_bots {
                info.peers[1..].to_vec()
            } else {
                vec![pick_bot(&info, bot)?]
            };
            let pause = Duration::try_from_secs_f64(pause).context("--pause must be >= 0")?;
            let mailbot = lab::find_mailbot()?;
            let results: Vec<Result<()>> = std::thread::scope(|s| {
                let workers: Vec<_> = peers
                    .iter()
                    .map(|peer| s.spawn(|| attack(&mailbot, &info, peer, rounds, delay, pause)))
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap_or_else(|_| bail!("attack thread panicked")))
                    .collect()
            });
            results.into_iter().collect::<Result<Vec<()>>>()?;
        }
        Cmd::Client { tag } => {
            let info = LabInfo::read(&tag)?;
            let client = info.peers.first().context("lab has no client")?;
            let mailbot = lab::find_mailbot()?;
            let alice = ["--user", "alice@example.test", "--password", "AlicePass123"];
            let mut args = vec!["imap"];
            args.extend(alice);
            let imap = dovecot_server(&info, client);
            let mut reports = lab::run_mailbot_to(&mailbot, imap, client, &args)?;
            let mut args = vec!["deliver", "--to", "bob@example.test"];
            args.extend(alice);
            reports.extend(lab::run_mailbot(&mailbot, client, &args)?);
            for r in reports {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Cmd::Logs { tag } => {
            for l in LabInfo::read(&tag)?.log_lines()? {
                println!("{}", l.text);
            }
        }
        Cmd::Status => {
            for tag in lab::lab_tags() {
                match LabInfo::read(&tag) {
                    Ok(info) => println!(
                        "{tag}: {:?} logs, {} peers, mail ns {}, {}",
                        info.log_mode,
                        info.peers.len(),
                        info.mail_ns,
                        if info.owner == 0 {
                            "kept up".to_string()
                        } else {
                            format!("owned by pid {}", info.owner)
                        }
                    ),
                    Err(e) => println!("{tag}: {e:#}"),
                }
            }
        }
        Cmd::Down { tag, all } => {
            let t0 = Instant::now();
            let tags = if all { lab::lab_tags() } else { vec![tag] };
            for tag in tags {
                Lab::down_tag(&tag)?;
                eprintln!("labctl: {tag} down in {:.2} s", t0.elapsed().as_secs_f64());
            }
        }
    }
    Ok(())
}

/// `rounds` botnet rounds from one peer, printing each report as a JSON line.
fn attack(
    mailbot: &std::path::Path,
    info: &LabInfo,
    peer: &Peer,
    rounds: u32,
    delay: f64,
    pause: Duration,
) -> Result<()> {
    let delay = delay.to_string();
    for i in 0..rounds {
        if i > 0 {
            std::thread::sleep(pause);
        }
        let t0 = Instant::now();
        let imap = dovecot_server(info, peer).to_string();
        let args = ["--imap-server", &imap, "round", "--delay", &delay];
        let reports = lab::run_mailbot(mailbot, peer, &args)?;
        let mut out = std::io::stdout().lock();
        for r in reports {
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
        }
        eprintln!(
            "labctl: round {} from {} in {:.2} s",
            i + 1,
            peer.ip,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The address of the host running Dovecot (the mail host, or a split lab's IMAP host) in
/// `peer`'s address family.
fn dovecot_server(info: &LabInfo, peer: &Peer) -> std::net::IpAddr {
    let host = info.hosts.iter().find(|h| h.role.runs_dovecot());
    match (host, peer.ip) {
        (Some(h), std::net::IpAddr::V4(_)) => h.ip.into(),
        (Some(h), std::net::IpAddr::V6(_)) => h.ip6.into(),
        (None, std::net::IpAddr::V4(_)) => lab::MAIL_IP.into(),
        (None, std::net::IpAddr::V6(_)) => lab::MAIL_IP6.into(),
    }
}

fn pick_bot(info: &LabInfo, bot: usize) -> Result<Peer> {
    let bots: Vec<&Peer> = info
        .peers
        .iter()
        .skip(1)
        .filter(|p| p.ip.is_ipv4())
        .collect();
    if let Some(p) = bots.get(bot) {
        return Ok((*p).clone());
    }
    if bot == 6
        && let Some(p) = info.peers.iter().find(|p| p.ip.is_ipv6())
    {
        return Ok(p.clone());
    }
    bail!(
        "lab {} has no bot {bot} ({} IPv4 bots{})",
        info.tag,
        bots.len(),
        if info.ipv6 { " and bot 6" } else { "" }
    )
}
