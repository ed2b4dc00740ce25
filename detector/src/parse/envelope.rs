//! Line envelopes: split one input line into (timestamp, syslog tag, pid, message).
//!
//! Supported wrappers:
//! - `journalctl -o json` objects (`MESSAGE` as a string, or as an array of bytes when it is
//!   not UTF-8; `SYSLOG_IDENTIFIER`; `SYSLOG_PID`/`_PID`; `__REALTIME_TIMESTAMP` in µs);
//! - RFC 3164 syslog `Nov 27 04:58:37 host tag[pid]: msg` (optional `<PRI>`);
//! - ISO 8601 / RFC 3339 headers (rsyslog high precision, journalctl `short-iso-precise`);
//! - RFC 5424 `<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`;
//! - Postfix `maillog_file` lines (same as RFC 3164);
//! - Dovecot `log_path` lines without host (`Nov 27 05:31:03 imap-login: Info: ...`,
//!   `2013-08-11 03:56:40 auth-worker(default): Info: ...`), daemontools TAI64N labels;
//! - bare messages with no header at all (the caller uses its reference time);
//! - container logs around any of these: `docker compose logs`' service prefix
//!   (`mailserver-1  | ...`, [`strip_compose_prefix`]), `docker logs --timestamps`' RFC 3339
//!   time before the container's own line, and busybox syslogd's `facility.level` after the
//!   host (`Jun 16 09:37:32 mail mail.warn postfix/smtpd[7]: ...`, Alpine-based images).
//!
//! None of these wrappers changes where the message starts or how it is read: the prefixes are
//! written by compose, docker and syslogd at the start of the line, before anything a client
//! can send.
use std::borrow::Cow;

use chrono::{DateTime, FixedOffset, Utc};

use super::text::{TAG, parse_u32, span_of};
use super::time::{Reference, parse_stamp};
use super::zone::LocalZone;

/// One line, unwrapped.
#[derive(Debug)]
pub(crate) struct Envelope<'a> {
    /// The log's own time, when the line has one.
    pub time: Option<DateTime<Utc>>,
    /// The syslog tag without the pid (`postfix/smtpd`, `dovecot`, `imap-login`). `None` when
    /// the message itself starts with a Dovecot process prefix that is not a plain tag
    /// (`auth-worker(123): ...`, 2.4 `auth(user,ip,sasl:plain)<sess>: ...`).
    pub ident: Option<Cow<'a, [u8]>>,
    pub pid: Option<u32>,
    pub message: Cow<'a, [u8]>,
    /// False for bare messages (no timestamp, no tag).
    pub has_header: bool,
}

/// A JSON-looking line (journal export).
pub(crate) fn looks_like_json(line: &[u8]) -> bool {
    line.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{')
}

/// `journalctl -o json` object. `None` when the line is not a JSON object with a `MESSAGE`.
pub(crate) fn journal(line: &[u8]) -> Option<Envelope<'static>> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "MESSAGE")]
        message: Option<serde_json::Value>,
        #[serde(rename = "SYSLOG_IDENTIFIER")]
        ident: Option<serde_json::Value>,
        #[serde(rename = "SYSLOG_PID")]
        syslog_pid: Option<serde_json::Value>,
        #[serde(rename = "_PID")]
        pid: Option<serde_json::Value>,
        #[serde(rename = "__REALTIME_TIMESTAMP")]
        realtime: Option<serde_json::Value>,
    }
    let e: Entry = serde_json::from_slice(line).ok()?;
    let message = json_bytes(e.message?)?;
    let ident = e.ident.and_then(json_bytes).map(Cow::Owned);
    let pid = e
        .syslog_pid
        .and_then(json_bytes)
        .and_then(|p| parse_u32(&p))
        .or_else(|| e.pid.and_then(json_bytes).and_then(|p| parse_u32(&p)));
    let time = e
        .realtime
        .and_then(json_bytes)
        .and_then(|t| std::str::from_utf8(&t).ok()?.parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_micros);
    Some(Envelope {
        time,
        ident,
        pid,
        message: Cow::Owned(message),
        has_header: true,
    })
}

/// A journald field value: a string, an array of byte values (non-UTF-8 data), or an array of
/// several values when the field repeats (the first is used).
fn json_bytes(v: serde_json::Value) -> Option<Vec<u8>> {
    match v {
        serde_json::Value::String(s) => Some(s.into_bytes()),
        serde_json::Value::Array(items) => {
            if items.iter().all(|x| x.is_u64()) {
                items
                    .iter()
                    .map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
                    .collect()
            } else {
                items.into_iter().next().and_then(json_bytes)
            }
        }
        serde_json::Value::Number(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// `docker compose logs` writes `NAME<padding> | ` before each line of a container (compose v1
/// `NAME_1`, v2 `NAME-1`), in colour when asked to. Returns the container's own line, or
/// `line` unchanged when it has no such prefix.
pub(crate) fn strip_compose_prefix(line: &[u8]) -> &[u8] {
    let b = skip_colour(line);
    let n = b
        .iter()
        .take(128)
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        .count();
    let pad = b[n..].iter().take_while(|&&c| c == b' ').count();
    if n == 0 || pad == 0 {
        return line;
    }
    let Some(rest) = b[n + pad..].strip_prefix(b"|") else {
        return line;
    };
    let rest = skip_colour(rest);
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    skip_colour(rest)
}

/// ANSI colour codes (`ESC [ 1;36 m`), as compose writes around its prefix.
fn skip_colour(mut b: &[u8]) -> &[u8] {
    for _ in 0..4 {
        let Some(r) = b.strip_prefix(b"\x1b[") else {
            break;
        };
        let n = r
            .iter()
            .take(16)
            .take_while(|c| c.is_ascii_digit() || **c == b';')
            .count();
        match r[n..].strip_prefix(b"m") {
            Some(after) => b = after,
            None => break,
        }
    }
    b
}

/// busybox syslogd's `facility.level` between host and tag (`mail.warn`, `local0.info`).
fn is_facility_level(t: &[u8]) -> bool {
    const FACILITIES: [&[u8]; 20] = [
        b"kern",
        b"user",
        b"mail",
        b"daemon",
        b"auth",
        b"syslog",
        b"lpr",
        b"news",
        b"uucp",
        b"cron",
        b"authpriv",
        b"ftp",
        b"local0",
        b"local1",
        b"local2",
        b"local3",
        b"local4",
        b"local5",
        b"local6",
        b"local7",
    ];
    const LEVELS: [&[u8]; 8] = [
        b"emerg", b"alert", b"crit", b"err", b"warn", b"notice", b"info", b"debug",
    ];
    let Some(dot) = memchr::memchr(b'.', t) else {
        return false;
    };
    FACILITIES.contains(&&t[..dot]) && LEVELS.contains(&&t[dot + 1..])
}

/// Any syslog-like header, or a bare message when there is none.
pub(crate) fn syslog<'a>(
    line: &'a [u8],
    reference: &Reference,
    zone: &mut LocalZone,
) -> Envelope<'a> {
    syslog_at(line, reference, zone, true)
}

/// `docker_time`: whether an RFC 3339 time may be docker's, before the container's own line.
fn syslog_at<'a>(
    line: &'a [u8],
    reference: &Reference,
    zone: &mut LocalZone,
    docker_time: bool,
) -> Envelope<'a> {
    let mut b = line;
    // `<PRI>` as written to a network socket or by some relays.
    if b.first() == Some(&b'<')
        && let Some(close) = b.iter().take(5).position(|&c| c == b'>')
        && close > 1
        && b[1..close].iter().all(u8::is_ascii_digit)
    {
        b = &b[close + 1..];
        if let Some(rest) = b.strip_prefix(b"1 ")
            && let Some(env) = rfc5424(rest, reference, zone)
        {
            return env;
        }
    }
    let Some(stamp) = parse_stamp(b, reference, zone) else {
        return bare(line);
    };
    let rest = trim_start(&b[stamp.len..]);
    if rest.len() == b.len() - stamp.len {
        // The timestamp must be followed by a space.
        return bare(line);
    }
    // `docker logs --timestamps`: `2024-07-03T17:18:06.603714476Z Jul 03 17:18:06 host ...`.
    // Docker's time is the one used: it is UTC with year and date, while the container's
    // clock may run in another zone than this host.
    if docker_time
        && stamp.offset_given
        && b[0].is_ascii_digit()
        && rest.first().is_some_and(|c| c.is_ascii_alphanumeric())
    {
        let mut utc = LocalZone::fixed(FixedOffset::east_opt(0).expect("zero offset"));
        let mut inner = syslog_at(rest, reference, &mut utc, false);
        if inner.time.is_some() {
            inner.time = Some(stamp.time);
            return inner;
        }
    }
    // Host or no host? Host names never contain ':', '(' or '['; a Dovecot log_path line has
    // the process (`imap-login:`, `auth-worker(123):`) right after the time.
    let first_end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
    let first = &rest[..first_end];
    let no_host = first.ends_with(b":") || first.contains(&b'(') || first.contains(&b'[');
    let mut rest = if no_host {
        rest
    } else {
        trim_start(&rest[first_end..])
    };
    if !no_host {
        let end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        if end < rest.len() && is_facility_level(&rest[..end]) {
            rest = trim_start(&rest[end..]);
        }
    }
    let mut env = tagged(rest);
    env.time = Some(stamp.time);
    env.has_header = true;
    env
}

/// A message with no timestamp: maybe still a `tag[pid]: msg`.
fn bare(line: &[u8]) -> Envelope<'_> {
    let mut env = tagged(line);
    env.has_header = false;
    env
}

/// Splits `tag[pid]: message`. Tags are `[A-Za-z0-9_./-]+`; anything else leaves the whole
/// text as the message (Dovecot process prefixes with parentheses are handled there).
fn tagged(b: &[u8]) -> Envelope<'_> {
    let n = span_of(b, 96, TAG);
    let whole = Envelope {
        time: None,
        ident: None,
        pid: None,
        message: Cow::Borrowed(b),
        has_header: false,
    };
    if n == 0 {
        return whole;
    }
    let ident = &b[..n];
    let mut i = n;
    let mut pid = None;
    if b.get(i) == Some(&b'[') {
        let Some(close) = b[i..].iter().take(12).position(|&c| c == b']') else {
            return whole;
        };
        pid = parse_u32(&b[i + 1..i + close]);
        if pid.is_none() {
            return whole;
        }
        i += close + 1;
    }
    if b.get(i) != Some(&b':') {
        return whole;
    }
    i += 1;
    match b.get(i) {
        None => {}
        Some(b' ') => i += 1,
        Some(_) => return whole,
    }
    Envelope {
        time: None,
        ident: Some(Cow::Borrowed(ident)),
        pid,
        message: Cow::Borrowed(&b[i..]),
        has_header: false,
    }
}

/// RFC 5424 after `<PRI>1 `: `TIMESTAMP HOST APP PROCID MSGID SD MSG`.
fn rfc5424<'a>(b: &'a [u8], reference: &Reference, zone: &mut LocalZone) -> Option<Envelope<'a>> {
    let mut fields = b.splitn(6, |&c| c == b' ');
    let ts = fields.next()?;
    let time = if ts == b"-" {
        None
    } else {
        Some(parse_stamp(ts, reference, zone)?.time)
    };
    let _host = fields.next()?;
    let app = fields.next()?;
    let procid = fields.next()?;
    let _msgid = fields.next()?;
    let rest = fields.next().unwrap_or(b"");
    // Structured data: `-` or one or more `[...]` groups (with `\]` escapes).
    let msg = if let Some(m) = rest.strip_prefix(b"-") {
        m
    } else {
        let mut i = 0;
        while rest.get(i) == Some(&b'[') {
            i += 1;
            loop {
                match rest.get(i)? {
                    b'\\' => i += 2,
                    b']' => {
                        i += 1;
                        break;
                    }
                    _ => i += 1,
                }
            }
        }
        &rest[i..]
    };
    let msg = msg.strip_prefix(b" ").unwrap_or(msg);
    let msg = msg.strip_prefix("\u{feff}".as_bytes()).unwrap_or(msg);
    Some(Envelope {
        time,
        ident: (app != b"-").then_some(Cow::Borrowed(app)),
        pid: parse_u32(procid),
        message: Cow::Borrowed(msg),
        has_header: true,
    })
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&c| c == b' ').count();
    &b[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(line: &str) -> (Option<String>, Option<String>, Option<u32>, String, bool) {
        let r = Reference::Fixed("2026-11-27T06:00:00Z".parse().unwrap());
        let mut zone = LocalZone::fixed(chrono::FixedOffset::east_opt(0).unwrap());
        let e = syslog(line.as_bytes(), &r, &mut zone);
        (
            e.time.map(|t| t.to_rfc3339()),
            e.ident.map(|i| String::from_utf8_lossy(&i).into_owned()),
            e.pid,
            String::from_utf8_lossy(&e.message).into_owned(),
            e.has_header,
        )
    }

    #[test]
    fn syslog_shapes() {
        let (t, id, pid, m, h) =
            env("Nov 27 04:58:37 mail postfix/smtpd[123]: connect from x[1.2.3.4]");
        assert_eq!(t.as_deref(), Some("2026-11-27T04:58:37+00:00"));
        assert_eq!(
            (id.as_deref(), pid, m.as_str(), h),
            (
                Some("postfix/smtpd"),
                Some(123),
                "connect from x[1.2.3.4]",
                true
            )
        );

        let (_, id, pid, m, _) = env("Nov 27 05:31:03 imap-login: Info: Disconnected");
        assert_eq!(
            (id.as_deref(), pid, m.as_str()),
            (Some("imap-login"), None, "Info: Disconnected")
        );

        let (t, id, _, m, _) =
            env("2013-08-11 03:56:40 auth-worker(default): Info: pam(u,1.2.3.4): x");
        assert_eq!(t.as_deref(), Some("2013-08-11T03:56:40+00:00"));
        assert_eq!(
            (id, m.as_str()),
            (None, "auth-worker(default): Info: pam(u,1.2.3.4): x")
        );

        let (_, id, pid, m, _) = env("2026-11-27T05:31:14.145091+0000 vm dovecot[22312]: auth: x");
        assert_eq!(
            (id.as_deref(), pid, m.as_str()),
            (Some("dovecot"), Some(22312), "auth: x")
        );

        let (_, id, _, m, _) =
            env("Aug 30 00:10:57 auth(a b,192.0.2.110,sasl:login)<C>: Info: sql: x");
        assert_eq!(
            (id, m.as_str()),
            (None, "auth(a b,192.0.2.110,sasl:login)<C>: Info: sql: x")
        );

        let (t, id, pid, m, h) = env("lost connection after CONNECT from unknown[192.0.2.1]");
        assert_eq!(
            (t, id, pid, m.as_str(), h),
            (
                None,
                None,
                None,
                "lost connection after CONNECT from unknown[192.0.2.1]",
                false
            )
        );

        let (t, id, pid, m, _) =
            env("<34>1 2026-11-27T05:00:00.5Z mail postfix/smtpd 77 - - connect from x[1.2.3.4]");
        assert_eq!(t.as_deref(), Some("2026-11-27T05:00:00.500+00:00"));
        assert_eq!(
            (id.as_deref(), pid, m.as_str()),
            (Some("postfix/smtpd"), Some(77), "connect from x[1.2.3.4]")
        );

        let (_, id, _, m, _) = env("<34>1 - h dovecot - - [x@1 a=\"\\]\"] imap-login: y");
        assert_eq!(
            (id.as_deref(), m.as_str()),
            (Some("dovecot"), "imap-login: y")
        );
    }

    #[test]
    fn journal_objects() {
        let e = journal(br#"{"MESSAGE":"imap-login: x","SYSLOG_IDENTIFIER":"dovecot","_PID":"7","__REALTIME_TIMESTAMP":"1795757470793360"}"#).unwrap();
        assert_eq!(&*e.message, b"imap-login: x");
        assert_eq!(e.ident.as_deref(), Some(&b"dovecot"[..]));
        assert_eq!(e.pid, Some(7));
        assert_eq!(
            e.time.unwrap().to_rfc3339(),
            "2026-11-27T05:31:10.793360+00:00"
        );
        let e = journal(br#"{"MESSAGE":[104,105,255],"SYSLOG_IDENTIFIER":"postfix/smtpd","SYSLOG_PID":"9","_PID":"8"}"#).unwrap();
        assert_eq!(&*e.message, b"hi\xff");
        assert_eq!(e.pid, Some(9));
        assert!(journal(b"{\"MESSAGE\":[300]}").is_none());
        assert!(journal(b"{not json").is_none());
    }
}
