//! One login attempt reported twice, by an in-band policy report (Dovecot's auth policy) and by
//! the log (Dovecot's auth and login lines, Postfix's SASL warning), counts once.
//!
//! Key: the client address and the mailbox (a log line without a user name matches any mailbox
//! of that address), within [`WINDOW`] of event time. Each report leaves a mark, whatever it
//! counted (a repeated password counts 0, and so must its log lines); a log failure that finds
//! a mark is reduced by it.
//!
//! Dovecot logs `Password mismatch` during the passdb lookup and sends the report just after,
//! so a live log line can win the race. A recent log failure that finds no mark is therefore
//! held for [`HOLD`] (wall time): a report arriving meanwhile takes its place (the report
//! knows whether the password was new), else it is fed as it is and leaves a mark of its own,
//! which a later report of the same attempt consumes (the report then counts 0). Old lines (a
//! backlog after a restart) are never held. The same holds for successful logins, whose second
//! report is dropped.
use std::collections::VecDeque;
use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};

use super::RawLine;
use crate::engine::{canonical, mailbox_key};
use crate::event::{Event, EventKind};
use crate::parse::dedup::BoundedMap;

/// How far apart (event time) the two reports of one attempt may be.
pub const WINDOW: Duration = Duration::seconds(10);
/// How long a live log failure waits for its report.
pub const HOLD: Duration = Duration::seconds(2);
/// Log failures held at most; past that the oldest is released early.
const MAX_HELD: usize = 4096;
/// Marks kept per address (a flood from one address only ages its own marks out).
const MAX_PER_IP: usize = 32;
const CAP: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum From {
    Policy,
    Log,
}

#[derive(Debug)]
struct Mark {
    time: DateTime<Utc>,
    mailbox: Box<str>,
    success: bool,
    from: From,
    /// Attempts this mark still stands for.
    left: u32,
}

/// A log failure waiting for its report.
#[derive(Debug)]
pub struct Held {
    pub deadline: DateTime<Utc>,
    pub event: Event,
    pub raw: Option<RawLine>,
}

/// The de-duplication table (see the module docs).
#[derive(Debug)]
pub struct AttemptDedup {
    marks: BoundedMap<IpAddr, VecDeque<Mark>>,
    held: VecDeque<Held>,
}

impl Default for AttemptDedup {
    fn default() -> Self {
        AttemptDedup {
            marks: BoundedMap::new(CAP, WINDOW * 6),
            held: VecDeque::new(),
        }
    }
}

/// What to do with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Feed it (its `failures` may have been reduced).
    Yes,
    /// A second report of a success already fed: drop it.
    Duplicate,
    /// A live log failure with no report yet: hand it to [`AttemptDedup::hold`].
    Hold,
}

fn relevant(ev: &Event) -> bool {
    ev.is_auth_failure() || ev.kind == EventKind::AuthSuccess
}

impl AttemptDedup {
    /// An event from a policy report. A held log failure of the same attempt comes back with
    /// its count cleared: feed it after the report (as evidence; the report counted).
    pub fn policy(&mut self, ev: &mut Event) -> (Keep, Option<Held>) {
        if ev.is_auth_failure() {
            let ip = canonical(ev.ip);
            let mailbox = ev.user.as_deref().map(mailbox_key);
            let found = self.held.iter().position(|h| {
                canonical(h.event.ip) == ip
                    && (h.event.time - ev.time).abs() <= WINDOW
                    && h.event
                        .user
                        .as_deref()
                        .map(mailbox_key)
                        .zip(mailbox.as_deref())
                        .is_none_or(|(a, b)| *a == *b)
            });
            if let Some(mut held) = found.and_then(|i| self.held.remove(i)) {
                held.event.failures = 0;
                return (Keep::Yes, Some(held));
            }
        }
        (self.see(ev, From::Policy, None), None)
    }

    /// An event from a log line; `wall` is the wall clock (only recent lines are held).
    pub fn log(&mut self, ev: &mut Event, wall: DateTime<Utc>) -> Keep {
        self.see(ev, From::Log, Some(wall))
    }

    /// Keeps a log failure ([`Keep::Hold`]) until its report comes or `HOLD` has passed. When
    /// too many wait, the oldest comes back at once.
    pub fn hold(
        &mut self,
        event: Event,
        raw: Option<RawLine>,
        wall: DateTime<Utc>,
    ) -> Option<Held> {
        self.held.push_back(Held {
            deadline: wall + HOLD,
            event,
            raw,
        });
        if self.held.len() > MAX_HELD {
            return self.held.pop_front().map(|h| self.released(h));
        }
        None
    }

    /// Held log failures whose report did not come by `wall`, oldest first: feed them.
    pub fn due(&mut self, wall: DateTime<Utc>) -> Vec<Held> {
        let mut out = Vec::new();
        while self.held.front().is_some_and(|h| h.deadline <= wall) {
            if let Some(h) = self.held.pop_front() {
                out.push(self.released(h));
            }
        }
        out
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A held failure goes to the engine as the log counted it; a late report finds its mark.
    fn released(&mut self, h: Held) -> Held {
        let mut ev = h.event.clone();
        self.see(&mut ev, From::Log, None);
        Held { event: ev, ..h }
    }

    fn see(&mut self, ev: &mut Event, from: From, wall: Option<DateTime<Utc>>) -> Keep {
        if !relevant(ev) {
            return Keep::Yes;
        }
        let success = ev.kind == EventKind::AuthSuccess;
        // Log lines that only describe an attempt already counted by the parser carry nothing
        // to match (a report always does: it is the attempt).
        if from == From::Log && !success && ev.failures == 0 {
            return Keep::Yes;
        }
        let ip = canonical(ev.ip);
        let mailbox = ev.user.as_deref().map(mailbox_key);
        let t = ev.time;
        if self.marks.get_mut(&ip, t).is_none() {
            self.marks.insert(ip, VecDeque::new(), t);
        }
        let Some(marks) = self.marks.get_mut(&ip, t) else {
            return Keep::Yes;
        };
        marks.retain(|m| (t - m.time).abs() <= WINDOW && m.left > 0);
        let mut want = if success { 1 } else { ev.failures.max(1) };
        let mut matched = 0;
        for m in marks.iter_mut() {
            if want == 0 {
                break;
            }
            if m.from != from
                && m.success == success
                && mailbox.as_deref().is_none_or(|u| *u == *m.mailbox)
            {
                let n = m.left.min(want);
                m.left -= n;
                want -= n;
                matched += n;
            }
        }
        if success {
            if matched > 0 {
                return Keep::Duplicate;
            }
        } else if from == From::Policy {
            if matched > 0 {
                ev.failures = 0;
            }
        } else {
            ev.failures -= matched.min(ev.failures);
            if matched == 0 && wall.is_some_and(|w| (w - t).abs() <= WINDOW) {
                return Keep::Hold;
            }
        }
        // What is left unmatched waits for the other side.
        if want > 0 {
            if marks.len() >= MAX_PER_IP {
                marks.pop_front();
            }
            marks.push_back(Mark {
                time: t,
                mailbox: mailbox.unwrap_or_default(),
                success,
                from,
                left: want,
            });
        }
        Keep::Yes
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::event::{Protocol, Service};

    fn ev(service: Service, kind: EventKind, user: Option<&str>, s: i64, failures: u32) -> Event {
        Event {
            time: Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap() + Duration::seconds(s),
            service,
            kind,
            ip: "198.18.4.4".parse().unwrap(),
            user: user.map(Into::into),
            recipient: None,
            protocol: Some(Protocol::Imap),
            line: 0,
            session: None,
            failures,
            smtp: None,
            peer: None,
        }
    }

    /// A wall clock long after the events: nothing is held (a backlog).
    fn later() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 2, 12, 0, 0).unwrap()
    }

    fn live(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap() + Duration::seconds(s)
    }

    const F: EventKind = EventKind::AuthFailure;
    const D: Service = Service::Dovecot;

    #[test]
    fn a_reported_failure_zeroes_its_log_lines() {
        let mut d = AttemptDedup::default();
        let mut p = ev(D, F, Some("a@example.test"), 0, 1);
        assert_eq!(d.policy(&mut p).0, Keep::Yes);
        assert_eq!(p.failures, 1);
        let mut auth_line = ev(D, F, Some("a@example.test"), 1, 1);
        d.log(&mut auth_line, later());
        assert_eq!(auth_line.failures, 0);
        // The parser already gave the login line of the same attempt 0.
        let mut login_line = ev(D, F, Some("a@example.test"), 1, 0);
        d.log(&mut login_line, later());
        assert_eq!(login_line.failures, 0);
        // A second attempt that only the log saw (no report) still counts.
        let mut unreported = ev(D, F, Some("a@example.test"), 2, 1);
        d.log(&mut unreported, later());
        assert_eq!(unreported.failures, 1);
    }

    #[test]
    fn a_repeated_password_report_still_zeroes_the_log() {
        let mut d = AttemptDedup::default();
        let mut p = ev(D, F, Some("a"), 0, 0);
        let _ = d.policy(&mut p);
        let mut postfix = ev(Service::Postfix, F, Some("a"), 0, 1);
        d.log(&mut postfix, later());
        assert_eq!(postfix.failures, 0);
    }

    #[test]
    fn a_log_first_attempt_makes_the_report_count_zero() {
        let mut d = AttemptDedup::default();
        let mut l = ev(D, F, Some("a"), 0, 1);
        d.log(&mut l, later());
        assert_eq!(l.failures, 1);
        let mut p = ev(D, F, Some("a"), 1, 1);
        let _ = d.policy(&mut p);
        assert_eq!(p.failures, 0);
    }

    #[test]
    fn other_mailboxes_addresses_and_old_marks_do_not_match() {
        let mut d = AttemptDedup::default();
        let _ = d.policy(&mut ev(D, F, Some("a"), 0, 1));
        let mut other_user = ev(D, F, Some("b"), 0, 1);
        d.log(&mut other_user, later());
        assert_eq!(other_user.failures, 1);
        let mut late = ev(D, F, Some("a"), 30, 1);
        d.log(&mut late, later());
        assert_eq!(late.failures, 1);
        let mut elsewhere = ev(D, F, Some("a"), 0, 1);
        elsewhere.ip = "198.18.4.5".parse().unwrap();
        let _ = d.policy(&mut ev(D, F, Some("a"), 40, 1));
        d.log(&mut elsewhere, later());
        assert_eq!(elsewhere.failures, 1);
    }

    #[test]
    fn a_success_reported_twice_is_fed_once() {
        let mut d = AttemptDedup::default();
        let s = EventKind::AuthSuccess;
        assert_eq!(d.policy(&mut ev(D, s, Some("a"), 0, 0)).0, Keep::Yes);
        assert_eq!(
            d.log(&mut ev(D, s, Some("a"), 1, 0), later()),
            Keep::Duplicate
        );
        assert_eq!(d.log(&mut ev(D, s, Some("a"), 2, 0), later()), Keep::Yes);
    }

    #[test]
    fn a_live_log_failure_waits_for_its_report_which_takes_its_place() {
        let mut d = AttemptDedup::default();
        let mut l = ev(D, F, Some("a"), 0, 1);
        assert_eq!(d.log(&mut l, live(0)), Keep::Hold);
        assert!(d.hold(l, None, live(0)).is_none());
        assert!(d.due(live(1)).is_empty(), "still waiting");
        // The report of a repeated password: it counts 0, and the held line comes back with 0.
        let mut p = ev(D, F, Some("a"), 0, 0);
        let (keep, held) = d.policy(&mut p);
        assert_eq!(keep, Keep::Yes);
        assert_eq!(held.map(|h| h.event.failures), Some(0));
        assert_eq!(d.held(), 0);
    }

    #[test]
    fn a_held_failure_without_report_is_released_counted_and_marks_the_attempt() {
        let mut d = AttemptDedup::default();
        let mut l = ev(D, F, Some("a"), 0, 1);
        assert_eq!(d.log(&mut l, live(0)), Keep::Hold);
        d.hold(l, None, live(0));
        let out = d.due(live(0) + HOLD);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event.failures, 1);
        // A report that comes after all counts 0.
        let mut p = ev(D, F, Some("a"), 3, 1);
        assert!(d.policy(&mut p).1.is_none());
        assert_eq!(p.failures, 0);
    }

    #[test]
    fn too_many_held_release_the_oldest() {
        let mut d = AttemptDedup::default();
        let mut released = 0;
        for i in 0..=MAX_HELD {
            let mut l = ev(D, F, Some(&format!("u{i}")), 0, 1);
            assert_eq!(d.log(&mut l, live(0)), Keep::Hold);
            released += usize::from(d.hold(l, None, live(0)).is_some());
        }
        assert_eq!((released, d.held()), (1, MAX_HELD));
    }
}
