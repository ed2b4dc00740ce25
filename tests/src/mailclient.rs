//! A minimal SMTP / IMAP / POP3 client over `std::net`, for the lab's bots and legitimate
//! client. Every step returns a [`Report`] instead of an error, because "connection refused"
//! or "timeout" (a SYN dropped by XDP) is exactly what the end-to-end tests look for.
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The server accepted (RCPT 250, login OK, message queued).
    Ok,
    /// The server answered with a refusal (5xx/4xx, IMAP NO/BAD, POP3 -ERR).
    Rejected,
    /// TCP connection refused (RST to our SYN).
    Refused,
    /// Connect or read timed out (e.g. the SYN was dropped).
    Timeout,
    /// Any other failure (reset mid-session, protocol violation, ...).
    Error,
}

/// One step's result; the mailbot prints one per line as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// `probe`, `probe-drop`, `deliver`, `imap`, `pop3`, `smtp-auth`.
    pub step: String,
    pub outcome: Outcome,
    /// The address probed or logged in with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The last server reply, or the I/O error.
    pub detail: String,
    /// Unix time at the start of the step.
    pub t: f64,
    pub secs: f64,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub server: IpAddr,
    /// Short, so that a SYN dropped at XDP shows as a timeout quickly.
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
}

impl Target {
    pub fn new(server: IpAddr) -> Self {
        Target {
            server,
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(10),
        }
    }
}

pub const SMTP_PORT: u16 = 25;
pub const SUBMISSION_PORT: u16 = 587;
pub const IMAP_PORT: u16 = 143;
pub const POP3_PORT: u16 = 110;
pub const BOT_HELO: &str = "bot.invalid";
pub const BOT_FROM: &str = "probe@bot.invalid";

/// A failed step: how it failed and what the server (or the OS) said.
struct Fail(Outcome, String);

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        let outcome = match e.kind() {
            ConnectionRefused => Outcome::Refused,
            TimedOut | WouldBlock => Outcome::Timeout,
            _ => Outcome::Error,
        };
        Fail(outcome, e.to_string())
    }
}

type Step = Result<String, Fail>;

fn report(step: &str, user: Option<&str>, f: impl FnOnce() -> Step) -> Report {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let start = Instant::now();
    let (outcome, detail) = match f() {
        Ok(reply) => (Outcome::Ok, reply),
        Err(Fail(o, d)) => (o, d),
    };
    let secs = (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    Report {
        step: step.to_string(),
        outcome,
        user: user.map(str::to_string),
        detail,
        t: (t * 1000.0).round() / 1000.0,
        secs,
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(t: &Target, port: u16) -> Result<Conn, Fail> {
        let stream =
            TcpStream::connect_timeout(&SocketAddr::new(t.server, port), t.connect_timeout)?;
        stream.set_read_timeout(Some(t.io_timeout))?;
        stream.set_write_timeout(Some(t.io_timeout))?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    fn line(&mut self) -> Result<String, Fail> {
        let mut buf = String::new();
        if self.reader.read_line(&mut buf)? == 0 {
            return Err(Fail(Outcome::Error, "connection closed by server".into()));
        }
        Ok(buf.trim_end_matches(['\r', '\n']).to_string())
    }

    fn send(&mut self, line: &str) -> Result<(), Fail> {
        let s = self.reader.get_mut();
        s.write_all(line.as_bytes())?;
        s.write_all(b"\r\n")?;
        Ok(())
    }

    /// Reads a (possibly multi-line) SMTP reply: code and last line.
    fn smtp_reply(&mut self) -> Result<(u16, String), Fail> {
        loop {
            let l = self.line()?;
            let code = l.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code else {
                return Err(Fail(Outcome::Error, format!("not an SMTP reply: {l:?}")));
            };
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, l));
            }
        }
    }

    /// Sends a command (if any) and requires a reply code in `want`'s class (2xx or 3xx).
    fn smtp(&mut self, cmd: Option<&str>, want: u16) -> Step {
        if let Some(c) = cmd {
            self.send(c)?;
        }
        let (code, line) = self.smtp_reply()?;
        if code / 100 == want / 100 {
            Ok(line)
        } else {
            Err(Fail(Outcome::Rejected, line))
        }
    }

    fn quit_smtp(mut self) {
        let _ = self.send("QUIT");
        let _ = self.smtp_reply();
    }

    /// Reads IMAP lines until the tagged completion for `tag`.
    fn imap_done(&mut self, tag: &str) -> Result<String, Fail> {
        loop {
            let l = self.line()?;
            if l.starts_with(tag) && l.as_bytes().get(tag.len()) == Some(&b' ') {
                return Ok(l);
            }
        }
    }
}

/// EHLO, MAIL FROM, RCPT TO:<rcpt>, then QUIT (or, with `drop`, closes the TCP connection
/// right after RCPT: Postfix logs "lost connection after RCPT").
pub fn smtp_probe(t: &Target, rcpt: &str, drop: bool) -> Report {
    report(
        if drop { "probe-drop" } else { "probe" },
        Some(rcpt),
        || {
            let mut c = Conn::open(t, SMTP_PORT)?;
            c.smtp(None, 220)?;
            c.smtp(Some(&format!("EHLO {BOT_HELO}")), 250)?;
            c.smtp(Some(&format!("MAIL FROM:<{BOT_FROM}>")), 250)?;
            let rcpt_reply = c.smtp(Some(&format!("RCPT TO:<{rcpt}>")), 250);
            if drop {
                std::mem::drop(c);
            } else {
                c.quit_smtp();
            }
            rcpt_reply
        },
    )
}

/// EHLO and AUTH PLAIN on `port` (587: submission), then QUIT.
pub fn smtp_auth(t: &Target, port: u16, user: &str, password: &str) -> Report {
    report("smtp-auth", Some(user), || {
        let mut c = Conn::open(t, port)?;
        c.smtp(None, 220)?;
        c.smtp(Some(&format!("EHLO {BOT_HELO}")), 250)?;
        let r = auth_plain(&mut c, user, password);
        c.quit_smtp();
        r
    })
}

fn auth_plain(c: &mut Conn, user: &str, password: &str) -> Step {
    let token = base64(format!("\0{user}\0{password}").as_bytes());
    c.smtp(Some(&format!("AUTH PLAIN {token}")), 235)
}

/// A whole message: EHLO, [AUTH PLAIN], MAIL FROM, RCPT TO, DATA, QUIT.
pub fn smtp_deliver(
    t: &Target,
    port: u16,
    auth: Option<(&str, &str)>,
    from: &str,
    to: &str,
    subject: &str,
) -> Report {
    report("deliver", Some(auth.map_or(from, |a| a.0)), || {
        let mut c = Conn::open(t, port)?;
        c.smtp(None, 220)?;
        c.smtp(Some("EHLO client.example.test"), 250)?;
        if let Some((u, p)) = auth {
            auth_plain(&mut c, u, p)?;
        }
        c.smtp(Some(&format!("MAIL FROM:<{from}>")), 250)?;
        c.smtp(Some(&format!("RCPT TO:<{to}>")), 250)?;
        c.smtp(Some("DATA"), 354)?;
        let msg = format!(
            "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{}@client.example.test>\r\n\r\nHello from the detector lab.\r\n.",
            random_token(16)
        );
        c.send(&msg)?;
        let queued = c.smtp(None, 250)?;
        c.quit_smtp();
        Ok(queued)
    })
}

/// IMAP LOGIN, then LOGOUT (also after a failed login: Dovecot then logs "Aborted login by
/// logging out (auth failed, ...)").
pub fn imap_login(t: &Target, user: &str, password: &str) -> Report {
    report("imap", Some(user), || {
        let mut c = Conn::open(t, IMAP_PORT)?;
        let greeting = c.line()?;
        if !greeting.starts_with("* OK") {
            return Err(Fail(Outcome::Rejected, greeting));
        }
        c.send(&format!(
            "a1 LOGIN {} {}",
            imap_quote(user),
            imap_quote(password)
        ))?;
        let login = c.imap_done("a1")?;
        c.send("a2 LOGOUT")?;
        let _ = c.imap_done("a2");
        if login.starts_with("a1 OK") {
            Ok(login)
        } else {
            Err(Fail(Outcome::Rejected, login))
        }
    })
}

/// POP3 USER / PASS, then QUIT.
pub fn pop3_login(t: &Target, user: &str, password: &str) -> Report {
    report("pop3", Some(user), || {
        let mut c = Conn::open(t, POP3_PORT)?;
        let greeting = c.line()?;
        if !greeting.starts_with("+OK") {
            return Err(Fail(Outcome::Rejected, greeting));
        }
        c.send(&format!("USER {user}"))?;
        let u = c.line()?;
        let result = if !u.starts_with("+OK") {
            Err(Fail(Outcome::Rejected, u))
        } else {
            c.send(&format!("PASS {password}"))?;
            let p = c.line()?;
            if p.starts_with("+OK") {
                Ok(p)
            } else {
                Err(Fail(Outcome::Rejected, p))
            }
        };
        c.send("QUIT")?;
        let _ = c.line();
        result
    })
}

/// The seed's botnet round: RCPT probe of a random catch-all address, QUIT, `delay`, then
/// IMAP, POP3 and submission logins with that address and a wrong password.
pub fn round(
    t: &Target,
    domain: &str,
    local: Option<&str>,
    password: Option<&str>,
    delay: Duration,
) -> Vec<Report> {
    round_split(t, t, domain, local, password, delay)
}

/// [`round`] with the IMAP and POP3 logins sent to `mailbox` (the probe and SMTP AUTH go to
/// `mx`), as on a platform whose MX and mailbox servers are different hosts.
pub fn round_split(
    mx: &Target,
    mailbox: &Target,
    domain: &str,
    local: Option<&str>,
    password: Option<&str>,
    delay: Duration,
) -> Vec<Report> {
    let t = mx;
    let local = local.map_or_else(|| random_token(10), str::to_string);
    let addr = format!("{local}@{domain}");
    let wrong = password.map_or_else(|| format!("Wrong-{}", random_token(8)), str::to_string);
    let mut out = vec![smtp_probe(t, &addr, false)];
    std::thread::sleep(delay);
    out.push(imap_login(mailbox, &addr, &wrong));
    out.push(pop3_login(mailbox, &addr, &wrong));
    out.push(smtp_auth(t, SUBMISSION_PORT, &addr, &wrong));
    out
}

/// `n` characters of [a-z0-9], random enough for unique probe addresses.
pub fn random_token(n: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    let state = std::collections::hash_map::RandomState::new();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    for i in 0..n {
        let mut h = state.build_hasher();
        h.write_u128(nanos);
        h.write_usize(i);
        out.push(CHARS[(h.finish() % CHARS.len() as u64) as usize] as char);
    }
    out
}

fn imap_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Standard base64 with padding (RFC 4648), for AUTH PLAIN.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(A[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "input {input:?}");
        }
        assert_eq!(
            base64(b"\0alice@example.test\0pw"),
            "AGFsaWNlQGV4YW1wbGUudGVzdABwdw=="
        );
    }

    #[test]
    fn imap_quote_escapes() {
        assert_eq!(imap_quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn random_tokens_differ_and_use_the_alphabet() {
        let a = random_token(10);
        let b = random_token(10);
        assert_eq!(a.len(), 10);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn refused_connection_is_reported_as_refused() {
        // Port 9 on loopback: nothing listens there in the test environment.
        let t = Target {
            server: IpAddr::from([127, 0, 0, 1]),
            ..Target::new(IpAddr::from([127, 0, 0, 1]))
        };
        let r = report("x", None, || {
            Conn::open(&t, 9)?;
            Ok(String::new())
        });
        assert_eq!(r.outcome, Outcome::Refused, "{r:?}");
    }
}
