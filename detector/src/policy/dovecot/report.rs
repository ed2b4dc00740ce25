//! `report` requests as events: the same meaning as the log's login events, with one fact the
//! log lacks. The password hash tells *the same wrong password again* (a phone with a stale
//! password, benign) from *another password* (guessing): a failure counts once per distinct
//! password per address and mailbox within the engine's horizon (weakforced's approach).
//!
//! Nothing of the password is kept beyond what Dovecot sends (a hash truncated to
//! `auth_policy_hash_truncate` bits and salted with `auth_policy_hash_nonce`), and not even
//! that: only a 64-bit keyed hash of it (a per-process random key), in a bounded table.
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::protocol::Request;
use crate::engine::mailbox_key;
use crate::event::{Event, EventKind, Protocol, Service};
use crate::parse::dedup::BoundedMap;

/// Distinct (address, mailbox, password) triples remembered.
const CAP: usize = 200_000;

/// Turns reports into events, remembering which passwords each address already tried.
#[derive(Debug)]
pub struct Reports {
    tried: BoundedMap<(IpAddr, Box<str>, u64), ()>,
    keyed: RandomState,
}

impl Reports {
    /// Remembers tried passwords for `horizon` after their last use.
    pub fn new(horizon: Duration) -> Reports {
        let max_age = chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::hours(24));
        Reports {
            tried: BoundedMap::new(CAP, max_age),
            keyed: RandomState::new(),
        }
    }

    /// The event a report stands for, stamped `time` (when it arrived), or `None` for reports
    /// that say nothing about the client: no address, an internal failure, an expired or
    /// disabled account (the right password), or a master-user login.
    pub fn event(&mut self, req: &Request, time: DateTime<Utc>) -> Option<Event> {
        let ip = req.remote_ip()?;
        let user = req.user();
        let kind = if req.success == Some(true) {
            EventKind::AuthSuccess
        } else {
            match req.fail_type.as_deref().unwrap_or("") {
                // 2.3 sends no fail_type; 2.4 only when configured. "policy": we refused it;
                // it was still an attempt.
                "" | "credentials" | "policy" => EventKind::AuthFailure,
                "account" => EventKind::AuthUnknownUser,
                _ => return None,
            }
        };
        let failures = match kind {
            EventKind::AuthSuccess => 0,
            _ => self.count(ip, user.as_deref(), req.pwhash.as_deref(), time),
        };
        Some(Event {
            time,
            service: Service::Dovecot,
            kind,
            ip,
            user,
            recipient: None,
            protocol: req.protocol.as_deref().and_then(protocol),
            line: 0,
            // Like Dovecot's own auth lines: SMTP AUTH for Postfix has no session, which is
            // what pairs it with Postfix's SASL warning in the engine.
            session: req.session_id.clone().filter(|s| !s.is_empty()),
            failures,
            smtp: None,
            peer: None,
        })
    }

    /// 1 for a password this address has not tried on this mailbox within the horizon, 0 for
    /// a repeat. Without a hash every failure counts.
    fn count(
        &mut self,
        ip: IpAddr,
        user: Option<&str>,
        pwhash: Option<&str>,
        now: DateTime<Utc>,
    ) -> u32 {
        let Some(pwhash) = pwhash.filter(|h| !h.is_empty()) else {
            return 1;
        };
        let key = (
            ip,
            mailbox_key(user.unwrap_or("")),
            self.keyed.hash_one(pwhash),
        );
        let repeat = self.tried.get_mut(&key, now).is_some();
        if !repeat {
            self.tried.insert(key, (), now);
        }
        u32::from(!repeat)
    }
}

/// Dovecot's service names (`%s` / `%{protocol}`).
fn protocol(name: &str) -> Option<Protocol> {
    Some(match name {
        "imap" => Protocol::Imap,
        "pop3" => Protocol::Pop3,
        // Postfix's SASL requests name the service smtp, whatever the port.
        "smtp" => Protocol::Smtp,
        "submission" => Protocol::Submission,
        "sieve" | "managesieve" => Protocol::Managesieve,
        "lmtp" => Protocol::Lmtp,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn report(pwhash: &str, success: bool) -> Request {
        Request {
            login: Some("Phone@Example.Test".into()),
            pwhash: Some(pwhash.into()),
            remote: Some("198.18.3.3".into()),
            protocol: Some("imap".into()),
            session_id: Some("s1".into()),
            success: Some(success),
            policy_reject: Some(false),
            ..Request::default()
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap() + chrono::Duration::seconds(s)
    }

    #[test]
    fn the_same_wrong_password_counts_once_and_another_counts_again() {
        let mut r = Reports::new(Duration::from_secs(86400));
        let e = r.event(&report("0a1", false), at(0)).unwrap();
        assert_eq!(e.kind, EventKind::AuthFailure);
        assert_eq!(e.failures, 1);
        assert_eq!(e.user.as_deref(), Some("phone@example.test"));
        assert_eq!(e.protocol, Some(Protocol::Imap));
        assert_eq!(e.session.as_deref(), Some("s1"));
        for s in 1..60 {
            assert_eq!(
                r.event(&report("0a1", false), at(s * 60)).unwrap().failures,
                0
            );
        }
        assert_eq!(
            r.event(&report("0a2", false), at(3600)).unwrap().failures,
            1
        );
        // Another address with the same hash is another device.
        let mut other = report("0a1", false);
        other.remote = Some("198.18.3.4".into());
        assert_eq!(r.event(&other, at(3600)).unwrap().failures, 1);
    }

    #[test]
    fn outcomes_map_to_event_kinds() {
        let mut r = Reports::new(Duration::from_secs(86400));
        let ok = r.event(&report("0a1", true), at(0)).unwrap();
        assert_eq!((ok.kind, ok.failures), (EventKind::AuthSuccess, 0));
        let mut unknown = report("0b1", false);
        unknown.fail_type = Some("account".into());
        assert_eq!(
            r.event(&unknown, at(0)).unwrap().kind,
            EventKind::AuthUnknownUser
        );
        for benign in ["internal", "expired", "disabled"] {
            let mut x = report("0c1", false);
            x.fail_type = Some(benign.into());
            assert_eq!(r.event(&x, at(0)), None, "{benign}");
        }
        let mut no_ip = report("0d1", false);
        no_ip.remote = None;
        assert_eq!(r.event(&no_ip, at(0)), None);
        let mut no_hash = report("", false);
        no_hash.session_id = Some(String::new());
        let e = r.event(&no_hash, at(0)).unwrap();
        assert_eq!((e.failures, e.session), (1, None));
        assert_eq!(r.event(&no_hash, at(1)).unwrap().failures, 1);
    }
}
