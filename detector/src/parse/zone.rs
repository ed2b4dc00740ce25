//! Local wall-clock times (RFC 3164, Postfix `maillog_file`, Dovecot `log_path`: no UTC offset
//! in the line) -> instants, with the rules of the host's time zone for *that* instant.
//!
//! The rules come from the system tz database (`TZ`, `/etc/localtime`, `/usr/share/zoneinfo`)
//! through jiff. Taking the offset once at start-up would put every line an hour off after the
//! next DST change.
//!
//! Two local times need a choice:
//! - **The repeated hour** (clocks go back: 02:30 happens twice in Europe/Berlin on the last
//!   Sunday of October). A live daemon takes the candidate nearest to the wall clock (the line
//!   was just written). Reading files, the candidate nearest to the previous local time this
//!   converter resolved, so a log that runs through the hour twice stays monotonic: the first
//!   pass is read as summer time, the second as winter time. With neither, the earlier.
//! - **The skipped hour** (clocks go forward; no correct clock writes 02:30 that night): read
//!   with the offset in force before the jump, as if the writer had not switched yet.
//!
//! Per line the work is two comparisons: the span of local times around the last result that
//! map to one offset without ambiguity is cached; only a line outside it asks the tz rules.
use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, Timelike, Utc};
use jiff::Timestamp;
use jiff::tz::{AmbiguousOffset, TimeZone};

/// A time zone and what the last conversions learnt about it.
#[derive(Clone, Debug)]
pub struct LocalZone {
    tz: TimeZone,
    /// Around the last converted line.
    line_span: Option<Span>,
    /// Around the last "now" asked for (year inference).
    now_span: Option<Span>,
    /// The last instant a local time was resolved to (seconds), for the repeated hour.
    last: Option<i64>,
    /// The last RFC 3164 timestamp converted (busy logs repeat one second for many lines).
    memo: Option<Memo>,
}

/// One timestamp text, the reference second it was read against, and its instant. Only a
/// result that is a pure function of those two is kept (see [`LocalZone::remember`]), and any
/// other conversion forgets it, so a hit returns exactly what converting again would.
#[derive(Clone, Copy, Debug)]
struct Memo {
    text: [u8; MEMO_TEXT],
    len: u8,
    reference_second: i64,
    time: DateTime<Utc>,
}

/// Longest timestamp text remembered (`Nov 27 04:58:37` is 15 bytes; runs of padding spaces
/// make it longer, and such lines are simply not remembered).
const MEMO_TEXT: usize = 24;

/// One offset in force from `utc_lo` to `utc_hi` (UTC seconds); local times (seconds of the
/// wall clock read as if UTC) in `local_lo..local_hi` map to it and to nothing else.
#[derive(Clone, Copy, Debug)]
struct Span {
    utc_lo: i64,
    utc_hi: i64,
    local_lo: i64,
    local_hi: i64,
    offset: i32,
}

impl LocalZone {
    /// The host's zone: `TZ` if set, else `/etc/localtime` (UTC when neither can be read).
    pub fn system() -> Self {
        LocalZone::from_tz(TimeZone::system())
    }

    /// A zone of the system tz database (`Europe/Berlin`); `None` when it has no such zone.
    pub fn named(name: &str) -> Option<Self> {
        TimeZone::get(name).ok().map(LocalZone::from_tz)
    }

    /// A zone given as a POSIX TZ rule (`CET-1CEST,M3.5.0,M10.5.0/3`): needs no tz database.
    pub fn posix(rule: &str) -> Option<Self> {
        TimeZone::posix(rule).ok().map(LocalZone::from_tz)
    }

    /// One offset all year.
    pub fn fixed(offset: FixedOffset) -> Self {
        let tz = jiff::tz::Offset::from_seconds(offset.local_minus_utc())
            .map_or(TimeZone::UTC, TimeZone::fixed);
        LocalZone::from_tz(tz)
    }

    fn from_tz(tz: TimeZone) -> Self {
        LocalZone {
            tz,
            line_span: None,
            now_span: None,
            last: None,
            memo: None,
        }
    }

    /// The instant of timestamp text `b` starts with, when it is the text converted last, read
    /// against the same reference second; with the number of bytes it takes.
    pub(crate) fn remembered(
        &self,
        b: &[u8],
        reference_second: i64,
    ) -> Option<(DateTime<Utc>, usize)> {
        let m = self.memo.as_ref()?;
        let len = usize::from(m.len);
        (m.reference_second == reference_second && b.get(..len) == Some(&m.text[..len]))
            .then_some((m.time, len))
    }

    /// Remembers the conversion of `text` (all the bytes the conversion looked at) against
    /// `reference_second`. Callers only pass results that do not depend on earlier
    /// conversions: [`LocalZone::resolve_local`] called once, so only the repeated hour could
    /// have used the history, and there the history is this very result when the text comes
    /// again (nothing else was converted in between, or the memo would be gone).
    pub(crate) fn remember(&mut self, text: &[u8], reference_second: i64, time: DateTime<Utc>) {
        let Ok(len) = u8::try_from(text.len()) else {
            return;
        };
        if text.len() > MEMO_TEXT {
            return;
        }
        let mut m = Memo {
            text: [0; MEMO_TEXT],
            len,
            reference_second,
            time,
        };
        m.text[..text.len()].copy_from_slice(text);
        self.memo = Some(m);
    }

    /// The zone's name for messages (`Europe/Berlin`), when it has one.
    pub fn name(&self) -> Option<&str> {
        self.tz.iana_name()
    }

    /// The offset in force at `t`.
    pub(crate) fn offset_at(&mut self, t: DateTime<Utc>) -> FixedOffset {
        let u = t.timestamp();
        let span = match self.now_span {
            Some(s) if (s.utc_lo..s.utc_hi).contains(&u) => Some(s),
            _ => span_at(&self.tz, u),
        };
        self.now_span = span;
        let secs = span.map_or(0, |s| s.offset);
        FixedOffset::east_opt(secs).unwrap_or(FixedOffset::east_opt(0).expect("zero offset"))
    }

    /// The instant a wall-clock time of this zone names. `live_now`: the wall clock when the
    /// line is being followed live (it decides the repeated hour; see the module docs).
    pub(crate) fn resolve_local(
        &mut self,
        naive: NaiveDateTime,
        live_now: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        // Any conversion may change the history the repeated hour is decided by.
        self.memo = None;
        let local = naive.and_utc().timestamp();
        let secs = match self.line_span {
            Some(s) if (s.local_lo..s.local_hi).contains(&local) => local - i64::from(s.offset),
            _ => self.resolve(naive, local, live_now)?,
        };
        self.last = Some(secs);
        DateTime::from_timestamp(secs, naive.nanosecond())
    }

    fn resolve(
        &mut self,
        naive: NaiveDateTime,
        local: i64,
        live_now: Option<DateTime<Utc>>,
    ) -> Option<i64> {
        let civil = jiff::civil::DateTime::new(
            i16::try_from(naive.year()).ok()?,
            i8::try_from(naive.month()).ok()?,
            i8::try_from(naive.day()).ok()?,
            i8::try_from(naive.hour()).ok()?,
            i8::try_from(naive.minute()).ok()?,
            // A leap second (`:60`) is read as the last second of its minute.
            i8::try_from(naive.second().min(59)).ok()?,
            0,
        )
        .ok()?;
        let at = |offset: jiff::tz::Offset| local - i64::from(offset.seconds());
        Some(match self.tz.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => {
                let secs = at(offset);
                self.line_span = span_at(&self.tz, secs);
                secs
            }
            AmbiguousOffset::Gap { before, .. } => at(before),
            AmbiguousOffset::Fold { before, after } => {
                // `before` is the offset before the clocks went back: the earlier instant.
                let (earlier, later) = (at(before), at(after));
                match live_now.map(|t| t.timestamp()).or(self.last) {
                    Some(hint) if (later - hint).abs() < (earlier - hint).abs() => later,
                    _ => earlier,
                }
            }
        })
    }
}

/// The span of the offset in force at UTC second `u`.
fn span_at(tz: &TimeZone, u: i64) -> Option<Span> {
    let ts = Timestamp::from_second(u).ok()?;
    let offset = tz.to_offset(ts).seconds();
    let o = i64::from(offset);
    // `preceding` is strictly before its argument, `following` strictly after.
    let prev = tz
        .preceding(Timestamp::from_second(u.saturating_add(1)).unwrap_or(ts))
        .next();
    let next = tz.following(ts).next();
    let (utc_lo, local_lo) = match prev {
        Some(tr) => {
            let at = tr.timestamp().as_second();
            let before =
                Timestamp::from_second(at - 1).map_or(o, |b| i64::from(tz.to_offset(b).seconds()));
            // Just after a jump back, local times repeat the ones before it: not unique.
            (at, at + o.max(before))
        }
        None => (i64::MIN, i64::MIN),
    };
    let (utc_hi, local_hi) = match next {
        Some(tr) => {
            let at = tr.timestamp().as_second();
            let after = i64::from(tr.offset().seconds());
            (at, at + o.min(after))
        }
        None => (i64::MAX, i64::MAX),
    };
    Some(Span {
        utc_lo,
        utc_hi,
        local_lo,
        local_hi,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Europe/Berlin's rule since 1996, so the test needs no tz database.
    const BERLIN: &str = "CET-1CEST,M3.5.0,M10.5.0/3";

    fn local(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    fn utc(z: &mut LocalZone, s: &str) -> String {
        z.resolve_local(local(s), None).unwrap().to_rfc3339()
    }

    fn check_2025_transitions(z: &mut LocalZone) {
        // Winter, summer, winter: each line with the offset of its own date.
        assert_eq!(utc(z, "2025-01-15 12:00:00"), "2025-01-15T11:00:00+00:00");
        assert_eq!(utc(z, "2025-03-30 01:59:59"), "2025-03-30T00:59:59+00:00");
        // The skipped hour (02:00-03:00 on 30 March) is read with the offset before the jump.
        assert_eq!(utc(z, "2025-03-30 02:30:00"), "2025-03-30T01:30:00+00:00");
        assert_eq!(utc(z, "2025-03-30 03:00:00"), "2025-03-30T01:00:00+00:00");
        assert_eq!(utc(z, "2025-07-01 12:00:00"), "2025-07-01T10:00:00+00:00");
        // The repeated hour (02:00-03:00 on 26 October), read in log order: first pass summer
        // time, second pass winter time, monotonic throughout.
        let fold = [
            ("2025-10-26 01:59:00", "2025-10-25T23:59:00+00:00"),
            ("2025-10-26 02:10:00", "2025-10-26T00:10:00+00:00"),
            ("2025-10-26 02:59:59", "2025-10-26T00:59:59+00:00"),
            ("2025-10-26 02:00:01", "2025-10-26T01:00:01+00:00"),
            ("2025-10-26 02:30:00", "2025-10-26T01:30:00+00:00"),
            ("2025-10-26 03:00:00", "2025-10-26T02:00:00+00:00"),
        ];
        for (l, want) in fold {
            assert_eq!(utc(z, l), want, "{l}");
        }
        assert_eq!(utc(z, "2025-12-01 08:00:00"), "2025-12-01T07:00:00+00:00");
    }

    #[test]
    fn berlin_rule_across_both_2025_transitions() {
        check_2025_transitions(&mut LocalZone::posix(BERLIN).unwrap());
    }

    /// The same with the system tz database's Europe/Berlin (tzdata is part of every Debian
    /// install; this is what a host with TZ=Europe/Berlin uses).
    #[test]
    fn system_database_berlin_across_both_2025_transitions() {
        let mut z = LocalZone::named("Europe/Berlin").expect("tzdata has Europe/Berlin");
        assert_eq!(z.name(), Some("Europe/Berlin"));
        check_2025_transitions(&mut z);
    }

    #[test]
    fn repeated_hour_without_history_is_the_earlier_and_live_uses_the_clock() {
        let mut z = LocalZone::posix(BERLIN).unwrap();
        assert_eq!(
            utc(&mut z, "2025-10-26 02:30:00"),
            "2025-10-26T00:30:00+00:00"
        );
        let mut z = LocalZone::posix(BERLIN).unwrap();
        let now = "2025-10-26T01:31:00Z".parse().unwrap();
        let t = z
            .resolve_local(local("2025-10-26 02:30:00"), Some(now))
            .unwrap();
        assert_eq!(t.to_rfc3339(), "2025-10-26T01:30:00+00:00");
    }

    #[test]
    fn offset_at_follows_the_rules() {
        let mut z = LocalZone::posix(BERLIN).unwrap();
        let at = |z: &mut LocalZone, s: &str| z.offset_at(s.parse().unwrap()).local_minus_utc();
        assert_eq!(at(&mut z, "2025-01-01T00:00:00Z"), 3600);
        assert_eq!(at(&mut z, "2025-07-01T00:00:00Z"), 7200);
        assert_eq!(at(&mut z, "2025-10-26T00:59:59Z"), 7200);
        assert_eq!(at(&mut z, "2025-10-26T01:00:00Z"), 3600);
        let mut fixed = LocalZone::fixed(FixedOffset::east_opt(-5 * 3600).unwrap());
        assert_eq!(at(&mut fixed, "2025-07-01T00:00:00Z"), -5 * 3600);
        assert_eq!(
            utc(&mut fixed, "2025-07-01 00:00:00"),
            "2025-07-01T05:00:00+00:00"
        );
    }
}
