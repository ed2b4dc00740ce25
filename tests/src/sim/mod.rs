//! Mail-host traffic simulator with ground truth.
//!
//! The simulated world is a list of connections ([`Session`]s): each belongs to one actor,
//! comes from one source address, starts at one log time and writes its Postfix and Dovecot
//! lines (in the formats of [`detector_testkit::loggen`], Dovecot 2.3 or 2.4, syslog files
//! or journal JSON) together with the event the parser is expected to produce for each line.
//!
//! - [`Sim::generate`] builds the world (open loop: every connection, as without a blocker);
//! - [`run::run`] drives the parser and the engine in log time and lets a connection whose
//!   source is banned at that moment write nothing (it was dropped at XDP), then measures per
//!   traffic class ([`run::Report`]).
//!
//! Traffic kinds ([`BenignKind`], [`BotKind`]) are those of issue 10; `SimConfig::default()`
//! keeps the original mix (seed botnet, brute forcer, sprayers, injector, MTAs, verifiers,
//! customers, a stale phone, an office) and [`SimConfig::issue10`] adds every other kind.
//!
//! Deterministic from the seed ([`detector_testkit::rng::Rng`]).
pub mod run;
mod sessions;
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, TimeZone, Utc};
use detector::event::Event;
pub use detector_testkit::loggen::{DovecotVersion, Envelope, LogFile};

/// The mail host's own addresses (as in the lab).
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The main hosted domain; [`HOSTED`] lists all of them.
pub const DOMAIN: &str = "example.test";
pub const HOSTED: &[&str] = &["example.test", "example.org", "example.net"];

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub hours: u32,
    /// Seed-pattern botnet members (IPv4 / IPv6).
    pub bots_v4: usize,
    pub bots_v6: usize,
    pub sprayers: usize,
    pub customers: usize,
    pub office_users: usize,
    pub start: DateTime<Utc>,
    pub dovecot: DovecotVersion,
    pub envelope: Envelope,
    /// Every traffic kind of issue 10 (benign traps and the botnet's next moves).
    pub extended: bool,
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
            dovecot: DovecotVersion::V2_3,
            envelope: Envelope::SplitFiles,
            extended: false,
        }
    }
}

impl SimConfig {
    /// 72 h of a hosted-mail server with every traffic kind of issue 10.
    pub fn issue10(seed: u64, dovecot: DovecotVersion, envelope: Envelope) -> Self {
        SimConfig {
            seed,
            hours: 72,
            bots_v4: 200,
            bots_v6: 40,
            sprayers: 30,
            customers: 300,
            office_users: 25,
            dovecot,
            envelope,
            extended: true,
            ..SimConfig::default()
        }
    }
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

/// What a connection was, for the measurements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// An SMTP transaction that named `rcpt` and ended without a message (probe, callout).
    Probe { rcpt: String },
    /// A login as `user`; `ok` when it succeeded.
    Login { user: String, ok: bool },
    /// Anything else (deliveries, monitoring checks).
    Other,
}

/// One connection: its lines appear only if its source is not banned when it starts.
#[derive(Clone, Debug)]
pub struct Session {
    pub actor: usize,
    pub ip: IpAddr,
    pub start: DateTime<Utc>,
    pub attempt: Attempt,
    pub lines: Vec<SimLine>,
}

/// Legitimate traffic kinds (none of them may ever be banned).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BenignKind {
    /// Remote MTAs delivering mail.
    Mta,
    /// Remote MTAs' sender-address verification (RCPT then QUIT, never a login).
    Callout,
    /// Large providers' outbound pools: deliveries and null-sender callouts, also of
    /// addresses under attack.
    ProviderPool,
    /// Customers on 1-3 stable addresses with password and user-name typos.
    Customer,
    /// A phone with a stale password retrying every 10-15 minutes for days.
    StalePhone,
    /// A customer's devices after a password change (a few failures, then success).
    PasswordChange,
    /// New employees failing 3-4 times on their first day, then succeeding.
    NewHire,
    /// Phone and laptop failing every few minutes for an hour after a password change.
    DevicesAfterChange,
    /// An office NAT with many users; its mail gateway makes sender-verification callouts.
    OfficeNat,
    /// A webmail host proxying IMAP logins for dozens of users, with their typos.
    Webmail,
    /// A mobile carrier's CGNAT address shared by dozens of customers.
    Cgnat,
    /// Monitoring checks (SMTP banner, IMAP login of a test account).
    Monitoring,
    /// Owners of mailboxes under attack, mistyping during the attack.
    AttackedOwner,
}

/// Attacker kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BotKind {
    /// Probe, login as the probed address seconds later, retry every 2-3 h.
    Seed,
    /// Split roles: the prober P (probes for many L's, never logs in).
    SplitProber,
    /// Split roles: the login address L (logs in as what P probed, never probes).
    SplitLogin,
    /// Login 15-45 min after the probe, retries every 5-9 h.
    Lazy,
    /// Every attempt from a fresh /64 inside one /48.
    V6Hopper,
    /// One probe and one login per address, never seen again.
    OneShot,
    /// One mailbox tried as `Name@Domain`, `name`, `name+tag@domain`.
    Variants,
    /// Guesses one password right (after probing, or after failing as other users).
    GuessedRight,
    BruteForcer,
    Sprayer,
    Injector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Benign(BenignKind),
    Bot(BotKind),
}

/// One simulated actor (a customer, a bot member, a host).
#[derive(Clone, Debug)]
pub struct Actor {
    pub role: Role,
    /// Every source address it used.
    pub addrs: BTreeSet<IpAddr>,
    /// One-shot bots: the mailbox of their campaign. Hoppers: their /48 as text.
    pub group: Option<String>,
}

/// What each simulated address is.
#[derive(Clone, Debug, Default)]
pub struct Truth {
    pub actors: Vec<Actor>,
    /// The first role each address was given (shared addresses keep the first).
    pub roles: BTreeMap<IpAddr, Role>,
    /// Seed botnet addresses and the times of their login attempts (rotating IPv6 members use
    /// a new address of their /64 each round, so one member can have several addresses).
    pub bots: BTreeMap<IpAddr, Vec<DateTime<Utc>>>,
    pub brute_forcer: Option<IpAddr>,
    pub sprayers: BTreeSet<IpAddr>,
    /// Sends logins whose user names carry fake addresses.
    pub injector: Option<IpAddr>,
    /// Addresses that appear only inside attacker-controlled user names: never to be banned.
    pub injected: BTreeSet<IpAddr>,
    /// Every benign address.
    pub benign: BTreeSet<IpAddr>,
    pub phone: Option<IpAddr>,
    pub office_nat: Option<IpAddr>,
}

impl Truth {
    /// Every attacker address of the original mix (seed botnet, brute forcer, sprayers,
    /// injector).
    pub fn attackers(&self) -> BTreeSet<IpAddr> {
        let mut a: BTreeSet<IpAddr> = self.bots.keys().copied().collect();
        a.extend(self.brute_forcer);
        a.extend(self.sprayers.iter().copied());
        a.extend(self.injector);
        a
    }

    /// Every address of any bot kind.
    pub fn bot_addrs(&self) -> BTreeSet<IpAddr> {
        self.roles
            .iter()
            .filter(|(_, r)| matches!(r, Role::Bot(_)))
            .map(|(ip, _)| *ip)
            .collect()
    }
}

pub struct Sim {
    pub cfg: SimConfig,
    /// Every connection, by start time.
    pub sessions: Vec<Session>,
    pub truth: Truth,
}

impl Sim {
    pub fn generate(cfg: &SimConfig) -> Sim {
        sessions::generate(cfg)
    }

    /// The lines of one file (open loop: every session), in time order.
    pub fn lines(&self, file: LogFile) -> Vec<&SimLine> {
        let mut v: Vec<&SimLine> = self
            .sessions
            .iter()
            .flat_map(|s| &s.lines)
            .filter(|l| l.file == file)
            .collect();
        v.sort_by_key(|l| (l.time, l.seq));
        v
    }

    pub fn postfix(&self) -> Vec<&SimLine> {
        self.lines(LogFile::Postfix)
    }

    pub fn dovecot(&self) -> Vec<&SimLine> {
        self.lines(LogFile::Dovecot)
    }

    pub fn text(lines: &[&SimLine]) -> String {
        let mut s = String::with_capacity(lines.len() * 160);
        for l in lines {
            s.push_str(&l.text);
            s.push('\n');
        }
        s
    }

    /// Both files merged by time (what one syslog file or the journal would hold).
    pub fn merged(&self) -> Vec<&SimLine> {
        let mut all: Vec<&SimLine> = self.sessions.iter().flat_map(|s| &s.lines).collect();
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
    pub fn expected_events(lines: &[&SimLine]) -> Vec<(Event, String)> {
        lines
            .iter()
            .filter_map(|l| l.event.clone().map(|e| (e, l.text.clone())))
            .collect()
    }
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
        assert_eq!(Sim::text(&a.postfix()), Sim::text(&b.postfix()));
        assert_eq!(Sim::text(&a.dovecot()), Sim::text(&b.dovecot()));
        let c = Sim::generate(&SimConfig { seed: 2, ..cfg });
        assert_ne!(Sim::text(&a.dovecot()), Sim::text(&c.dovecot()));
    }

    #[test]
    fn lines_look_like_the_lab() {
        let sim = Sim::generate(&SimConfig {
            hours: 6,
            ..SimConfig::default()
        });
        let pf = Sim::text(&sim.postfix());
        let dc = Sim::text(&sim.dovecot());
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
        for lines in [&sim.postfix(), &sim.dovecot()] {
            assert!(lines.windows(2).all(|w| w[0].time <= w[1].time));
            assert!(lines.iter().all(|l| l.text.starts_with("Nov 2")));
        }
        assert!(sim.truth.bots.len() >= 300 && sim.truth.benign.len() > 50);
        assert!(sim.truth.attackers().is_disjoint(&sim.truth.benign));
    }

    #[test]
    fn extended_world_has_every_kind_and_2_4_lines() {
        let cfg = SimConfig {
            hours: 30,
            ..SimConfig::issue10(3, DovecotVersion::V2_4, Envelope::Journal)
        };
        let sim = Sim::generate(&cfg);
        let roles: BTreeSet<Role> = sim.truth.actors.iter().map(|a| a.role).collect();
        for k in [
            BenignKind::Mta,
            BenignKind::Callout,
            BenignKind::ProviderPool,
            BenignKind::Customer,
            BenignKind::StalePhone,
            BenignKind::PasswordChange,
            BenignKind::NewHire,
            BenignKind::DevicesAfterChange,
            BenignKind::OfficeNat,
            BenignKind::Webmail,
            BenignKind::Cgnat,
            BenignKind::Monitoring,
            BenignKind::AttackedOwner,
        ] {
            assert!(roles.contains(&Role::Benign(k)), "{k:?} missing");
        }
        for k in [
            BotKind::Seed,
            BotKind::SplitProber,
            BotKind::SplitLogin,
            BotKind::Lazy,
            BotKind::V6Hopper,
            BotKind::OneShot,
            BotKind::Variants,
            BotKind::GuessedRight,
        ] {
            assert!(roles.contains(&Role::Bot(k)), "{k:?} missing");
        }
        // No address is both a bot and benign.
        assert!(sim.truth.bot_addrs().is_disjoint(&sim.truth.benign));
        let text = Sim::text(&sim.merged());
        assert!(
            text.contains("imap-login: Logged in: user=<"),
            "2.4 success"
        );
        assert!(text.contains("(auth_failed): user=<"), "2.4 failure");
        assert!(text.contains(",sasl:plain)<"), "2.4 auth prefix");
        assert!(
            text.lines()
                .all(|l| l.starts_with("{\"__REALTIME_TIMESTAMP\":"))
        );
        // Shared addresses see many distinct users succeed.
        let webmail = sim
            .truth
            .actors
            .iter()
            .find(|a| a.role == Role::Benign(BenignKind::Webmail))
            .unwrap();
        let ip = *webmail.addrs.iter().next().unwrap();
        let users: BTreeSet<&str> = sim
            .sessions
            .iter()
            .filter(|s| s.ip == ip)
            .filter_map(|s| match &s.attempt {
                Attempt::Login { user, ok: true } => Some(user.as_str()),
                _ => None,
            })
            .collect();
        assert!(users.len() >= 30, "{} webmail users", users.len());
    }
}
