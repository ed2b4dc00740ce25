//! Hostile and odd input through the whole `parse_line` path: each case here once panicked or
//! produced wrong numbers.
use chrono::{DateTime, FixedOffset, Utc};

use super::*;

fn parser() -> LineParser {
    let now: DateTime<Utc> = "2026-11-27T06:00:00Z".parse().unwrap();
    LineParser::with_reference(
        Format::Auto,
        Reference::Fixed(now),
        FixedOffset::east_opt(0).unwrap(),
    )
}

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
