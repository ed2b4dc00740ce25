//! Shared driver: feed `prefix + data` (split into lines) through one parser and check the
//! invariants that must hold for any input.
use chrono::{DateTime, FixedOffset, Utc};
use detector::parse::{Format, LineParser, Outcome, Reference};

pub fn drive(format: Format, prefix: &[u8], data: &[u8]) {
    let now: DateTime<Utc> = DateTime::from_timestamp(1_795_757_470, 0).unwrap();
    let mut p = LineParser::with_reference(format, Reference::Fixed(now), FixedOffset::east_opt(0).unwrap());
    let mut n = 0;
    // Several lines per input so the cross-line state (de-dup, queue ids) is exercised too.
    for (i, chunk) in data.split(|&b| b == b'\n').enumerate() {
        let mut line = prefix.to_vec();
        line.extend_from_slice(chunk);
        if let Outcome::Event(e) = p.parse_line(&line, i as u64 + 1) {
            // An event only ever carries failures on failure kinds, and an IPv4 address is
            // always spelled in the line: the parser never invents addresses.
            assert!(e.failures == 0 || e.is_auth_failure());
            if e.ip.is_ipv4() {
                let ip = e.ip.to_string();
                assert!(line.windows(ip.len()).any(|w| w == ip.as_bytes()), "{ip} not in line");
            }
            assert!(e.failures <= 1_000_000_000);
        }
        n += 1;
    }
    let s = p.stats();
    assert_eq!(s.lines, n);
    assert!(s.events + s.unparsed <= s.lines);
}
