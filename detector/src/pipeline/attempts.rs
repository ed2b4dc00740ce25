//! One login attempt reported twice, by an in-band policy report (Dovecot's auth policy) and by
//! the log (Dovecot's auth and login lines, Postfix's SASL warning), counts once.
//!
//! Key: the client address and the mailbox (a log line without a user name matches any mailbox
//! of that address), within [`WINDOW`] of event time. Each report leaves a mark, whatever it
//! counted (a repeated password counts 0, and so must its log lines); a log failure that finds
//! a mark is reduced by it. A log failure that comes first is counted and leaves a mark of its
//! own, which a later report of the same attempt consumes (the report then counts 0). Reports
//! usually come first: the log is read after the fact. The same holds for successful logins,
//! whose second report is dropped.
use std::collections::VecDeque;
use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};

use crate::engine::{canonical, mailbox_key};
use crate::event::{Event, EventKind};
use crate::parse::dedup::BoundedMap;

/// How far apart (event time) the two reports of one attempt may be.
pub const WINDOW: Duration = Duration::seconds(10);
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

/// The de-duplication table (see the module docs).
#[derive(Debug)]
pub struct AttemptDedup {
    marks: BoundedMap<IpAddr, VecDeque<Mark>>,
}

impl Default for AttemptDedup {
    fn default() -> Self {
        AttemptDedup {
            marks: BoundedMap::new(CAP, WINDOW * 6),
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
}

fn relevant(ev: &Event) -> bool {
    ev.is_auth_failure() || ev.kind == EventKind::AuthSuccess
}

impl AttemptDedup {
    /// An event from a policy report.
    pub fn policy(&mut self, ev: &mut Event) -> Keep {
        self.see(ev, From::Policy)
    }

    /// An event from a log line.
    pub fn log(&mut self, ev: &mut Event) -> Keep {
        self.see(ev, From::Log)
    }

    fn see(&mut self, ev: &mut Event, from: From) -> Keep {
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

    const F: EventKind = EventKind::AuthFailure;
    const D: Service = Service::Dovecot;

    #[test]
    fn a_reported_failure_zeroes_its_log_lines() {
        let mut d = AttemptDedup::default();
        let mut p = ev(D, F, Some("a@example.test"), 0, 1);
        assert_eq!(d.policy(&mut p), Keep::Yes);
        assert_eq!(p.failures, 1);
        let mut auth_line = ev(D, F, Some("a@example.test"), 1, 1);
        d.log(&mut auth_line);
        assert_eq!(auth_line.failures, 0);
        // The parser already gave the login line of the same attempt 0.
        let mut login_line = ev(D, F, Some("a@example.test"), 1, 0);
        d.log(&mut login_line);
        assert_eq!(login_line.failures, 0);
        // A second attempt that only the log saw (no report) still counts.
        let mut unreported = ev(D, F, Some("a@example.test"), 2, 1);
        d.log(&mut unreported);
        assert_eq!(unreported.failures, 1);
    }

    #[test]
    fn a_repeated_password_report_still_zeroes_the_log() {
        let mut d = AttemptDedup::default();
        let mut p = ev(D, F, Some("a"), 0, 0);
        d.policy(&mut p);
        let mut postfix = ev(Service::Postfix, F, Some("a"), 0, 1);
        d.log(&mut postfix);
        assert_eq!(postfix.failures, 0);
    }

    #[test]
    fn a_log_first_attempt_makes_the_report_count_zero() {
        let mut d = AttemptDedup::default();
        let mut l = ev(D, F, Some("a"), 0, 1);
        d.log(&mut l);
        assert_eq!(l.failures, 1);
        let mut p = ev(D, F, Some("a"), 1, 1);
        d.policy(&mut p);
        assert_eq!(p.failures, 0);
    }

    #[test]
    fn other_mailboxes_addresses_and_old_marks_do_not_match() {
        let mut d = AttemptDedup::default();
        d.policy(&mut ev(D, F, Some("a"), 0, 1));
        let mut other_user = ev(D, F, Some("b"), 0, 1);
        d.log(&mut other_user);
        assert_eq!(other_user.failures, 1);
        let mut late = ev(D, F, Some("a"), 30, 1);
        d.log(&mut late);
        assert_eq!(late.failures, 1);
        let mut elsewhere = ev(D, F, Some("a"), 0, 1);
        elsewhere.ip = "198.18.4.5".parse().unwrap();
        d.policy(&mut ev(D, F, Some("a"), 40, 1));
        d.log(&mut elsewhere);
        assert_eq!(elsewhere.failures, 1);
    }

    #[test]
    fn a_success_reported_twice_is_fed_once() {
        let mut d = AttemptDedup::default();
        let s = EventKind::AuthSuccess;
        assert_eq!(d.policy(&mut ev(D, s, Some("a"), 0, 0)), Keep::Yes);
        assert_eq!(d.log(&mut ev(D, s, Some("a"), 1, 0)), Keep::Duplicate);
        assert_eq!(d.log(&mut ev(D, s, Some("a"), 2, 0)), Keep::Yes);
    }
}
