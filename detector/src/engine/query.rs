//! Read-only questions about the engine's state, for in-band policy answers (Dovecot's auth
//! policy asks before the password is checked). Nothing here changes state or time.
use std::net::IpAddr;

use super::rules::under_campaign;
use super::{Engine, mailbox_key, to_time};
use chrono::{DateTime, Utc};

impl Engine {
    /// Until when (log time) the mailbox of `user` counts as under a campaign, if it does now:
    /// `campaign_probe_ips` addresses tied to probes of it within `campaign_window`, or
    /// `campaign_ips` failing addresses (`target-campaign`).
    pub fn campaign_until(&self, user: &str) -> Option<DateTime<Utc>> {
        let key = mailbox_key(user);
        under_campaign(self, &key, self.now)?;
        let u = self.users.get(&key)?;
        let window = self.cfg.campaign_window.as_secs() as i64;
        let mut linked: Vec<i64> = u.linked.iter().map(|f| f.time.get()).collect();
        linked.sort_unstable_by(|a, b| b.cmp(a));
        let n = self.cfg.campaign_probe_ips as usize;
        // The campaign lasts while the n-th newest link is inside the window.
        let by_links = (n > 0)
            .then(|| linked.get(n - 1).map(|t| t.saturating_add(window)))
            .flatten();
        let until = by_links.max(u.attacked_until.map(i64::from))?;
        (until >= self.now).then(|| to_time(until))
    }

    /// Every mailbox under a campaign now, with the end of it (see [`Engine::campaign_until`]).
    pub fn campaigns(&self) -> Vec<(Box<str>, DateTime<Utc>)> {
        let mut out: Vec<_> = self
            .users
            .keys()
            .filter_map(|k| self.campaign_until(k).map(|t| (k.clone(), t)))
            .collect();
        out.sort();
        out
    }

    /// The last trusted successful login as the mailbox of `user` from `ip` (its state key:
    /// the IPv6 /64) within `lenient_period`: the address is a known client of that mailbox.
    pub fn known_as(&self, ip: IpAddr, user: &str) -> Option<DateTime<Utc>> {
        let state = self.ips.get(&self.state_key(ip))?;
        let since = self
            .now
            .saturating_sub(self.cfg.lenient_period.as_secs() as i64);
        let key = mailbox_key(user);
        state
            .successes()
            .iter()
            .filter(|s| s.trusted && s.time >= since && mailbox_key(&s.user) == key)
            .map(|s| s.time)
            .max()
            .map(to_time)
    }
}
