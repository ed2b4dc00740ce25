//! When a policy service and the logs both report the same fact, the engine gets it once.
//!
//! Postfix's policy service reports each accepted RCPT and each SMTP session's end; with the
//! `INFO` access-map recipe the log reports the same RCPTs, and its `disconnect` line always
//! reports the end. Whichever report of a pair comes first goes to the engine; the other
//! consumes it and is dropped. Pairs match on what both sides know:
//!
//! - an RCPT by client address and recipient, within [`RCPT_WINDOW_S`] of each other (both
//!   are written the moment Postfix accepts the recipient; the log only lags by its reader);
//! - a session end by client address and session key (`pid:N`, the smtpd process), within
//!   [`END_WINDOW_S`]: the policy service learns of the end only when the process serves its
//!   next client or closes the policy connection.
//!
//! Unmatched reports are kept in [`BoundedMap`]s (bounded in size and age, as the parser's
//! cross-line state), counted per origin so that n reports on one side pair with n on the
//! other.
use std::net::IpAddr;

use chrono::Duration;
use ipnet::IpNet;

use crate::event::{Event, EventKind, Service};
use crate::parse::dedup::BoundedMap;

/// Two reports of one RCPT are at most this far apart (event time).
pub const RCPT_WINDOW_S: i64 = 120;
/// Two reports of one session end are at most this far apart (event time).
pub const END_WINDOW_S: i64 = 1800;
const CAP: usize = 65_536;
/// Unmatched reports of one key counted at most (one SMTP session has few recipients).
const MAX_COUNT: u32 = 1000;

/// Where an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A log line (file, journal, stdin, replay).
    Log,
    /// An in-band policy request (the Postfix policy service).
    Policy,
}

#[derive(Debug)]
struct Unmatched {
    origin: Origin,
    count: u32,
    time: i64,
}

#[derive(Debug)]
pub struct CrossSource {
    rcpts: BoundedMap<(IpAddr, Box<str>), Unmatched>,
    ends: BoundedMap<(IpAddr, Box<str>), Unmatched>,
}

impl Default for CrossSource {
    fn default() -> Self {
        CrossSource {
            rcpts: BoundedMap::new(CAP, Duration::seconds(RCPT_WINDOW_S * 4)),
            ends: BoundedMap::new(CAP, Duration::seconds(END_WINDOW_S * 2)),
        }
    }
}

impl CrossSource {
    /// False when `ev` repeats a report the other origin already gave (drop it).
    pub fn admit(&mut self, ev: &Event, origin: Origin) -> bool {
        if ev.service != Service::Postfix {
            return true;
        }
        let ip = crate::enforce::canonical(IpNet::from(ev.ip)).addr();
        match ev.kind {
            EventKind::Rcpt => match &ev.recipient {
                Some(r) => pair(
                    &mut self.rcpts,
                    (ip, r.as_str().into()),
                    origin,
                    ev,
                    RCPT_WINDOW_S,
                ),
                None => true,
            },
            EventKind::TransactionAborted | EventKind::Disconnect => {
                let names_rcpts = ev.smtp.is_some_and(|c| c.rcpt_ok >= 1);
                match &ev.session {
                    Some(s) if names_rcpts => pair(
                        &mut self.ends,
                        (ip, s.as_str().into()),
                        origin,
                        ev,
                        END_WINDOW_S,
                    ),
                    _ => true,
                }
            }
            _ => true,
        }
    }

    /// Unmatched reports held.
    pub fn len(&self) -> usize {
        self.rcpts.len() + self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn pair(
    map: &mut BoundedMap<(IpAddr, Box<str>), Unmatched>,
    key: (IpAddr, Box<str>),
    origin: Origin,
    ev: &Event,
    window: i64,
) -> bool {
    let t = ev.time.timestamp();
    match map.get_mut(&key, ev.time) {
        Some(u) if u.origin != origin && (t - u.time).abs() <= window => {
            u.count -= 1;
            if u.count == 0 {
                map.remove(&key);
            }
            false
        }
        Some(u) if u.origin == origin => {
            u.count = (u.count + 1).min(MAX_COUNT);
            u.time = t;
            true
        }
        _ => {
            map.insert(
                key,
                Unmatched {
                    origin,
                    count: 1,
                    time: t,
                },
                ev.time,
            );
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::event::{Protocol, SmtpCounters};

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn rcpt(at: i64, to: &str) -> Event {
        Event {
            time: t(at),
            service: Service::Postfix,
            kind: EventKind::Rcpt,
            ip: "198.18.0.10".parse().unwrap(),
            user: None,
            recipient: Some(to.into()),
            protocol: Some(Protocol::Smtp),
            line: 0,
            session: None,
            failures: 0,
            smtp: None,
            peer: None,
        }
    }

    fn end(at: i64, pid: &str) -> Event {
        Event {
            kind: EventKind::TransactionAborted,
            recipient: None,
            session: Some(pid.into()),
            smtp: Some(SmtpCounters {
                rcpt_ok: 1,
                ..SmtpCounters::default()
            }),
            ..rcpt(at, "")
        }
    }

    #[test]
    fn the_same_rcpt_from_both_origins_is_admitted_once_in_either_order() {
        let mut c = CrossSource::default();
        assert!(c.admit(&rcpt(0, "a@x"), Origin::Policy));
        assert!(!c.admit(&rcpt(1, "a@x"), Origin::Log));
        assert!(c.is_empty());
        assert!(c.admit(&rcpt(2, "a@x"), Origin::Log));
        assert!(!c.admit(&rcpt(2, "a@x"), Origin::Policy));
        // Two RCPTs on each side pair one to one; another recipient is another fact.
        assert!(c.admit(&rcpt(3, "b@x"), Origin::Policy));
        assert!(c.admit(&rcpt(3, "b@x"), Origin::Policy));
        assert!(c.admit(&rcpt(3, "c@x"), Origin::Log));
        assert!(!c.admit(&rcpt(4, "b@x"), Origin::Log));
        assert!(!c.admit(&rcpt(4, "b@x"), Origin::Log));
        assert!(c.admit(&rcpt(4, "b@x"), Origin::Log));
    }

    #[test]
    fn reports_too_far_apart_are_two_facts() {
        let mut c = CrossSource::default();
        assert!(c.admit(&rcpt(0, "a@x"), Origin::Policy));
        assert!(c.admit(&rcpt(RCPT_WINDOW_S + 1, "a@x"), Origin::Log));
    }

    #[test]
    fn a_session_end_from_both_origins_is_admitted_once() {
        let mut c = CrossSource::default();
        assert!(c.admit(&end(0, "pid:7"), Origin::Log));
        // The policy service learns of it minutes later, at the process's next client.
        assert!(!c.admit(&end(0, "pid:7"), Origin::Policy));
        assert!(c.admit(&end(400, "pid:7"), Origin::Policy));
        assert!(c.admit(&end(400, "pid:8"), Origin::Log));
        assert!(!c.admit(&end(401, "pid:7"), Origin::Log));
        // Ends without recipients and other kinds pass untouched.
        let mut plain = end(500, "pid:9");
        plain.smtp = Some(SmtpCounters::default());
        assert!(c.admit(&plain, Origin::Log));
        assert!(c.admit(&plain, Origin::Policy));
        let mut other = rcpt(500, "a@x");
        other.kind = EventKind::AuthFailure;
        assert!(c.admit(&other, Origin::Log));
        assert!(c.admit(&other, Origin::Policy));
    }
}
