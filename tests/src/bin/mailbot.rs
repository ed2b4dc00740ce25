//! mailbot: the lab's bot and legitimate mail client. Run it inside a client namespace,
//! e.g. `ip netns exec dtl-x-bot0 mailbot --server 198.18.0.1 round`. Prints one JSON
//! report per step on stdout (`{"step":"imap","outcome":"rejected",...}`); the outcome is
//! ok, rejected, refused, timeout or error. Exits non-zero only on bad usage.
use std::net::IpAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use detector_tests::mailclient::{self, Report, SMTP_PORT, SUBMISSION_PORT, Target};

#[derive(Parser)]
#[command(
    name = "mailbot",
    about = "SMTP/IMAP/POP3 bot and client of the detector mail lab"
)]
struct Cli {
    /// Mail server address (the lab's mail host: 198.18.0.1 or 2001:db8:1::1).
    #[arg(long)]
    server: IpAddr,
    /// Where `round` sends its IMAP and POP3 logins (default: --server), for a platform whose
    /// mailboxes are on another host than the MX (the split lab's 198.18.1.1).
    #[arg(long)]
    imap_server: Option<IpAddr>,
    /// TCP connect timeout in seconds (a SYN dropped at XDP shows as "timeout" after this).
    #[arg(long, default_value_t = 2.0)]
    connect_timeout: f64,
    /// Read/write timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// SMTP probe on port 25: EHLO, MAIL FROM, RCPT TO:<ADDR>, QUIT.
    Probe {
        #[arg(long)]
        to: String,
        /// Close the TCP connection right after RCPT instead of QUIT.
        #[arg(long)]
        drop: bool,
    },
    /// Deliver a message (with --user/--password: SMTP AUTH PLAIN, default port 587).
    Deliver {
        #[arg(long)]
        to: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long, requires = "password")]
        user: Option<String>,
        #[arg(long)]
        password: Option<String>,
        /// Default: 587 with --user, else 25.
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, default_value = "lab message")]
        subject: String,
    },
    /// IMAP LOGIN (port 143), then LOGOUT.
    Imap {
        #[arg(long)]
        user: String,
        #[arg(long)]
        password: String,
    },
    /// POP3 USER/PASS (port 110), then QUIT.
    Pop3 {
        #[arg(long)]
        user: String,
        #[arg(long)]
        password: String,
    },
    /// SMTP AUTH PLAIN on submission (587), then QUIT.
    SmtpAuth {
        #[arg(long)]
        user: String,
        #[arg(long)]
        password: String,
        #[arg(long, default_value_t = SUBMISSION_PORT)]
        port: u16,
    },
    /// One botnet round: RCPT probe of a random catch-all address, QUIT, then IMAP, POP3 and
    /// submission logins with that address and a wrong password.
    Round {
        #[arg(long, default_value = "example.test")]
        domain: String,
        /// Local part to probe (default: 10 random characters).
        #[arg(long)]
        local: Option<String>,
        /// Password for the logins (default: a random wrong one).
        #[arg(long)]
        password: Option<String>,
        /// Seconds between the probe and the logins.
        #[arg(long, default_value_t = 0.0)]
        delay: f64,
    },
}

fn secs(name: &str, v: f64) -> Duration {
    Duration::try_from_secs_f64(v).unwrap_or_else(|_| {
        eprintln!("mailbot: --{name} must be a non-negative number of seconds, not {v}");
        std::process::exit(2);
    })
}

fn main() {
    let cli = Cli::parse();
    let t = Target {
        server: cli.server,
        connect_timeout: secs("connect-timeout", cli.connect_timeout),
        io_timeout: secs("timeout", cli.timeout),
    };
    let reports: Vec<Report> = match cli.cmd {
        Cmd::Probe { to, drop } => vec![mailclient::smtp_probe(&t, &to, drop)],
        Cmd::Deliver {
            to,
            from,
            user,
            password,
            port,
            subject,
        } => {
            let auth = user.as_deref().zip(password.as_deref());
            let port = port.unwrap_or(if auth.is_some() {
                SUBMISSION_PORT
            } else {
                SMTP_PORT
            });
            let from = from
                .or_else(|| user.clone())
                .unwrap_or_else(|| "sender@client.invalid".into());
            vec![mailclient::smtp_deliver(
                &t, port, auth, &from, &to, &subject,
            )]
        }
        Cmd::Imap { user, password } => vec![mailclient::imap_login(&t, &user, &password)],
        Cmd::Pop3 { user, password } => vec![mailclient::pop3_login(&t, &user, &password)],
        Cmd::SmtpAuth {
            user,
            password,
            port,
        } => vec![mailclient::smtp_auth(&t, port, &user, &password)],
        Cmd::Round {
            domain,
            local,
            password,
            delay,
        } => mailclient::round_split(
            &t,
            &Target {
                server: cli.imap_server.unwrap_or(cli.server),
                ..t.clone()
            },
            &domain,
            local.as_deref(),
            password.as_deref(),
            secs("delay", delay),
        ),
    };
    for r in reports {
        match serde_json::to_string(&r) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("mailbot: cannot encode report: {e}"),
        }
    }
}
