//! Failure counts a line may legitimately report (Dovecot's own `(auth failed, N attempts)`,
//! up to 999,999,999) add up without overflow in the engine: sums saturate.
use chrono::{DateTime, FixedOffset, Utc};
use detector::engine::{Engine, EngineConfig};
use detector::parse::{Format, LineParser, Outcome, Reference};

#[test]
fn huge_server_reported_counts_saturate_instead_of_overflowing() {
    let now: DateTime<Utc> = "2026-11-27T06:00:00Z".parse().unwrap();
    let mut parser = LineParser::with_reference(
        Format::Auto,
        Reference::Fixed(now),
        FixedOffset::east_opt(0).unwrap(),
    );
    let mut engine = Engine::new(EngineConfig::default());
    let mut failures = 0u64;
    for i in 0..6 {
        let line = format!(
            "Nov 27 05:31:0{i} imap-login: Info: Disconnected (auth failed, 999999999 attempts in 1 secs): user=<u{i}>, method=PLAIN, rip=198.18.0.2, lip=198.18.0.1, session=<s{i}>"
        );
        let Outcome::Event(ev) = parser.parse_line(line.as_bytes(), i + 1) else {
            panic!("no event for {line}");
        };
        failures += u64::from(ev.failures);
        engine.observe(&ev);
    }
    assert_eq!(failures, 6 * 999_999_999);
}
