//! The mail-log line formats of the simulator and of `cargo xtask bench parse`: Postfix and
//! Dovecot (2.3 and 2.4) messages, and the envelopes they arrive in (a syslog file, Dovecot's
//! own `log_path` file, journal JSON). One place, so both generators write the same lines.
//!
//! Shapes follow the lab's real lines (Postfix 3.7, Dovecot 2.3.19) and Dovecot 2.4's source
//! (login-common `client_get_log_str()`, `login_aborted_event()`; auth `get_log_prefix()`).
use std::fmt::Write as _;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

/// Which Dovecot writes the lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DovecotVersion {
    /// `Login: `, `Disconnected: ... (auth failed, ...)`, `auth: passwd-file(user,ip,<s>): `.
    V2_3,
    /// `Logged in: `, `Login aborted: ... (auth_failed)`, `auth(user,ip,sasl:plain)<s>: `.
    V2_4,
}

/// How the lines are delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Envelope {
    /// One syslog file (`/var/log/mail.log`): Postfix and Dovecot through syslog.
    Syslog,
    /// Postfix through syslog (`maillog_file` style) and Dovecot in its own `log_path` file.
    SplitFiles,
    /// `journalctl -o json`: one JSON object per line with the journal's trusted fields.
    Journal,
}

/// Which file a line belongs to with [`Envelope::SplitFiles`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogFile {
    Postfix,
    Dovecot,
}

/// One message before its envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    pub file: LogFile,
    /// Postfix: the syslog tag (`postfix/smtpd`); Dovecot: the process prefix without its
    /// `: ` (`auth`, `imap-login`, `auth(user,ip,sasl:plain)<session>`).
    pub ident: String,
    pub pid: u32,
    pub text: String,
}

/// The line of `m` at `time` in envelope `env`; `host` is the syslog host name.
pub fn render(env: Envelope, time: DateTime<Utc>, host: &str, m: &Msg) -> String {
    match (env, m.file) {
        (Envelope::Syslog | Envelope::SplitFiles, LogFile::Postfix) => format!(
            "{} {host} {}[{}]: {}",
            time.format("%b %e %H:%M:%S"),
            m.ident,
            m.pid,
            m.text
        ),
        (Envelope::Syslog, LogFile::Dovecot) => format!(
            "{} {host} dovecot: {}: {}",
            time.format("%b %e %H:%M:%S"),
            m.ident,
            m.text
        ),
        // Dovecot's default `log_timestamp = "%b %d %H:%M:%S "`, level after the prefix.
        (Envelope::SplitFiles, LogFile::Dovecot) => format!(
            "{} {}: Info: {}",
            time.format("%b %d %H:%M:%S"),
            m.ident,
            m.text
        ),
        (Envelope::Journal, file) => journal(time, host, m, file),
    }
}

/// The journal's trusted fields as Debian's packages produce them (Postfix as its own users'
/// processes, Dovecot through its `log` process, see the lab's samples).
fn journal(time: DateTime<Utc>, host: &str, m: &Msg, file: LogFile) -> String {
    let us = time.timestamp_micros();
    let (ident, message, comm, exe, unit, uid) = match file {
        LogFile::Postfix => {
            let comm = m.ident.rsplit('/').next().unwrap_or("smtpd");
            (
                m.ident.as_str(),
                m.text.clone(),
                comm.to_string(),
                format!("/usr/lib/postfix/sbin/{comm}"),
                "postfix@-.service",
                "104",
            )
        }
        LogFile::Dovecot => (
            "dovecot",
            format!("{}: {}", m.ident, m.text),
            "log".to_string(),
            "/usr/lib/dovecot/log".to_string(),
            "dovecot.service",
            "0",
        ),
    };
    let mut s = String::with_capacity(message.len() + 320);
    s.push('{');
    let mut field = |k: &str, v: &str| {
        if s.len() > 1 {
            s.push(',');
        }
        let _ = write!(s, "\"{k}\":\"");
        json_escape(&mut s, v);
        s.push('"');
    };
    field("__REALTIME_TIMESTAMP", &us.to_string());
    field("_HOSTNAME", host);
    field("_TRANSPORT", "syslog");
    field("PRIORITY", "6");
    field("SYSLOG_FACILITY", "2");
    field("SYSLOG_IDENTIFIER", ident);
    field("SYSLOG_PID", &m.pid.to_string());
    field("_PID", &m.pid.to_string());
    field("_UID", uid);
    field("_COMM", &comm);
    field("_EXE", &exe);
    field("_SYSTEMD_UNIT", unit);
    field("MESSAGE", &message);
    s.push('}');
    s
}

fn json_escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Postfix messages (Postfix 3.x wording).
pub mod postfix {
    use super::*;

    /// A message of `postfix/<service>` (`smtpd`, `submission/smtpd`, `qmgr`, ...).
    pub fn msg(service: &str, pid: u32, text: String) -> Msg {
        Msg {
            file: LogFile::Postfix,
            ident: format!("postfix/{service}"),
            pid,
            text,
        }
    }

    /// `name[ip]` as smtpd writes the client.
    pub fn peer(name: &str, ip: IpAddr) -> String {
        format!("{name}[{ip}]")
    }

    pub fn connect(peer: &str) -> String {
        format!("connect from {peer}")
    }

    /// The RCPT line an `INFO` access rule logs (`check_recipient_access ... INFO`).
    pub fn rcpt_info(peer: &str, rcpt: &str, from: &str, helo: &str) -> String {
        format!(
            "NOQUEUE: info: RCPT from {peer}: lab-rcpt=<{rcpt}>; from=<{from}> to=<{rcpt}> proto=ESMTP helo=<{helo}>"
        )
    }

    pub fn client(qid: &str, peer: &str) -> String {
        format!("{qid}: client={peer}")
    }

    pub fn client_sasl(qid: &str, peer: &str, user: &str) -> String {
        format!("{qid}: client={peer}, sasl_method=PLAIN, sasl_username={user}")
    }

    /// `counters`: e.g. `ehlo=1 mail=1 rcpt=1 quit=1 commands=4`.
    pub fn disconnect(peer: &str, counters: &str) -> String {
        format!("disconnect from {peer} {counters}")
    }

    pub fn lost_connection(after: &str, peer: &str) -> String {
        format!("lost connection after {after} from {peer}")
    }

    pub fn sasl_failed(peer: &str, mech: &str, user: &str) -> String {
        format!(
            "warning: {peer}: SASL {mech} authentication failed: (reason unavailable), sasl_username={user}"
        )
    }

    pub fn message_id(qid: &str, id: &str) -> String {
        format!("{qid}: message-id=<{id}>")
    }

    pub fn queue_active(qid: &str, from: &str, size: u64) -> String {
        format!("{qid}: from=<{from}>, size={size}, nrcpt=1 (queue active)")
    }

    pub fn delivered(qid: &str, rcpt: &str) -> String {
        format!(
            "{qid}: to=<{rcpt}>, relay=virtual, delay=0.12, delays=0.08/0.01/0/0.03, dsn=2.0.0, status=sent (delivered to maildir)"
        )
    }

    pub fn removed(qid: &str) -> String {
        format!("{qid}: removed")
    }

    pub fn tls_established(peer: &str) -> String {
        format!(
            "Anonymous TLS connection established from {peer}: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256"
        )
    }

    /// A reject at RCPT by a DNS blocklist.
    pub fn reject_rbl(peer: &str, ip: IpAddr, from: &str, rcpt: &str, helo: &str) -> String {
        format!(
            "NOQUEUE: reject: RCPT from {peer}: 554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; from=<{from}> to=<{rcpt}> proto=ESMTP helo=<{helo}>"
        )
    }

    pub fn lmtp_saved(qid: &str, rcpt: &str) -> String {
        format!(
            "{qid}: to=<{rcpt}>, relay=mail.example.test[private/dovecot-lmtp], delay=0.1, delays=0.05/0/0.02/0.03, dsn=2.0.0, status=sent (250 2.0.0 <{rcpt}> Saved)"
        )
    }

    pub fn postscreen_connect(ip: IpAddr, port: u16, local: IpAddr) -> String {
        format!("CONNECT from [{ip}]:{port} to [{local}]:25")
    }

    pub fn postscreen_pass_old(ip: IpAddr, port: u16) -> String {
        format!("PASS OLD [{ip}]:{port}")
    }

    pub fn postscreen_pregreet(ip: IpAddr, port: u16) -> String {
        format!("PREGREET 14 after 0.08 from [{ip}]:{port}: EHLO ylmf-pc\\r\\n")
    }

    pub fn postscreen_disconnect(ip: IpAddr, port: u16) -> String {
        format!("DISCONNECT [{ip}]:{port}")
    }

    pub fn anvil_rate(ip: IpAddr, at: &str) -> String {
        format!("statistics: max connection rate 3/60s for (smtp:{ip}) at {at}")
    }
}

/// Dovecot messages, per version.
pub mod dovecot {
    use super::*;

    /// Why a login process ended a connection that failed to log in.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Ending {
        LoggedOut,
        Closed,
    }

    /// Dovecot's `log` process writes every Dovecot line to syslog (one pid for all).
    pub const LOG_PID: u32 = 811;

    fn msg(ident: String, text: String) -> Msg {
        Msg {
            file: LogFile::Dovecot,
            ident,
            pid: LOG_PID,
            text,
        }
    }

    /// A passdb's answer for a wrong password (`unknown == false`) or an unknown user, by
    /// `driver` (`passwd-file`, `sql`) for the mechanism `mech` (`plain`, `login`).
    pub fn auth_failure(
        v: DovecotVersion,
        driver: &str,
        user: &str,
        ip: IpAddr,
        session: Option<&str>,
        mech: &str,
        unknown: bool,
    ) -> Msg {
        let reason = if unknown {
            "unknown user"
        } else {
            "Password mismatch"
        };
        match v {
            DovecotVersion::V2_3 => {
                let s = session.map(|s| format!(",<{s}>")).unwrap_or_default();
                msg("auth".into(), format!("{driver}({user},{ip}{s}): {reason}"))
            }
            DovecotVersion::V2_4 => {
                let s = session.map(|s| format!("<{s}>")).unwrap_or_default();
                msg(
                    format!("auth({user},{ip},sasl:{mech}){s}"),
                    format!("{driver}: {reason}"),
                )
            }
        }
    }

    fn elements(
        user: &str,
        method: Option<&str>,
        ip: IpAddr,
        lip: IpAddr,
        mpid: Option<u32>,
        tls: bool,
        session: &str,
    ) -> String {
        let mut s = format!("user=<{user}>, ");
        if let Some(m) = method {
            let _ = write!(s, "method={m}, ");
        }
        let _ = write!(s, "rip={ip}, lip={lip}, ");
        if let Some(p) = mpid {
            let _ = write!(s, "mpid={p}, ");
        }
        if tls {
            s.push_str("TLS, ");
        }
        let _ = write!(s, "session=<{session}>");
        s
    }

    /// The login process's line for a connection that ended after failed logins.
    #[allow(clippy::too_many_arguments)]
    pub fn login_failed(
        v: DovecotVersion,
        proto: &str,
        user: &str,
        ip: IpAddr,
        lip: IpAddr,
        session: &str,
        ending: Ending,
        attempts: u32,
        secs: u32,
        tls: bool,
    ) -> Msg {
        let el = elements(user, Some("PLAIN"), ip, lip, None, tls, session);
        let why = match ending {
            Ending::LoggedOut => "Aborted login by logging out",
            Ending::Closed => "Connection closed",
        };
        let text = match v {
            DovecotVersion::V2_3 => format!(
                "Disconnected: {why} (auth failed, {attempts} attempts in {secs} secs): {el}"
            ),
            DovecotVersion::V2_4 => format!(
                "Login aborted: {why} (auth failed, {attempts} attempts in {secs} secs) (auth_failed): {el}"
            ),
        };
        msg(format!("{proto}-login"), text)
    }

    /// A successful login.
    #[allow(clippy::too_many_arguments)]
    pub fn login_ok(
        v: DovecotVersion,
        proto: &str,
        user: &str,
        ip: IpAddr,
        lip: IpAddr,
        mpid: u32,
        session: &str,
        tls: bool,
    ) -> Msg {
        let el = elements(user, Some("PLAIN"), ip, lip, Some(mpid), tls, session);
        let text = match v {
            DovecotVersion::V2_3 => format!("Login: {el}"),
            DovecotVersion::V2_4 => format!("Logged in: {el}"),
        };
        msg(format!("{proto}-login"), text)
    }

    /// A connection that never tried to log in (monitoring checks, scanners).
    pub fn no_auth(v: DovecotVersion, proto: &str, ip: IpAddr, lip: IpAddr, session: &str) -> Msg {
        let el = elements("", None, ip, lip, None, false, session);
        let text = match v {
            DovecotVersion::V2_3 => format!("Disconnected (no auth attempts in 0 secs): {el}"),
            DovecotVersion::V2_4 => format!(
                "Login aborted: Connection closed (no auth attempts in 0 secs) (no_auth_attempts): {el}"
            ),
        };
        msg(format!("{proto}-login"), text)
    }

    /// A connection whose TLS handshake failed before any login.
    pub fn tls_failed(
        v: DovecotVersion,
        proto: &str,
        ip: IpAddr,
        lip: IpAddr,
        session: &str,
    ) -> Msg {
        let el = format!(
            "user=<>, rip={ip}, lip={lip}, TLS handshaking: SSL_accept() failed: error:0A00006C:SSL routines::bad key share, session=<{session}>"
        );
        let text = match v {
            DovecotVersion::V2_3 => format!("Disconnected (no auth attempts in 0 secs): {el}"),
            DovecotVersion::V2_4 => format!(
                "Login aborted: Connection closed (disconnected during TLS handshake) (tls_handshake_not_finished): {el}"
            ),
        };
        msg(format!("{proto}-login"), text)
    }

    /// The mail process's logout after a successful login.
    pub fn logout(
        proto: &str,
        user: &str,
        mpid: u32,
        session: &str,
        bytes_in: u64,
        bytes_out: u64,
    ) -> Msg {
        let text = if proto == "pop3" {
            "Disconnected: Logged out top=0/0, retr=0/0, del=0/0, size=0".to_string()
        } else {
            format!(
                "Disconnected: Logged out in={bytes_in} out={bytes_out} deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0"
            )
        };
        msg(format!("{proto}({user})<{mpid}><{session}>"), text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> DateTime<Utc> {
        "2026-11-20T07:05:09Z".parse().unwrap()
    }

    #[test]
    fn envelopes_and_versions() {
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        let lip: IpAddr = "198.18.0.1".parse().unwrap();
        let m = dovecot::auth_failure(
            DovecotVersion::V2_3,
            "passwd-file",
            "a@x",
            ip,
            Some("S"),
            "plain",
            true,
        );
        assert_eq!(
            render(Envelope::SplitFiles, t(), "mail", &m),
            "Nov 20 07:05:09 auth: Info: passwd-file(a@x,198.18.0.2,<S>): unknown user"
        );
        assert_eq!(
            render(Envelope::Syslog, t(), "mail", &m),
            "Nov 20 07:05:09 mail dovecot: auth: passwd-file(a@x,198.18.0.2,<S>): unknown user"
        );
        let m = dovecot::auth_failure(
            DovecotVersion::V2_4,
            "passwd-file",
            "a@x",
            ip,
            Some("S"),
            "plain",
            false,
        );
        assert_eq!(
            render(Envelope::SplitFiles, t(), "mail", &m),
            "Nov 20 07:05:09 auth(a@x,198.18.0.2,sasl:plain)<S>: Info: passwd-file: Password mismatch"
        );
        let m = dovecot::login_ok(DovecotVersion::V2_4, "imap", "a@x", ip, lip, 7, "S", true);
        assert_eq!(
            m.text,
            "Logged in: user=<a@x>, method=PLAIN, rip=198.18.0.2, lip=198.18.0.1, mpid=7, TLS, session=<S>"
        );
        let m = postfix::msg("smtpd", 12, postfix::connect(&postfix::peer("unknown", ip)));
        assert_eq!(
            render(Envelope::SplitFiles, t(), "mail", &m),
            "Nov 20 07:05:09 mail postfix/smtpd[12]: connect from unknown[198.18.0.2]"
        );
        let j = render(Envelope::Journal, t(), "mail", &m);
        assert!(
            j.starts_with("{\"__REALTIME_TIMESTAMP\":\"1795158309000000\""),
            "{j}"
        );
        assert!(j.contains("\"SYSLOG_IDENTIFIER\":\"postfix/smtpd\""), "{j}");
        assert!(j.contains("\"_COMM\":\"smtpd\""), "{j}");
        let m = dovecot::no_auth(DovecotVersion::V2_3, "imap", ip, lip, "q\"\\");
        let j = render(Envelope::Journal, t(), "mail", &m);
        assert!(j.contains(r#""MESSAGE":"imap-login: Disconnected (no auth attempts in 0 secs): user=<>, rip=198.18.0.2, lip=198.18.0.1, session=<q\"\\>""#), "{j}");
    }
}
