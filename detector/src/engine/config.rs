//! `[engine]` table of detector.toml: every threshold the rules use, with documented defaults.
//!
//! Durations are humantime strings (`"10m"`, `"48h"`, `"30days"`). Unknown keys are an error so
//! a typo does not silently fall back to a default.
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::decision::Rule;
use crate::Error;

/// Correlation engine settings. `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// How long the engine remembers events of an IP or user (default 48h). Also the window of
    /// `slow-repeat` and of the retroactive `target-campaign` bans.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,

    /// `probe-login`: longest gap between an aborted SMTP transaction that named a recipient and
    /// a failed login from the same IP that bans at once (default 10m).
    #[serde(with = "humantime_serde")]
    pub probe_window: Duration,
    /// How long a probe ties a later failed login as the probed mailbox to it, from the same
    /// address (`probe-login`) or another one (`split-role`), with a weight falling from 1 to
    /// 0 over this window; links older than `probe_window` wait out the grace period
    /// (default 1h).
    #[serde(with = "humantime_serde")]
    pub link_window: Duration,
    /// Weak evidence (no probe of the mailbox seconds before) holds a ban this long; a
    /// successful login from the address cancels it (default 10m; 0 bans at once).
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,

    /// `slow-repeat`: failure score within the horizon that bans (default 2).
    pub slow_repeat_score: u32,
    /// Score of one failure for a mailbox that does not exist (`auth_unknown_user`, default 2);
    /// other failures score 1.
    pub unknown_user_weight: u32,
    /// An address with successful logins by at least this many distinct users within
    /// `lenient_period` is shared (office NAT, CGNAT, webmail): it is never banned for failed
    /// logins; a `shared-address` alert says so once per horizon (default 3; 0 disables).
    pub shared_ip_users: u32,

    /// `target-campaign`: distinct IPs failing on one user name within `campaign_window` that
    /// mark it under attack (default 3).
    pub campaign_ips: u32,
    /// `target-campaign` window (default 24h).
    #[serde(with = "humantime_serde")]
    pub campaign_window: Duration,

    /// `campaign-probe`: addresses whose failed login as a mailbox was tied to a probe of it
    /// within `campaign_window` that put the mailbox under a probe campaign; then an aborted
    /// transaction to it from an address that never logged in and does not look like a mail
    /// server is banned at the abort (default 2; 0 disables).
    pub campaign_probe_ips: u32,
    /// `possible-compromise`: distinct other user names an address failed as before a
    /// successful login that make the login suspect (default 2; 0 disables this sign).
    pub compromise_other_users: u32,

    /// `burst`: failures within `burst_window` that ban (fail2ban parity, default 5 in 10m).
    pub burst_failures: u32,
    #[serde(with = "humantime_serde")]
    pub burst_window: Duration,

    /// Known clients: an address (IPv4, or the IPv6 /64) that logged in successfully, as any
    /// user and not as a possible compromise, within this period (default 30 days) is a
    /// known client: its failures count only for the lenient burst below.
    #[serde(with = "humantime_serde")]
    pub lenient_period: Duration,
    /// Lenient burst threshold (default 30 in 10m): phones with stale passwords stay unbanned.
    pub lenient_burst_failures: u32,
    #[serde(with = "humantime_serde")]
    pub lenient_burst_window: Duration,

    /// Ban durations by offence: the first ban lasts the first entry, each repeat offence the
    /// next, the last repeats (default 1h, 24h, 7d, 30d).
    #[serde(with = "humantime_serde_vec")]
    pub ban_durations: Vec<Duration>,
    /// How long offences are remembered for escalation (default 30 days).
    #[serde(with = "humantime_serde")]
    pub offence_memory: Duration,
    /// Prefix length of IPv4 bans (default 32).
    pub ipv4_prefix: u8,
    /// Prefix length of IPv6 bans (default 64: one customer network).
    pub ipv6_prefix: u8,
    /// IPv6 site escalation: when `ipv6_site_offenders` distinct banned prefixes lie inside
    /// one prefix of this length within the horizon, the ban covers it (default 48), unless it
    /// holds a host address, an allowlisted range or a known client.
    pub ipv6_site_prefix: u8,
    /// See `ipv6_site_prefix` (default 3; 0 disables escalation).
    pub ipv6_site_offenders: u32,

    /// Never banned, in addition to loopback and the host's own addresses.
    pub allowlist: Vec<IpNet>,

    /// Rules that never ban, by name: `probe-login`, `split-role`, `campaign-probe`,
    /// `slow-repeat`, `target-campaign`, `burst`, `lenient-burst`, `possible-compromise` (its
    /// alert is still raised) (default: none).
    pub disabled_rules: Vec<Rule>,

    /// Emit decisions marked `dry_run` (the enforcer logs instead of banning).
    pub dry_run: bool,

    /// Memory caps: tracked IPs (default 100 000, about 460 B each in `cargo xtask bench
    /// engine`'s mix, ban records and mailbox state included), user names (100 000) and
    /// ban/offence records (200 000). Over the IP cap, the addresses with the least evidence
    /// are evicted first (cheap probes and lost connections before failed logins, held bans
    /// and customers' logins; the least recently seen among equals), so a flood of cheap
    /// events cannot push out the evidence against a slow bot. Users and prefixes: the least
    /// recently seen first (active bans are never evicted).
    pub max_tracked_ips: usize,
    pub max_tracked_users: usize,
    pub max_tracked_prefixes: usize,
    /// Failures remembered per IP (must be >= both burst thresholds).
    pub max_failures_per_ip: usize,
    /// Failing IPs remembered per user name (retroactive campaign bans reach at most these).
    pub max_ips_per_user: usize,
    /// Evidence lines kept per IP and carried by a decision.
    pub max_evidence: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        const MIN: u64 = 60;
        const HOUR: u64 = 3600;
        const DAY: u64 = 24 * HOUR;
        EngineConfig {
            horizon: Duration::from_secs(48 * HOUR),
            probe_window: Duration::from_secs(10 * MIN),
            link_window: Duration::from_secs(HOUR),
            grace_period: Duration::from_secs(10 * MIN),
            slow_repeat_score: 2,
            unknown_user_weight: 2,
            shared_ip_users: 3,
            campaign_ips: 3,
            campaign_window: Duration::from_secs(DAY),
            campaign_probe_ips: 2,
            compromise_other_users: 2,
            burst_failures: 5,
            burst_window: Duration::from_secs(10 * MIN),
            lenient_period: Duration::from_secs(30 * DAY),
            lenient_burst_failures: 30,
            lenient_burst_window: Duration::from_secs(10 * MIN),
            ban_durations: vec![
                Duration::from_secs(HOUR),
                Duration::from_secs(DAY),
                Duration::from_secs(7 * DAY),
                Duration::from_secs(30 * DAY),
            ],
            offence_memory: Duration::from_secs(30 * DAY),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            ipv6_site_prefix: 48,
            ipv6_site_offenders: 3,
            allowlist: Vec::new(),
            disabled_rules: Vec::new(),
            dry_run: false,
            max_tracked_ips: 100_000,
            max_tracked_users: 100_000,
            max_tracked_prefixes: 200_000,
            max_failures_per_ip: 64,
            max_ips_per_user: 256,
            max_evidence: 8,
        }
    }
}

impl EngineConfig {
    /// The shipped, documented configuration (its `[engine]` table lists every default).
    pub const EXAMPLE_TOML: &'static str = include_str!("../../../detector.toml.example");

    /// Reads the `[engine]` table of a TOML document (a missing table gives the defaults) and
    /// validates it.
    pub fn from_toml_str(text: &str) -> crate::Result<Self> {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            engine: Option<EngineConfig>,
        }
        let doc: Doc = toml::from_str(text).map_err(|e| {
            // toml points at the offending key or value; name it as `engine.<key>`.
            let key = e.span().and_then(|span| key_at(text, span.start));
            let key = key.map_or_else(|| "engine".to_string(), |k| format!("engine.{k}"));
            Error::config(key, one_line(&e.message()))
        })?;
        let cfg = doc.engine.unwrap_or_default();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks value ranges; errors name the key (`engine.burst_failures`).
    pub fn validate(&self) -> crate::Result<()> {
        let err = |k: &str, m: &str| Err(Error::config(format!("engine.{k}"), m));
        let nonzero = [
            ("horizon", self.horizon),
            ("probe_window", self.probe_window),
            ("campaign_window", self.campaign_window),
            ("burst_window", self.burst_window),
            ("lenient_burst_window", self.lenient_burst_window),
        ];
        for (k, d) in nonzero {
            if d.is_zero() {
                return err(k, "must be longer than 0s");
            }
        }
        // Keeps every time computation far from integer overflow.
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 86400);
        let all = [
            ("horizon", self.horizon),
            ("probe_window", self.probe_window),
            ("link_window", self.link_window),
            ("grace_period", self.grace_period),
            ("campaign_window", self.campaign_window),
            ("burst_window", self.burst_window),
            ("lenient_period", self.lenient_period),
            ("lenient_burst_window", self.lenient_burst_window),
            ("offence_memory", self.offence_memory),
        ];
        for (k, d) in all
            .into_iter()
            .chain(self.ban_durations.iter().map(|d| ("ban_durations", *d)))
        {
            if d > CENTURY {
                return err(k, "must be at most 100 years");
            }
        }
        if self.probe_window > self.horizon {
            return err("probe_window", "must not be longer than engine.horizon");
        }
        if self.link_window < self.probe_window || self.link_window > self.horizon {
            return err(
                "link_window",
                "must be between engine.probe_window and engine.horizon",
            );
        }
        if self.grace_period > self.horizon {
            return err("grace_period", "must not be longer than engine.horizon");
        }
        if self.burst_window > self.horizon || self.lenient_burst_window > self.horizon {
            return err(
                "burst_window",
                "burst windows must not be longer than engine.horizon",
            );
        }
        for (k, v) in [
            ("slow_repeat_score", self.slow_repeat_score),
            ("unknown_user_weight", self.unknown_user_weight),
            ("campaign_ips", self.campaign_ips),
            ("burst_failures", self.burst_failures),
            ("lenient_burst_failures", self.lenient_burst_failures),
        ] {
            if v == 0 {
                return err(k, "must be at least 1");
            }
        }
        if self.lenient_burst_failures < self.burst_failures {
            return err(
                "lenient_burst_failures",
                "must be at least engine.burst_failures",
            );
        }
        if self.disabled_rules.contains(&Rule::Manual) {
            return err("disabled_rules", "`manual` is not a detection rule");
        }
        if self.ban_durations.is_empty() {
            return err("ban_durations", "needs at least one duration");
        }
        if self.ban_durations.iter().any(|d| d.as_secs() == 0) {
            return err("ban_durations", "every duration must be at least 1s");
        }
        if self.ipv4_prefix == 0 || self.ipv4_prefix > 32 {
            return err("ipv4_prefix", "must be 1..=32");
        }
        if self.ipv6_prefix == 0 || self.ipv6_prefix > 128 {
            return err("ipv6_prefix", "must be 1..=128");
        }
        if self.ipv6_site_prefix == 0 || self.ipv6_site_prefix > self.ipv6_prefix {
            return err("ipv6_site_prefix", "must be 1..=engine.ipv6_prefix");
        }
        let max_burst = self.burst_failures.max(self.lenient_burst_failures) as usize;
        if self.max_failures_per_ip < max_burst {
            return err(
                "max_failures_per_ip",
                &format!("must be at least the largest burst threshold ({max_burst})"),
            );
        }
        for (k, v) in [
            ("max_tracked_ips", self.max_tracked_ips),
            ("max_tracked_users", self.max_tracked_users),
            ("max_tracked_prefixes", self.max_tracked_prefixes),
            ("max_ips_per_user", self.max_ips_per_user),
            ("max_evidence", self.max_evidence),
        ] {
            if v == 0 {
                return err(k, "must be at least 1");
            }
        }
        if (self.max_ips_per_user as u64) < u64::from(self.campaign_ips) {
            return err("max_ips_per_user", "must be at least engine.campaign_ips");
        }
        Ok(())
    }

    pub fn rule_enabled(&self, rule: Rule) -> bool {
        !self.disabled_rules.contains(&rule)
    }

    /// Ban duration for the given offence number (1-based).
    pub fn ban_duration(&self, offence: u32) -> Duration {
        let i = (offence.max(1) as usize - 1).min(self.ban_durations.len().saturating_sub(1));
        self.ban_durations
            .get(i)
            .copied()
            .unwrap_or(Duration::from_secs(3600))
    }

    /// The network a ban of `ip` covers.
    pub fn ban_prefix(&self, ip: IpAddr) -> IpNet {
        let len = match ip {
            IpAddr::V4(_) => self.ipv4_prefix.min(32),
            IpAddr::V6(_) => self.ipv6_prefix.min(128),
        };
        // Lengths are validated; fall back to the host route if a caller skipped validation.
        IpNet::new(ip, len)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| IpNet::from(ip))
    }
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The key of the `key = value` line that contains byte `pos` of `text`.
fn key_at(text: &str, pos: usize) -> Option<String> {
    let start = text.get(..pos)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let key = line.split('=').next()?.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_string())
}

/// `Vec<Duration>` as a list of humantime strings.
mod humantime_serde_vec {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for d in v {
            seq.serialize_element(&humantime::format_duration(*d).to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| {
                humantime::parse_duration(s).map_err(|e| D::Error::custom(format!("{s:?}: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = EngineConfig::default();
        c.validate().unwrap();
        assert_eq!(c.horizon, Duration::from_secs(48 * 3600));
        assert_eq!(c.ban_duration(1), Duration::from_secs(3600));
        assert_eq!(c.ban_duration(2), Duration::from_secs(86400));
        assert_eq!(c.ban_duration(4), Duration::from_secs(30 * 86400));
        assert_eq!(c.ban_duration(9), Duration::from_secs(30 * 86400));
    }

    #[test]
    fn example_file_documents_exactly_the_defaults() {
        assert_eq!(
            EngineConfig::from_toml_str(EngineConfig::EXAMPLE_TOML).unwrap(),
            EngineConfig::default()
        );
        // And names every key.
        let table: toml::Table = toml::from_str(EngineConfig::EXAMPLE_TOML).unwrap();
        let documented = table["engine"].as_table().unwrap().len();
        let all = toml::Table::try_from(EngineConfig::default())
            .unwrap()
            .len();
        assert_eq!(documented, all);
    }

    #[test]
    fn toml_table_overrides_and_missing_table_defaults() {
        let c = EngineConfig::from_toml_str(
            "[engine]\nprobe_window = \"5m\"\nban_durations = [\"2h\", \"1day\"]\nallowlist = [\"192.0.2.0/24\"]\n",
        )
        .unwrap();
        assert_eq!(c.probe_window, Duration::from_secs(300));
        assert_eq!(
            c.ban_durations,
            vec![Duration::from_secs(7200), Duration::from_secs(86400)]
        );
        assert_eq!(c.allowlist.len(), 1);
        let c = EngineConfig::from_toml_str("[engine]\ndisabled_rules = [\"target-campaign\"]\n")
            .unwrap();
        assert!(!c.rule_enabled(Rule::TargetCampaign) && c.rule_enabled(Rule::Burst));
        let e = EngineConfig::from_toml_str("[engine]\ndisabled_rules = [\"nope\"]\n").unwrap_err();
        assert!(
            e.to_string().starts_with("invalid engine.disabled_rules"),
            "{e}"
        );
        assert_eq!(
            EngineConfig::from_toml_str("[other]\nx = 1\n").unwrap(),
            EngineConfig::default()
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = EngineConfig::from_toml_str("[engine]\nprobe_window = \"soon\"\n").unwrap_err();
        assert!(
            e.to_string().starts_with("invalid engine.probe_window"),
            "{e}"
        );
        let e = EngineConfig::from_toml_str("[engine]\nprobe_windo = \"5m\"\n").unwrap_err();
        assert!(
            e.to_string().starts_with("invalid engine.probe_windo"),
            "{e}"
        );
        let e = EngineConfig::from_toml_str("[engine]\nburst_failures = 0\n").unwrap_err();
        assert!(
            e.to_string().starts_with("invalid engine.burst_failures"),
            "{e}"
        );
        let e = EngineConfig::from_toml_str("[engine]\nipv6_prefix = 129\n").unwrap_err();
        assert!(
            e.to_string().starts_with("invalid engine.ipv6_prefix"),
            "{e}"
        );
    }

    #[test]
    fn ipv6_bans_cover_the_64() {
        let c = EngineConfig::default();
        let p = c.ban_prefix("2001:db8:1:2:3:4:5:6".parse().unwrap());
        assert_eq!(p.to_string(), "2001:db8:1:2::/64");
        let p = c.ban_prefix("198.18.0.7".parse().unwrap());
        assert_eq!(p.to_string(), "198.18.0.7/32");
    }
}
