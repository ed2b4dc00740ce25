//! Log timestamps: RFC 3164 (`Nov 27 04:58:37`, no year), ISO 8601 / RFC 3339 (rsyslog high
//! precision, `short-iso-precise`, offsets converted to UTC), Dovecot's `2013-08-11 03:56:40`,
//! and daemontools TAI64N (`@4000...`).
use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};

use super::text::split_digits;
use super::zone::LocalZone;

/// The reference "now" used to pick the year of year-less timestamps and as the time of
/// header-less lines.
#[derive(Clone, Copy, Debug)]
pub enum Reference {
    /// The wall clock at the moment each line is parsed (following live logs).
    WallClock,
    /// A fixed instant (reading old files, tests).
    Fixed(DateTime<Utc>),
}

impl Reference {
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Reference::WallClock => Utc::now(),
            Reference::Fixed(t) => *t,
        }
    }

    /// The wall clock, when lines are followed live (decides the repeated DST hour).
    fn live_now(&self) -> Option<DateTime<Utc>> {
        match self {
            Reference::WallClock => Some(Utc::now()),
            Reference::Fixed(_) => None,
        }
    }
}

/// Whether a log time can be believed at all: 1970 up to the end of 9999. Times beyond (journal
/// fields and TAI64N labels can name any instant chrono holds) would overflow every later
/// `time ± duration`; such a line is treated as one without a time of its own.
pub fn plausible(t: &DateTime<Utc>) -> bool {
    (0..=253_402_300_799).contains(&t.timestamp())
}

/// A parsed timestamp and the number of bytes it took.
pub(crate) struct Stamp {
    pub time: DateTime<Utc>,
    pub len: usize,
    /// The text named its UTC offset (`Z`, `+02:00`) or is TAI64N: no zone was assumed.
    pub offset_given: bool,
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Timestamps without an offset (RFC 3164, Postfix maillog_file, Dovecot log_path) are wall
/// clock times of `zone`, converted with its rules for that instant (see [`LocalZone`]).
pub(crate) fn parse_stamp(b: &[u8], reference: &Reference, zone: &mut LocalZone) -> Option<Stamp> {
    match b.first()? {
        b'@' => tai64n(b),
        b'0'..=b'9' => iso(b, reference, zone),
        _ => rfc3164(b, reference, zone),
    }
}

/// `Mmm dd HH:MM:SS` with the day space-padded (`Apr  6`) or not (`Mar 7`).
fn rfc3164(b: &[u8], reference: &Reference, zone: &mut LocalZone) -> Option<Stamp> {
    let now = reference.now();
    if let Some((time, len)) = zone.remembered(b, now.timestamp()) {
        return Some(Stamp {
            time,
            len,
            offset_given: false,
        });
    }
    let month = MONTHS.iter().position(|m| b.get(..3) == Some(&m[..]))? as u32 + 1;
    let mut i = 3;
    if b.get(i) != Some(&b' ') {
        return None;
    }
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    let (day, rest) = split_digits(&b[i..]);
    if day.is_empty() || day.len() > 2 || rest.first() != Some(&b' ') {
        return None;
    }
    i += day.len() + 1;
    let day = num(day);
    let (h, m, s, len) = hms(&b[i..])?;
    i += len;
    let local_now = now.with_timezone(&zone.offset_at(now));
    // The year is not in the line: take the reference year, and when that puts the line more
    // than a day in the future (a December line read in January), the previous year. Feb 29
    // in a non-leap year also walks back to the last leap year.
    let mut year = local_now.year();
    for attempt in 0..8 {
        if let Some(date) = NaiveDate::from_ymd_opt(year, month, day) {
            let naive = date.and_hms_opt(h, m, s)?;
            let t = zone.resolve_local(naive, reference.live_now())?;
            if t <= now + Duration::days(1) {
                // The text read is `b[..i]` (nothing after it); one resolution only, so the
                // result depends on the text and the reference second alone.
                if attempt == 0 {
                    zone.remember(&b[..i], now.timestamp(), t);
                }
                return Some(Stamp {
                    time: t,
                    len: i,
                    offset_given: false,
                });
            }
        }
        year -= 1;
    }
    None
}

fn num(b: &[u8]) -> u32 {
    b.iter().fold(0u32, |n, c| n * 10 + u32::from(c - b'0'))
}

/// `HH:MM:SS` (exactly two digits each).
fn hms(b: &[u8]) -> Option<(u32, u32, u32, usize)> {
    let b = b.get(..8)?;
    if b[2] != b':' || b[5] != b':' {
        return None;
    }
    let two = |x: &[u8]| (x[0].is_ascii_digit() && x[1].is_ascii_digit()).then(|| num(x));
    Some((two(&b[0..2])?, two(&b[3..5])?, two(&b[6..8])?, 8))
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.frac][Z|+HH:MM|+HHMM]`. Without an offset the time is local.
fn iso(b: &[u8], reference: &Reference, zone: &mut LocalZone) -> Option<Stamp> {
    let d = b.get(..10)?;
    if d[4] != b'-' || d[7] != b'-' || !d[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits2 = |x: &[u8]| (x[0].is_ascii_digit() && x[1].is_ascii_digit()).then(|| num(x));
    let date =
        NaiveDate::from_ymd_opt(num(&d[..4]) as i32, digits2(&d[5..7])?, digits2(&d[8..10])?)?;
    if !matches!(b.get(10), Some(b'T' | b' ')) {
        return None;
    }
    let (h, m, s, _) = hms(b.get(11..)?)?;
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        let (frac, _) = split_digits(&b[i + 1..]);
        if frac.is_empty() || frac.len() > 12 {
            return None;
        }
        for (k, c) in frac.iter().take(9).enumerate() {
            nanos += u32::from(c - b'0') * 10u32.pow(8 - k as u32);
        }
        i += 1 + frac.len();
    }
    let naive = NaiveDateTime::new(date, chrono::NaiveTime::from_hms_nano_opt(h, m, s, nanos)?);
    let (tz, tz_len) = match b.get(i) {
        Some(b'Z') => (FixedOffset::east_opt(0)?, 1),
        Some(&sign @ (b'+' | b'-')) => {
            let r = &b[i + 1..];
            let hh = digits2(r.get(..2)?)?;
            let (mm, len) = if r.get(2) == Some(&b':') {
                (digits2(r.get(3..5)?)?, 6)
            } else if r
                .get(2..4)
                .is_some_and(|x| x.iter().all(u8::is_ascii_digit))
            {
                (digits2(&r[2..4])?, 5)
            } else {
                (0, 3)
            };
            let secs = (hh * 3600 + mm * 60) as i32;
            (
                FixedOffset::east_opt(if sign == b'-' { -secs } else { secs })?,
                len,
            )
        }
        _ => {
            let t = zone.resolve_local(naive, reference.live_now())?;
            return Some(Stamp {
                time: t,
                len: i,
                offset_given: false,
            });
        }
    };
    let t = tz.from_local_datetime(&naive).single()?.with_timezone(&Utc);
    Some(Stamp {
        time: t,
        len: i + tz_len,
        offset_given: true,
    })
}

/// daemontools TAI64N label: `@` + 16 hex digits of seconds (offset 2^62) + 8 of nanoseconds.
/// As `tai64nlocal` does, the label's 10 s TAI offset is removed (later leap seconds are not).
fn tai64n(b: &[u8]) -> Option<Stamp> {
    // Byte-level: the label is input, so no `&str` slicing (a multibyte character would put a
    // char boundary inside it) and no `from_str_radix` (it accepts a sign).
    let h = b.get(1..25)?;
    let secs = hex(&h[..16])?.checked_sub((1 << 62) + 10)?;
    let nanos = u32::try_from(hex(&h[16..])?).ok()?;
    let t = DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos.min(999_999_999))?;
    Some(Stamp {
        time: t,
        len: 25,
        offset_given: true,
    })
}

/// Up to 16 hex digits, nothing else.
fn hex(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 16 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        let d = (c as char).to_digit(16)?;
        Some(n << 4 | u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Reference {
        Reference::Fixed(DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
    }

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).unwrap()
    }

    fn p(line: &str, r: &Reference) -> Option<String> {
        parse_stamp(line.as_bytes(), r, &mut LocalZone::fixed(utc())).map(|s| s.time.to_rfc3339())
    }

    #[test]
    fn rfc3164_year_inference_and_rollover() {
        let r = at("2026-11-27T06:00:00Z");
        assert_eq!(
            p("Nov 27 04:58:37 h", &r).unwrap(),
            "2026-11-27T04:58:37+00:00"
        );
        assert_eq!(
            p("Apr  6 13:05:01 h", &r).unwrap(),
            "2026-04-06T13:05:01+00:00"
        );
        assert_eq!(
            p("Mar 7 02:09:33 h", &r).unwrap(),
            "2026-03-07T02:09:33+00:00"
        );
        // A December line read on 2 January belongs to the previous year.
        let jan = at("2027-01-02T00:10:00Z");
        assert_eq!(
            p("Dec 31 23:59:59 h", &jan).unwrap(),
            "2026-12-31T23:59:59+00:00"
        );
        assert_eq!(
            p("Jan  1 00:00:01 h", &jan).unwrap(),
            "2027-01-01T00:00:01+00:00"
        );
        // Less than a day ahead (clock skew) stays in the current year.
        assert_eq!(
            p("Jan  2 12:00:00 h", &jan).unwrap(),
            "2027-01-02T12:00:00+00:00"
        );
        // Feb 29 walks back to the last leap year.
        assert_eq!(
            p("Feb 29 10:00:00 h", &r).unwrap(),
            "2024-02-29T10:00:00+00:00"
        );
        assert!(p("Foo 29 10:00:00", &r).is_none());
        assert!(p("Nov 27 4:58:37", &r).is_none());
        assert!(p("Nov 32 04:58:37", &r).is_none());
        assert_eq!(
            p("Jul 02 13:49:32 h", &r).unwrap(),
            "2026-07-02T13:49:32+00:00"
        );
    }

    #[test]
    fn iso_forms() {
        let r = at("2026-11-27T06:00:00Z");
        assert_eq!(
            p("2024-12-31T06:56:17.784598+01:00 x", &r).unwrap(),
            "2024-12-31T05:56:17.784598+00:00"
        );
        assert_eq!(
            p("2026-11-27T05:31:10.793360+0000 vm", &r).unwrap(),
            "2026-11-27T05:31:10.793360+00:00"
        );
        assert_eq!(
            p("2022-04-14T00:36:03.150Z m", &r).unwrap(),
            "2022-04-14T00:36:03.150+00:00"
        );
        assert_eq!(
            p("2013-08-11 03:56:40 auth", &r).unwrap(),
            "2013-08-11T03:56:40+00:00"
        );
        assert_eq!(
            p("2026-11-27T05:31:10-05:00 h", &r).unwrap(),
            "2026-11-27T10:31:10+00:00"
        );
        assert!(p("2026-13-27T05:31:10Z", &r).is_none());
        assert!(p("2026-11-27X05:31:10Z", &r).is_none());
    }

    /// A run of lines in one second reuses the last conversion: same instants and lengths as
    /// converting each line in a zone of its own, whatever follows the timestamp.
    #[test]
    fn a_repeated_second_converts_as_a_fresh_one() {
        let r = at("2026-11-27T06:00:00Z");
        let berlin = || LocalZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        let mut zone = berlin();
        let lines = [
            "Nov 27 04:58:37 mail x",
            "Nov 27 04:58:37 other text",
            "Nov 27 04:58:37",
            "Nov 27 04:58:38 mail x",
            "Nov  7 04:58:38 mail x",
            "Nov 7 04:58:38 mail x",
            "Nov 27 04:58:3",
            "Feb 29 10:00:00 h",
            "Feb 29 10:00:00 h",
            "Dec 31 23:59:59 h",
            "Dec 31 23:59:59 h",
            "2026-11-27 04:58:38 h",
            "Nov 27 04:58:38 mail x",
        ];
        for l in lines {
            let got = parse_stamp(l.as_bytes(), &r, &mut zone).map(|s| (s.time, s.len));
            let fresh = parse_stamp(l.as_bytes(), &r, &mut berlin()).map(|s| (s.time, s.len));
            assert_eq!(got, fresh, "{l}");
        }
    }

    /// The repeated hour is decided by the previous conversion: a line converted in between
    /// (another form of timestamp) makes the same text mean the other instant, so nothing
    /// remembered from before it may be used.
    #[test]
    fn a_conversion_in_between_forgets_the_repeated_second() {
        let r = at("2025-10-27T12:00:00Z");
        let mut zone = LocalZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        let mut utc = |l: &str| {
            parse_stamp(l.as_bytes(), &r, &mut zone)
                .unwrap()
                .time
                .to_rfc3339()
        };
        // No history: the earlier (summer time) instant.
        assert_eq!(utc("Oct 26 02:30:00 h"), "2025-10-26T00:30:00+00:00");
        assert_eq!(utc("Oct 26 02:30:00 h"), "2025-10-26T00:30:00+00:00");
        // Past the repeated hour, then the same text again: now the later (winter) instant.
        assert_eq!(utc("2025-10-26 03:10:00 h"), "2025-10-26T02:10:00+00:00");
        assert_eq!(utc("Oct 26 02:30:00 h"), "2025-10-26T01:30:00+00:00");
    }

    #[test]
    fn tai64n_label() {
        let r = at("2026-11-27T06:00:00Z");
        assert_eq!(
            p("@400000004c91b044077a9e94 imap", &r).unwrap(),
            "2010-09-16T05:50:50.125476500+00:00"
        );
        assert!(p("@4000zz", &r).is_none());
    }
}

#[cfg(test)]
mod hostile {
    use super::*;

    fn stamp(b: &[u8]) -> Option<Stamp> {
        let r = Reference::Fixed(DateTime::from_timestamp(1_795_757_470, 0).unwrap());
        parse_stamp(
            b,
            &r,
            &mut LocalZone::fixed(FixedOffset::east_opt(0).unwrap()),
        )
    }

    #[test]
    fn tai64n_with_multibyte_text_is_no_timestamp() {
        assert!(stamp("@000000000000000\u{e9}0000000 x".as_bytes()).is_none());
        assert!(stamp("@400000004c91b04\u{e9}77a9e94 x".as_bytes()).is_none());
        assert!(stamp("@400000004c91b044077a9e\u{e9} x".as_bytes()).is_none());
        // from_str_radix would take a sign; a label is hex digits only.
        assert!(stamp(b"@400000004c91b044+77a9e94 x").is_none());
    }
}
