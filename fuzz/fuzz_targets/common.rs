//! Shared driver: feed lines through one parser and check the invariants that must hold for
//! any input. The parser reads local times in Europe/Berlin's rules with a reference time at
//! the October 2025 fold, so the DST code paths (gap, repeated hour) are reached too.
#![allow(dead_code)]
use chrono::{DateTime, Utc};
use detector::parse::{Format, LineParser, LocalZone, Outcome, Reference};

/// Europe/Berlin since 1996, as a POSIX rule (no tz database needed).
const BERLIN: &str = "CET-1CEST,M3.5.0,M10.5.0/3";

pub fn parser(format: Format) -> LineParser {
    let now: DateTime<Utc> = DateTime::from_timestamp(1_761_442_200, 0).unwrap(); // 2025-10-26T01:30Z
    LineParser::with_zone(format, Reference::Fixed(now), LocalZone::posix(BERLIN).unwrap())
}

/// Feeds `prefix + chunk` for every `\n`-separated chunk of `data`.
pub fn drive(format: Format, prefix: &[u8], data: &[u8]) {
    let lines: Vec<Vec<u8>> = data
        .split(|&b| b == b'\n')
        .map(|chunk| [prefix, chunk].concat())
        .collect();
    check_lines(format, &lines);
}

/// Parses `lines` in order with one parser (so the cross-line state is exercised) and checks
/// every outcome.
pub fn check_lines(format: Format, lines: &[Vec<u8>]) {
    let mut p = parser(format);
    for (i, line) in lines.iter().enumerate() {
        if let Outcome::Event(e) = p.parse_line(line, i as u64 + 1) {
            // An event only ever carries failures on failure kinds, and never more than a
            // line can report (9 digits).
            assert!(e.failures == 0 || e.is_auth_failure());
            assert!(e.failures <= 999_999_999);
            // Log times outside 1970..=9999 are never passed on.
            assert!((0..=253_402_300_799).contains(&e.time.timestamp()), "{}", e.time);
            // The parser never invents addresses: an IPv4 address is spelled in the line
            // (JSON may escape its digits, so only outside JSON).
            let json = line.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{');
            if e.ip.is_ipv4() && !json {
                let ip = e.ip.to_string();
                assert!(line.windows(ip.len()).any(|w| w == ip.as_bytes()), "{ip} not in line");
            }
        }
    }
    let s = p.stats();
    assert_eq!(s.lines, lines.len() as u64);
    assert!(s.events + s.unparsed <= s.lines);
    assert!(s.truncated <= s.unparsed);
}

const TAGS: [&str; 8] = [
    "postfix/smtpd",
    "postfix/submission/smtpd",
    "postfix/postscreen",
    "postfix/qmgr",
    "dovecot",
    "imap-login",
    "auth",
    "auth-worker",
];

/// `msg` wrapped in the envelope `kind` selects (every envelope the parser knows), for the
/// syslog tag `tag`.
pub fn wrap(kind: u8, tag: u8, msg: &[u8]) -> Vec<u8> {
    let tag = TAGS[usize::from(tag) % TAGS.len()].as_bytes();
    let tagged = |head: &[u8]| [head, tag, b"[4711]: ", msg].concat();
    match kind % 16 {
        // journalctl -o json: MESSAGE as a string, and as an array of bytes.
        0 => {
            let m = serde_json::to_string(&String::from_utf8_lossy(msg)).unwrap();
            let t = String::from_utf8_lossy(tag);
            format!(r#"{{"MESSAGE":{m},"SYSLOG_IDENTIFIER":"{t}","_PID":"7","__REALTIME_TIMESTAMP":"1761442200123456"}}"#).into_bytes()
        }
        1 => {
            let m = serde_json::to_string(msg).unwrap();
            let t = String::from_utf8_lossy(tag);
            format!(r#"{{"MESSAGE":{m},"SYSLOG_IDENTIFIER":"{t}","SYSLOG_PID":"9"}}"#).into_bytes()
        }
        // RFC 3164 (also Postfix maillog_file), inside and outside the repeated hour.
        2 => tagged(b"Oct 26 02:30:00 mail "),
        3 => tagged(b"Mar 30 02:30:00 mail "),
        // RFC 3339 with an offset, and without (local).
        4 => tagged(b"2025-10-26T02:30:00.123456+02:00 mail "),
        5 => tagged(b"2025-10-26T02:30:00 mail "),
        // RFC 5424.
        6 => [b"<22>1 2025-10-26T01:30:00.5Z mail ", tag, b" 4711 - - ", msg].concat(),
        // Dovecot log_path: no host, process prefix right after the time (both time forms).
        7 => [b"Oct 26 02:30:00 ", msg].concat(),
        8 => [b"2025-10-26 02:30:00 ", msg].concat(),
        // daemontools TAI64N.
        9 => [b"@40000000690d7f9800000000 ", msg].concat(),
        // Bare message.
        10 => msg.to_vec(),
        // docker compose service prefix (with colour), around RFC 3164.
        11 => [&b"mailserver-1  | "[..], &tagged(b"Oct 26 02:30:00 mail ")].concat(),
        12 => [&b"\x1b[36mimap-1  | \x1b[0m"[..], msg].concat(),
        // docker logs --timestamps, alone and inside compose.
        13 => [&b"2024-07-03T17:18:06.603714476Z "[..], &tagged(b"Jul 03 17:18:06 mail ")].concat(),
        14 => [&b"front-1  | 2024-07-03T17:18:06.603714476Z "[..], msg].concat(),
        // busybox syslogd facility.level.
        _ => tagged(b"Jun 16 09:37:32 mail mail.warn "),
    }
}

/// The first two bytes choose envelope and tag; the rest, split at `\n`, are the messages.
pub fn drive_wrapped(format: Format, data: &[u8]) {
    let [kind, tag, rest @ ..] = data else {
        return;
    };
    let lines: Vec<Vec<u8>> = rest
        .split(|&b| b == b'\n')
        .map(|m| wrap(*kind, *tag, m))
        .collect();
    check_lines(format, &lines);
}
