//! `Engine::explain`: why an address is or is not banned, from the engine's own state.
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use ipnet::IpNet;
use serde::Serialize;

use super::decision::{Evidence, Rule};
use super::{Engine, canonical, to_time};

/// One remembered failed login of the address.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureView {
    pub time: DateTime<Utc>,
    pub line: u64,
    pub user: Option<String>,
    pub count: u32,
    pub unknown_user: bool,
    /// Counted only by the lenient burst (the address logged in as this user).
    pub lenient: bool,
}

/// Everything the engine knows about one address.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub ip: IpAddr,
    pub prefix: IpNet,
    /// Latest log time the engine has seen (the "now" of this explanation).
    pub now: Option<DateTime<Utc>>,
    /// Why the address can never be banned (loopback, allowlisted, a host address).
    pub protected: Option<&'static str>,
    /// Current ban end, if banned at `now`.
    pub banned_until: Option<DateTime<Utc>>,
    /// Rule and note of the latest ban of the prefix.
    pub last_rule: Option<Rule>,
    pub last_note: Option<String>,
    /// Offences remembered for the prefix (escalation).
    pub offences: u32,
    /// Length of the next ban of the prefix.
    #[serde(with = "humantime_serde")]
    pub next_ban: Duration,
    /// Current `slow-repeat` score within the horizon, and the score that bans.
    pub slow_repeat_score: u32,
    pub slow_repeat_threshold: u32,
    /// The address counts as shared (office NAT, CGNAT, webmail): never banned for failed
    /// logins; see `EngineConfig::shared_ip_users`.
    pub shared: bool,
    /// A known client: it logged in successfully (and not as a possible compromise) within
    /// `lenient_period`, so its failures are typos or stale devices (lenient burst only).
    pub known_client: bool,
    /// A ban held for the grace period: when it will be made, by which rule, why.
    pub pending: Option<(DateTime<Utc>, Rule, String)>,
    /// Last time the address was tied to a campaign (a login linked to a probe, a probe of a
    /// mailbox under a probe campaign): its successful logins are not trusted.
    pub campaign: Option<DateTime<Utc>>,
    /// The latest possible-compromise alert: when, which user.
    pub compromise: Option<(DateTime<Utc>, String)>,
    /// Probes (by time) whose client looked like a mail server verifying a sender: weak
    /// evidence only, never tied to other addresses.
    pub callouts: Vec<DateTime<Utc>>,
    /// An IPv6 site ban (e.g. the /48) that covers the address, if active.
    pub site_ban: Option<IpNet>,
    /// Why the address is not banned (empty when it is).
    pub not_banned_because: Vec<String>,
    pub failures: Vec<FailureView>,
    /// Users this address logged in as (trusted) within the leniency period.
    pub lenient_users: Vec<String>,
    /// Aborted SMTP transactions (log time, recipients) still in the horizon.
    pub probes: Vec<(DateTime<Utc>, Vec<String>)>,
    /// User names it failed on that are under attack (`target-campaign`).
    pub attacked_users: Vec<String>,
    /// The most recent lines about the address, oldest first.
    pub evidence: Vec<Evidence>,
}

impl Engine {
    /// `slow-repeat` score of the failures within the horizon (lenient ones excluded).
    fn slow_repeat_score(&self, s: &super::state::IpState) -> u32 {
        let since = self.now.saturating_sub(self.cfg.horizon.as_secs() as i64);
        s.failures
            .iter()
            .filter(|f| f.time >= since && !f.lenient)
            .map(|f| {
                let w = if f.unknown_user {
                    self.cfg.unknown_user_weight
                } else {
                    1
                };
                f.count.saturating_mul(w)
            })
            .fold(0u32, u32::saturating_add)
    }

    /// Explains `ip` from the remembered state (nothing is changed).
    pub fn explain(&self, ip: IpAddr) -> Explanation {
        let ip = canonical(ip);
        let prefix = self.ban_prefix(ip);
        let p = self.prefixes.get(&prefix);
        let s = self.ips.get(&self.state_key(ip));
        let memory = self.cfg.offence_memory.as_secs() as i64;
        let offences = p
            .filter(|p| p.last_offence >= self.now.saturating_sub(memory))
            .map_or(0, |p| p.offences);
        let lenient_since = self
            .now
            .saturating_sub(self.cfg.lenient_period.as_secs() as i64);
        let failures: Vec<FailureView> = s
            .map(|s| {
                s.failures
                    .iter()
                    .map(|f| FailureView {
                        time: to_time(f.time),
                        line: f.line,
                        user: f.user.as_deref().map(str::to_string),
                        count: f.count,
                        unknown_user: f.unknown_user,
                        lenient: f.lenient,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut attacked_users: Vec<String> = failures
            .iter()
            .filter_map(|f| f.user.clone())
            .filter(|u| {
                self.users
                    .get(u.as_str())
                    .and_then(|x| x.attacked_until)
                    .is_some_and(|t| t >= self.now)
            })
            .collect();
        attacked_users.sort();
        attacked_users.dedup();
        let known_client = s.is_some_and(|s| s.success_users_since(lenient_since) > 0);
        let shared = s.is_some_and(|s| {
            self.cfg.shared_ip_users > 0
                && s.success_users_since(lenient_since) >= self.cfg.shared_ip_users as usize
        });
        let site_ban = self.site_of(prefix).filter(|site| {
            self.prefixes
                .get(site)
                .is_some_and(|p| p.banned_until > self.now)
        });
        let banned = p.is_some_and(|p| p.banned_until > self.now) || site_ban.is_some();
        let pending = s
            .and_then(|s| s.pending())
            .map(|x| (to_time(x.deadline), x.rule, x.note.to_string()));
        let callouts: Vec<DateTime<Utc>> = s
            .map(|s| {
                (s.probes.iter())
                    .filter(|p| p.mta_like)
                    .map(|p| to_time(p.time))
                    .collect()
            })
            .unwrap_or_default();
        let mut why = Vec::new();
        if !banned {
            if let Some(what) = self.is_protected(ip) {
                why.push(format!("protected: {what}"));
            }
            if shared {
                why.push(
                    "shared address: many users log in here, it is never banned for failed logins"
                        .to_string(),
                );
            } else if known_client {
                why.push(
                    "known client: it logged in successfully, so its failures count only for \
                     lenient-burst"
                        .to_string(),
                );
            }
            if let Some((at, rule, _)) = &pending {
                why.push(format!(
                    "grace period: a {rule} ban is held until {} for a successful login that \
                     would cancel it",
                    ts(*at)
                ));
            }
            if !callouts.is_empty() {
                why.push(format!(
                    "{} of its probes looked like a mail server verifying a sender (callout): \
                     weak evidence only",
                    callouts.len()
                ));
            }
        }
        Explanation {
            ip,
            prefix,
            now: self.now(),
            protected: self.is_protected(ip),
            banned_until: p
                .filter(|p| p.banned_until > self.now)
                .map(|p| to_time(p.banned_until)),
            last_rule: p.map(|p| p.last_rule),
            last_note: p.map(|p| p.last_note.to_string()),
            offences,
            next_ban: self.cfg.ban_duration(offences + 1),
            slow_repeat_score: s.map_or(0, |s| self.slow_repeat_score(s)),
            slow_repeat_threshold: self.cfg.slow_repeat_score,
            shared,
            known_client,
            pending,
            campaign: s.and_then(|s| s.campaign()).map(to_time),
            compromise: s
                .and_then(|s| s.compromise())
                .map(|(t, u)| (to_time(*t), u.to_string())),
            callouts,
            site_ban,
            not_banned_because: why,
            failures,
            lenient_users: s
                .map(|s| s.known_users(lenient_since).map(str::to_string).collect())
                .unwrap_or_default(),
            probes: s
                .map(|s| {
                    s.probes
                        .iter()
                        .map(|p| {
                            (
                                to_time(p.time),
                                p.recipients.iter().map(|r| r.to_string()).collect(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            attacked_users,
            evidence: s.map(|s| s.evidence_list()).unwrap_or_default(),
        }
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} (ban prefix {})", self.ip, self.prefix)?;
        if let Some(why) = self.protected {
            writeln!(f, "  never banned: {why}")?;
        }
        if let Some(site) = self.site_ban {
            writeln!(
                f,
                "  banned as part of {site} (offending /64s accumulated in it)"
            )?;
        }
        match (self.banned_until, self.last_rule) {
            (Some(until), Some(rule)) => writeln!(f, "  banned until {} by {rule}", ts(until))?,
            (None, Some(rule)) => writeln!(f, "  not banned now; last ban by {rule}")?,
            _ => writeln!(f, "  not banned")?,
        }
        if let Some(note) = self.last_note.as_deref().filter(|n| !n.is_empty()) {
            writeln!(f, "  reason: {note}")?;
        }
        for why in &self.not_banned_because {
            writeln!(f, "  not banned because: {why}")?;
        }
        if let Some((t, user)) = &self.compromise {
            writeln!(
                f,
                "  ALERT possible compromise: successful login as {user} at {} looked like a \
                 guessed password",
                ts(*t)
            )?;
        }
        if let Some(t) = self.campaign {
            writeln!(
                f,
                "  tied to a campaign at {} (its successful logins are not trusted)",
                ts(t)
            )?;
        }
        writeln!(
            f,
            "  offences: {}; next ban: {}; slow-repeat score {}/{}{}",
            self.offences,
            humantime::format_duration(self.next_ban),
            self.slow_repeat_score,
            self.slow_repeat_threshold,
            if self.shared {
                " (shared address: no failure bans)"
            } else {
                ""
            }
        )?;
        if !self.lenient_users.is_empty() {
            writeln!(
                f,
                "  logged in successfully as: {}",
                self.lenient_users.join(", ")
            )?;
        }
        for (t, rcpts) in &self.probes {
            let to = if rcpts.is_empty() {
                "(recipient not logged)".to_string()
            } else {
                rcpts.join(", ")
            };
            writeln!(f, "  aborted SMTP transaction at {} to {to}", ts(*t))?;
        }
        for x in &self.failures {
            writeln!(
                f,
                "  failed login at {} (line {}) as {}{}{}",
                ts(x.time),
                x.line,
                x.user.as_deref().unwrap_or("?"),
                if x.unknown_user {
                    ", no such mailbox"
                } else {
                    ""
                },
                if x.lenient {
                    ", lenient: known user of this address"
                } else {
                    ""
                }
            )?;
        }
        if !self.attacked_users.is_empty() {
            writeln!(
                f,
                "  user names under attack it failed on: {}",
                self.attacked_users.join(", ")
            )?;
        }
        for e in &self.evidence {
            writeln!(f, "  line {} at {}: {}", e.line, ts(e.time), e.what)?;
        }
        Ok(())
    }
}
