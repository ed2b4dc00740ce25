//! The generator's core: addresses, actors, and the connections (sessions) they make, each
//! rendered through [`detector_testkit::loggen`] with the event the parser should produce.
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Duration, Utc};
use detector::event::{Event, EventKind, Protocol, Service, SmtpCounters};
use detector_testkit::loggen::{self, Msg, dovecot, postfix};
use detector_testkit::rng::{B36, Rng};

use super::{Actor, Attempt, HOST_V4, HOST_V6, Role, Session, Sim, SimConfig, SimLine, Truth};

pub(super) fn generate(cfg: &SimConfig) -> Sim {
    let mut g = Gen {
        rng: Rng::new(cfg.seed ^ 0x9e37_79b9_7f4a_7c15),
        cfg: cfg.clone(),
        sessions: Vec::new(),
        cur: None,
        seq: 0,
        used: BTreeSet::from([IpAddr::V4(HOST_V4), IpAddr::V6(HOST_V6)]),
        truth: Truth::default(),
        qid: 0,
    };
    super::world::populate(&mut g);
    let end = g.end();
    g.sessions.retain(|s| s.start < end);
    for s in &mut g.sessions {
        s.lines.retain(|l| l.time < end);
    }
    g.sessions
        .sort_by_key(|s| (s.start, s.lines.first().map(|l| l.seq)));
    Sim {
        cfg: cfg.clone(),
        sessions: g.sessions,
        truth: g.truth,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Login {
    Imap,
    Pop3,
    Submission,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum SmtpEnd {
    Delivered,
    Quit,
    RsetQuit,
    Dropped,
}

pub(super) struct Gen {
    pub rng: Rng,
    pub cfg: SimConfig,
    sessions: Vec<Session>,
    cur: Option<Session>,
    seq: u64,
    used: BTreeSet<IpAddr>,
    pub truth: Truth,
    qid: u64,
}

impl Gen {
    pub fn end(&self) -> DateTime<Utc> {
        self.cfg.start + Duration::hours(i64::from(self.cfg.hours))
    }

    pub fn at(&self, secs: i64) -> DateTime<Utc> {
        self.cfg.start + Duration::seconds(secs)
    }

    pub fn horizon_s(&self) -> i64 {
        i64::from(self.cfg.hours) * 3600
    }

    // ------------------------------------------------------------------ actors and addresses

    pub fn actor(&mut self, role: Role, group: Option<String>) -> usize {
        self.truth.actors.push(Actor {
            role,
            addrs: BTreeSet::new(),
            group,
        });
        self.truth.actors.len() - 1
    }

    /// Records that `actor` uses `ip` (the first role given to an address stays).
    pub fn uses(&mut self, actor: usize, ip: IpAddr) {
        let role = self.truth.actors[actor].role;
        self.truth.actors[actor].addrs.insert(ip);
        self.truth.roles.entry(ip).or_insert(role);
        if matches!(role, Role::Benign(_)) {
            self.truth.benign.insert(ip);
        }
    }

    /// A fresh IPv4 address inside `a.b.0.0/16` (never the host's /24).
    pub fn fresh_v4(&mut self, a: u8, b: u8) -> IpAddr {
        loop {
            let c = self.rng.range(1, 254) as u8;
            let d = self.rng.range(1, 254) as u8;
            let ip = IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            if (a, b, c) != (198, 18, 0) && self.used.insert(ip) {
                return ip;
            }
        }
    }

    /// A fresh IPv4 address inside `a.b.c.0/24`.
    pub fn fresh_v4_in24(&mut self, a: u8, b: u8, c: u8) -> IpAddr {
        loop {
            let ip = IpAddr::V4(Ipv4Addr::new(a, b, c, self.rng.range(1, 254) as u8));
            if self.used.insert(ip) {
                return ip;
            }
        }
    }

    /// IPv6 in its own /64 inside 2001:db8:<top>::/48 (so per-/64 bans stay per actor).
    pub fn fresh_v6(&mut self, top: u16) -> IpAddr {
        loop {
            let ip = IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                top,
                self.rng.range(1, 0xfffe) as u16,
                0,
                0,
                0,
                self.rng.range(2, 0xfffe) as u16,
            ));
            if self.used.insert(ip) {
                return ip;
            }
        }
    }

    /// Another address in the same /64.
    pub fn rotate_v6(&mut self, ip: IpAddr) -> IpAddr {
        let IpAddr::V6(v6) = ip else { return ip };
        let s = v6.segments();
        loop {
            let r = self.rng.next_u64();
            let new = IpAddr::V6(Ipv6Addr::new(
                s[0],
                s[1],
                s[2],
                s[3],
                (r >> 48) as u16,
                (r >> 32) as u16,
                (r >> 16) as u16,
                r as u16 | 1,
            ));
            if self.used.insert(new) {
                return new;
            }
        }
    }

    // ------------------------------------------------------------------ sessions and lines

    fn begin(&mut self, actor: usize, ip: IpAddr, t: i64, attempt: Attempt) {
        debug_assert!(self.cur.is_none());
        self.uses(actor, ip);
        self.cur = Some(Session {
            actor,
            ip,
            start: self.at(t),
            attempt,
            lines: Vec::new(),
        });
    }

    fn finish(&mut self) {
        if let Some(s) = self.cur.take() {
            self.sessions.push(s);
        }
    }

    fn push(&mut self, time: DateTime<Utc>, m: Msg, event: Option<Event>) {
        self.seq += 1;
        let text = loggen::render(self.cfg.envelope, time, "mail", &m);
        let line = SimLine {
            time,
            file: m.file,
            text,
            event,
            seq: self.seq,
        };
        self.cur
            .as_mut()
            .expect("a line outside a session")
            .lines
            .push(line);
    }

    fn event(&self, time: DateTime<Utc>, service: Service, kind: EventKind, ip: IpAddr) -> Event {
        Event {
            time,
            service,
            kind,
            ip,
            user: None,
            recipient: None,
            protocol: None,
            line: 0,
            session: None,
            failures: 0,
            smtp: None,
        }
    }

    fn pid(&mut self) -> u32 {
        self.rng.range(2000, 60000) as u32
    }

    fn next_qid(&mut self) -> String {
        self.qid += 1;
        format!(
            "{:05X}{:05X}",
            (self.rng.next_u64() & 0xfffff) as u32,
            self.qid & 0xfffff
        )
    }

    fn lip(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => IpAddr::V4(HOST_V4),
            IpAddr::V6(_) => IpAddr::V6(HOST_V6),
        }
    }

    // ------------------------------------------------------------------ SMTP

    /// connect, RCPT (logged by the INFO access rule), client=, then the ending. A session
    /// that ends without a message is a probe (or a callout).
    #[allow(clippy::too_many_arguments)]
    pub fn smtp_session(
        &mut self,
        actor: usize,
        t: i64,
        ip: IpAddr,
        client_name: &str,
        from: &str,
        rcpt: &str,
        helo: &str,
        ending: SmtpEnd,
    ) {
        let attempt = if ending == SmtpEnd::Delivered {
            Attempt::Other
        } else {
            Attempt::Probe {
                rcpt: rcpt.to_ascii_lowercase(),
            }
        };
        self.begin(actor, ip, t, attempt);
        let pid = self.pid();
        let session = Some(format!("pid:{pid}"));
        let peer = postfix::peer(client_name, ip);
        let t0 = self.at(t);
        let mut e = self.event(t0, Service::Postfix, EventKind::Connect, ip);
        e.protocol = Some(Protocol::Smtp);
        e.session = session.clone();
        self.push(
            t0,
            postfix::msg("smtpd", pid, postfix::connect(&peer)),
            Some(e),
        );
        let mut e = self.event(t0, Service::Postfix, EventKind::Rcpt, ip);
        e.protocol = Some(Protocol::Smtp);
        // Like the parser: NOQUEUE and `lost connection` lines carry no session key.
        e.session = None;
        e.recipient = Some(rcpt.to_ascii_lowercase());
        self.push(
            t0,
            postfix::msg("smtpd", pid, postfix::rcpt_info(&peer, rcpt, from, helo)),
            Some(e),
        );
        let qid = self.next_qid();
        self.push(
            t0,
            postfix::msg("smtpd", pid, postfix::client(&qid, &peer)),
            None,
        );
        let dt = self.rng.range(0, 1);
        let t1 = self.at(t + dt);
        let mut counters = SmtpCounters {
            rcpt_ok: 1,
            ..SmtpCounters::default()
        };
        let tail = match ending {
            SmtpEnd::Delivered => {
                let cpid = self.pid();
                let msgid = format!("{}@{helo}", self.rng.token(12, B36));
                self.push(
                    t1,
                    postfix::msg("cleanup", cpid, postfix::message_id(&qid, &msgid)),
                    None,
                );
                let size = self.rng.range(900, 90000) as u64;
                self.push(
                    t1,
                    postfix::msg("qmgr", 811, postfix::queue_active(&qid, from, size)),
                    None,
                );
                let vpid = self.pid();
                self.push(
                    t1,
                    postfix::msg("virtual", vpid, postfix::delivered(&qid, rcpt)),
                    None,
                );
                self.push(t1, postfix::msg("qmgr", 811, postfix::removed(&qid)), None);
                counters.data_ok = 1;
                counters.data_tried = 1;
                counters.quit = true;
                "ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5"
            }
            SmtpEnd::Quit => {
                counters.quit = true;
                "ehlo=1 mail=1 rcpt=1 quit=1 commands=4"
            }
            SmtpEnd::RsetQuit => {
                counters.quit = true;
                counters.rset = 1;
                "ehlo=1 mail=1 rcpt=1 rset=1 quit=1 commands=5"
            }
            SmtpEnd::Dropped => {
                let mut e = self.event(t1, Service::Postfix, EventKind::LostConnection, ip);
                e.protocol = Some(Protocol::Smtp);
                e.session = None;
                self.push(
                    t1,
                    postfix::msg("smtpd", pid, postfix::lost_connection("RCPT", &peer)),
                    Some(e),
                );
                "ehlo=1 mail=1 rcpt=1 commands=3"
            }
        };
        let kind = if counters.data_ok == 0 {
            EventKind::TransactionAborted
        } else {
            EventKind::Disconnect
        };
        let mut e = self.event(t1, Service::Postfix, kind, ip);
        e.protocol = Some(Protocol::Smtp);
        e.session = session;
        e.smtp = Some(counters);
        self.push(
            t1,
            postfix::msg("smtpd", pid, postfix::disconnect(&peer, tail)),
            Some(e),
        );
        self.finish();
    }

    /// A monitoring check of the SMTP banner: connect, EHLO, QUIT.
    pub fn smtp_banner_check(&mut self, actor: usize, t: i64, ip: IpAddr, name: &str) {
        self.begin(actor, ip, t, Attempt::Other);
        let pid = self.pid();
        let session = Some(format!("pid:{pid}"));
        let peer = postfix::peer(name, ip);
        let t0 = self.at(t);
        let mut e = self.event(t0, Service::Postfix, EventKind::Connect, ip);
        e.protocol = Some(Protocol::Smtp);
        e.session = session.clone();
        self.push(
            t0,
            postfix::msg("smtpd", pid, postfix::connect(&peer)),
            Some(e),
        );
        let mut e = self.event(t0, Service::Postfix, EventKind::Disconnect, ip);
        e.protocol = Some(Protocol::Smtp);
        e.session = session;
        e.smtp = Some(SmtpCounters {
            quit: true,
            ..SmtpCounters::default()
        });
        self.push(
            t0,
            postfix::msg(
                "smtpd",
                pid,
                postfix::disconnect(&peer, "ehlo=1 quit=1 commands=2"),
            ),
            Some(e),
        );
        self.finish();
    }

    /// A monitoring check of the IMAP port that never logs in.
    pub fn imap_banner_check(&mut self, actor: usize, t: i64, ip: IpAddr) {
        self.begin(actor, ip, t, Attempt::Other);
        let t0 = self.at(t);
        let sess = self.rng.session();
        let mut e = self.event(t0, Service::Dovecot, EventKind::Disconnect, ip);
        e.session = Some(sess.clone());
        e.protocol = Some(Protocol::Imap);
        let m = dovecot::no_auth(self.cfg.dovecot, "imap", ip, Self::lip(ip), &sess);
        self.push(t0, m, Some(e));
        self.finish();
    }

    // ------------------------------------------------------------------ logins

    /// A failed login. `exists`: the mailbox exists (wrong password) or not (unknown user).
    #[allow(clippy::too_many_arguments)]
    pub fn failed_login(
        &mut self,
        actor: usize,
        t: i64,
        ip: IpAddr,
        user: &str,
        how: Login,
        exists: bool,
        tls: bool,
    ) {
        self.begin(
            actor,
            ip,
            t,
            Attempt::Login {
                user: user.to_lowercase(),
                ok: false,
            },
        );
        let v = self.cfg.dovecot;
        let t0 = self.at(t);
        let kind = if exists {
            EventKind::AuthFailure
        } else {
            EventKind::AuthUnknownUser
        };
        let lc = user.to_lowercase();
        match how {
            Login::Imap | Login::Pop3 => {
                let sess = self.rng.session();
                let (svc, proto) = if how == Login::Imap {
                    ("imap", Protocol::Imap)
                } else {
                    ("pop3", Protocol::Pop3)
                };
                let mut e = self.event(t0, Service::Dovecot, kind, ip);
                e.user = Some(lc.clone());
                e.session = Some(sess.clone());
                e.failures = 1;
                let m = dovecot::auth_failure(
                    v,
                    "passwd-file",
                    user,
                    ip,
                    Some(&sess),
                    "plain",
                    !exists,
                );
                self.push(t0, m, Some(e));
                let dt = self.rng.range(0, 2);
                let t1 = self.at(t + dt);
                let ending = if self.rng.chance(0.5) {
                    dovecot::Ending::LoggedOut
                } else {
                    dovecot::Ending::Closed
                };
                let secs = self.rng.range(0, 2) as u32;
                let mut e = self.event(t1, Service::Dovecot, EventKind::AuthFailure, ip);
                e.user = Some(lc);
                e.session = Some(sess.clone());
                e.protocol = Some(proto);
                let m = dovecot::login_failed(
                    v,
                    svc,
                    user,
                    ip,
                    Self::lip(ip),
                    &sess,
                    ending,
                    1,
                    secs,
                    tls,
                );
                self.push(t1, m, Some(e));
            }
            Login::Submission => {
                let pid = self.pid();
                let peer = postfix::peer("unknown", ip);
                let svc = "submission/smtpd";
                let mut e = self.event(t0, Service::Postfix, EventKind::Connect, ip);
                e.protocol = Some(Protocol::Submission);
                e.session = Some(format!("pid:{pid}"));
                self.push(t0, postfix::msg(svc, pid, postfix::connect(&peer)), Some(e));
                let t1 = self.at(t + 1);
                let mut e = self.event(t1, Service::Dovecot, kind, ip);
                e.user = Some(lc.clone());
                e.failures = 1;
                let m = dovecot::auth_failure(v, "passwd-file", user, ip, None, "plain", !exists);
                self.push(t1, m, Some(e));
                let mut e = self.event(t1, Service::Postfix, EventKind::AuthFailure, ip);
                e.user = Some(lc);
                e.protocol = Some(Protocol::Submission);
                e.session = Some(format!("pid:{pid}"));
                self.push(
                    t1,
                    postfix::msg(svc, pid, postfix::sasl_failed(&peer, "PLAIN", user)),
                    Some(e),
                );
                // `auth=0/1` describes the same failed attempt again (failures 0).
                let mut e = self.event(t1, Service::Postfix, EventKind::AuthFailure, ip);
                e.protocol = Some(Protocol::Submission);
                e.session = Some(format!("pid:{pid}"));
                e.smtp = Some(SmtpCounters {
                    auth_tried: 1,
                    quit: true,
                    ..SmtpCounters::default()
                });
                self.push(
                    t1,
                    postfix::msg(
                        svc,
                        pid,
                        postfix::disconnect(&peer, "ehlo=1 auth=0/1 quit=1 commands=2/3"),
                    ),
                    Some(e),
                );
            }
        }
        self.finish();
    }

    /// A successful IMAP login and logout.
    pub fn imap_ok(&mut self, actor: usize, t: i64, ip: IpAddr, user: &str) {
        self.begin(
            actor,
            ip,
            t,
            Attempt::Login {
                user: user.to_lowercase(),
                ok: true,
            },
        );
        let t0 = self.at(t);
        let sess = self.rng.session();
        let mpid = self.pid();
        let mut e = self.event(t0, Service::Dovecot, EventKind::AuthSuccess, ip);
        e.user = Some(user.to_lowercase());
        e.session = Some(sess.clone());
        e.protocol = Some(Protocol::Imap);
        let m = dovecot::login_ok(
            self.cfg.dovecot,
            "imap",
            user,
            ip,
            Self::lip(ip),
            mpid,
            &sess,
            true,
        );
        self.push(t0, m, Some(e));
        let dt = self.rng.range(1, 300);
        let t1 = self.at(t + dt);
        let (i, o) = (
            self.rng.range(30, 900) as u64,
            self.rng.range(500, 90000) as u64,
        );
        self.push(t1, dovecot::logout("imap", user, mpid, &sess, i, o), None);
        self.finish();
    }

    /// A customer sends a message through submission (SASL success).
    pub fn submission_ok(&mut self, actor: usize, t: i64, ip: IpAddr, user: &str) {
        self.begin(
            actor,
            ip,
            t,
            Attempt::Login {
                user: user.to_lowercase(),
                ok: true,
            },
        );
        let svc = "submission/smtpd";
        let t0 = self.at(t);
        let pid = self.pid();
        let peer = postfix::peer("unknown", ip);
        let session = Some(format!("pid:{pid}"));
        let mut e = self.event(t0, Service::Postfix, EventKind::Connect, ip);
        e.protocol = Some(Protocol::Submission);
        e.session = session.clone();
        self.push(t0, postfix::msg(svc, pid, postfix::connect(&peer)), Some(e));
        let qid = self.next_qid();
        let mut e = self.event(t0, Service::Postfix, EventKind::AuthSuccess, ip);
        e.protocol = Some(Protocol::Submission);
        e.session = session.clone();
        e.user = Some(user.to_lowercase());
        self.push(
            t0,
            postfix::msg(svc, pid, postfix::client_sasl(&qid, &peer, user)),
            Some(e),
        );
        let t1 = self.at(t + 1);
        self.push(
            t1,
            postfix::msg("qmgr", 811, postfix::queue_active(&qid, user, 4242)),
            None,
        );
        let mut e = self.event(t1, Service::Postfix, EventKind::Disconnect, ip);
        e.protocol = Some(Protocol::Submission);
        e.session = session;
        e.smtp = Some(SmtpCounters {
            rcpt_ok: 1,
            data_ok: 1,
            data_tried: 1,
            auth_ok: 1,
            auth_tried: 1,
            quit: true,
            rset: 0,
        });
        self.push(
            t1,
            postfix::msg(
                svc,
                pid,
                postfix::disconnect(
                    &peer,
                    "ehlo=2 starttls=1 auth=1 mail=1 rcpt=1 data=1 quit=1 commands=8",
                ),
            ),
            Some(e),
        );
        self.finish();
    }
}
