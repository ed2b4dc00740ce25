//! What the `allow` answers read: a small read-mostly copy of the engine facts they need
//! (active bans, mailboxes under a campaign, known clients per mailbox).
//!
//! The engine belongs to the daemon task and is never locked. After each event the daemon task
//! updates the entries that event can have changed ([`PolicyView::observe`]: O(1) per event,
//! a write lock held for a few hash-map operations) and rebuilds the whole view at each sweep
//! ([`PolicyView::rebuild`]). HTTP tasks take the read lock for a few lookups, so an answer
//! never waits for the engine or for a channel round trip.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use ipnet::IpNet;

use super::protocol::{Answer, Request};
use crate::engine::{Action, Decision, Engine, EngineConfig, canonical, mailbox_key};
use crate::event::{Event, EventKind};

/// What `allow` answers for an attempt on a mailbox under a campaign from an address that
/// never logged in as it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignAction {
    /// `-1`: the attempt fails before the password is checked.
    Reject,
    /// `N > 0`: Dovecot waits N seconds, then checks the password.
    Delay(u32),
}

/// Why an `allow` got its answer (the `verdict` label of the metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Nothing against it.
    Accept,
    /// The address logged in as this mailbox before: accepted at once, campaign or not.
    KnownClient,
    /// Loopback or allowlisted: never refused.
    Protected,
    /// The address is banned.
    RejectBanned,
    /// A mailbox under a campaign, an address that never logged in as it.
    RejectCampaign,
    DelayCampaign,
    /// Dry run: would have been refused or delayed, accepted instead.
    DryRun,
    /// No usable `remote` attribute: nothing to judge, accepted.
    NoAddress,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::KnownClient => "known_client",
            Verdict::Protected => "protected",
            Verdict::RejectBanned => "reject_banned",
            Verdict::RejectCampaign => "reject_campaign",
            Verdict::DelayCampaign => "delay_campaign",
            Verdict::DryRun => "dry_run",
            Verdict::NoAddress => "no_address",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Active bans: prefix -> end (Unix seconds).
    bans: HashMap<IpNet, i64>,
    /// Prefix lengths present in `bans`, per family (v4, v6): a lookup tries each.
    ban_lens: (Vec<u8>, Vec<u8>),
    /// Mailbox key -> end of its campaign (Unix seconds).
    campaigns: HashMap<Box<str>, i64>,
    /// (engine state key of the address, mailbox key) -> last trusted login (Unix seconds).
    known: HashMap<(IpAddr, Box<str>), i64>,
}

impl State {
    fn add_ban(&mut self, net: IpNet, until: i64) {
        let lens = match net {
            IpNet::V4(_) => &mut self.ban_lens.0,
            IpNet::V6(_) => &mut self.ban_lens.1,
        };
        if !lens.contains(&net.prefix_len()) {
            lens.push(net.prefix_len());
        }
        let e = self.bans.entry(net).or_insert(until);
        *e = (*e).max(until);
    }

    fn banned(&self, ip: IpAddr, now: i64) -> bool {
        let lens = match ip {
            IpAddr::V4(_) => &self.ban_lens.0,
            IpAddr::V6(_) => &self.ban_lens.1,
        };
        lens.iter().any(|&len| {
            IpNet::new(ip, len)
                .ok()
                .and_then(|n| self.bans.get(&n.trunc()))
                .is_some_and(|&until| until > now)
        })
    }
}

/// The shared view. One per daemon; `Arc`ed into the HTTP tasks.
#[derive(Debug)]
pub struct PolicyView {
    engine_cfg: EngineConfig,
    action: CampaignAction,
    /// Known-client entries kept at most (the engine's cap on tracked addresses).
    max_known: usize,
    state: RwLock<State>,
}

impl PolicyView {
    pub fn new(engine_cfg: EngineConfig, action: CampaignAction) -> PolicyView {
        PolicyView {
            max_known: engine_cfg.max_tracked_ips,
            engine_cfg,
            action,
            state: RwLock::default(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A writer that panicked left plain maps behind: still usable.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Updates what `ev` (just observed by `engine`) and its decisions can have changed.
    pub fn observe(&self, engine: &Engine, ev: &Event, decisions: &[Decision]) {
        let campaign = ev
            .user
            .as_deref()
            .filter(|_| ev.is_auth_failure() || ev.kind == EventKind::AuthSuccess)
            .map(|u| (mailbox_key(u), engine.campaign_until(u)));
        let known = match (ev.kind, ev.user.as_deref()) {
            (EventKind::AuthSuccess, Some(u)) => Some((
                (engine.state_key(ev.ip), mailbox_key(u)),
                engine.known_as(ev.ip, u),
            )),
            _ => None,
        };
        if campaign.is_none() && known.is_none() && decisions.is_empty() {
            return;
        }
        let mut s = self.write();
        if let Some((key, until)) = campaign {
            match until {
                Some(t) => {
                    s.campaigns.insert(key, t.timestamp());
                }
                None => {
                    s.campaigns.remove(&key);
                }
            }
        }
        if let Some((key, last)) = known {
            match last {
                Some(t) if s.known.len() < self.max_known || s.known.contains_key(&key) => {
                    s.known.insert(key, t.timestamp());
                }
                Some(_) => {}
                None => {
                    s.known.remove(&key);
                }
            }
        }
        for d in decisions {
            match d.action {
                Action::Ban => {
                    let until = d
                        .time
                        .timestamp()
                        .saturating_add(d.duration.as_secs() as i64);
                    s.add_ban(d.prefix, until);
                }
                Action::Unban => {
                    s.bans.remove(&d.prefix);
                }
                Action::Alert => {}
            }
        }
    }

    /// Rebuilds bans and campaigns from the engine, and drops known clients older than the
    /// leniency period (the daemon's sweep).
    pub fn rebuild(&self, engine: &Engine, now: i64) {
        let bans = engine.active_bans();
        let campaigns = engine.campaigns();
        let lenient = self.engine_cfg.lenient_period.as_secs() as i64;
        let mut s = self.write();
        s.bans.clear();
        s.ban_lens = Default::default();
        for (net, until, _) in bans {
            s.add_ban(net, until.timestamp());
        }
        s.campaigns = campaigns
            .into_iter()
            .map(|(k, t)| (k, t.timestamp()))
            .collect();
        s.known.retain(|_, t| *t >= now.saturating_sub(lenient));
    }

    /// Adds a ban directly (tests and benchmarks without an engine).
    #[doc(hidden)]
    pub fn test_ban(&self, net: IpNet, until: i64) {
        self.write().add_ban(net, until);
    }

    /// Puts a mailbox under a campaign directly (benchmarks without an engine).
    #[doc(hidden)]
    pub fn test_campaign(&self, user: &str, until: i64) {
        self.write().campaigns.insert(mailbox_key(user), until);
    }

    /// Sizes (bans, campaigns, known clients), for `detector status` and tests.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let s = self.read();
        (s.bans.len(), s.campaigns.len(), s.known.len())
    }

    /// The answer to `allow` at wall time `now` (Unix seconds).
    pub fn answer(&self, req: &Request, now: i64) -> (Answer, Verdict) {
        let Some(ip) = req.remote_ip() else {
            return (Answer::accept(), Verdict::NoAddress);
        };
        let ip = canonical(ip);
        if ip.is_loopback() || ip.is_unspecified() || self.allowlisted(ip) {
            return (Answer::accept(), Verdict::Protected);
        }
        let user = req.user().map(|u| mailbox_key(&u));
        let s = self.read();
        let (answer, verdict) = if s.banned(ip, now) {
            (
                Answer {
                    status: -1,
                    msg: "address banned".into(),
                },
                Verdict::RejectBanned,
            )
        } else if let Some(user) = &user
            && self.known(&s, ip, user, now)
        {
            (Answer::accept(), Verdict::KnownClient)
        } else if let Some(user) = &user
            && s.campaigns.get(user).is_some_and(|&until| until >= now)
        {
            match self.action {
                CampaignAction::Reject => (
                    Answer {
                        status: -1,
                        msg: "mailbox under attack; log in from a known address or try later"
                            .into(),
                    },
                    Verdict::RejectCampaign,
                ),
                CampaignAction::Delay(secs) => (
                    Answer {
                        status: secs.max(1) as i32,
                        msg: String::new(),
                    },
                    Verdict::DelayCampaign,
                ),
            }
        } else {
            (Answer::accept(), Verdict::Accept)
        };
        drop(s);
        if answer.status != 0 && self.engine_cfg.dry_run {
            return (Answer::accept(), Verdict::DryRun);
        }
        (answer, verdict)
    }

    fn allowlisted(&self, ip: IpAddr) -> bool {
        self.engine_cfg.allowlist.iter().any(|n| n.contains(&ip))
    }

    /// A trusted login as `user` from `ip` within the leniency period. The engine keys an
    /// address by its ban prefix (the IPv6 /64), or by the address itself where the prefix
    /// would cover a protected address: both are tried.
    fn known(&self, s: &State, ip: IpAddr, user: &str, now: i64) -> bool {
        let since = now.saturating_sub(self.lenient().as_secs() as i64);
        let wide = self.engine_cfg.ban_prefix(ip).network();
        [wide, ip].iter().any(|k| {
            s.known
                .get(&(*k, Box::<str>::from(user)))
                .is_some_and(|&t| t >= since)
        })
    }

    fn lenient(&self) -> Duration {
        self.engine_cfg.lenient_period
    }
}

/// Keeps a view current from the pipeline (see [`crate::pipeline::Observer`]).
#[derive(Debug)]
pub struct ViewUpdater(pub std::sync::Arc<PolicyView>);

impl crate::pipeline::Observer for ViewUpdater {
    fn observed(&mut self, engine: &Engine, event: &Event, decisions: &[Decision]) {
        self.0.observe(engine, event, decisions);
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};

    use super::*;
    use crate::event::{Protocol, Service};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
    }

    fn ev(kind: EventKind, ip: &str, user: &str, at: i64) -> Event {
        Event {
            time: t0() + chrono::Duration::seconds(at),
            service: Service::Dovecot,
            kind,
            ip: ip.parse().unwrap(),
            user: Some(user.into()),
            recipient: None,
            protocol: Some(Protocol::Imap),
            line: 0,
            session: None,
            failures: u32::from(kind != EventKind::AuthSuccess),
            smtp: None,
            peer: None,
        }
    }

    fn allow(ip: &str, user: &str) -> Request {
        Request {
            login: Some(user.into()),
            remote: Some(ip.into()),
            ..Request::default()
        }
    }

    /// Feeds events through the engine and the view as the daemon does.
    fn feed(engine: &mut Engine, view: &PolicyView, events: &[Event]) {
        for e in events {
            let d = engine.observe(e);
            view.observe(engine, e, &d);
        }
    }

    fn now(at: i64) -> i64 {
        t0().timestamp() + at
    }

    /// `campaign_ips` addresses failing on one mailbox put it under attack: a new address is
    /// refused, the owner's known address is accepted at once, other mailboxes are untouched.
    #[test]
    fn a_mailbox_under_attack_refuses_new_addresses_and_not_its_owner() {
        let cfg = EngineConfig::default();
        let mut engine = Engine::new(cfg.clone());
        let view = PolicyView::new(cfg.clone(), CampaignAction::Reject);
        feed(
            &mut engine,
            &view,
            &[ev(
                EventKind::AuthSuccess,
                "198.18.5.1",
                "boss@example.test",
                0,
            )],
        );
        let bots: Vec<Event> = (0..cfg.campaign_ips)
            .map(|i| {
                ev(
                    EventKind::AuthFailure,
                    &format!("198.18.6.{}", i + 1),
                    "boss@example.test",
                    10 + i as i64,
                )
            })
            .collect();
        feed(&mut engine, &view, &bots);
        let at = now(10 + cfg.campaign_ips as i64);
        let (a, v) = view.answer(&allow("198.18.7.1", "boss@example.test"), at);
        assert_eq!((a.status, v), (-1, Verdict::RejectCampaign));
        let (a, v) = view.answer(&allow("198.18.5.1", "Boss@Example.Test"), at);
        assert_eq!((a.status, v), (0, Verdict::KnownClient));
        let (a, v) = view.answer(&allow("198.18.7.1", "other@example.test"), at);
        assert_eq!((a.status, v), (0, Verdict::Accept));
        // After the campaign the mailbox is open again.
        let later = at + cfg.horizon.as_secs() as i64 * 2;
        let (a, _) = view.answer(&allow("198.18.7.1", "boss@example.test"), later);
        assert_eq!(a.status, 0);
    }

    #[test]
    fn a_banned_address_is_refused_and_an_unban_lifts_it() {
        let cfg = EngineConfig::default();
        let mut engine = Engine::new(cfg.clone());
        let view = PolicyView::new(cfg.clone(), CampaignAction::Reject);
        let mut at = 0;
        while engine.active_bans().is_empty() {
            at += 1;
            assert!(at < 1000, "the engine never banned");
            feed(
                &mut engine,
                &view,
                &[ev(
                    EventKind::AuthUnknownUser,
                    "198.18.8.8",
                    &format!("u{at}"),
                    at,
                )],
            );
        }
        let (a, v) = view.answer(&allow("198.18.8.8", "anyone"), now(at));
        assert_eq!((a.status, v), (-1, Verdict::RejectBanned));
        assert_eq!(
            view.answer(&allow("198.18.8.9", "anyone"), now(at))
                .0
                .status,
            0
        );
        let d = engine.unban(
            "198.18.8.8".parse().unwrap(),
            t0() + chrono::Duration::seconds(at),
        );
        view.observe(
            &engine,
            &ev(EventKind::Other, "198.18.8.8", "x", at),
            &[d.unwrap()],
        );
        assert_eq!(
            view.answer(&allow("198.18.8.8", "anyone"), now(at))
                .0
                .status,
            0
        );
    }

    #[test]
    fn delay_mode_and_dry_run() {
        let mut cfg = EngineConfig::default();
        let view = PolicyView::new(cfg.clone(), CampaignAction::Delay(3));
        view.write().campaigns.insert("boss".into(), now(100));
        let (a, v) = view.answer(&allow("198.18.7.1", "boss@example.test"), now(0));
        assert_eq!((a.status, v), (3, Verdict::DelayCampaign));
        cfg.dry_run = true;
        let view = PolicyView::new(cfg, CampaignAction::Reject);
        view.write().campaigns.insert("boss".into(), now(100));
        let (a, v) = view.answer(&allow("198.18.7.1", "boss@example.test"), now(0));
        assert_eq!((a.status, v), (0, Verdict::DryRun));
    }

    #[test]
    fn loopback_allowlist_and_missing_addresses_are_accepted() {
        let cfg = EngineConfig {
            allowlist: vec!["198.18.9.0/24".parse().unwrap()],
            ..EngineConfig::default()
        };
        let view = PolicyView::new(cfg, CampaignAction::Reject);
        view.write()
            .add_ban("198.18.9.1/32".parse().unwrap(), now(100));
        view.write()
            .add_ban("127.0.0.1/32".parse().unwrap(), now(100));
        assert_eq!(
            view.answer(&allow("198.18.9.1", "a"), now(0)).1,
            Verdict::Protected
        );
        assert_eq!(
            view.answer(&allow("127.0.0.1", "a"), now(0)).1,
            Verdict::Protected
        );
        assert_eq!(view.answer(&allow("", "a"), now(0)).1, Verdict::NoAddress);
    }

    #[test]
    fn an_ipv6_ban_covers_its_prefix() {
        let view = PolicyView::new(EngineConfig::default(), CampaignAction::Reject);
        view.write()
            .add_ban("2001:db8:1:2::/64".parse().unwrap(), now(100));
        assert_eq!(
            view.answer(&allow("2001:db8:1:2::99", "a"), now(0)).1,
            Verdict::RejectBanned
        );
        assert_eq!(
            view.answer(&allow("2001:db8:1:3::99", "a"), now(0)).1,
            Verdict::Accept
        );
        // Expired.
        assert_eq!(
            view.answer(&allow("2001:db8:1:2::99", "a"), now(200)).1,
            Verdict::Accept
        );
    }
}
