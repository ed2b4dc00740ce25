//! Mail-host traffic simulator with ground truth.
//!
//! Produces Postfix (`maillog_file`) and Dovecot (`log_path`) log TEXT in the formats measured
//! in `docs/lab.md` ("What one round logs"), together with the event the parser is expected to produce for
//! each line and the truth about every actor:
//!
//! - a botnet (v4 from 198.18.0.0/15, v6 from 2001:db8::/32): SMTP probe (RCPT then QUIT or a
//!   dropped connection), seconds later a login with the probed address on IMAP, POP3 or
//!   submission, then retries every 2–3 h with jitter; most targets are non-existent addresses
//!   that the catch-all mailbox accepts;
//! - a fast brute forcer, a password sprayer (one try per IP, one user), an injector whose user
//!   names carry fake `rip=`/IP text;
//! - benign traffic: deliveries, sender-verification probes by remote MTAs (never a login),
//!   customers with occasional typos followed by success, a phone with a stale password
//!   retrying every 15 min, an office NAT with many users.
//!
//! Deterministic from the seed (splitmix64, no external PRNG).
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Duration, TimeZone, Utc};
use detector::event::{Event, EventKind, Protocol, Service, SmtpCounters};

/// The mail host's own addresses (as in the lab).
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const DOMAIN: &str = "example.test";

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub hours: u32,
    pub bots_v4: usize,
    pub bots_v6: usize,
    pub sprayers: usize,
    pub customers: usize,
    pub office_users: usize,
    pub start: DateTime<Utc>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            hours: 48,
            bots_v4: 250,
            bots_v6: 50,
            sprayers: 30,
            customers: 30,
            office_users: 15,
            // In the past of the lab date so syslog year inference keeps the year.
            start: Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap(),
        }
    }
}

/// Which file a line belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogFile {
    Postfix,
    Dovecot,
}

/// One log line with the event the parser should produce for it (None: no event).
#[derive(Clone, Debug)]
pub struct SimLine {
    pub time: DateTime<Utc>,
    pub file: LogFile,
    pub text: String,
    pub event: Option<Event>,
    seq: u64,
}

/// What each simulated address is.
#[derive(Clone, Debug, Default)]
pub struct Truth {
    /// Botnet addresses and the times of their login attempts (rotating IPv6 members use a
    /// new address of their /64 each round, so one member can have several addresses).
    pub bots: BTreeMap<IpAddr, Vec<DateTime<Utc>>>,
    pub brute_forcer: Option<IpAddr>,
    pub sprayers: BTreeSet<IpAddr>,
    /// Sends logins whose user names carry fake addresses.
    pub injector: Option<IpAddr>,
    /// Addresses that appear only inside attacker-controlled user names: never to be banned.
    pub injected: BTreeSet<IpAddr>,
    /// Every benign client (MTAs, verifiers, customers, the phone, the office NAT).
    pub benign: BTreeSet<IpAddr>,
    pub phone: Option<IpAddr>,
    pub office_nat: Option<IpAddr>,
}

impl Truth {
    pub fn attackers(&self) -> BTreeSet<IpAddr> {
        let mut a: BTreeSet<IpAddr> = self.bots.keys().copied().collect();
        a.extend(self.brute_forcer);
        a.extend(self.sprayers.iter().copied());
        a.extend(self.injector);
        a
    }
}

pub struct Sim {
    pub postfix: Vec<SimLine>,
    pub dovecot: Vec<SimLine>,
    pub truth: Truth,
}

impl Sim {
    pub fn generate(cfg: &SimConfig) -> Sim {
        let mut g = Gen {
            rng: Rng(cfg.seed ^ 0x9e37_79b9_7f4a_7c15),
            cfg: cfg.clone(),
            lines: Vec::new(),
            seq: 0,
            used: BTreeSet::from([IpAddr::V4(HOST_V4), IpAddr::V6(HOST_V6)]),
            truth: Truth::default(),
            qid: 0,
        };
        g.botnet();
        g.brute_forcer();
        g.sprayers();
        g.injector();
        g.deliveries_and_verifiers();
        g.customers();
        g.phone();
        g.office();
        let end = cfg.start + Duration::hours(i64::from(cfg.hours));
        g.lines.retain(|l| l.time < end);
        g.lines.sort_by_key(|l| (l.time, l.seq));
        let (postfix, dovecot) = g
            .lines
            .into_iter()
            .partition(|l| l.file == LogFile::Postfix);
        Sim {
            postfix,
            dovecot,
            truth: g.truth,
        }
    }

    pub fn text(lines: &[SimLine]) -> String {
        let mut s = String::with_capacity(lines.len() * 160);
        for l in lines {
            s.push_str(&l.text);
            s.push('\n');
        }
        s
    }

    /// Both files merged by time (what one syslog file would hold).
    pub fn merged(&self) -> Vec<&SimLine> {
        let mut all: Vec<&SimLine> = self.postfix.iter().chain(&self.dovecot).collect();
        all.sort_by_key(|l| (l.time, l.seq));
        all
    }

    /// All expected events in merged time order, numbered by their position in the merge.
    pub fn merged_events(&self) -> Vec<Event> {
        let mut out = Vec::new();
        for (i, l) in self.merged().into_iter().enumerate() {
            if let Some(mut e) = l.event.clone() {
                e.line = i as u64 + 1;
                out.push(e);
            }
        }
        out
    }

    /// The expected events with their raw lines, per file (for runs without the parser).
    pub fn expected_events(lines: &[SimLine]) -> Vec<(Event, String)> {
        lines
            .iter()
            .filter_map(|l| l.event.clone().map(|e| (e, l.text.clone())))
            .collect()
    }
}

/// splitmix64: small, fast, good enough for traffic shapes, identical on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in lo..=hi.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % ((hi - lo + 1) as u64)) as i64
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
    fn token(&mut self, len: usize, alphabet: &[u8]) -> String {
        (0..len).map(|_| *self.pick(alphabet) as char).collect()
    }
}

const B36: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
/// Real mailboxes that the botnet and the sprayer also go after.
const ATTACKED_REAL: &[&str] = &["alice", "bob", "info", "sales"];

#[derive(Clone, Copy, PartialEq)]
enum Login {
    Imap,
    Pop3,
    Submission,
}

struct Gen {
    rng: Rng,
    cfg: SimConfig,
    lines: Vec<SimLine>,
    seq: u64,
    used: BTreeSet<IpAddr>,
    truth: Truth,
    qid: u64,
}

impl Gen {
    fn end(&self) -> DateTime<Utc> {
        self.cfg.start + Duration::hours(i64::from(self.cfg.hours))
    }

    fn at(&self, secs: i64) -> DateTime<Utc> {
        self.cfg.start + Duration::seconds(secs)
    }

    fn horizon_s(&self) -> i64 {
        i64::from(self.cfg.hours) * 3600
    }

    /// A fresh address: v4 inside `net` (first two octets) or v6 inside 2001:db8:<top>::/48.
    fn fresh_v4(&mut self, a: u8, b: u8) -> IpAddr {
        loop {
            let c = self.rng.range(1, 254) as u8;
            let d = self.rng.range(1, 254) as u8;
            let ip = IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            if (a, b, c) != (198, 18, 0) && self.used.insert(ip) {
                return ip;
            }
        }
    }

    /// v6 in its own /64 (so per-/64 bans stay per actor).
    fn fresh_v6(&mut self, top: u16) -> IpAddr {
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

    fn push(&mut self, time: DateTime<Utc>, file: LogFile, text: String, event: Option<Event>) {
        self.seq += 1;
        let prefix = match file {
            LogFile::Postfix => format!("{} mail ", time.format("%b %e %H:%M:%S")),
            LogFile::Dovecot => format!("{} ", time.format("%b %e %H:%M:%S")),
        };
        self.lines.push(SimLine {
            time,
            file,
            text: prefix + &text,
            event,
            seq: self.seq,
        });
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
            (self.rng.next() & 0xfffff) as u32,
            self.qid & 0xfffff
        )
    }

    fn lip(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => IpAddr::V4(HOST_V4),
            IpAddr::V6(_) => IpAddr::V6(HOST_V6),
        }
    }

    // ---------------------------------------------------------------- SMTP building blocks

    /// connect, RCPT (logged by the INFO access rule), client=, then the ending.
    #[allow(clippy::too_many_arguments)]
    fn smtp_session(
        &mut self,
        t: i64,
        ip: IpAddr,
        client_name: &str,
        from: &str,
        rcpt: &str,
        helo: &str,
        ending: SmtpEnd,
    ) {
        let pid = self.pid();
        let session = Some(format!("pid:{pid}"));
        let peer = format!("{client_name}[{ip}]");
        let t0 = self.at(t);
        let mut e = self.event(t0, Service::Postfix, EventKind::Connect, ip);
        e.protocol = Some(Protocol::Smtp);
        e.session = session.clone();
        self.push(
            t0,
            LogFile::Postfix,
            format!("postfix/smtpd[{pid}]: connect from {peer}"),
            Some(e),
        );
        let mut e = self.event(t0, Service::Postfix, EventKind::Rcpt, ip);
        e.protocol = Some(Protocol::Smtp);
        // Like the parser: NOQUEUE and `lost connection` lines carry no session key.
        e.session = None;
        e.recipient = Some(rcpt.to_ascii_lowercase());
        self.push(
            t0,
            LogFile::Postfix,
            format!(
                "postfix/smtpd[{pid}]: NOQUEUE: info: RCPT from {peer}: lab-rcpt=<{rcpt}>; from=<{from}> to=<{rcpt}> proto=ESMTP helo=<{helo}>"
            ),
            Some(e),
        );
        let qid = self.next_qid();
        self.push(
            t0,
            LogFile::Postfix,
            format!("postfix/smtpd[{pid}]: {qid}: client={peer}"),
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
                let msgid = self.rng.token(12, B36);
                self.push(
                    t1,
                    LogFile::Postfix,
                    format!("postfix/cleanup[{cpid}]: {qid}: message-id=<{msgid}@{helo}>"),
                    None,
                );
                let size = self.rng.range(900, 90000);
                self.push(
                    t1,
                    LogFile::Postfix,
                    format!("postfix/qmgr[811]: {qid}: from=<{from}>, size={size}, nrcpt=1 (queue active)"),
                    None,
                );
                let vpid = self.pid();
                self.push(t1, LogFile::Postfix, format!("postfix/virtual[{vpid}]: {qid}: to=<{rcpt}>, relay=virtual, delay=0.12, delays=0.08/0.01/0/0.03, dsn=2.0.0, status=sent (delivered to maildir)"), None);
                self.push(
                    t1,
                    LogFile::Postfix,
                    format!("postfix/qmgr[811]: {qid}: removed"),
                    None,
                );
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
                    LogFile::Postfix,
                    format!("postfix/smtpd[{pid}]: lost connection after RCPT from {peer}"),
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
            LogFile::Postfix,
            format!("postfix/smtpd[{pid}]: disconnect from {peer} {tail}"),
            Some(e),
        );
    }

    // ---------------------------------------------------------------- login building blocks

    /// A failed login. `exists`: the mailbox exists (wrong password) or not (unknown user).
    fn failed_login(
        &mut self,
        t: i64,
        ip: IpAddr,
        user: &str,
        how: Login,
        exists: bool,
        tls: bool,
    ) {
        let t0 = self.at(t);
        let reason = if exists {
            "Password mismatch"
        } else {
            "unknown user"
        };
        let kind = if exists {
            EventKind::AuthFailure
        } else {
            EventKind::AuthUnknownUser
        };
        let lc = user.to_lowercase();
        match how {
            Login::Imap | Login::Pop3 => {
                let sess = self.rng.token(16, B64);
                let (svc, proto) = if how == Login::Imap {
                    ("imap", Protocol::Imap)
                } else {
                    ("pop3", Protocol::Pop3)
                };
                let mut e = self.event(t0, Service::Dovecot, kind, ip);
                e.user = Some(lc.clone());
                e.session = Some(sess.clone());
                e.failures = 1;
                self.push(
                    t0,
                    LogFile::Dovecot,
                    format!("auth: Info: passwd-file({user},{ip},<{sess}>): {reason}"),
                    Some(e),
                );
                let dt = self.rng.range(0, 2);
                let t1 = self.at(t + dt);
                let why = if self.rng.chance(0.5) {
                    "Aborted login by logging out"
                } else {
                    "Connection closed"
                };
                let secs = self.rng.range(0, 2);
                let tls = if tls { "TLS, " } else { "" };
                let mut e = self.event(t1, Service::Dovecot, EventKind::AuthFailure, ip);
                e.user = Some(lc);
                e.session = Some(sess.clone());
                e.protocol = Some(proto);
                self.push(
                    t1,
                    LogFile::Dovecot,
                    format!(
                        "{svc}-login: Info: Disconnected: {why} (auth failed, 1 attempts in {secs} secs): user=<{user}>, method=PLAIN, rip={ip}, lip={}, {tls}session=<{sess}>",
                        Self::lip(ip)
                    ),
                    Some(e),
                );
            }
            Login::Submission => {
                let pid = self.pid();
                let peer = format!("unknown[{ip}]");
                let mut e = self.event(t0, Service::Postfix, EventKind::Connect, ip);
                e.protocol = Some(Protocol::Submission);
                e.session = Some(format!("pid:{pid}"));
                self.push(
                    t0,
                    LogFile::Postfix,
                    format!("postfix/submission/smtpd[{pid}]: connect from {peer}"),
                    Some(e),
                );
                let t1 = self.at(t + 1);
                let mut e = self.event(t1, Service::Dovecot, kind, ip);
                e.user = Some(lc.clone());
                e.failures = 1;
                self.push(
                    t1,
                    LogFile::Dovecot,
                    format!("auth: Info: passwd-file({user},{ip}): {reason}"),
                    Some(e),
                );
                let mut e = self.event(t1, Service::Postfix, EventKind::AuthFailure, ip);
                e.user = Some(lc);
                e.protocol = Some(Protocol::Submission);
                e.session = Some(format!("pid:{pid}"));
                self.push(
                    t1,
                    LogFile::Postfix,
                    format!(
                        "postfix/submission/smtpd[{pid}]: warning: {peer}: SASL PLAIN authentication failed: (reason unavailable), sasl_username={user}"
                    ),
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
                    LogFile::Postfix,
                    format!(
                        "postfix/submission/smtpd[{pid}]: disconnect from {peer} ehlo=1 auth=0/1 quit=1 commands=2/3"
                    ),
                    Some(e),
                );
            }
        }
    }

    /// A successful IMAP login and logout.
    fn imap_ok(&mut self, t: i64, ip: IpAddr, user: &str) {
        let t0 = self.at(t);
        let sess = self.rng.token(16, B64);
        let mpid = self.pid();
        let mut e = self.event(t0, Service::Dovecot, EventKind::AuthSuccess, ip);
        e.user = Some(user.to_lowercase());
        e.session = Some(sess.clone());
        e.protocol = Some(Protocol::Imap);
        self.push(
            t0,
            LogFile::Dovecot,
            format!(
                "imap-login: Info: Login: user=<{user}>, method=PLAIN, rip={ip}, lip={}, mpid={mpid}, TLS, session=<{sess}>",
                Self::lip(ip)
            ),
            Some(e),
        );
        let dt = self.rng.range(1, 300);
        let t1 = self.at(t + dt);
        let (i, o) = (self.rng.range(30, 900), self.rng.range(500, 90000));
        self.push(
            t1,
            LogFile::Dovecot,
            format!(
                "imap({user})<{mpid}><{sess}>: Info: Disconnected: Logged out in={i} out={o} deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0"
            ),
            None,
        );
    }

    /// A customer sends a message through submission (SASL success).
    fn submission_ok(&mut self, t: i64, ip: IpAddr, user: &str) {
        let t0 = self.at(t);
        let pid = self.pid();
        let peer = format!("unknown[{ip}]");
        let session = Some(format!("pid:{pid}"));
        let mut e = self.event(t0, Service::Postfix, EventKind::Connect, ip);
        e.protocol = Some(Protocol::Submission);
        e.session = session.clone();
        self.push(
            t0,
            LogFile::Postfix,
            format!("postfix/submission/smtpd[{pid}]: connect from {peer}"),
            Some(e),
        );
        let qid = self.next_qid();
        let mut e = self.event(t0, Service::Postfix, EventKind::AuthSuccess, ip);
        e.protocol = Some(Protocol::Submission);
        e.session = session.clone();
        e.user = Some(user.to_lowercase());
        self.push(
            t0,
            LogFile::Postfix,
            format!("postfix/submission/smtpd[{pid}]: {qid}: client={peer}, sasl_method=PLAIN, sasl_username={user}"),
            Some(e),
        );
        let t1 = self.at(t + 1);
        self.push(
            t1,
            LogFile::Postfix,
            format!("postfix/qmgr[811]: {qid}: from=<{user}>, size=4242, nrcpt=1 (queue active)"),
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
            LogFile::Postfix,
            format!(
                "postfix/submission/smtpd[{pid}]: disconnect from {peer} ehlo=2 starttls=1 auth=1 mail=1 rcpt=1 data=1 quit=1 commands=8"
            ),
            Some(e),
        );
    }

    // ---------------------------------------------------------------- actors

    fn botnet(&mut self) {
        let n4 = self.cfg.bots_v4;
        let n6 = self.cfg.bots_v6;
        for i in 0..n4 + n6 {
            let top = self.rng.range(1, 0xfeff) as u16;
            let ip = if i < n4 {
                self.fresh_v4(198, 18)
            } else {
                self.fresh_v6(top)
            };
            let mut ip = ip;
            // Half the IPv6 members take a new address inside their /64 for every round.
            let rotate = i >= n4 && self.rng.chance(0.5);
            let mut attempts: BTreeMap<IpAddr, Vec<DateTime<Utc>>> = BTreeMap::new();
            let first_window = self.horizon_s().min(24 * 3600);
            let mut t = self.rng.range(0, first_window);
            let mut target = String::new();
            let mut exists = false;
            let mut round = 0;
            while self.at(t) < self.end() {
                if rotate && round > 0 {
                    ip = self.rotate_v6(ip);
                }
                if round == 0 || self.rng.chance(0.7) {
                    // New target: mostly random names the catch-all accepts.
                    if self.rng.chance(0.75) {
                        target = format!("{}@{DOMAIN}", self.rng.token(10, B36));
                        exists = false;
                    } else {
                        target = format!("{}@{DOMAIN}", self.rng.pick(ATTACKED_REAL));
                        exists = true;
                    }
                    let end = if self.rng.chance(0.5) {
                        SmtpEnd::Quit
                    } else {
                        SmtpEnd::Dropped
                    };
                    self.smtp_session(
                        t,
                        ip,
                        "unknown",
                        "probe@bot.invalid",
                        &target.clone(),
                        "bot.invalid",
                        end,
                    );
                    t += self.rng.range(2, 9);
                }
                let how = *self
                    .rng
                    .pick(&[Login::Imap, Login::Pop3, Login::Submission]);
                let tls = self.rng.chance(0.3);
                self.failed_login(t, ip, &target.clone(), how, exists, tls);
                attempts.entry(ip).or_default().push(self.at(t));
                // Under fail2ban's radar: the next try 2–3 h later, with jitter.
                t += self.rng.range(2 * 3600, 3 * 3600) + self.rng.range(-600, 600);
                round += 1;
            }
            let end = self.end();
            for (addr, mut times) in attempts {
                times.retain(|a| *a < end);
                if !times.is_empty() {
                    self.truth.bots.insert(addr, times);
                }
            }
        }
    }

    /// Another address in the same /64.
    fn rotate_v6(&mut self, ip: IpAddr) -> IpAddr {
        let IpAddr::V6(v6) = ip else { return ip };
        let s = v6.segments();
        loop {
            let r = self.rng.next();
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

    fn brute_forcer(&mut self) {
        let ip = self.fresh_v4(198, 18);
        self.truth.brute_forcer = Some(ip);
        let mut t = self.rng.range(3600, self.horizon_s() / 2);
        for _ in 0..40 {
            let user = format!("webmaster@{DOMAIN}");
            self.failed_login(t, ip, &user, Login::Submission, true, false);
            t += self.rng.range(5, 20);
        }
    }

    fn sprayers(&mut self) {
        let mut t = self.rng.range(1800, self.horizon_s() / 3);
        for _ in 0..self.cfg.sprayers {
            let ip = if self.rng.chance(0.8) {
                self.fresh_v4(198, 18)
            } else {
                self.fresh_v6(0xaaaa)
            };
            self.truth.sprayers.insert(ip);
            self.failed_login(t, ip, &format!("ceo@{DOMAIN}"), Login::Imap, true, false);
            t += self.rng.range(300, 900);
        }
    }

    /// User names that carry fake addresses; only the sender may be banned.
    fn injector(&mut self) {
        let ip = self.fresh_v4(198, 18);
        self.truth.injector = Some(ip);
        let fakes: Vec<IpAddr> = (9..14)
            .map(|d| IpAddr::V4(Ipv4Addr::new(203, 0, 113, d)))
            .collect();
        self.truth.injected.extend(fakes.iter().copied());
        let names = [
            "x rip=203.0.113.9".to_string(),
            "a,203.0.113.10,<abc>".to_string(),
            "y, method=PLAIN, rip=203.0.113.11, lip=198.18.0.1".to_string(),
            "z unknown[203.0.113.12]".to_string(),
            "w@example.test) from unknown[203.0.113.13]:".to_string(),
        ];
        let mut t = self.rng.range(3600, self.horizon_s() / 2);
        for name in names.iter().chain(names.iter()) {
            let how = *self
                .rng
                .pick(&[Login::Imap, Login::Pop3, Login::Submission]);
            self.failed_login(t, ip, name, how, false, false);
            t += self.rng.range(20, 60);
        }
    }

    fn deliveries_and_verifiers(&mut self) {
        let hours = i64::from(self.cfg.hours);
        // Remote MTAs delivering mail (some also verify senders).
        let mtas: Vec<IpAddr> = (0..40)
            .map(|i| {
                if i % 5 == 0 {
                    self.fresh_v6(0xbbbb)
                } else {
                    self.fresh_v4(198, 19)
                }
            })
            .collect();
        for (i, &ip) in mtas.iter().enumerate() {
            self.truth.benign.insert(ip);
            let name = format!("mx{i}.sender{i}.example");
            let per_hour = 1 + (i as i64 % 4);
            for _ in 0..per_hour * hours {
                let t = self.rng.range(0, hours * 3600 - 1);
                let rcpt = format!("{}@{DOMAIN}", self.pick_mailbox());
                let from = format!("news{}@sender{i}.example", self.rng.range(1, 9));
                self.smtp_session(t, ip, &name, &from, &rcpt, &name, SmtpEnd::Delivered);
            }
        }
        // Sender-address verification: RCPT then QUIT/RSET, never a login; many addresses,
        // some of them non-existent (the catch-all accepts them).
        for (i, &mta) in mtas.iter().enumerate().take(15) {
            let ip = if i % 3 == 0 {
                mta
            } else {
                self.fresh_v4(198, 19)
            };
            self.truth.benign.insert(ip);
            let name = format!("verify{i}.callout.example");
            for _ in 0..hours * 3 {
                let t = self.rng.range(0, hours * 3600 - 1);
                let rcpt = if self.rng.chance(0.5) {
                    format!("{}@{DOMAIN}", self.pick_mailbox())
                } else {
                    format!("{}@{DOMAIN}", self.rng.token(8, B36))
                };
                let end = *self
                    .rng
                    .pick(&[SmtpEnd::Quit, SmtpEnd::RsetQuit, SmtpEnd::Dropped]);
                self.smtp_session(t, ip, &name, "", &rcpt, &name, end);
            }
        }
    }

    fn pick_mailbox(&mut self) -> String {
        if self.rng.chance(0.3) {
            self.rng.pick(ATTACKED_REAL).to_string()
        } else {
            format!(
                "cust{:02}",
                self.rng.range(1, self.cfg.customers.max(1) as i64)
            )
        }
    }

    /// Customers at home: IMAP every 20–90 min in the day, occasional password typos that are
    /// followed by a success, some mail sent through submission.
    fn customers(&mut self) {
        for c in 0..self.cfg.customers {
            let user = match c {
                0 => format!("alice@{DOMAIN}"),
                1 => format!("bob@{DOMAIN}"),
                _ => format!("cust{c:02}@{DOMAIN}"),
            };
            let ip = if c % 4 == 0 {
                self.fresh_v6(0xcccc)
            } else {
                self.fresh_v4(198, 19)
            };
            self.truth.benign.insert(ip);
            let mut t = self.rng.range(0, 3600);
            // Some customers start the simulation with a typo (no earlier success known).
            let mut first = true;
            while self.at(t) < self.end() {
                let hour = (t / 3600) % 24;
                if (7..23).contains(&hour) {
                    if (!first && self.rng.chance(0.04)) || (first && c % 7 == 3) {
                        self.failed_login(t, ip, &user, Login::Imap, true, true);
                        t += self.rng.range(10, 40);
                    }
                    self.imap_ok(t, ip, &user);
                    if self.rng.chance(0.15) {
                        // The mail client sometimes has the old password for SMTP AUTH:
                        // one failure logged by both Postfix and Dovecot, then success.
                        if self.rng.chance(0.2) {
                            self.failed_login(t + 50, ip, &user, Login::Submission, true, false);
                        }
                        self.submission_ok(t + 60, ip, &user);
                    }
                    first = false;
                }
                t += self.rng.range(20 * 60, 90 * 60);
            }
        }
    }

    /// A phone with a stale password: worked at first, then fails every 15 minutes.
    fn phone(&mut self) {
        let ip = self.fresh_v4(198, 19);
        self.truth.benign.insert(ip);
        self.truth.phone = Some(ip);
        let user = format!("carol@{DOMAIN}");
        let mut t = 60;
        for _ in 0..4 {
            self.imap_ok(t, ip, &user);
            t += 900;
        }
        while self.at(t) < self.end() {
            self.failed_login(t, ip, &user, Login::Imap, true, true);
            t += 900 + self.rng.range(-30, 30);
        }
    }

    /// An office NAT: many users log in all day; a few typos, always followed by success.
    fn office(&mut self) {
        let ip = self.fresh_v4(198, 19);
        self.truth.benign.insert(ip);
        self.truth.office_nat = Some(ip);
        let days = (i64::from(self.cfg.hours) + 23) / 24;
        for u in 1..=self.cfg.office_users {
            let user = format!("office{u:02}@{DOMAIN}");
            for day in 0..days {
                let mut t = day * 86400 + 8 * 3600 + self.rng.range(0, 3600);
                // The desktop client logs in first (saved password); typos come later in the day.
                let mut first = true;
                while t < day * 86400 + 18 * 3600 {
                    if !first && self.rng.chance(0.02) {
                        self.failed_login(t, ip, &user, Login::Imap, true, true);
                        t += self.rng.range(10, 30);
                    }
                    self.imap_ok(t, ip, &user);
                    first = false;
                    t += self.rng.range(15 * 60, 45 * 60);
                }
            }
        }
        for day in 0..days {
            // The office's own MTA verifies senders through the same NAT address...
            let mut t = day * 86400 + 8 * 3600;
            while t < day * 86400 + 18 * 3600 {
                let rcpt = format!("{}@{DOMAIN}", self.pick_mailbox());
                self.smtp_session(
                    t,
                    ip,
                    "unknown",
                    "",
                    &rcpt,
                    "mx.office.example",
                    SmtpEnd::Quit,
                );
                t += self.rng.range(5 * 60, 15 * 60);
            }
            // ...while a new colleague mistypes a password before the first success of the day.
            let t = day * 86400 + 9 * 3600 + self.rng.range(0, 1800);
            let user = format!("newhire@{DOMAIN}");
            self.failed_login(t, ip, &user, Login::Imap, true, true);
            self.imap_ok(t + 40, ip, &user);
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum SmtpEnd {
    Delivered,
    Quit,
    RsetQuit,
    Dropped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_text_other_seed_other_text() {
        let cfg = SimConfig {
            hours: 6,
            bots_v4: 20,
            bots_v6: 5,
            ..SimConfig::default()
        };
        let a = Sim::generate(&cfg);
        let b = Sim::generate(&cfg);
        assert_eq!(Sim::text(&a.postfix), Sim::text(&b.postfix));
        assert_eq!(Sim::text(&a.dovecot), Sim::text(&b.dovecot));
        let c = Sim::generate(&SimConfig { seed: 2, ..cfg });
        assert_ne!(Sim::text(&a.dovecot), Sim::text(&c.dovecot));
    }

    #[test]
    fn lines_look_like_the_lab() {
        let sim = Sim::generate(&SimConfig {
            hours: 6,
            ..SimConfig::default()
        });
        let pf = Sim::text(&sim.postfix);
        let dc = Sim::text(&sim.dovecot);
        assert!(pf.contains(" mail postfix/smtpd["));
        assert!(pf.contains(": NOQUEUE: info: RCPT from unknown[198.18."));
        assert!(pf.contains("ehlo=1 mail=1 rcpt=1 quit=1 commands=4"));
        assert!(
            pf.contains("SASL PLAIN authentication failed: (reason unavailable), sasl_username=")
        );
        assert!(dc.contains("auth: Info: passwd-file("));
        assert!(dc.contains("imap-login: Info: Disconnected: "));
        assert!(dc.contains("rip=2001:db8:"));
        // Every line starts with a syslog timestamp; the files are in time order.
        for lines in [&sim.postfix, &sim.dovecot] {
            assert!(lines.windows(2).all(|w| w[0].time <= w[1].time));
            assert!(lines.iter().all(|l| l.text.starts_with("Nov 2")));
        }
        assert!(sim.truth.bots.len() >= 300 && sim.truth.benign.len() > 50);
        assert!(sim.truth.attackers().is_disjoint(&sim.truth.benign));
    }
}
