//! The lab's clients: the mailbot run in a peer's namespace against the mail host.
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{DOMAIN, Host, Lab, MAIL_IP, MAIL_IP6, Peer, Topology, sys};
use crate::mailclient::Report;

impl Lab {
    /// Runs the mailbot in `peer`'s namespace against the mail host (a split lab: the MX;
    /// `round` also sends its IMAP and POP3 steps to the IMAP host) and returns its reports.
    /// `args` is a mailbot command line after `--server` (added here), e.g. `["round"]`.
    pub fn mailbot(&self, peer: &Peer, args: &[&str]) -> Result<Vec<crate::mailclient::Report>> {
        let mut server_args = Vec::new();
        let imap_server;
        if self.topology() == Topology::Split {
            imap_server = host_address(self.dovecot_host(), peer).to_string();
            server_args.extend(["--imap-server", imap_server.as_str()]);
        }
        server_args.extend_from_slice(args);
        run_mailbot(&self.mailbot, peer, &server_args)
    }

    /// Runs the mailbot in `peer`'s namespace against `host` (one of [`Lab::hosts`]).
    pub fn mailbot_to(
        &self,
        host: &Host,
        peer: &Peer,
        args: &[&str],
    ) -> Result<Vec<crate::mailclient::Report>> {
        run_mailbot_to(&self.mailbot, host_address(host, peer), peer, args)
    }

    /// One botnet round from `peer`: RCPT probe of `<local>@example.test` (random if None),
    /// QUIT, then IMAP, POP3 and submission logins with that address and a wrong password
    /// (a split lab: the probe and SMTP AUTH on the MX, IMAP and POP3 on the IMAP host).
    /// Returns the probed address and the four reports.
    pub fn round(&self, peer: &Peer, local: Option<&str>) -> Result<(String, Vec<Report>)> {
        let local = local.map_or_else(|| crate::mailclient::random_token(10), str::to_string);
        let reports = self.mailbot(peer, &["round", "--local", &local])?;
        Ok((format!("{local}@{DOMAIN}"), reports))
    }

    /// SMTP probe (EHLO, MAIL FROM, RCPT TO:<rcpt>, QUIT or, with `drop`, a dropped connection).
    pub fn probe(&self, peer: &Peer, rcpt: &str, drop: bool) -> Result<Report> {
        let mut args = vec!["probe", "--to", rcpt];
        if drop {
            args.push("--drop");
        }
        single(self.mailbot(peer, &args)?)
    }

    /// IMAP LOGIN + LOGOUT from `peer` (to the host running Dovecot).
    pub fn imap_login(&self, peer: &Peer, user: &str, password: &str) -> Result<Report> {
        let args = ["imap", "--user", user, "--password", password];
        single(self.mailbot_to(self.dovecot_host(), peer, &args)?)
    }

    /// POP3 USER/PASS + QUIT from `peer` (to the host running Dovecot).
    pub fn pop3_login(&self, peer: &Peer, user: &str, password: &str) -> Result<Report> {
        let args = ["pop3", "--user", user, "--password", password];
        single(self.mailbot_to(self.dovecot_host(), peer, &args)?)
    }

    /// SMTP AUTH PLAIN on submission (587) from `peer`.
    pub fn smtp_auth(&self, peer: &Peer, user: &str, password: &str) -> Result<Report> {
        single(self.mailbot(peer, &["smtp-auth", "--user", user, "--password", password])?)
    }

    /// A message from an authenticated user to `to`, through submission.
    pub fn send_mail(&self, peer: &Peer, user: &str, password: &str, to: &str) -> Result<Report> {
        let args = [
            "deliver",
            "--user",
            user,
            "--password",
            password,
            "--to",
            to,
        ];
        single(self.mailbot(peer, &args)?)
    }
}

fn single(mut reports: Vec<Report>) -> Result<Report> {
    match reports.len() {
        1 => Ok(reports.remove(0)),
        n => bail!("mailbot printed {n} reports, expected one: {reports:?}"),
    }
}

/// The address of `host` in `peer`'s address family.
fn host_address(host: &Host, peer: &Peer) -> IpAddr {
    match peer.ip {
        IpAddr::V4(_) => host.ip.into(),
        IpAddr::V6(_) => host.ip6.into(),
    }
}

/// Runs `mailbot --server <mail host> ARGS` in `peer`'s namespace and parses its reports.
pub fn run_mailbot(
    mailbot: &Path,
    peer: &Peer,
    args: &[&str],
) -> Result<Vec<crate::mailclient::Report>> {
    let server = match peer.ip {
        IpAddr::V4(_) => IpAddr::from(MAIL_IP),
        IpAddr::V6(_) => IpAddr::from(MAIL_IP6),
    };
    run_mailbot_to(mailbot, server, peer, args)
}

/// Runs `mailbot --server SERVER ARGS` in `peer`'s namespace and parses its reports.
pub fn run_mailbot_to(
    mailbot: &Path,
    server: IpAddr,
    peer: &Peer,
    args: &[&str],
) -> Result<Vec<crate::mailclient::Report>> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &peer.ns]).arg(mailbot);
    cmd.arg("--server").arg(server.to_string()).args(args);
    let stdout = sys::run(&mut cmd)?;
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad mailbot output line {l:?}")))
        .collect()
}

/// The mailbot binary: `$MAILBOT_BIN`, else next to the running executable (or its parent
/// directory, for test binaries in target/<profile>/deps/).
pub fn find_mailbot() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MAILBOT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // Test binaries live in target/<profile>/deps/, binaries in target/<profile>/.
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("mailbot");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "mailbot binary not found next to {} (build it: cargo build -p detector-tests --bin mailbot, or set MAILBOT_BIN)",
        exe.display()
    )
}
