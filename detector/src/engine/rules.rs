//! The rules. `observe` first records the event in the state, then asks the rules, strongest
//! first, whether the IP should be banned. Facts that hold an address back come first:
//!
//! - A **known client** (an address, IPv4 or the IPv6 /64, that logged in successfully as any
//!   user within `lenient_period`, and not as a possible compromise) is lenient: its failures
//!   count only for `lenient-burst`. A **shared** address (`shared_ip_users` distinct users
//!   succeeded there: NAT, CGNAT, webmail) is never banned for failures; a shared-address alert
//!   says so once per horizon.
//! - **Grace**: weak evidence (a failure not tied to a probe of the same mailbox seconds
//!   before) holds the ban for `grace_period`; a trusted success from the address cancels it.
//!
//! Then the rules:
//!
//! - `probe-login`: a failed login as the mailbox this address probed (aborted SMTP
//!   transaction that named it) within `probe_window`: bans at once. The link survives
//!   `link_window` with decaying weight: older links, probes by clients that look like mail
//!   servers, and failures as another user after a probe wait out the grace period.
//! - `split-role`: a failed login as a mailbox that *another* address probed within
//!   `link_window` (not a mail server, never logged in): the login address and the prober are
//!   banned (at once within `probe_window`, after the grace period later or when the mailbox
//!   has an owner who logs in).
//! - `campaign-probe`: an aborted transaction to a mailbox under a probe campaign
//!   (`campaign_probe_ips` addresses tied to probes of it within `campaign_window`) by an
//!   address that never logged in and does not look like a mail server: banned at the abort,
//!   before its login.
//! - `burst`: `burst_failures` in `burst_window` (fail2ban parity).
//! - `target-campaign`: the mailbox failed from `campaign_ips` distinct IPs within
//!   `campaign_window`; every IP that failed on it inside the horizon is banned, except its own
//!   known clients and shared addresses.
//! - `slow-repeat`: failure score >= `slow_repeat_score` within the horizon (a failure for a
//!   non-existent mailbox scores `unknown_user_weight`).
//! - `lenient-burst`: a known client's failures, against `lenient_burst_failures`.
//! - `possible-compromise`: a successful login from an address that probed, that failed as
//!   `compromise_other_users` other users, or that is tied to a campaign: an alert, and a ban.
//!
//! Mailboxes are compared by [`mailbox_key`] (local part without `+tag`), so `Name@Domain`,
//! `name` and `name+tag@domain` are one mailbox; [`typo_of`] maps a user-name typo to the
//! mailbox meant.
use std::net::IpAddr;

use ipnet::IpNet;
use triomphe::Arc;

use super::decision::{Action, AlertKind, Decision, Rule};
use super::state::{
    Cite, Failure, IpState, Name, Pending, PendingRcpt, PrefixState, Probe, ProbeMark, SessionKey,
    Success, Ts, UserFailure,
};
use super::state::{MAX_PENDING_RCPTS, MAX_PROBE_RCPTS, MAX_PROBES, MAX_SUCCESS_USERS, SaslSide};
use super::{Engine, canonical, to_time};
use crate::event::{Event, EventKind, Protocol, Service};

/// Probe marks remembered per mailbox (split-role links).
pub(super) const MAX_MARKS_PER_MAILBOX: usize = 8;
/// /64 offences remembered per IPv6 site.
pub(super) const MAX_SITE_OFFENDERS: usize = 16;

pub(super) fn observe(engine: &mut Engine, ev: &Event) -> Vec<Decision> {
    // State is kept per ban prefix (the address itself for IPv4, its /64 for IPv6); decisions
    // about this event still name the event's own address.
    let addr = canonical(ev.ip);
    let ip = engine.state_key(addr);
    let t = ev.time.timestamp();
    if !matters(ev) {
        return Vec::new();
    }
    let cap = engine.cfg.max_evidence;
    let cite = Cite::of(ev, &mut engine.names);
    let state = engine.ips.get_or_insert_with(ip, || IpState::new(t));
    state.last_seen = state.last_seen.max_with(t);
    state.push_evidence(cite, cap);

    let mut out = Vec::new();
    match ev.kind {
        EventKind::Rcpt => {
            if let Some(rcpt) = &ev.recipient {
                let rcpt = engine.names.intern(rcpt);
                on_rcpt(state, ev, rcpt);
            }
        }
        EventKind::MessageAccepted => {
            let session = session_of(ev);
            if let Some(x) = state.extra_mut_if_any() {
                x.pending_rcpts
                    .retain(|p| !same_session(p.session, session));
            }
            state.tidy();
        }
        EventKind::TransactionAborted | EventKind::LostConnection | EventKind::Disconnect => {
            if let Some(probe) = on_transaction_end(state, ev) {
                on_probe(engine, ip, addr, t, &probe, &mut out);
                if out.is_empty() {
                    login_read_before_its_probe(engine, ip, t, &probe, &mut out);
                }
            }
        }
        EventKind::AuthSuccess => {
            if let Some(user) = &ev.user {
                on_success(engine, ip, addr, ev, user, &mut out);
            }
        }
        EventKind::AuthFailure | EventKind::AuthUnknownUser => {
            on_failure(engine, ip, addr, ev, &mut out);
        }
        _ => {}
    }
    for d in &mut out {
        if d.ip == ip {
            d.ip = addr;
        }
    }
    out
}

/// Kinds the rules use; the rest would only cost memory.
pub(super) fn matters(ev: &Event) -> bool {
    match ev.kind {
        EventKind::Rcpt
        | EventKind::MessageAccepted
        | EventKind::TransactionAborted
        | EventKind::LostConnection
        | EventKind::AuthSuccess
        | EventKind::AuthFailure
        | EventKind::AuthUnknownUser => true,
        // A disconnect closes the transaction of its session (probe or not).
        EventKind::Disconnect => ev.smtp.is_some_and(|c| c.rcpt_ok >= 1),
        _ => false,
    }
}

fn on_rcpt(state: &mut IpState, ev: &Event, rcpt: Name) {
    let x = state.extra_mut();
    x.pending_rcpts.push_capped(
        MAX_PENDING_RCPTS,
        PendingRcpt {
            session: session_of(ev),
            recipient: rcpt,
            time: Ts::of(ev.time.timestamp()),
            peer: ev.peer.as_ref().map(|p| p.looks_like_mta()),
        },
    );
}

fn session_of(ev: &Event) -> Option<SessionKey> {
    ev.session.as_deref().map(SessionKey::of)
}

/// Two lines belong to the same SMTP session when their session keys are equal or either
/// line has none (Postfix `NOQUEUE` and `lost connection` lines may come without one).
fn same_session(a: Option<SessionKey>, b: Option<SessionKey>) -> bool {
    a.is_none() || b.is_none() || a == b
}

/// A probe that just ended: its recipients, whether the client looked like a mail server,
/// and whether the RCPT line told (no peer information: `None`).
struct EndedProbe {
    recipients: Vec<Name>,
    mta_like: Option<bool>,
}

/// An SMTP session ended: if it named a recipient and no message was accepted, it was a probe.
fn on_transaction_end(state: &mut IpState, ev: &Event) -> Option<EndedProbe> {
    let t = ev.time.timestamp();
    let session = session_of(ev);
    let same_session = |s: &Option<SessionKey>| same_session(*s, session);
    let ended: Vec<&PendingRcpt> = state
        .pending_rcpts()
        .iter()
        .filter(|p| same_session(&p.session))
        .collect();
    let recipients: Vec<Name> = ended.iter().map(|p| p.recipient.clone()).collect();
    // Mail-server-like if any RCPT of the session said so (sparing is the safe side).
    let mta_like = ended.iter().filter_map(|p| p.peer).reduce(|a, b| a || b);
    if let Some(x) = state.extra_mut_if_any() {
        x.pending_rcpts.retain(|p| !same_session(&p.session));
    }
    state.tidy();
    let counters_say_probe = ev.smtp.is_some_and(|c| c.rcpt_ok >= 1 && c.data_ok == 0);
    let is_probe = match ev.kind {
        EventKind::TransactionAborted => ev.smtp.is_none_or(|c| c.data_ok == 0),
        EventKind::LostConnection => !recipients.is_empty(),
        _ => counters_say_probe,
    };
    if !is_probe {
        return None;
    }
    // `lost connection` and the following `disconnect` describe one transaction: merge.
    if let Some(last) = state.probes.back_mut()
        && same_session(&last.session)
        && (t - last.time).abs() <= 60
    {
        for r in recipients {
            if last.recipients.len() < MAX_PROBE_RCPTS && !last.recipients.contains(&r) {
                last.recipients.push(r);
            }
        }
        last.time = last.time.max_with(t);
        last.mta_like |= mta_like.unwrap_or(false);
        last.peer_known |= mta_like.is_some();
        return Some(EndedProbe {
            recipients: last.recipients.to_vec(),
            mta_like: last.peer_known.then_some(last.mta_like),
        });
    }
    let mut recipients = recipients;
    recipients.dedup();
    recipients.truncate(MAX_PROBE_RCPTS);
    state.probes.push_capped(
        MAX_PROBES,
        Probe {
            time: Ts::of(t),
            line: ev.line,
            session,
            recipients: recipients.clone().into(),
            mta_like: mta_like.unwrap_or(false),
            peer_known: mta_like.is_some(),
        },
    );
    Some(EndedProbe {
        recipients,
        mta_like,
    })
}

/// A probe ended: remember it by mailbox (split-role links) unless a mail server made it, and
/// ban the prober at the abort when the mailbox is under a probe campaign.
fn on_probe(
    engine: &mut Engine,
    ip: IpAddr,
    addr: IpAddr,
    t: i64,
    probe: &EndedProbe,
    out: &mut Vec<Decision>,
) {
    if probe.mta_like == Some(true) {
        return;
    }
    for r in &probe.recipients {
        let marks = Arc::make_mut(engine.marks.entry(mailbox_key(r)).or_default());
        marks.retain(|m| m.prober != ip);
        marks.push_capped(
            MAX_MARKS_PER_MAILBOX,
            ProbeMark {
                time: Ts::of(t),
                prober: ip,
                addr,
                recipient: r.clone(),
            },
        );
    }
    // At the abort only when the RCPT line showed a client that is no mail server, the
    // address never logged in, and it is neither known nor shared.
    if probe.mta_like != Some(false) || !engine.cfg.rule_enabled(Rule::CampaignProbe) {
        return;
    }
    let lenient_since = t.saturating_sub(engine.cfg.lenient_period.as_secs() as i64);
    if engine.ips[&ip]
        .successes()
        .iter()
        .any(|s| s.time >= lenient_since)
    {
        return;
    }
    let Some((r, why)) = probe
        .recipients
        .iter()
        .find_map(|r| under_campaign(engine, &mailbox_key(r), t).map(|why| (r, why)))
    else {
        return;
    };
    let note = format!(
        "aborted an SMTP transaction to <{r}>, {why}; never logged in and no mail server \
         (banned before the login that follows)"
    );
    if let Some(s) = engine.ips.get_mut(&ip) {
        s.extra_mut().campaign = Some(Ts::of(t));
    }
    ban(engine, ip, Rule::CampaignProbe, note, t, out);
}

/// The seed pattern read out of order: the failed login as a probed address was processed
/// before the probe, although the log says it came after. Postfix and Dovecot are often two
/// sources, and a daemon catching up after a restart reads each file's backlog in turn, so
/// the Dovecot line can reach the engine first. The log times decide, as they do live.
fn login_read_before_its_probe(
    engine: &mut Engine,
    ip: IpAddr,
    t: i64,
    probe: &EndedProbe,
    out: &mut Vec<Decision>,
) {
    if probe.mta_like == Some(true) {
        return;
    }
    let window = engine.cfg.probe_window.as_secs() as i64;
    let lenient_since = t.saturating_sub(engine.cfg.lenient_period.as_secs() as i64);
    let Some(state) = engine.ips.get(&ip) else {
        return;
    };
    if state
        .successes()
        .iter()
        .any(|s| s.trusted && s.time >= lenient_since)
    {
        return;
    }
    let found = state.failures.iter().find_map(|f| {
        let user = f.user.as_deref()?;
        let later = f.time >= t && f.time - t <= window;
        let r = probe.recipients.iter().find(|r| same_mailbox(user, r))?;
        (later && !f.lenient).then(|| (r.clone(), f.time - t))
    });
    let Some((r, age)) = found else {
        return;
    };
    let note = format!(
        "a login as the probed address <{r}> {age}s after an SMTP transaction to it was \
         aborted (the login was read first), link weight {:.2} (strongest evidence)",
        link_weight(engine, age)
    );
    ban(engine, ip, Rule::ProbeLogin, note, t, out);
    if !out.is_empty()
        && let Some(s) = engine.ips.get_mut(&ip)
    {
        // The weaker ban held for the grace period is superseded.
        s.clear_pending();
    }
}

/// Why the mailbox counts as under a campaign now, if it does.
pub(super) fn under_campaign(engine: &Engine, key: &str, t: i64) -> Option<String> {
    let cfg = &engine.cfg;
    let u = engine.users.get(key)?;
    let since = t - cfg.campaign_window.as_secs() as i64;
    let linked = u.linked.iter().filter(|f| f.time >= since).count();
    if cfg.campaign_probe_ips > 0 && linked >= cfg.campaign_probe_ips as usize {
        return Some(format!(
            "a mailbox under a probe-and-login campaign ({linked} addresses logged in as it \
             after probes within {})",
            humantime::format_duration(cfg.campaign_window)
        ));
    }
    u.attacked_until
        .is_some_and(|until| until >= t)
        .then(|| "a mailbox under attack from many addresses".to_string())
}

/// How far back a successful login forgives the same user's failures from the same address.
const TYPO_FORGIVENESS_S: i64 = 3600;

fn on_success(
    engine: &mut Engine,
    ip: IpAddr,
    addr: IpAddr,
    ev: &Event,
    user: &str,
    out: &mut Vec<Decision>,
) {
    let t = ev.time.timestamp();
    let user = engine.names.intern(user);
    let suspicion = compromise_evidence(engine, ip, &user, t);
    let lenient_since = t.saturating_sub(engine.cfg.lenient_period.as_secs() as i64);
    let shared_users = engine.cfg.shared_ip_users as usize;
    let Some(state) = engine.ips.get_mut(&ip) else {
        return;
    };
    let trusted = suspicion.is_none();
    if trusted {
        engine.clients.insert(ip);
    }
    let successes = &mut state.extra_mut().successes;
    if let Some(s) = successes
        .iter_mut()
        .find(|s| s.user == user && s.trusted == trusted)
    {
        s.time = s.time.max_with(t);
    } else {
        if successes.len() >= MAX_SUCCESS_USERS
            && let Some(i) = successes
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.time)
                .map(|(i, _)| i)
        {
            // Drop the oldest success.
            successes.remove(i);
        }
        successes.push(Success {
            user: user.clone(),
            time: Ts::of(t),
            trusted,
        });
    }
    if let Some(why) = suspicion {
        // A guessed password: never leniency; tell the administrator and ban.
        let x = state.extra_mut();
        x.compromise = Some((Ts::of(t), user.clone()));
        x.campaign = Some(Ts::of(t));
        x.pending = None;
        let shared = shared_users > 0 && state.success_users_since(lenient_since) >= shared_users;
        let evidence = state.evidence_list();
        let note = format!("successful login as {user} {why}: most likely a guessed password");
        out.push(Decision {
            action: Action::Alert,
            ip,
            prefix: engine.ban_prefix(addr),
            time: ev.time,
            rule: Rule::PossibleCompromise,
            duration: std::time::Duration::ZERO,
            offence: 0,
            dry_run: engine.cfg.dry_run,
            evidence,
            note: if shared {
                format!("{note}; a shared address, so not banned")
            } else {
                note.clone()
            },
            kind: Some(AlertKind::PossibleCompromise),
            user: Some(user.to_string()),
        });
        if !shared {
            ban(engine, ip, Rule::PossibleCompromise, note, t, out);
        }
        return;
    }
    // The owner: failures shortly before that map to this mailbox were typos, and a ban
    // held for the grace period is cancelled. Older ones stay counted: a guesser that
    // finally gets in does not clear its record.
    state.clear_pending();
    let since = t - TYPO_FORGIVENESS_S;
    let mut forgiven: Vec<Box<str>> = Vec::new();
    for f in state.failures.iter_mut() {
        if f.time >= since
            && let Some(u) = &f.user
            && typo_of(u, &user)
        {
            f.lenient = true;
            forgiven.push(mailbox_key(u));
        }
    }
    forgiven.push(mailbox_key(&user));
    forgiven.sort();
    forgiven.dedup();
    for key in forgiven {
        if let Some(u) = engine.users.get_mut(&key) {
            u.failures.retain(|f| f.ip != ip || f.time < since);
            u.linked.retain(|f| f.ip != ip || f.time < since);
        }
    }
    let u = engine.users.entry(mailbox_key(&user)).or_default();
    u.last_seen = u.last_seen.max_with(t);
    u.owner_seen = Some(u.owner_seen.map_or(Ts::of(t), |x| x.max_with(t)));
}

/// Why a successful login as `user` from `ip` is most likely a guessed password, if it is.
/// A known client's login never is.
fn compromise_evidence(engine: &Engine, ip: IpAddr, user: &str, t: i64) -> Option<String> {
    let cfg = &engine.cfg;
    let state = engine.ips.get(&ip)?;
    let lenient_since = t.saturating_sub(cfg.lenient_period.as_secs() as i64);
    if state.success_users_since(lenient_since) > 0 {
        return None;
    }
    let horizon = t.saturating_sub(cfg.horizon.as_secs() as i64);
    // A login as a mailbox this address probed (an office's gateway verifies other
    // addresses than its users log in as).
    let link = t.saturating_sub(cfg.link_window.as_secs() as i64);
    if let Some((p, r)) = state
        .probes
        .iter()
        .rev()
        .filter(|p| !p.mta_like && p.time >= link && p.time <= t)
        .find_map(|p| {
            p.recipients
                .iter()
                .find(|r| same_mailbox(user, r))
                .map(|r| (p, r))
        })
    {
        return Some(format!(
            "{}s after an aborted SMTP transaction to <{r}> from the same address",
            t - p.time
        ));
    }
    let mut others: Vec<&str> = state
        .failures
        .iter()
        .filter(|f| f.time >= horizon && !f.lenient)
        .filter_map(|f| f.user.as_deref())
        .filter(|u| !typo_of(u, user))
        .collect();
    others.sort_unstable();
    others.dedup();
    if cfg.compromise_other_users > 0 && others.len() >= cfg.compromise_other_users as usize {
        return Some(format!(
            "after failing as {} other users ({})",
            others.len(),
            others
                .iter()
                .take(4)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // Took part in a campaign: failed as another mailbox that is under attack.
    if let Some(u) = others
        .iter()
        .find(|u| under_campaign(engine, &mailbox_key(u), t).is_some())
    {
        return Some(format!("after failing as {u}, a mailbox under attack"));
    }
    if let Some(c) = state.campaign().filter(|c| *c >= horizon) {
        return Some(format!(
            "from an address tied to a campaign {}s earlier",
            t - c
        ));
    }
    None
}

/// A verdict: the rule, its note and whether it bans at once (strong) or after the grace
/// period (weak).
struct Verdict {
    rule: Rule,
    note: String,
    strong: bool,
}

fn on_failure(engine: &mut Engine, ip: IpAddr, addr: IpAddr, ev: &Event, out: &mut Vec<Decision>) {
    // failures == 0: another line describing an attempt that was already counted.
    if ev.failures == 0 {
        return;
    }
    let cfg = &engine.cfg;
    let t = ev.time.timestamp();
    let user = ev.user.as_deref().map(|u| engine.names.intern(u));
    let lenient_since = t.saturating_sub(cfg.lenient_period.as_secs() as i64);
    let Some(state) = engine.ips.get_mut(&ip) else {
        return;
    };
    // A known client: a failure is a typo or a stale device.
    let lenient = state.success_users_since(lenient_since) > 0;
    let sasl = sasl_side(ev);
    if let Some(side) = sasl
        && let Some(other) = state.failures.iter_mut().rev().take(8).find(|f| {
            f.sasl.is_some_and(|s| s != side)
                && !f.paired
                && (t - f.time).abs() <= SASL_PAIR_S
                && f.user
                    .as_deref()
                    .zip(user.as_deref())
                    .is_none_or(|(a, b)| a == b)
        })
    {
        // The other half of an attempt that is already counted.
        other.paired = true;
        return;
    }
    state.failures.push_capped(
        cfg.max_failures_per_ip,
        Failure {
            time: Ts::of(t),
            line: ev.line,
            user: user.clone(),
            count: ev.failures,
            unknown_user: ev.kind == EventKind::AuthUnknownUser,
            lenient,
            sasl,
            paired: false,
        },
    );

    if lenient {
        let n = count_since(state, t - cfg.lenient_burst_window.as_secs() as i64, |_| {
            true
        });
        if n >= cfg.lenient_burst_failures {
            let known: Vec<&str> = state.known_users(lenient_since).take(3).collect();
            let note = format!(
                "{n} failed logins in {} although this address logged in as {} before",
                humantime::format_duration(cfg.lenient_burst_window),
                known.join(", ")
            );
            conclude(
                engine,
                ip,
                addr,
                t,
                Verdict {
                    rule: Rule::LenientBurst,
                    note,
                    strong: true,
                },
                out,
            );
        }
        return;
    }

    // Links to probes: this address's own, then other addresses' (split roles).
    let own = user
        .as_deref()
        .and_then(|u| own_probe_link(engine, ip, u, ev));
    let split = match (&own, user.as_deref()) {
        (None, Some(u)) => split_link(engine, ip, u, t),
        _ => None,
    };
    // Tied to a probe: this address's own (not a mail server's) of this mailbox, or another
    // address's seconds before when the mailbox has no owner who might be mistyping.
    let linked = own.as_ref().is_some_and(|(_, taints)| *taints)
        || split.as_ref().is_some_and(|(_, strong, _)| *strong);
    if linked && let Some(u) = user.as_deref() {
        record_linked(engine, &mailbox_key(u), ip, addr, t);
    }

    // target-campaign bookkeeping: it can ban other IPs too.
    let mut campaign_note = None;
    if let Some(user) = &user {
        let key = mailbox_key(user);
        let campaign = record_user_failure(engine, &key, user, ip, addr, t);
        // Retroactive bans only when the name comes under attack: an address that failed on
        // it long ago is not banned again each time another one tries.
        if let Some((note, true)) = &campaign {
            retro_campaign_bans(engine, &key, ip, note, t, out);
        }
        campaign_note = campaign.map(|(note, _)| note);
    }
    // Tied to a probe: a later success from here is not the owner's. (Failing on a mailbox
    // under attack is not enough: its owner mistypes during attacks too.)
    if linked && let Some(s) = engine.ips.get_mut(&ip) {
        s.extra_mut().campaign = Some(Ts::of(t));
    }

    // The prober of a split-role link is part of it.
    if let Some((mark, strong, _)) = &split
        && *strong
        && engine.cfg.rule_enabled(Rule::SplitRole)
        && !is_lenient_or_shared(engine, mark.prober, t)
    {
        let note = format!(
            "probed <{}>; {}s later another address ({addr}) logged in as it and failed \
             (split roles)",
            mark.recipient,
            t - mark.time
        );
        let mut d = Vec::new();
        ban(engine, mark.prober, Rule::SplitRole, note, t, &mut d);
        for x in &mut d {
            if x.ip == mark.prober {
                x.ip = mark.addr;
            }
        }
        out.extend(d);
    }

    let enabled = |v: &Verdict| engine.cfg.rule_enabled(v.rule);
    let verdict = own
        .map(|(v, _)| v)
        .filter(enabled)
        .or_else(|| split.map(|(_, _, v)| v).filter(enabled))
        .or_else(|| burst(engine, ip, t).filter(enabled))
        .or_else(|| {
            campaign_note
                .map(|n| Verdict {
                    rule: Rule::TargetCampaign,
                    note: format!("failed on {n}"),
                    strong: false,
                })
                .filter(enabled)
        })
        .or_else(|| slow_repeat(engine, ip, t).filter(enabled));
    if let Some(v) = verdict {
        conclude(engine, ip, addr, t, v, out);
    }
}

/// Acts on a verdict about `ip`: spares a shared address (with an alert), holds weak evidence
/// for the grace period, bans at once on strong evidence.
fn conclude(
    engine: &mut Engine,
    ip: IpAddr,
    addr: IpAddr,
    t: i64,
    v: Verdict,
    out: &mut Vec<Decision>,
) {
    let cfg = &engine.cfg;
    let horizon = cfg.horizon.as_secs() as i64;
    let grace = cfg.grace_period.as_secs() as i64;
    let shared = is_shared(engine, &engine.ips[&ip], t);
    let prefix = engine.ban_prefix(addr);
    let Some(state) = engine.ips.get_mut(&ip) else {
        return;
    };
    if shared {
        engine.stats.spared_shared += 1;
        if state.shared_noticed().is_none_or(|n| n < t - horizon) {
            state.extra_mut().shared_noticed = Some(Ts::of(t));
            let users: Vec<&str> = state
                .known_users(t - cfg.lenient_period.as_secs() as i64)
                .take(3)
                .collect();
            out.push(Decision {
                action: Action::Alert,
                ip,
                prefix,
                time: to_time(t),
                rule: v.rule,
                duration: std::time::Duration::ZERO,
                offence: 0,
                dry_run: cfg.dry_run,
                evidence: state.evidence_list(),
                note: format!(
                    "not banned: a shared address ({} users logged in here, e.g. {}); {} would \
                     have banned it: {}",
                    state.success_users_since(t - cfg.lenient_period.as_secs() as i64),
                    users.join(", "),
                    v.rule,
                    v.note
                ),
                kind: Some(AlertKind::SharedAddress),
                user: None,
            });
        }
        return;
    }
    // A prefix banned before gets no grace: it is not a customer's first typo.
    let memory = cfg.offence_memory.as_secs() as i64;
    let repeat = engine
        .prefixes
        .get(&prefix)
        .is_some_and(|p| p.offences > 0 && p.last_offence >= t.saturating_sub(memory));
    if v.strong || grace == 0 || repeat {
        state.clear_pending();
        ban(engine, ip, v.rule, v.note, t, out);
        return;
    }
    if state.pending().is_none() {
        let deadline = t.saturating_add(grace);
        let note = engine.names.note(&v.note);
        state.extra_mut().pending = Some(Box::new(Pending {
            deadline,
            rule: v.rule,
            note,
            addr,
        }));
        engine.pending.insert((deadline, ip));
    }
}

/// Makes the bans whose grace period ended by `now` (no successful login cancelled them).
pub(super) fn fire_due(engine: &mut Engine, now: i64) -> Vec<Decision> {
    let mut out = Vec::new();
    while let Some(&(deadline, ip)) = engine.pending.first() {
        if deadline > now {
            break;
        }
        engine.pending.pop_first();
        let Some(p) = engine
            .ips
            .get_mut(&ip)
            .filter(|s| s.pending().is_some_and(|p| p.deadline == deadline))
            .and_then(|s| s.take_pending_at(deadline))
        else {
            continue;
        };
        let note = format!(
            "{} (held {} for a successful login that did not come)",
            p.note,
            humantime::format_duration(engine.cfg.grace_period)
        );
        let mut d = Vec::new();
        ban(engine, ip, p.rule, note, deadline, &mut d);
        for x in &mut d {
            if x.ip == ip {
                x.ip = p.addr;
            }
        }
        out.extend(d);
    }
    out
}

fn is_lenient_or_shared(engine: &Engine, ip: IpAddr, t: i64) -> bool {
    let since = t.saturating_sub(engine.cfg.lenient_period.as_secs() as i64);
    engine
        .ips
        .get(&ip)
        .is_some_and(|s| s.success_users_since(since) > 0)
}

/// Bans every other address that failed on the mailbox that just came under attack, except
/// its known clients and shared addresses (their failures were forgiven or are lenient).
fn retro_campaign_bans(
    engine: &mut Engine,
    key: &str,
    ip: IpAddr,
    note: &str,
    t: i64,
    out: &mut Vec<Decision>,
) {
    let horizon = engine.cfg.horizon.as_secs() as i64;
    let grace = engine.cfg.grace_period.as_secs() as i64;
    let others: Vec<(IpAddr, i64, Option<IpAddr>)> = engine.users[key]
        .failures
        .iter()
        .filter(|f| f.ip != ip && f.time >= t - horizon)
        .map(|f| (f.ip, f.time.get(), f.addr))
        .collect();
    for (other, time, addr) in others {
        if is_lenient_or_shared(engine, other, t) || !engine.ips.contains_key(&other) {
            continue;
        }
        let n = format!("failed on {note}");
        let addr = addr.unwrap_or(other);
        // Failures younger than the grace period still get it.
        let v = Verdict {
            rule: Rule::TargetCampaign,
            note: n,
            strong: t - time >= grace,
        };
        let mut d = Vec::new();
        conclude(engine, other, addr, t, v, &mut d);
        for x in &mut d {
            if x.ip == other {
                x.ip = addr;
            }
        }
        out.extend(d);
    }
}

/// Longest gap between the Postfix and the Dovecot line of one SMTP AUTH attempt.
const SASL_PAIR_S: i64 = 2;

fn sasl_side(ev: &Event) -> Option<SaslSide> {
    match ev.service {
        Service::Postfix => Some(SaslSide::Postfix),
        // Dovecot's auth process logs SASL requests from Postfix without a session id; IMAP
        // and POP3 logins carry one.
        Service::Dovecot if ev.session.is_none() => Some(SaslSide::Dovecot),
        Service::Dovecot => None,
    }
}

/// Sum of counted failures since `since` that pass `filter` (saturating).
fn count_since(state: &IpState, since: i64, filter: impl Fn(&Failure) -> bool) -> u32 {
    state
        .failures
        .iter()
        .filter(|f| f.time >= since && filter(f))
        .map(|f| f.count)
        .fold(0u32, u32::saturating_add)
}

/// Records a non-lenient failure on the mailbox `key`; returns a description of the campaign
/// when it is (now) under attack. The bool is true when this failure put it under attack.
fn record_user_failure(
    engine: &mut Engine,
    key: &str,
    user: &str,
    ip: IpAddr,
    addr: IpAddr,
    t: i64,
) -> Option<(String, bool)> {
    let cfg = &engine.cfg;
    let u = engine.users.entry(key.into()).or_default();
    u.last_seen = u.last_seen.max_with(t);
    if let Some(pos) = u.failures.iter().position(|f| f.ip == ip) {
        u.failures.remove(pos);
    }
    u.failures.push_capped(
        cfg.max_ips_per_user,
        UserFailure {
            ip,
            time: Ts::of(t),
            addr: Some(addr),
        },
    );
    let was_attacked = u.attacked_until.is_some_and(|until| until >= t);
    let since = t - cfg.campaign_window.as_secs() as i64;
    let distinct = u.failures.iter().filter(|f| f.time >= since).count();
    if distinct >= cfg.campaign_ips as usize {
        let until = t + cfg.horizon.as_secs() as i64;
        u.attacked_until = Some(
            u.attacked_until
                .map_or(Ts::of(until), |x| x.max_with(until)),
        );
    }
    let attacked = u.attacked_until.is_some_and(|until| until >= t);
    attacked.then(|| {
        let note = format!(
            "{user}, a mailbox under attack ({distinct} distinct IPs failed on it within {})",
            humantime::format_duration(cfg.campaign_window)
        );
        (note, !was_attacked)
    })
}

/// Remembers that `ip` made a failed login on the mailbox tied to a probe of it.
fn record_linked(engine: &mut Engine, key: &str, ip: IpAddr, addr: IpAddr, t: i64) {
    let cap = engine.cfg.max_ips_per_user;
    let u = engine.users.entry(key.into()).or_default();
    u.last_seen = u.last_seen.max_with(t);
    u.linked.retain(|f| f.ip != ip);
    u.linked.push_capped(
        cap,
        UserFailure {
            ip,
            time: Ts::of(t),
            addr: Some(addr),
        },
    );
}

/// The link weight of a probe `age` seconds old: 1 at once, falling linearly to 0 at
/// `link_window`.
fn link_weight(engine: &Engine, age: i64) -> f64 {
    let window = engine.cfg.link_window.as_secs().max(1) as f64;
    (1.0 - age as f64 / window).max(0.0)
}

/// A failed login tied to this address's own probe: the verdict and whether it ties the
/// address to a campaign (a login as the mailbox it probed, not as a mail server).
fn own_probe_link(engine: &Engine, ip: IpAddr, user: &str, ev: &Event) -> Option<(Verdict, bool)> {
    let state = engine.ips.get(&ip)?;
    let t = ev.time.timestamp();
    let cfg = &engine.cfg;
    let window = cfg.probe_window.as_secs() as i64;
    let link = cfg.link_window.as_secs() as i64;
    let proto = ev.protocol.map_or("a", protocol_name);
    for p in state
        .probes
        .iter()
        .rev()
        .filter(|p| p.time <= t && t - p.time <= link)
    {
        if let Some(r) = p.recipients.iter().find(|r| same_mailbox(user, r)) {
            let age = t - p.time;
            let strong = age <= window && !p.mta_like;
            let how = if p.mta_like {
                " (the client looked like a mail server verifying a sender)"
            } else if strong {
                " (strongest evidence)"
            } else {
                ""
            };
            return Some((
                Verdict {
                    rule: Rule::ProbeLogin,
                    note: format!(
                        "{proto} login as the probed address <{r}> {age}s after an SMTP \
                         transaction to it was aborted, link weight {:.2}{how}",
                        link_weight(engine, age)
                    ),
                    strong,
                },
                !p.mta_like,
            ));
        }
    }
    // A failure as another user shortly after a probe: weak.
    let last = state
        .probes
        .iter()
        .rev()
        .find(|p| p.time <= t && t - p.time <= window && !p.mta_like)?;
    let to = last
        .recipients
        .first()
        .map_or(String::new(), |r| format!(" to <{r}>"));
    Some((
        Verdict {
            rule: Rule::ProbeLogin,
            note: format!(
                "failed {proto} login as {user} {}s after an aborted SMTP transaction{to}",
                t - last.time
            ),
            strong: false,
        },
        false,
    ))
}

/// A failed login as a mailbox another address probed within `link_window` (split roles):
/// the mark, whether it bans at once, and the verdict.
fn split_link(
    engine: &Engine,
    ip: IpAddr,
    user: &str,
    t: i64,
) -> Option<(ProbeMark, bool, Verdict)> {
    let cfg = &engine.cfg;
    let link = cfg.link_window.as_secs() as i64;
    let window = cfg.probe_window.as_secs() as i64;
    let marks = engine.marks.get(&mailbox_key(user))?;
    let m = marks.iter().rev().find(|m| {
        m.prober != ip && m.time <= t && t - m.time <= link && same_mailbox(user, &m.recipient)
    })?;
    let age = t - m.time;
    // The mailbox's owner may log in from a new address after a bot probed it: then only
    // after the grace period.
    let lenient_since = t.saturating_sub(cfg.lenient_period.as_secs() as i64);
    let has_owner = engine
        .users
        .get(&mailbox_key(user))
        .and_then(|u| u.owner_seen)
        .is_some_and(|o| o >= lenient_since);
    let strong = age <= window && !has_owner;
    let note = format!(
        "login as <{}> {age}s after {} probed it (split roles), link weight {:.2}{}",
        m.recipient,
        m.addr,
        link_weight(engine, age),
        if has_owner && age <= window {
            "; the mailbox has an owner who logs in"
        } else {
            ""
        }
    );
    Some((
        m.clone(),
        strong,
        Verdict {
            rule: Rule::SplitRole,
            note,
            strong,
        },
    ))
}

/// Successful logins by `shared_ip_users` distinct users within the leniency period.
fn is_shared(engine: &Engine, state: &IpState, t: i64) -> bool {
    let cfg = &engine.cfg;
    let since = t - cfg.lenient_period.as_secs() as i64;
    cfg.shared_ip_users > 0 && state.success_users_since(since) >= cfg.shared_ip_users as usize
}

fn burst(engine: &Engine, ip: IpAddr, t: i64) -> Option<Verdict> {
    let cfg = &engine.cfg;
    let n = count_since(
        &engine.ips[&ip],
        t - cfg.burst_window.as_secs() as i64,
        |f| !f.lenient,
    );
    (n >= cfg.burst_failures).then(|| Verdict {
        rule: Rule::Burst,
        note: format!(
            "{n} failed logins within {}",
            humantime::format_duration(cfg.burst_window)
        ),
        strong: true,
    })
}

fn slow_repeat(engine: &Engine, ip: IpAddr, t: i64) -> Option<Verdict> {
    let cfg = &engine.cfg;
    let state = &engine.ips[&ip];
    let since = t - cfg.horizon.as_secs() as i64;
    let counted: Vec<&Failure> = state
        .failures
        .iter()
        .filter(|f| f.time >= since && !f.lenient)
        .collect();
    let score: u32 = counted
        .iter()
        .map(|f| {
            f.count.saturating_mul(if f.unknown_user {
                cfg.unknown_user_weight
            } else {
                1
            })
        })
        .fold(0u32, u32::saturating_add);
    if score < cfg.slow_repeat_score {
        return None;
    }
    let unknown = counted.iter().filter(|f| f.unknown_user).count();
    let first = counted.first().map_or(t, |f| f.time.get());
    Some(Verdict {
        rule: Rule::SlowRepeat,
        note: format!(
            "{} failed logins ({} for non-existent mailboxes) over {}, score {score}",
            counted.len(),
            unknown,
            humantime::format_duration(std::time::Duration::from_secs((t - first).max(0) as u64))
        ),
        strong: false,
    })
}

/// Bans `ip`'s prefix unless it is protected or already banned (also by a wider IPv6 site
/// ban); escalates to the IPv6 site when enough of its /64s offended. Pushes the decisions.
fn ban(engine: &mut Engine, ip: IpAddr, rule: Rule, note: String, t: i64, out: &mut Vec<Decision>) {
    if !engine.cfg.rule_enabled(rule) {
        return;
    }
    if engine.is_protected(ip).is_some() {
        engine.stats.spared += 1;
        return;
    }
    let prefix = engine.ban_prefix(ip);
    let now = engine.now.max(t);
    if let Some(site) = engine.site_of(prefix)
        && engine
            .prefixes
            .get(&site)
            .is_some_and(|p| p.banned_until > now)
    {
        return;
    }
    let Some(d) = ban_prefix(engine, ip, prefix, rule, note, t, 1) else {
        return;
    };
    out.push(d);
    if let Some(site) = engine.site_of(prefix) {
        escalate_site(engine, ip, prefix, site, rule, t, out);
    }
}

/// Records a /64 offence in its site and bans the site when `ipv6_site_offenders` distinct
/// /64s in it offended within the horizon, unless the site is unsafe to ban.
fn escalate_site(
    engine: &mut Engine,
    ip: IpAddr,
    prefix: IpNet,
    site: IpNet,
    rule: Rule,
    t: i64,
    out: &mut Vec<Decision>,
) {
    let horizon = engine.cfg.horizon.as_secs() as i64;
    let need = engine.cfg.ipv6_site_offenders as usize;
    let offenders = Arc::make_mut(engine.sites.entry(site).or_default());
    offenders.retain(|(p, at)| *p != prefix && *at >= t - horizon);
    offenders.push_capped(MAX_SITE_OFFENDERS, (prefix, Ts::of(t)));
    let n = offenders.len();
    if n < need {
        return;
    }
    let why_not = engine.site_unsafe(site, t);
    let last = out.last_mut();
    if let Some(why) = why_not {
        if let Some(d) = last {
            d.note = format!("{}; not widened to {site}: {why}", d.note);
        }
        return;
    }
    let note = format!(
        "{n} offending /64s inside {site} within {}: the ban covers the whole /{}",
        humantime::format_duration(engine.cfg.horizon),
        site.prefix_len()
    );
    if let Some(d) = last {
        d.note = format!("{}; escalated to {site}", d.note);
    }
    // Several networks offending already: the site's first ban is a repeat offence (24 h
    // with the defaults), so it outlasts a hopper's next round hours later.
    if let Some(mut d) = ban_prefix(engine, ip, site, rule, note, t, 2) {
        d.ip = ip;
        out.push(d);
    }
}

/// Bans `prefix` as offence number `min_offence` or the next one, whichever is higher.
fn ban_prefix(
    engine: &mut Engine,
    ip: IpAddr,
    prefix: IpNet,
    rule: Rule,
    note: String,
    t: i64,
    min_offence: u32,
) -> Option<Decision> {
    let cfg = &engine.cfg;
    let now = engine.now.max(t);
    let memory = cfg.offence_memory.as_secs() as i64;
    if engine
        .prefixes
        .get(&prefix)
        .is_some_and(|p| p.banned_until > now)
    {
        return None;
    }
    let last_note = engine.names.note(&note);
    let p = Arc::make_mut(engine.prefixes.entry(prefix).or_insert_with(|| {
        Arc::new(PrefixState {
            offences: 0,
            last_offence: Ts::default(),
            banned_until: Ts::default(),
            last_rule: rule,
            last_note: last_note.clone(),
        })
    }));
    if p.last_offence < now.saturating_sub(memory) {
        p.offences = 0;
    }
    p.offences = p.offences.saturating_add(1).max(min_offence);
    let duration = cfg.ban_duration(p.offences);
    p.last_offence = Ts::of(t);
    p.banned_until = Ts::of(t.saturating_add(duration.as_secs() as i64));
    p.last_rule = rule;
    p.last_note = last_note;
    let evidence = engine
        .ips
        .get(&ip)
        .map(|s| s.evidence_list())
        .unwrap_or_default();
    Some(Decision {
        action: Action::Ban,
        ip,
        prefix,
        time: to_time(t),
        rule,
        duration,
        offence: p.offences,
        dry_run: cfg.dry_run,
        evidence,
        note,
        kind: None,
        user: None,
    })
}

/// The mailbox a user name or recipient names: the local part without a `+tag`, lower-cased.
/// `Name@Domain`, `name` and `name+tag@domain` are one mailbox (and one campaign).
pub fn mailbox_key(name: &str) -> Box<str> {
    let local = name.rsplit_once('@').map_or(name, |(l, _)| l);
    let local = local.split_once('+').map_or(local, |(l, _)| l);
    if local.bytes().any(|b| b.is_ascii_uppercase()) {
        local.to_ascii_lowercase().into()
    } else {
        local.into()
    }
}

fn domain_of(name: &str) -> Option<&str> {
    name.rsplit_once('@').map(|(_, d)| d)
}

/// `user` names the mailbox `rcpt`: the same mailbox key, and the same domain when both name
/// one (case-insensitive).
pub(super) fn same_mailbox(user: &str, rcpt: &str) -> bool {
    if user.eq_ignore_ascii_case(rcpt) {
        return true;
    }
    if mailbox_key(user) != mailbox_key(rcpt) {
        return false;
    }
    match (domain_of(user), domain_of(rcpt)) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => true,
    }
}

/// `typed` is a typo of `meant` (a user name the address logged in as): the same local part
/// (wrong case, a missing, mistyped or another hosted domain, a `+tag`), or one letter off
/// (an edit, a swap of neighbours) in a local part of at least 4 letters.
pub fn typo_of(typed: &str, meant: &str) -> bool {
    if typed.eq_ignore_ascii_case(meant) {
        return true;
    }
    let (a, b) = (mailbox_key(typed), mailbox_key(meant));
    if a == b {
        return true;
    }
    let same_domain = match (domain_of(typed), domain_of(meant)) {
        (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
        _ => true,
    };
    same_domain && a.len().min(b.len()) >= 4 && one_edit(&a, &b)
}

/// At most one insertion, deletion, substitution or swap of neighbouring bytes apart.
fn one_edit(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[pre..], &b[pre..]);
    let suf = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a, b) = (
        &a[..a.len() - suf.min(a.len())],
        &b[..b.len() - suf.min(b.len())],
    );
    match (a.len(), b.len()) {
        (0, 0) | (1, 0) | (0, 1) | (1, 1) => true,
        (2, 2) => a[0] == b[1] && a[1] == b[0],
        _ => false,
    }
}

pub(super) fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Smtp => "SMTP AUTH",
        Protocol::Submission => "submission",
        Protocol::Smtps => "SMTPS",
        Protocol::Imap => "IMAP",
        Protocol::Pop3 => "POP3",
        Protocol::Managesieve => "ManageSieve",
        Protocol::Lmtp => "LMTP",
    }
}
