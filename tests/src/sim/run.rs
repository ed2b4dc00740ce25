//! The closed loop: the simulated world through the parser and the engine, in log time, with
//! the engine's bans applied at the edge (a connection whose source is banned when it starts
//! writes no line: XDP dropped it), and the measurements per traffic class.
//!
//! Decisions and alerts are read from what the engine returns for each event. An alert is
//! any decision whose JSON `action` is `"alert"` (`{"action":"alert","kind":
//! "possible-compromise",...}`); an engine without alerts yields none.
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Duration, FixedOffset, Utc};
use detector::engine::{Action, Decision, Engine};
use detector::parse::{Format, LineParser, Outcome, Reference};
use detector::pipeline::{DecisionRecord, Fed, FnSink, Pipeline, RawLine};
use ipnet::IpNet;

use super::{Attempt, BenignKind, BotKind, DovecotVersion, Envelope, LogFile, Role, Sim, SimLine};

/// The library's pipeline (parser, engine, sink): fed raw lines for the journal, or the
/// events of one parser per file (Postfix syslog file and Dovecot's `log_path`, as the
/// daemon's file sources and `detector replay` do), in merged log time.
struct Feed {
    pipeline: Pipeline,
    per_file: Option<BTreeMap<LogFile, LineParser>>,
    line_no: u64,
    lines: u64,
    events: u64,
    unparsed: u64,
}

impl Feed {
    fn new(sim: &Sim, engine: Engine) -> Self {
        // Year inference against the end of the simulation; the simulated host runs in UTC.
        let reference = Reference::Fixed(sim.cfg.start + Duration::hours(i64::from(sim.cfg.hours)));
        let utc = FixedOffset::east_opt(0).expect("UTC");
        let parser = |format| LineParser::with_reference(format, reference, utc);
        let (format, per_file) = match sim.cfg.envelope {
            Envelope::SplitFiles => (
                Format::Syslog,
                Some(BTreeMap::from([
                    (LogFile::Postfix, parser(Format::Syslog)),
                    (LogFile::Dovecot, parser(Format::Syslog)),
                ])),
            ),
            Envelope::Syslog => (Format::Syslog, None),
            Envelope::Journal => (Format::JournalJson, None),
        };
        Feed {
            pipeline: Pipeline::new(parser(format), engine),
            per_file,
            line_no: 0,
            lines: 0,
            events: 0,
            unparsed: 0,
        }
    }

    fn line(&mut self, l: &SimLine) -> Vec<Decision> {
        self.line_no += 1;
        self.lines += 1;
        let mut out = Vec::new();
        let mut sink = FnSink(|r: &DecisionRecord| out.push(r.decision.clone()));
        let origin = match l.file {
            LogFile::Postfix => "postfix.log",
            LogFile::Dovecot => "dovecot.log",
        };
        let fed = match &mut self.per_file {
            None => self
                .pipeline
                .feed_line(origin, self.line_no, l.text.as_bytes(), &mut sink),
            Some(parsers) => {
                let parser = parsers.get_mut(&l.file).expect("a parser per file");
                match parser.parse_line(l.text.as_bytes(), self.line_no) {
                    Outcome::Event(ev) => {
                        let raw = RawLine {
                            file: origin.into(),
                            line: self.line_no,
                            text: l.text.clone(),
                        };
                        self.pipeline.feed_event(ev, raw, &mut sink)
                    }
                    Outcome::Ignored => Fed::Ignored,
                    Outcome::Unparsed => Fed::Unparsed,
                }
            }
        };
        match fed {
            Fed::Event { .. } => self.events += 1,
            Fed::Unparsed => self.unparsed += 1,
            Fed::Ignored | Fed::AheadOfClock { .. } => {}
        }
        out
    }

    fn stats(&self) -> (u64, u64, u64) {
        (self.lines, self.events, self.unparsed)
    }
}

/// Bans in force at the edge, by prefix.
#[derive(Default)]
struct Edge {
    until: HashMap<IpNet, DateTime<Utc>>,
    lens: BTreeSet<u8>,
}

impl Edge {
    fn apply(&mut self, d: &Decision) {
        match d.action {
            Action::Ban => {
                self.lens.insert(d.prefix.prefix_len());
                self.until.insert(d.prefix, d.expires());
            }
            Action::Unban => {
                self.until.remove(&d.prefix);
            }
        }
    }

    fn blocks(&self, ip: IpAddr, t: DateTime<Utc>) -> bool {
        self.lens.iter().any(|&len| {
            IpNet::new(ip, len)
                .ok()
                .map(|n| n.trunc())
                .and_then(|n| self.until.get(&n))
                .is_some_and(|until| *until > t)
        })
    }
}

/// What one closed-loop run produced.
pub struct Run {
    pub dovecot: DovecotVersion,
    pub envelope: Envelope,
    pub lines: u64,
    pub events: u64,
    pub unparsed: u64,
    /// Bans and unbans, in order.
    pub decisions: Vec<Decision>,
    /// Possible-compromise alerts.
    pub alerts: Vec<Decision>,
    /// Per session of [`Sim::sessions`]: dropped at the edge (its source was banned).
    pub blocked: Vec<bool>,
}

/// A line waiting in the merge: (time, sequence, session index, line index).
type Pending = (DateTime<Utc>, u64, usize, usize);

/// Whether a decision is an alert (read from its JSON so that this code does not depend on
/// how the engine represents it).
pub fn is_alert(d: &Decision) -> bool {
    serde_json::to_value(d)
        .ok()
        .and_then(|v| {
            v.get("action")
                .and_then(|a| a.as_str())
                .map(|a| a == "alert")
        })
        .unwrap_or(false)
}

/// Runs the world through parser and engine in log time, dropping the connections of banned
/// sources.
pub fn run(sim: &Sim, engine: Engine) -> Run {
    let mut feed = Feed::new(sim, engine);
    let mut edge = Edge::default();
    let mut decisions = Vec::new();
    let mut alerts = Vec::new();
    let mut blocked = vec![false; sim.sessions.len()];
    // Pending lines of admitted sessions: (time, seq) min-heap over (session, line index).
    let mut heap: BinaryHeap<std::cmp::Reverse<Pending>> = BinaryHeap::new();
    let mut handle = |feed: &mut Feed, edge: &mut Edge, l: &SimLine| {
        for d in feed.line(l) {
            if is_alert(&d) {
                alerts.push(d);
            } else {
                edge.apply(&d);
                decisions.push(d);
            }
        }
    };
    for (i, s) in sim.sessions.iter().enumerate() {
        while let Some(std::cmp::Reverse((t, _, si, li))) = heap.peek().copied() {
            if t > s.start {
                break;
            }
            heap.pop();
            handle(&mut feed, &mut edge, &sim.sessions[si].lines[li]);
        }
        if edge.blocks(s.ip, s.start) {
            blocked[i] = true;
            continue;
        }
        for (li, l) in s.lines.iter().enumerate() {
            heap.push(std::cmp::Reverse((l.time, l.seq, i, li)));
        }
    }
    while let Some(std::cmp::Reverse((_, _, si, li))) = heap.pop() {
        handle(&mut feed, &mut edge, &sim.sessions[si].lines[li]);
    }
    let (lines, events, unparsed) = feed.stats();
    Run {
        dovecot: sim.cfg.dovecot,
        envelope: sim.cfg.envelope,
        lines,
        events,
        unparsed,
        decisions,
        alerts,
        blocked,
    }
}

fn covers(d: &Decision, ip: &IpAddr) -> bool {
    d.ip == *ip || d.prefix.contains(ip)
}

/// Bot classes measured by "banned before the second login attempt".
pub const REPEATING: [BotKind; 4] = [
    BotKind::Seed,
    BotKind::SplitLogin,
    BotKind::Lazy,
    BotKind::Variants,
];

#[derive(Clone, Debug, Default)]
pub struct BotRow {
    pub actors: usize,
    /// Actors with at least two login attempts.
    pub with_second: usize,
    /// ... banned (a ban decision covering the address) before the second one.
    pub banned_before_second: usize,
    /// ... whose second attempt was dropped at the edge.
    pub blocked_at_second: usize,
    /// Actors banned at all.
    pub banned: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub name: String,
    pub lines: u64,
    pub events: u64,
    pub unparsed: u64,
    pub sessions: usize,
    pub blocked_sessions: usize,
    pub bots: BTreeMap<BotKind, BotRow>,
    /// IPv6 hoppers with a 4th attempt, and those whose /48 a ban covered by then.
    pub hoppers_with_fourth: usize,
    pub hoppers_covered: usize,
    /// One-shot: guesses after the first ban on that mailbox's campaign, and how many of them
    /// reached Dovecot; per mailbox (guesses, reached, detected at).
    pub one_shot_after: usize,
    pub one_shot_reached: usize,
    pub one_shot: BTreeMap<String, (usize, usize, Option<DateTime<Utc>>)>,
    /// Guessed-right bots: how many, alerted after their success, banned after it.
    pub guessed_right: usize,
    pub guessed_right_alerted: usize,
    pub guessed_right_banned: usize,
    /// Alerts that name a benign address.
    pub benign_alerts: usize,
    pub alerts: usize,
    /// Per benign kind: addresses, banned addresses, examples.
    pub benign: BTreeMap<BenignKind, (usize, usize, Vec<String>)>,
    /// Bans covering an address that only appears inside attacker-written text.
    pub injected_banned: usize,
}

impl Report {
    pub fn from_run(sim: &Sim, run: &Run) -> Report {
        let bans: Vec<&Decision> = run
            .decisions
            .iter()
            .filter(|d| d.action == Action::Ban)
            .collect();
        let mut r = Report {
            name: format!("Dovecot {:?}, {:?}", run.dovecot, run.envelope),
            lines: run.lines,
            events: run.events,
            unparsed: run.unparsed,
            sessions: sim.sessions.len(),
            blocked_sessions: run.blocked.iter().filter(|b| **b).count(),
            alerts: run.alerts.len(),
            ..Report::default()
        };
        // Login sessions per actor, in time order.
        let mut logins: Vec<Vec<usize>> = vec![Vec::new(); sim.truth.actors.len()];
        for (i, s) in sim.sessions.iter().enumerate() {
            if matches!(s.attempt, Attempt::Login { .. }) {
                logins[s.actor].push(i);
            }
        }
        let first_ban = |addrs: &BTreeSet<IpAddr>| -> Option<DateTime<Utc>> {
            bans.iter()
                .filter(|d| addrs.iter().any(|a| covers(d, a)))
                .map(|d| d.time)
                .min()
        };
        let mut one_shot_detect: BTreeMap<String, Option<DateTime<Utc>>> = BTreeMap::new();
        for (a, actor) in sim.truth.actors.iter().enumerate() {
            let Role::Bot(kind) = actor.role else {
                continue;
            };
            let row = r.bots.entry(kind).or_default();
            row.actors += 1;
            let banned_at = first_ban(&actor.addrs);
            row.banned += usize::from(banned_at.is_some());
            if let Some(&second) = logins[a].get(1) {
                row.with_second += 1;
                let t2 = sim.sessions[second].start;
                row.banned_before_second += usize::from(banned_at.is_some_and(|b| b <= t2));
                row.blocked_at_second += usize::from(run.blocked[second]);
            }
            match kind {
                BotKind::V6Hopper => {
                    if let Some(&fourth) = logins[a].get(3) {
                        r.hoppers_with_fourth += 1;
                        let t4 = sim.sessions[fourth].start;
                        let net: Option<IpNet> =
                            actor.group.as_deref().and_then(|g| g.parse().ok());
                        let covered = net.is_some_and(|n| {
                            bans.iter().any(|d| {
                                d.time <= t4
                                    && d.expires() > t4
                                    && d.prefix.prefix_len() <= n.prefix_len()
                                    && d.prefix.contains(&n.network())
                            })
                        });
                        r.hoppers_covered += usize::from(covered);
                    }
                }
                BotKind::OneShot => {
                    let target = actor.group.clone().unwrap_or_default();
                    let e = one_shot_detect.entry(target).or_insert(None);
                    if let Some(b) = banned_at {
                        *e = Some(e.map_or(b, |x: DateTime<Utc>| x.min(b)));
                    }
                }
                BotKind::GuessedRight => {
                    r.guessed_right += 1;
                    let success = logins[a]
                        .iter()
                        .find_map(|&i| match &sim.sessions[i].attempt {
                            Attempt::Login { ok: true, .. } => Some(sim.sessions[i].start),
                            _ => None,
                        });
                    if let Some(ok_at) = success {
                        let alerted = run
                            .alerts
                            .iter()
                            .any(|d| d.time >= ok_at && actor.addrs.iter().any(|ip| covers(d, ip)));
                        r.guessed_right_alerted += usize::from(alerted);
                        let banned = bans
                            .iter()
                            .any(|d| d.time >= ok_at && actor.addrs.iter().any(|ip| covers(d, ip)));
                        r.guessed_right_banned += usize::from(banned);
                    }
                }
                _ => {}
            }
        }
        // One-shot guesses after the campaign's first ban.
        for (target, detected) in &one_shot_detect {
            let (mut after, mut reached) = (0, 0);
            if let Some(t0) = detected {
                for (i, s) in sim.sessions.iter().enumerate() {
                    let actor = &sim.truth.actors[s.actor];
                    if actor.role == Role::Bot(BotKind::OneShot)
                        && actor.group.as_deref() == Some(target)
                        && matches!(s.attempt, Attempt::Login { .. })
                        && s.start > *t0
                    {
                        after += 1;
                        reached += usize::from(!run.blocked[i]);
                    }
                }
            }
            r.one_shot_after += after;
            r.one_shot_reached += reached;
            r.one_shot
                .insert(target.clone(), (after, reached, *detected));
        }
        // Benign precision per kind.
        for actor in &sim.truth.actors {
            let Role::Benign(kind) = actor.role else {
                continue;
            };
            let row = r.benign.entry(kind).or_default();
            for ip in &actor.addrs {
                if sim.truth.roles.get(ip) != Some(&actor.role) {
                    continue;
                }
                row.0 += 1;
                if let Some(d) = bans.iter().find(|d| covers(d, ip)) {
                    row.1 += 1;
                    if row.2.len() < 3 {
                        row.2
                            .push(format!("{ip} by {} at {}: {}", d.rule, d.time, d.note));
                    }
                }
            }
        }
        r.benign_alerts = run
            .alerts
            .iter()
            .filter(|d| sim.truth.benign.iter().any(|ip| covers(d, ip)))
            .count();
        r.injected_banned = sim
            .truth
            .injected
            .iter()
            .filter(|ip| bans.iter().any(|d| covers(d, ip)))
            .count();
        r
    }

    /// Benign addresses banned, over every kind.
    pub fn benign_banned(&self) -> usize {
        self.benign.values().map(|v| v.1).sum()
    }

    pub fn one_shot_reached_pct(&self) -> f64 {
        pct(self.one_shot_reached, self.one_shot_after)
    }
}

fn pct(n: usize, d: usize) -> f64 {
    if d == 0 {
        0.0
    } else {
        100.0 * n as f64 / d as f64
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "== {}: {} lines, {} events, {} unparsed; {} connections, {} dropped at the edge",
            self.name, self.lines, self.events, self.unparsed, self.sessions, self.blocked_sessions
        )?;
        writeln!(
            f,
            "  bots (target: >= 95 % banned before their 2nd login attempt):"
        )?;
        for (kind, row) in &self.bots {
            let repeating = REPEATING.contains(kind);
            write!(
                f,
                "    {:<13} {:>4} actors, banned {:>4}",
                format!("{kind:?}"),
                row.actors,
                row.banned
            )?;
            if row.with_second > 0 {
                write!(
                    f,
                    "; with a 2nd login {:>4}: banned before it {:>5.1} %, dropped at it {:>5.1} %",
                    row.with_second,
                    pct(row.banned_before_second, row.with_second),
                    pct(row.blocked_at_second, row.with_second)
                )?;
            }
            writeln!(f, "{}", if repeating { "  [target]" } else { "" })?;
        }
        writeln!(
            f,
            "  IPv6 hoppers: /48 covered by the 4th attempt: {}/{} ({:.1} %) (target 100 %)",
            self.hoppers_covered,
            self.hoppers_with_fourth,
            pct(self.hoppers_covered, self.hoppers_with_fourth)
        )?;
        writeln!(
            f,
            "  one-shot: guesses after the campaign's first ban that reached Dovecot: {}/{} ({:.1} %) (target <= 15 %)",
            self.one_shot_reached,
            self.one_shot_after,
            self.one_shot_reached_pct()
        )?;
        for (target, (after, reached, at)) in &self.one_shot {
            let at = at.map_or("never".to_string(), |t| t.to_string());
            writeln!(f, "    {target}: first ban {at}; {reached}/{after} reached")?;
        }
        writeln!(
            f,
            "  possible-compromise alerts: {} in all; guessed-right bots alerted {}/{} (target 100 %), banned after the success {}/{}; alerts naming a benign address: {} (target 0)",
            self.alerts,
            self.guessed_right_alerted,
            self.guessed_right,
            self.guessed_right_banned,
            self.guessed_right,
            self.benign_alerts
        )?;
        writeln!(f, "  benign addresses banned per kind (target 0):")?;
        for (kind, (n, banned, examples)) in &self.benign {
            writeln!(
                f,
                "    {:<18} {banned:>3}/{n:<4} banned (precision {:.1} %)",
                format!("{kind:?}"),
                100.0 - pct(*banned, *n)
            )?;
            for e in examples {
                writeln!(f, "        {e}")?;
            }
        }
        writeln!(
            f,
            "  injected addresses banned: {} (target 0)",
            self.injected_banned
        )
    }
}
