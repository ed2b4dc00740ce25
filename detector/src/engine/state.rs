//! Correlation state: per IP, per user name and per ban prefix. Times are Unix seconds of log
//! time. Every collection is bounded (caps from [`EngineConfig`](super::EngineConfig)).
//!
//! Memory: `IpState` is about 200 bytes inline plus its heap parts. A typical bot (one probe
//! with one recipient, two counted failures, five evidence lines) measures 1.5 KiB including
//! its hash-map entry (`bytes_per_tracked_ip` test: `cargo test -p detector --lib bytes_per --
//! --nocapture`). Over 48 h of simulated traffic the average is 1.9–2.2 KiB per tracked IP
//! (`cargo run --release -p detector-tests --bin engine-bench`: 6 114 IPs in 13 MiB). The worst
//! case per IP is bounded by the per-IP caps (about 12 KiB with the defaults: 64 failures,
//! 8 evidence lines, 16 users, 4 probes). With the default cap of 100 000 IPs that is about
//! 200 MB typical at the cap; busy hosts track a few thousand IPs, i.e. a few MB. User-name
//! state is about 100 bytes per name (one failing IP) up to 256 IPs per name.

use std::collections::VecDeque;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::decision::{Evidence, Rule};

/// Longest user name or recipient kept (bytes); longer attacker-supplied names are cut.
pub const MAX_NAME_LEN: usize = 128;
/// Successful-login users remembered per IP.
pub const MAX_SUCCESS_USERS: usize = 16;
/// Accepted recipients remembered per IP while their transaction is open.
pub const MAX_PENDING_RCPTS: usize = 8;
/// Aborted transactions remembered per IP.
pub const MAX_PROBES: usize = 4;
/// Recipients remembered per aborted transaction.
pub const MAX_PROBE_RCPTS: usize = 4;

/// One counted failed login.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub time: i64,
    pub line: u64,
    pub user: Option<Box<str>>,
    /// Attempts this line counted (`Event::failures`).
    pub count: u32,
    /// The mailbox does not exist (`auth_unknown_user`).
    pub unknown_user: bool,
    /// The IP has logged in successfully as this user (before or after): only the lenient
    /// burst applies.
    pub lenient: bool,
    /// Which half of an SMTP AUTH attempt this is, if any (see [`SaslSide`]).
    #[serde(default)]
    pub sasl: Option<SaslSide>,
    /// Already matched with the other half of the same SMTP AUTH attempt.
    #[serde(default)]
    pub paired: bool,
}

/// One SMTP AUTH attempt is logged twice: Postfix's `SASL ... authentication failed` warning
/// and Dovecot's session-less `passwd-file(user,ip)` auth line. When Postfix and Dovecot are
/// read from different sources, each parser counts its own line, so the engine pairs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslSide {
    Postfix,
    Dovecot,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Success {
    pub user: Box<str>,
    pub time: i64,
    /// False when the login looked like a guessed password (possible compromise): it makes
    /// the address neither a known client nor shared.
    #[serde(default = "yes")]
    pub trusted: bool,
}

fn yes() -> bool {
    true
}

/// A ban held for the grace period: weak evidence that a successful login from the same
/// address cancels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// Log time at which the ban is made if nothing cancelled it.
    pub deadline: i64,
    pub rule: Rule,
    pub note: String,
    /// The address the decision names (inside an IPv6 /64 it may differ from the key).
    pub addr: IpAddr,
}

/// A probe of a mailbox, remembered by mailbox so a login from another address can be tied
/// to it (split roles).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeMark {
    pub time: i64,
    /// State key of the prober.
    pub prober: IpAddr,
    /// The prober's own address.
    pub addr: IpAddr,
    pub recipient: Box<str>,
}

/// An accepted RCPT whose transaction has not ended yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingRcpt {
    pub session: Option<Box<str>>,
    pub recipient: Box<str>,
    pub time: i64,
    /// Whether the RCPT line's client looked like a mail server (`None`: not told).
    #[serde(default)]
    pub peer: Option<bool>,
}

/// An SMTP transaction that named a recipient and ended without an accepted message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub time: i64,
    pub line: u64,
    pub session: Option<Box<str>>,
    pub recipients: Vec<Box<str>>,
    /// The client looked like a mail server verifying a sender (see `SmtpPeer`): such a
    /// probe is weak evidence only and never ties other addresses to it.
    #[serde(default)]
    pub mta_like: bool,
    /// The RCPT line told what the client looked like (`mta_like` is a finding, not a default).
    #[serde(default)]
    pub peer_known: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IpState {
    pub first_seen: i64,
    pub last_seen: i64,
    pub failures: VecDeque<Failure>,
    pub successes: Vec<Success>,
    pub pending_rcpts: Vec<PendingRcpt>,
    pub probes: VecDeque<Probe>,
    pub evidence: VecDeque<Evidence>,
    /// A ban waiting out the grace period.
    #[serde(default)]
    pub pending: Option<Pending>,
    /// Last log time the address was tied to a campaign (a login linked to a probe, a
    /// failure on a mailbox under attack): a success from it is not trusted.
    #[serde(default)]
    pub campaign: Option<i64>,
    /// Last log time a shared-address alert was raised for it.
    #[serde(default)]
    pub shared_noticed: Option<i64>,
    /// Last possible-compromise alert: log time, user.
    #[serde(default)]
    pub compromise: Option<(i64, Box<str>)>,
}

impl IpState {
    pub fn push_evidence(&mut self, ev: Evidence, cap: usize) {
        // Duplicate descriptions of one line (same number) are kept once.
        if self
            .evidence
            .back()
            .is_some_and(|e| e.line == ev.line && e.time == ev.time)
        {
            return;
        }
        self.evidence.push_back(ev);
        while self.evidence.len() > cap {
            self.evidence.pop_front();
        }
    }

    /// Did this IP log in successfully as `user` at or after `since`?
    pub fn succeeded_as(&self, user: &str, since: i64) -> bool {
        self.successes
            .iter()
            .any(|s| &*s.user == user && s.time >= since)
    }

    /// Distinct users with a trusted successful login at or after `since`.
    pub fn success_users_since(&self, since: i64) -> usize {
        self.successes
            .iter()
            .filter(|s| s.trusted && s.time >= since)
            .count()
    }

    /// Users this address logged in as (trusted) at or after `since`.
    pub fn known_users(&self, since: i64) -> impl Iterator<Item = &str> {
        self.successes
            .iter()
            .filter(move |s| s.trusted && s.time >= since)
            .map(|s| &*s.user)
    }

    /// Heap plus inline bytes, for the memory estimate.
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        let name = |s: &Option<Box<str>>| s.as_ref().map_or(0, |s| s.len());
        size_of::<IpAddr>()
            + size_of::<Self>()
            + self.failures.capacity() * size_of::<Failure>()
            + self.failures.iter().map(|f| name(&f.user)).sum::<usize>()
            + self.successes.capacity() * size_of::<Success>()
            + self.successes.iter().map(|s| s.user.len()).sum::<usize>()
            + self.pending_rcpts.capacity() * size_of::<PendingRcpt>()
            + self.pending_rcpts.iter().map(|p| p.recipient.len() + name(&p.session)).sum::<usize>()
            + self.probes.capacity() * size_of::<Probe>()
            + self
                .probes
                .iter()
                .map(|p| {
                    p.recipients.capacity() * size_of::<Box<str>>()
                        + p.recipients.iter().map(|r| r.len()).sum::<usize>()
                        + name(&p.session)
                })
                .sum::<usize>()
            + self.evidence.capacity() * size_of::<Evidence>()
            + self.evidence.iter().map(|e| e.what.capacity()).sum::<usize>()
            // hashbrown: one control byte per bucket and about 1/8 spare buckets.
            + (size_of::<IpAddr>() + size_of::<Self>()) / 8
            + 1
    }
}

/// A failure on a user name, for `target-campaign`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserFailure {
    /// State key (see `Engine::state_key`).
    pub ip: IpAddr,
    pub time: i64,
    /// The address itself (differs from `ip` inside an IPv6 /64), for decisions.
    #[serde(default)]
    pub addr: Option<IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    pub last_seen: i64,
    /// One entry per failing IP (latest failure time), oldest first.
    pub failures: VecDeque<UserFailure>,
    /// Log time until which the name counts as under attack (set when the campaign threshold
    /// is reached, extended by the horizon on each later crossing).
    pub attacked_until: Option<i64>,
    /// Addresses whose failed login on this mailbox was tied to a probe (own or split-role),
    /// latest first kept; `campaign_probe_ips` of them within `campaign_window` put the
    /// mailbox under a probe campaign (aborts that probe it are banned).
    #[serde(default)]
    pub linked: VecDeque<UserFailure>,
    /// Last trusted successful login as this mailbox, from any address: it has an owner who
    /// may mistype during an attack.
    #[serde(default)]
    pub owner_seen: Option<i64>,
}

/// Bans and offences of one ban prefix (an IPv4 address or an IPv6 /64 by default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefixState {
    pub offences: u32,
    pub last_offence: i64,
    pub banned_until: i64,
    pub last_rule: Rule,
    pub last_note: String,
}

/// Cuts an attacker-supplied name to [`MAX_NAME_LEN`] bytes on a char boundary and replaces
/// control characters (they end up in notes that admins read on a terminal).
pub fn bounded_name(s: &str) -> Box<str> {
    let mut end = s.len().min(MAX_NAME_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let s = &s[..end];
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// Removes the entries with the oldest `last_seen` until `map` holds at most 90% of `cap`
/// (so eviction runs rarely). Ties break on the key for determinism.
pub fn evict_oldest<K, V>(
    map: &mut std::collections::HashMap<K, V>,
    cap: usize,
    last_seen: impl Fn(&V) -> i64,
    keep: impl Fn(&K, &V) -> bool,
) -> usize
where
    K: std::hash::Hash + Eq + Ord + Clone,
{
    if map.len() <= cap {
        return 0;
    }
    let target = cap - cap / 10;
    let mut order: Vec<(i64, K)> = map
        .iter()
        .filter(|(k, v)| !keep(k, v))
        .map(|(k, v)| (last_seen(v), k.clone()))
        .collect();
    order.sort_unstable();
    let excess = map.len().saturating_sub(target).min(order.len());
    for (_, k) in order.into_iter().take(excess) {
        map.remove(&k);
    }
    excess
}
