//! Cross-line state: failure de-duplication, Postfix connection and queue tracking.
//!
//! # De-duplication rule
//!
//! One real failed login must add exactly 1 to the sum of [`Event::failures`] however many
//! lines describe it. Every event keeps its kind (so the line is still visible as a failure);
//! only `failures` is reduced.
//!
//! 1. **Dovecot session** (`<session>` in auth lines, `session=<..>` in login lines): each
//!    auth line adds 1 and is remembered per session. The login line reporting
//!    `auth failed, N attempts` adds `N - (auth lines already counted)`, so the session counts
//!    `max(auth lines, N)` in total.
//! 2. **Postfix connection** (smtpd pid between `connect` and `disconnect`): each SASL failure
//!    warning adds 1 and is remembered; the `disconnect ... auth=ok/tried` line adds only
//!    `tried - ok` minus the warnings already counted. `SASL ... Connection lost to
//!    authentication server` is remembered too (it also shows in `auth=0/1`) but adds 0.
//! 3. **Dovecot auth lines without session** (`passwd-file(user,ip): ...`, what Dovecot logs
//!    for Postfix SASL and what old versions log): they pair with a Postfix SASL failure or a
//!    Dovecot login line from the same IP and user (a missing user on either side matches any)
//!    within [`PAIR_WINDOW`] in log time, in either order. The first line of a pair adds 1,
//!    the second 0.
//!
//! # Bounds
//!
//! Attackers control the volume, so every table is a [`BoundedMap`]: at most `2 * cap`
//! entries, and an entry not touched for `max_age` (log time) is gone after at most that
//! long. Each IP keeps at most [`MAX_PENDING_PER_IP`] unpaired no-session lines.
//!
//! [`Event::failures`]: crate::event::Event::failures
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};

use crate::event::Protocol;

/// How far apart (log time) a Dovecot no-session auth line and the Postfix line for the same
/// attempt may be.
pub const PAIR_WINDOW: Duration = Duration::seconds(10);
/// Unpaired no-session lines kept per IP.
pub const MAX_PENDING_PER_IP: usize = 8;
const CAP: usize = 65_536;

/// A map bounded in size and age with two generations: inserts go to `current`; when it is
/// half full or half `max_age` old it becomes `previous` and the old `previous` is dropped.
/// O(1) per operation; no scan ever.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
    cap: usize,
    max_age: Duration,
    generation_start: Option<DateTime<Utc>>,
}

impl<K: Eq + Hash + Clone, V> BoundedMap<K, V> {
    pub fn new(cap: usize, max_age: Duration) -> Self {
        BoundedMap {
            current: HashMap::new(),
            previous: HashMap::new(),
            cap: cap.max(2),
            max_age,
            generation_start: None,
        }
    }

    fn rotate_if_due(&mut self, now: DateTime<Utc>) {
        let start = *self.generation_start.get_or_insert(now);
        if self.current.len() >= self.cap / 2
            || now - start > self.max_age / 2
            || start
                .checked_sub_signed(self.max_age)
                .is_some_and(|oldest| now < oldest)
        {
            self.previous = std::mem::take(&mut self.current);
            self.generation_start = Some(now);
        }
    }

    pub fn get_mut(&mut self, k: &K, now: DateTime<Utc>) -> Option<&mut V> {
        self.rotate_if_due(now);
        if !self.current.contains_key(k) {
            let v = self.previous.remove(k)?;
            self.current.insert(k.clone(), v);
        }
        self.current.get_mut(k)
    }

    pub fn insert(&mut self, k: K, v: V, now: DateTime<Utc>) {
        self.rotate_if_due(now);
        self.previous.remove(&k);
        self.current.insert(k, v);
    }

    pub fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.current.remove(k).or_else(|| self.previous.remove(k))
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Postfix,
    DovecotAuth,
}

#[derive(Debug)]
struct Pending {
    side: Side,
    user: Option<String>,
    time: DateTime<Utc>,
}

#[derive(Debug)]
struct Conn {
    ip: IpAddr,
    sasl_seen: u32,
}

/// All cross-line state of one [`super::LineParser`].
#[derive(Debug)]
pub struct State {
    sessions: BoundedMap<String, u32>,
    pending: BoundedMap<IpAddr, Vec<Pending>>,
    conns: BoundedMap<u32, Conn>,
    queues: BoundedMap<String, (IpAddr, Option<Protocol>)>,
}

impl Default for State {
    fn default() -> Self {
        State {
            // Login processes wait at most a few minutes for a client.
            sessions: BoundedMap::new(CAP, Duration::minutes(30)),
            pending: BoundedMap::new(CAP, PAIR_WINDOW * 6),
            // smtpd sessions can idle for up to 2x300 s per command; an hour covers them.
            conns: BoundedMap::new(CAP, Duration::hours(1)),
            queues: BoundedMap::new(CAP, Duration::hours(1)),
        }
    }
}

fn users_match(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

impl State {
    /// Rule 1, auth side: an auth line with a session.
    pub fn dovecot_auth_session(&mut self, session: &str, now: DateTime<Utc>) -> u32 {
        match self.sessions.get_mut(&session.to_owned(), now) {
            Some(n) => *n = n.saturating_add(1),
            None => self.sessions.insert(session.to_owned(), 1, now),
        }
        1
    }

    /// Rule 1 (and 3), login side: `attempts` reported by the login line.
    pub fn dovecot_login(
        &mut self,
        session: Option<&str>,
        ip: IpAddr,
        user: &Option<String>,
        attempts: u32,
        now: DateTime<Utc>,
    ) -> u32 {
        if let Some(s) = session
            && let Some(counted) = self.sessions.remove(&s.to_owned())
        {
            return attempts.saturating_sub(counted);
        }
        let mut left = attempts;
        while left > 0 && self.take_pending(ip, user, Side::DovecotAuth, now) {
            left -= 1;
        }
        left
    }

    /// Rule 3: a Dovecot auth line without a session.
    pub fn dovecot_auth_no_session(
        &mut self,
        ip: IpAddr,
        user: &Option<String>,
        now: DateTime<Utc>,
    ) -> u32 {
        if self.take_pending(ip, user, Side::Postfix, now) {
            return 0;
        }
        self.add_pending(ip, Side::DovecotAuth, user.clone(), now);
        1
    }

    /// Rule 2 + 3: a Postfix SASL warning on connection `pid`; `attempts` is 1 for a client
    /// failure, 0 for a server-side one.
    pub fn postfix_sasl(
        &mut self,
        pid: Option<u32>,
        ip: IpAddr,
        user: &Option<String>,
        attempts: u32,
        now: DateTime<Utc>,
    ) -> u32 {
        if let Some(pid) = pid {
            match self.conns.get_mut(&pid, now) {
                Some(c) if c.ip == ip => c.sasl_seen = c.sasl_seen.saturating_add(1),
                _ => self.conns.insert(pid, Conn { ip, sasl_seen: 1 }, now),
            }
        }
        if attempts == 0 {
            return 0;
        }
        if self.take_pending(ip, user, Side::DovecotAuth, now) {
            return 0;
        }
        self.add_pending(ip, Side::Postfix, user.clone(), now);
        1
    }

    pub fn postfix_connect(&mut self, pid: Option<u32>, ip: IpAddr, now: DateTime<Utc>) {
        if let Some(pid) = pid {
            self.conns.insert(pid, Conn { ip, sasl_seen: 0 }, now);
        }
    }

    /// Rule 2: `failed` = `tried - ok` of the disconnect's `auth=` counter.
    pub fn postfix_disconnect(
        &mut self,
        pid: Option<u32>,
        ip: IpAddr,
        failed: u32,
        now: DateTime<Utc>,
    ) -> u32 {
        let seen = match pid.and_then(|p| self.conns.remove(&p)) {
            Some(c) if c.ip == ip => c.sasl_seen,
            _ => 0,
        };
        let mut left = failed.saturating_sub(seen);
        // Failures Postfix did not warn about but Dovecot logged without a session.
        while left > 0 && self.take_pending(ip, &None, Side::DovecotAuth, now) {
            left -= 1;
        }
        left
    }

    pub fn queue_client(
        &mut self,
        qid: String,
        ip: IpAddr,
        protocol: Option<Protocol>,
        now: DateTime<Utc>,
    ) {
        self.queues.insert(qid, (ip, protocol), now);
    }

    pub fn queue_take(&mut self, qid: &str) -> Option<(IpAddr, Option<Protocol>)> {
        self.queues.remove(qid)
    }

    fn add_pending(&mut self, ip: IpAddr, side: Side, user: Option<String>, now: DateTime<Utc>) {
        let p = Pending {
            side,
            user,
            time: now,
        };
        match self.pending.get_mut(&ip, now) {
            Some(list) => {
                list.retain(|x| now - x.time <= PAIR_WINDOW);
                if list.len() >= MAX_PENDING_PER_IP {
                    list.remove(0);
                }
                list.push(p);
            }
            None => self.pending.insert(ip, vec![p], now),
        }
    }

    /// Removes one unpaired line of `side` for `ip`/`user` within the window.
    fn take_pending(
        &mut self,
        ip: IpAddr,
        user: &Option<String>,
        side: Side,
        now: DateTime<Utc>,
    ) -> bool {
        let Some(list) = self.pending.get_mut(&ip, now) else {
            return false;
        };
        let found = list.iter().position(|p| {
            p.side == side && (now - p.time).abs() <= PAIR_WINDOW && users_match(&p.user, user)
        });
        match found {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        }
    }

    /// Entries held, for tests and status.
    pub fn len(&self) -> usize {
        self.sessions.len() + self.pending.len() + self.conns.len() + self.queues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn bounded_map_stays_bounded_in_size_and_age() {
        let mut m = BoundedMap::new(100, Duration::seconds(60));
        for i in 0..10_000u32 {
            m.insert(i, i, t(0));
            assert!(m.len() <= 100, "len {} after {i}", m.len());
        }
        assert!(m.get_mut(&9_999, t(1)).is_some());
        // Untouched entries are gone after max_age.
        m.insert(1, 1, t(40));
        m.insert(2, 2, t(80));
        assert!(m.get_mut(&9_999, t(100)).is_none());
    }

    #[test]
    fn session_counts_max_of_auth_lines_and_attempts() {
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        let mut s = State::default();
        assert_eq!(s.dovecot_auth_session("S1", t(0)), 1);
        assert_eq!(s.dovecot_auth_session("S1", t(1)), 1);
        assert_eq!(s.dovecot_login(Some("S1"), ip, &None, 3, t(2)), 1);
        assert_eq!(s.dovecot_login(Some("S2"), ip, &None, 2, t(3)), 2);
        assert_eq!(s.dovecot_auth_session("S3", t(0)), 1);
        assert_eq!(s.dovecot_login(Some("S3"), ip, &None, 1, t(2)), 0);
    }

    #[test]
    fn postfix_sasl_pairs_with_dovecot_no_session_either_order() {
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        let u = Some("alice@example.test".to_owned());
        let mut s = State::default();
        assert_eq!(s.dovecot_auth_no_session(ip, &u, t(0)), 1);
        assert_eq!(s.postfix_sasl(Some(7), ip, &u, 1, t(1)), 0);
        assert_eq!(s.postfix_sasl(Some(7), ip, &u, 1, t(2)), 1);
        assert_eq!(s.dovecot_auth_no_session(ip, &u, t(3)), 0);
        // Both warnings were counted; auth=0/2 on disconnect adds nothing.
        assert_eq!(s.postfix_disconnect(Some(7), ip, 2, t(4)), 0);
        // Out of the window: both count.
        assert_eq!(s.dovecot_auth_no_session(ip, &u, t(100)), 1);
        assert_eq!(s.postfix_sasl(None, ip, &u, 1, t(200)), 1);
        // Different user: both count.
        assert_eq!(
            s.dovecot_auth_no_session(ip, &Some("bob".into()), t(300)),
            1
        );
        assert_eq!(s.postfix_sasl(None, ip, &u, 1, t(300)), 1);
    }

    #[test]
    fn disconnect_counts_only_unwarned_failures() {
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        let mut s = State::default();
        s.postfix_connect(Some(9), ip, t(0));
        assert_eq!(s.postfix_sasl(Some(9), ip, &None, 1, t(1)), 1);
        assert_eq!(s.postfix_disconnect(Some(9), ip, 3, t(2)), 2);
        // No warning seen (e.g. the log started mid-connection): all count.
        assert_eq!(s.postfix_disconnect(Some(9), ip, 1, t(3)), 1);
    }

    #[test]
    fn pending_per_ip_is_capped() {
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        let mut s = State::default();
        for i in 0..1000 {
            s.dovecot_auth_no_session(ip, &Some(format!("u{i}")), t(0));
        }
        let n = s.pending.get_mut(&ip, t(0)).map(|l| l.len()).unwrap();
        assert_eq!(n, MAX_PENDING_PER_IP);
    }
}
