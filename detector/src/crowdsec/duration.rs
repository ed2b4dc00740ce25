//! Go's `time.Duration` text (`3h59m58.1s`, `-1.5s`, `150ms`), as the Local API writes a
//! decision's remaining time.
//!
//! Grammar (Go's `time.ParseDuration`): an optional sign, then one or more `<decimal><unit>`
//! terms, units `ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`; `0` alone is zero. A decision whose
//! time has run out comes with a negative duration.
use std::time::Duration;

/// A parsed Go duration: its sign and magnitude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoDuration {
    /// Zero or positive.
    Remaining(Duration),
    /// Negative: already over by this much.
    Over(Duration),
}

impl GoDuration {
    /// The time left, `None` once it is over (zero counts as over).
    pub fn remaining(self) -> Option<Duration> {
        match self {
            GoDuration::Remaining(d) if !d.is_zero() => Some(d),
            _ => None,
        }
    }
}

/// Parses Go's duration syntax. Values beyond `u64` nanoseconds (~584 years) saturate.
pub fn parse(text: &str) -> Result<GoDuration, String> {
    let bad = |why: &str| format!("`{text}` is not a Go duration ({why})");
    let s = text.trim();
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    if rest == "0" {
        return Ok(GoDuration::Remaining(Duration::ZERO));
    }
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        // The number: digits, optionally a fraction.
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number = &rest[..digits_end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad("expected a number"));
        }
        rest = &rest[digits_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad(&format!("unknown unit `{unit}`"))),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        // Go accepts "1." and ".5".
        if whole.is_empty() && frac.is_empty() {
            return Err(bad("expected a number"));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            // More digits than fit in u128 saturate: this is a remaining time, not arithmetic.
            whole.parse().unwrap_or(u128::MAX / unit_ns)
        };
        let mut term = whole.saturating_mul(unit_ns);
        // The fraction, exact to the nanosecond (digits past that are dropped, as Go does).
        let mut scale = unit_ns;
        for digit in frac.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            term = term.saturating_add(u128::from(digit - b'0') * scale);
        }
        total_ns = total_ns.saturating_add(term);
    }
    let d = Duration::from_nanos(u64::try_from(total_ns).unwrap_or(u64::MAX));
    Ok(if negative && !d.is_zero() {
        GoDuration::Over(d)
    } else {
        GoDuration::Remaining(d)
    })
}

/// Formats a duration the way Go does for whole seconds (`4h0m0s`, `90s` -> `1m30s`), which
/// is what the Local API expects in an alert's decisions.
pub fn format_seconds(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        match parse(s).unwrap() {
            GoDuration::Remaining(d) => d,
            GoDuration::Over(d) => panic!("{s} parsed as negative {d:?}"),
        }
    }

    #[test]
    fn what_the_local_api_sends() {
        assert_eq!(
            ok("3h59m58.986730987s"),
            Duration::from_secs(3 * 3600 + 59 * 60 + 58) + Duration::from_nanos(986_730_987)
        );
        assert_eq!(
            ok("59m58.1s"),
            Duration::from_secs(59 * 60 + 58) + Duration::from_millis(100)
        );
        assert_eq!(ok("167h59m59s"), Duration::from_secs(167 * 3600 + 3599));
        assert_eq!(ok("4h0m0s"), Duration::from_secs(4 * 3600));
    }

    #[test]
    fn every_unit_and_fraction() {
        assert_eq!(ok("1ns"), Duration::from_nanos(1));
        assert_eq!(ok("1.5us"), Duration::from_nanos(1500));
        assert_eq!(ok("2µs"), Duration::from_micros(2));
        assert_eq!(ok("2μs"), Duration::from_micros(2));
        assert_eq!(ok("150ms"), Duration::from_millis(150));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.s"), Duration::from_secs(1));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("+2m"), Duration::from_secs(120));
        assert_eq!(ok("1h1h"), Duration::from_secs(7200));
        // Digits past the nanosecond are dropped.
        assert_eq!(ok("0.0000000019s"), Duration::from_nanos(1));
        assert_eq!(ok("0"), Duration::ZERO);
    }

    #[test]
    fn negative_means_over() {
        assert_eq!(
            parse("-1.5s").unwrap(),
            GoDuration::Over(Duration::from_millis(1500))
        );
        assert_eq!(parse("-1.5s").unwrap().remaining(), None);
        assert_eq!(parse("0s").unwrap().remaining(), None);
        assert_eq!(parse("-0s").unwrap(), GoDuration::Remaining(Duration::ZERO));
        assert_eq!(
            parse("1s").unwrap().remaining(),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn huge_values_saturate() {
        assert_eq!(
            ok("99999999999999999999999999h"),
            Duration::from_nanos(u64::MAX)
        );
        assert_eq!(
            ok("9999999999999999999999999999999999999999999999h"),
            Duration::from_nanos(u64::MAX)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "", "-", "+", "s", "1", "1x", "1.2.3s", "h1", "1hh", ".s", "--1s", "1 h", "1s ", "é",
            "1é", "0x1s", "1e3s", "NaN", "∞s",
        ] {
            // "1s " is trimmed, the rest must fail.
            if bad == "1s " {
                assert_eq!(ok(bad), Duration::from_secs(1));
                continue;
            }
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_seconds(Duration::from_secs(4 * 3600)), "4h0m0s");
        assert_eq!(format_seconds(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_seconds(Duration::from_secs(5)), "5s");
        let d = Duration::from_secs(3 * 3600 + 61);
        assert_eq!(ok(&format_seconds(d)), d);
    }
}
