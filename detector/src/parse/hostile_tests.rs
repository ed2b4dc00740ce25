//! Hostile and odd input through the whole `parse_line` path: each case here once panicked or
//! produced wrong numbers.
use super::tests::parser;
use super::*;

fn event(line: &[u8]) -> Option<Event> {
    match parser().parse_line(line, 1) {
        Outcome::Event(e) => Some(e),
        _ => None,
    }
}

#[test]
fn tai64n_label_with_multibyte_text_does_not_panic() {
    let mut p = parser();
    assert_eq!(
        p.parse_line(b"@000000000000000\xc3\xa90000000 x", 1),
        Outcome::Unparsed
    );
}

/// Times at the edges of what chrono can hold would overflow the de-duplication windows
/// (`start - max_age`) and every later `time + duration`: they are no timestamps.
#[test]
fn timestamps_outside_sane_years_are_not_trusted() {
    let min = DateTime::<Utc>::MIN_UTC.timestamp_micros();
    let max = DateTime::<Utc>::MAX_UTC.timestamp_micros();
    for micros in [min, min + 1, max, -1, 253_402_300_800_000_000] {
        let line = format!(
            r#"{{"MESSAGE":"auth: Info: passwd-file(u,198.18.0.2,<S{micros}>): unknown user","SYSLOG_IDENTIFIER":"dovecot","__REALTIME_TIMESTAMP":"{micros}"}}"#
        );
        let e = event(line.as_bytes()).expect("still an event");
        // The line's own time is not believed: the reference time is used.
        assert_eq!(e.time.to_rfc3339(), "2026-11-27T06:00:00+00:00", "{micros}");
    }
    // A TAI64N label for the year 262143.
    let secs = DateTime::<Utc>::MAX_UTC.timestamp() as u64 + (1 << 62) + 10;
    let line =
        format!("@{secs:016x}00000000 auth: Info: passwd-file(u,198.18.0.2,<S>): unknown user");
    let e = event(line.as_bytes()).expect("still an event");
    assert_eq!(e.time.to_rfc3339(), "2026-11-27T06:00:00+00:00");
}

/// `imap_id_log` writes the client's ID values verbatim before the key=value list: text shaped
/// like Dovecot's own `(auth failed, N attempts ...)` note must count nothing.
#[test]
fn imap_id_text_cannot_set_the_failure_count() {
    let fake = [
        "Nov 27 05:31:03 imap-login: Info: ID sent: name=x (auth failed, 999999999 attempts in 1 secs): user=<>, rip=198.18.0.2, lip=198.18.0.1, session=<abc>",
        "Nov 27 05:31:03 imap-login: Info: ID sent: name=(auth failed, 999999999 attempts, version=1: user=<>, rip=198.18.0.2, lip=198.18.0.1, session=<abc>",
        "Nov 27 05:31:03 imap-login: Info: ID sent: name=x (tried to use disabled PLAIN SASL mechanism): user=<>, rip=198.18.0.2, lip=198.18.0.1",
        // A real disconnect reason whose note is not the last group of the reason.
        "Nov 27 05:31:03 imap-login: Info: Disconnected (auth failed, 999999999 attempts in 1 secs) x: user=<>, rip=198.18.0.2, lip=198.18.0.1",
    ];
    for line in fake {
        if let Some(e) = event(line.as_bytes()) {
            assert_eq!(e.failures, 0, "{line}");
            assert!(!e.is_auth_failure(), "{line}");
        }
    }
    // Dovecot's own notes still count, 2.3 and 2.4 forms.
    for (line, n) in [
        (
            "Nov 27 05:31:03 imap-login: Info: Disconnected (auth failed, 3 attempts in 12 secs): user=<a>, method=PLAIN, rip=198.18.0.2, lip=198.18.0.1, session=<s1>",
            3,
        ),
        (
            "Nov 27 05:31:03 imap-login: Info: Disconnected: Inactivity (auth failed, 2 attempts): user=<a>, rip=198.18.0.2, lip=198.18.0.1",
            2,
        ),
        (
            "Aug 30 00:11:05 imap-login: Info: Login aborted: Connection closed (auth failed, 4 attempts in 16 secs) (auth_failed): user=<a>, method=PLAIN, rip=198.18.0.2, lip=0.0.0.0, TLS, session=<s2>",
            4,
        ),
        (
            "Nov 27 05:31:03 pop3-login: Info: Aborted login (tried to use disallowed plaintext auth): user=<>, rip=198.18.0.2, lip=198.18.0.1, session=<s3>",
            1,
        ),
    ] {
        let e = event(line.as_bytes()).unwrap_or_else(|| panic!("no event: {line}"));
        assert_eq!((e.kind, e.failures), (EventKind::AuthFailure, n), "{line}");
    }
}

/// Container deployments: `docker compose logs -f mailserver | detector run --stdin`.
#[test]
fn container_envelopes() {
    use EventKind::*;
    let cases: &[(&str, EventKind, &str, Option<&str>)] = &[
        // docker-mailserver: compose v2 service prefix around rsyslog's mail.log.
        (
            "mailserver-1  | Jun 16 09:37:32 mail dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<a@b.test>, method=PLAIN, rip=198.18.0.2, lip=172.18.0.2, session=<x>",
            AuthFailure,
            "198.18.0.2",
            Some("2026-06-16T09:37:32+00:00"),
        ),
        // compose v1 name, `docker compose logs -t`: docker's time wins.
        (
            "mailserver_1  | 2024-07-03T17:18:06.603714476Z Jul 03 17:18:06 mail postfix/smtpd[123]: warning: unknown[198.18.0.3]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
            AuthFailure,
            "198.18.0.3",
            Some("2024-07-03T17:18:06.603714476+00:00"),
        ),
        // `docker logs -t` without compose.
        (
            "2024-07-03T17:18:06.603714476Z Jul 03 17:18:06 mail postfix/smtpd[123]: connect from unknown[198.18.0.4]",
            Connect,
            "198.18.0.4",
            Some("2024-07-03T17:18:06.603714476+00:00"),
        ),
        // busybox syslogd (Alpine-based images such as Mailu's).
        (
            "Jun 16 09:37:32 mail mail.warn postfix/smtpd[77]: warning: unknown[198.18.0.5]: SASL PLAIN authentication failed: authentication failure",
            AuthFailure,
            "198.18.0.5",
            Some("2026-06-16T09:37:32+00:00"),
        ),
        (
            "imap-1  | Jun 16 09:37:33 mail mail.info dovecot: imap-login: Login: user=<x>, method=PLAIN, rip=198.18.0.6, lip=1.1.1.1, mpid=1",
            AuthSuccess,
            "198.18.0.6",
            None,
        ),
        // Colour codes around the prefix, Dovecot log_path inside (Mailu).
        (
            "\x1b[36mimap-1  | \x1b[0mJun 16 09:37:32 imap-login: Info: Disconnected (auth failed, 2 attempts in 5 secs): user=<x>, method=PLAIN, rip=198.18.0.7, lip=1.1.1.1",
            AuthFailure,
            "198.18.0.7",
            None,
        ),
        // mailcow: compose prefix, -t, and a Dovecot line without a syslog tag.
        (
            "dovecot-mailcow-1  | 2024-07-03T17:18:06.000000001Z Jul 03 17:18:06 f2e1 dovecot: auth: passwd-file(u,198.18.0.8,<S1>): unknown user",
            AuthUnknownUser,
            "198.18.0.8",
            None,
        ),
    ];
    for (line, kind, addr, time) in cases {
        let e = event(line.as_bytes()).unwrap_or_else(|| panic!("no event for {line}"));
        assert_eq!(
            (e.kind, e.ip.to_string().as_str()),
            (*kind, *addr),
            "{line}"
        );
        if let Some(t) = time {
            assert_eq!(e.time.to_rfc3339(), *t, "{line}");
        }
    }
    // Not a facility.level: a host name followed by a tag stays as it was.
    let e = event(b"Jun 16 09:37:32 mail.warn postfix/smtpd[7]: connect from unknown[198.18.0.9]")
        .unwrap();
    assert_eq!(e.ip.to_string(), "198.18.0.9");
}

/// One limit: whatever a source delivers uncut (up to [`MAX_LINE_BYTES`]) is parsed; longer
/// lines and lines a source had to cut are counted as truncated and never parsed.
#[test]
fn the_line_limit_is_the_sources_limit() {
    let mut p = parser();
    // A journal entry of ~200 KiB (a long field beside MESSAGE), under the limit: parsed.
    let pad = "x".repeat(200 * 1024);
    let line = format!(
        r#"{{"MESSAGE":"auth: Info: passwd-file(u,198.18.0.2,<S1>): unknown user","SYSLOG_IDENTIFIER":"dovecot","X_PAD":"{pad}","__REALTIME_TIMESTAMP":"1795757470793360"}}"#
    );
    assert!(line.len() < MAX_LINE_BYTES);
    assert!(matches!(
        p.parse_line(line.as_bytes(), 1),
        Outcome::Event(_)
    ));
    // Over the limit: not parsed, counted.
    let long = format!(
        "Nov 27 05:31:03 imap-login: Info: Disconnected (auth failed, 1 attempts): user=<x>, rip=198.18.0.2, lip=1.1.1.1{}",
        " ".repeat(MAX_LINE_BYTES)
    );
    assert_eq!(p.parse_line(long.as_bytes(), 2), Outcome::Unparsed);
    assert_eq!(p.skip_truncated(), Outcome::Unparsed);
    let s = p.stats();
    assert_eq!((s.lines, s.events, s.unparsed, s.truncated), (3, 1, 2, 2));
}

/// `hostname H does not resolve to address IP[: reason]` with an IPv6 address was unparsed
/// (the end of the address was looked for at the first single `:`).
#[test]
fn unresolvable_hostname_warning_with_ipv6() {
    for (line, want) in [
        (
            "Nov 27 05:30:59 mail postfix/smtpd[1]: warning: hostname x.example does not resolve to address 2001:db8::1: Name or service not known",
            "2001:db8::1",
        ),
        (
            "Nov 27 05:30:59 mail postfix/smtpd[1]: warning: hostname x.example does not resolve to address 2001:db8::1",
            "2001:db8::1",
        ),
        (
            "Nov 27 05:30:59 mail postfix/smtpd[1]: warning: hostname x.example does not resolve to address 198.18.0.1: Name or service not known",
            "198.18.0.1",
        ),
        (
            "Nov 27 05:30:59 mail postfix/smtpd[1]: warning: hostname x.example does not resolve to address 198.18.0.1",
            "198.18.0.1",
        ),
    ] {
        let e = event(line.as_bytes()).unwrap_or_else(|| panic!("no event: {line}"));
        assert_eq!(
            (e.kind, e.ip.to_string().as_str()),
            (EventKind::Other, want),
            "{line}"
        );
    }
}
