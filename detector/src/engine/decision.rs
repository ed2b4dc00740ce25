//! What the engine decides: ban or unban a prefix, with the rule and the evidence.
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The rule behind a decision. The kebab-case name appears in every decision and log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// Aborted SMTP transaction that named a recipient, then a failed login from the same IP.
    ProbeLogin,
    /// Failed logins from one IP spread over hours.
    SlowRepeat,
    /// The same user name failing from many IPs: every IP that failed on it is banned.
    TargetCampaign,
    /// Many failures in a short window (fail2ban parity).
    Burst,
    /// Very many failures in a short window on a user the IP has logged in as before.
    LenientBurst,
    /// A failed login as an address that another address probed shortly before (the prober
    /// and the login address are both banned).
    SplitRole,
    /// An aborted SMTP transaction to a mailbox under a probe-and-login campaign, from an
    /// address that never logged in and does not look like a mail server: banned before the
    /// login that would follow.
    CampaignProbe,
    /// A successful login that is most likely a guessed password (after probing, after
    /// failing as other users, or from an address that is part of a campaign).
    PossibleCompromise,
    /// Not a detection rule: an administrator's or restore-time decision.
    Manual,
}

impl Rule {
    pub const ALL: [Rule; 9] = [
        Rule::ProbeLogin,
        Rule::SlowRepeat,
        Rule::TargetCampaign,
        Rule::Burst,
        Rule::LenientBurst,
        Rule::SplitRole,
        Rule::CampaignProbe,
        Rule::PossibleCompromise,
        Rule::Manual,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::ProbeLogin => "probe-login",
            Rule::SlowRepeat => "slow-repeat",
            Rule::TargetCampaign => "target-campaign",
            Rule::Burst => "burst",
            Rule::LenientBurst => "lenient-burst",
            Rule::SplitRole => "split-role",
            Rule::CampaignProbe => "campaign-probe",
            Rule::PossibleCompromise => "possible-compromise",
            Rule::Manual => "manual",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Ban,
    Unban,
    /// Nothing to enforce: something the administrator must hear about (see [`AlertKind`]).
    Alert,
}

/// What an [`Action::Alert`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// A successful login that is most likely a guessed password: the account needs a new
    /// password. The address is banned too (a separate ban decision) unless it is shared or
    /// protected.
    PossibleCompromise,
    /// A rule would have banned an address where many distinct users log in (NAT, CGNAT,
    /// webmail): it is not banned for failures. Said once per horizon per address.
    SharedAddress,
}

impl AlertKind {
    pub const ALL: [AlertKind; 2] = [AlertKind::PossibleCompromise, AlertKind::SharedAddress];

    /// The `kind` label of alerts (log, metric, `replay --json`).
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::PossibleCompromise => "possible-compromise",
            AlertKind::SharedAddress => "shared-address",
        }
    }
}

/// One log line that contributed to a decision: its number (as given in `Event::line`), its
/// log time and a short description. Replay maps the number back to the raw text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub line: u64,
    pub time: DateTime<Utc>,
    pub what: String,
}

/// A ban or unban of `prefix` (which contains `ip`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub action: Action,
    /// The address whose behaviour led to the decision.
    pub ip: IpAddr,
    /// What to ban: `ip` widened to the configured prefix length (IPv6 /64 by default).
    pub prefix: IpNet,
    /// Log time of the event that triggered the decision.
    pub time: DateTime<Utc>,
    pub rule: Rule,
    /// Ban length (0 for unban).
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// 1 for a first ban, 2 for the first repeat, ...
    pub offence: u32,
    pub dry_run: bool,
    /// The lines that led here, oldest first (bounded by `max_evidence`).
    pub evidence: Vec<Evidence>,
    /// The strongest evidence in one sentence, e.g. "login as the probed address ...".
    pub note: String,
    /// On alerts: what is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<AlertKind>,
    /// On alerts: the user name concerned (the account that may be compromised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Decision {
    /// Log time at which the ban ends.
    pub fn expires(&self) -> DateTime<Utc> {
        chrono::Duration::from_std(self.duration)
            .ok()
            .and_then(|d| self.time.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

impl fmt::Display for Decision {
    /// One line for humans: `2026-11-27T05:31:03Z ban 198.18.0.2/32 1h probe-login #1: note`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Ban => "ban",
            Action::Unban => "unban",
            Action::Alert => {
                return write!(
                    f,
                    "{} ALERT {} {} (ip {}{}): {}",
                    self.time.to_rfc3339_opts(SecondsFormat::Secs, true),
                    self.kind.map_or("alert", AlertKind::name),
                    self.prefix,
                    self.ip,
                    self.user
                        .as_deref()
                        .map_or(String::new(), |u| format!(", user {u}")),
                    self.note
                );
            }
        };
        write!(
            f,
            "{} {}{} {} (ip {}) for {} by {} offence #{}: {}",
            self.time.to_rfc3339_opts(SecondsFormat::Secs, true),
            if self.dry_run { "[dry-run] " } else { "" },
            action,
            self.prefix,
            self.ip,
            humantime::format_duration(self.duration),
            self.rule,
            self.offence,
            self.note
        )
    }
}
