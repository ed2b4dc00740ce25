//! The rules. `observe` first records the event in the state, then asks the rules, strongest
//! first, whether the IP should be banned:
//!
//! - `probe-login`: a failed login within `probe_window` after an aborted SMTP transaction that
//!   named a recipient (a probe). Probes alone never ban: MTAs verify senders that way.
//! - `burst`: `burst_failures` in `burst_window` (fail2ban parity).
//! - `target-campaign`: the user name failed from `campaign_ips` distinct IPs within
//!   `campaign_window`; every IP that failed on it inside the horizon is banned.
//! - `slow-repeat`: failure score >= `slow_repeat_score` within the horizon (a failure for a
//!   non-existent mailbox scores `unknown_user_weight`); not for shared addresses.
//! - `lenient-burst`: failures on a user the IP has logged in as within `lenient_period` count
//!   only here, against the much higher `lenient_burst_failures`.
use std::net::IpAddr;

use super::decision::{Action, Decision, Evidence, Rule};
use super::state::{Failure, IpState, PendingRcpt, PrefixState, Probe, Success, UserFailure};
use super::state::{
    MAX_PENDING_RCPTS, MAX_PROBE_RCPTS, MAX_PROBES, MAX_SUCCESS_USERS, SaslSide, bounded_name,
};
use super::{Engine, canonical, to_time};
use crate::event::{Event, EventKind, Protocol, Service};

pub(super) fn observe(engine: &mut Engine, ev: &Event) -> Vec<Decision> {
    // State is kept per ban prefix (the address itself for IPv4, its /64 for IPv6); decisions
    // about this event still name the event's own address.
    let ip = engine.state_key(canonical(ev.ip));
    let t = ev.time.timestamp();
    if !matters(ev) {
        return Vec::new();
    }
    let cap = engine.cfg.max_evidence;
    let state = engine.ips.entry(ip).or_insert_with(|| IpState {
        first_seen: t,
        ..IpState::default()
    });
    state.last_seen = state.last_seen.max(t);
    state.push_evidence(
        Evidence {
            line: ev.line,
            time: ev.time,
            what: describe(ev),
        },
        cap,
    );

    match ev.kind {
        EventKind::Rcpt => {
            if let Some(rcpt) = &ev.recipient {
                on_rcpt(state, ev, rcpt);
            }
            Vec::new()
        }
        EventKind::MessageAccepted => {
            state
                .pending_rcpts
                .retain(|p| !same_session(p.session.as_deref(), ev.session.as_deref()));
            Vec::new()
        }
        EventKind::TransactionAborted | EventKind::LostConnection | EventKind::Disconnect => {
            on_transaction_end(state, ev);
            Vec::new()
        }
        EventKind::AuthSuccess => {
            if let Some(user) = &ev.user {
                on_success(engine, ip, t, user);
            }
            Vec::new()
        }
        EventKind::AuthFailure | EventKind::AuthUnknownUser => {
            let mut out = on_failure(engine, ip, ev);
            for d in &mut out {
                if d.ip == ip {
                    d.ip = canonical(ev.ip);
                }
            }
            out
        }
        _ => Vec::new(),
    }
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

fn on_rcpt(state: &mut IpState, ev: &Event, rcpt: &str) {
    if state.pending_rcpts.len() >= MAX_PENDING_RCPTS {
        state.pending_rcpts.remove(0);
    }
    state.pending_rcpts.push(PendingRcpt {
        session: ev.session.as_deref().map(bounded_name),
        recipient: bounded_name(rcpt),
        time: ev.time.timestamp(),
    });
}

/// Two lines belong to the same SMTP session when their session keys are equal or either
/// line has none (Postfix `NOQUEUE` and `lost connection` lines may come without one).
fn same_session(a: Option<&str>, b: Option<&str>) -> bool {
    a.is_none() || b.is_none() || a == b
}

/// An SMTP session ended: if it named a recipient and no message was accepted, it was a probe.
fn on_transaction_end(state: &mut IpState, ev: &Event) {
    let t = ev.time.timestamp();
    let same_session = |s: &Option<Box<str>>| same_session(s.as_deref(), ev.session.as_deref());
    let recipients: Vec<Box<str>> = state
        .pending_rcpts
        .iter()
        .filter(|p| same_session(&p.session))
        .map(|p| p.recipient.clone())
        .collect();
    state.pending_rcpts.retain(|p| !same_session(&p.session));
    let counters_say_probe = ev.smtp.is_some_and(|c| c.rcpt_ok >= 1 && c.data_ok == 0);
    let is_probe = match ev.kind {
        EventKind::TransactionAborted => ev.smtp.is_none_or(|c| c.data_ok == 0),
        EventKind::LostConnection => !recipients.is_empty(),
        _ => counters_say_probe,
    };
    if !is_probe {
        return;
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
        last.time = last.time.max(t);
        return;
    }
    if state.probes.len() >= MAX_PROBES {
        state.probes.pop_front();
    }
    let mut recipients = recipients;
    recipients.dedup();
    recipients.truncate(MAX_PROBE_RCPTS);
    state.probes.push_back(Probe {
        time: t,
        line: ev.line,
        session: ev.session.as_deref().map(bounded_name),
        recipients,
    });
}

/// How far back a successful login forgives the same user's failures from the same address.
const TYPO_FORGIVENESS_S: i64 = 3600;

fn on_success(engine: &mut Engine, ip: IpAddr, t: i64, user: &str) {
    let user = bounded_name(user);
    let Some(state) = engine.ips.get_mut(&ip) else {
        return;
    };
    if let Some(s) = state.successes.iter_mut().find(|s| s.user == user) {
        s.time = s.time.max(t);
    } else {
        if state.successes.len() >= MAX_SUCCESS_USERS {
            // Drop the oldest success.
            if let Some(i) = state
                .successes
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.time)
                .map(|(i, _)| i)
            {
                state.successes.remove(i);
            }
        }
        state.successes.push(Success {
            user: user.clone(),
            time: t,
        });
    }
    // Failures on this user shortly before the success were the owner's typos, not an attack.
    // Older ones stay counted: a guesser that finally gets in does not clear its record.
    let since = t - TYPO_FORGIVENESS_S;
    for f in state.failures.iter_mut() {
        if f.time >= since && f.user.as_deref() == Some(&*user) {
            f.lenient = true;
        }
    }
    if let Some(u) = engine.users.get_mut(&user) {
        u.failures.retain(|f| f.ip != ip || f.time < since);
    }
}

fn on_failure(engine: &mut Engine, ip: IpAddr, ev: &Event) -> Vec<Decision> {
    // failures == 0: another line describing an attempt that was already counted.
    if ev.failures == 0 {
        return Vec::new();
    }
    let cfg = &engine.cfg;
    let t = ev.time.timestamp();
    let user = ev.user.as_deref().map(bounded_name);
    let lenient_since = t.saturating_sub(cfg.lenient_period.as_secs() as i64);
    let Some(state) = engine.ips.get_mut(&ip) else {
        return Vec::new();
    };
    let lenient = user
        .as_deref()
        .is_some_and(|u| state.succeeded_as(u, lenient_since));
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
        return Vec::new();
    }
    if state.failures.len() >= cfg.max_failures_per_ip {
        state.failures.pop_front();
    }
    state.failures.push_back(Failure {
        time: t,
        line: ev.line,
        user: user.clone(),
        count: ev.failures,
        unknown_user: ev.kind == EventKind::AuthUnknownUser,
        lenient,
        sasl,
        paired: false,
    });

    if lenient {
        let n = count_since(state, t - cfg.lenient_burst_window.as_secs() as i64, |_| {
            true
        });
        if n >= cfg.lenient_burst_failures {
            let note = format!(
                "{n} failed logins in {} although this address logged in as {} before",
                humantime::format_duration(cfg.lenient_burst_window),
                user.as_deref().unwrap_or("?")
            );
            return ban(engine, ip, Rule::LenientBurst, note, t)
                .into_iter()
                .collect();
        }
        return Vec::new();
    }

    // target-campaign bookkeeping first: it can ban other IPs too.
    let mut campaign_bans = Vec::new();
    let mut campaign_note = None;
    if let Some(user) = &user {
        let campaign = record_user_failure(engine, user, ip, canonical(ev.ip), t);
        // Retroactive bans only when the name comes under attack: an address that failed on
        // it long ago is not banned again each time another one tries.
        if let Some((note, true)) = &campaign {
            let others: Vec<(IpAddr, Option<IpAddr>)> = engine.users[user]
                .failures
                .iter()
                .filter(|f| f.ip != ip && f.time >= t - engine.cfg.horizon.as_secs() as i64)
                .map(|f| (f.ip, f.addr))
                .collect();
            for (other, addr) in others {
                let n = format!("failed on {note}");
                if let Some(mut d) = ban(engine, other, Rule::TargetCampaign, n, t) {
                    d.ip = addr.unwrap_or(other);
                    campaign_bans.push(d);
                }
            }
        }
        campaign_note = campaign.map(|(note, _)| note);
    }

    let enabled = |v: &(Rule, String)| engine.cfg.rule_enabled(v.0);
    let verdict = probe_login(engine, ip, ev, user.as_deref())
        .filter(enabled)
        .or_else(|| burst(engine, ip, t).filter(enabled))
        .or_else(|| {
            campaign_note
                .map(|n| (Rule::TargetCampaign, format!("failed on {n}")))
                .filter(enabled)
        })
        .or_else(|| slow_repeat(engine, ip, t).filter(enabled));
    let mut out: Vec<Decision> = verdict
        .and_then(|(rule, note)| ban(engine, ip, rule, note, t))
        .into_iter()
        .collect();
    out.extend(campaign_bans);
    out
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

/// Sum of counted failures since `since` that pass `filter`.
fn count_since(state: &IpState, since: i64, filter: impl Fn(&Failure) -> bool) -> u32 {
    state
        .failures
        .iter()
        .filter(|f| f.time >= since && filter(f))
        .map(|f| f.count)
        .fold(0, u32::saturating_add)
}

/// Records a non-lenient failure on `user`; returns a description of the campaign when the
/// name is (now) under attack.
/// The bool is true when this failure put the name under attack (it was not before).
fn record_user_failure(
    engine: &mut Engine,
    user: &str,
    ip: IpAddr,
    addr: IpAddr,
    t: i64,
) -> Option<(String, bool)> {
    let cfg = &engine.cfg;
    let u = engine.users.entry(user.into()).or_default();
    u.last_seen = u.last_seen.max(t);
    if let Some(pos) = u.failures.iter().position(|f| f.ip == ip) {
        u.failures.remove(pos);
    }
    if u.failures.len() >= cfg.max_ips_per_user {
        u.failures.pop_front();
    }
    u.failures.push_back(UserFailure {
        ip,
        time: t,
        addr: Some(addr),
    });
    let was_attacked = u.attacked_until.is_some_and(|until| until >= t);
    let since = t - cfg.campaign_window.as_secs() as i64;
    let distinct = u.failures.iter().filter(|f| f.time >= since).count();
    if distinct >= cfg.campaign_ips as usize {
        let until = t + cfg.horizon.as_secs() as i64;
        u.attacked_until = Some(u.attacked_until.map_or(until, |x| x.max(until)));
    }
    let attacked = u.attacked_until.is_some_and(|until| until >= t);
    attacked.then(|| {
        let note = format!(
            "{user}, a user name under attack ({distinct} distinct IPs failed on it within {})",
            humantime::format_duration(cfg.campaign_window)
        );
        (note, !was_attacked)
    })
}

fn probe_login(
    engine: &Engine,
    ip: IpAddr,
    ev: &Event,
    user: Option<&str>,
) -> Option<(Rule, String)> {
    let state = engine.ips.get(&ip)?;
    let t = ev.time.timestamp();
    let window = engine.cfg.probe_window.as_secs() as i64;
    let recent: Vec<&Probe> = state
        .probes
        .iter()
        .filter(|p| p.time <= t && t - p.time <= window)
        .collect();
    let last = *recent.last()?;
    let proto = ev.protocol.map_or("a", protocol_name);
    if let Some(user) = user {
        for p in recent.iter().rev() {
            if let Some(r) = p.recipients.iter().find(|r| same_mailbox(user, r)) {
                return Some((
                    Rule::ProbeLogin,
                    format!(
                        "{proto} login as the probed address <{r}> {}s after an SMTP transaction to it \
                         was aborted (strongest evidence)",
                        t - p.time
                    ),
                ));
            }
        }
    }
    // A shared address (office NAT) may run an MTA that verifies senders while one of its
    // users mistypes a password: there only the login as the probed address counts.
    if is_shared(engine, state, t) {
        return None;
    }
    let to = last
        .recipients
        .first()
        .map_or(String::new(), |r| format!(" to <{r}>"));
    Some((
        Rule::ProbeLogin,
        format!(
            "failed {proto} login as {} {}s after an aborted SMTP transaction{to}",
            user.unwrap_or("an unnamed user"),
            t - last.time
        ),
    ))
}

/// Successful logins by `shared_ip_users` distinct users within the leniency period.
fn is_shared(engine: &Engine, state: &IpState, t: i64) -> bool {
    let cfg = &engine.cfg;
    let since = t - cfg.lenient_period.as_secs() as i64;
    cfg.shared_ip_users > 0 && state.success_users_since(since) >= cfg.shared_ip_users as usize
}

fn burst(engine: &Engine, ip: IpAddr, t: i64) -> Option<(Rule, String)> {
    let cfg = &engine.cfg;
    let n = count_since(
        &engine.ips[&ip],
        t - cfg.burst_window.as_secs() as i64,
        |f| !f.lenient,
    );
    (n >= cfg.burst_failures).then(|| {
        (
            Rule::Burst,
            format!(
                "{n} failed logins within {}",
                humantime::format_duration(cfg.burst_window)
            ),
        )
    })
}

fn slow_repeat(engine: &Engine, ip: IpAddr, t: i64) -> Option<(Rule, String)> {
    let cfg = &engine.cfg;
    let state = &engine.ips[&ip];
    if is_shared(engine, state, t) {
        return None;
    }
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
        .fold(0, u32::saturating_add);
    if score < cfg.slow_repeat_score {
        return None;
    }
    let unknown = counted.iter().filter(|f| f.unknown_user).count();
    let first = counted.first().map_or(t, |f| f.time);
    Some((
        Rule::SlowRepeat,
        format!(
            "{} failed logins ({} for non-existent mailboxes) over {}, score {score}",
            counted.len(),
            unknown,
            humantime::format_duration(std::time::Duration::from_secs((t - first).max(0) as u64))
        ),
    ))
}

/// Bans `ip`'s prefix unless it is protected or already banned.
fn ban(engine: &mut Engine, ip: IpAddr, rule: Rule, note: String, t: i64) -> Option<Decision> {
    if !engine.cfg.rule_enabled(rule) {
        return None;
    }
    if engine.is_protected(ip).is_some() {
        engine.stats.spared += 1;
        return None;
    }
    let prefix = engine.ban_prefix(ip);
    let cfg = &engine.cfg;
    let now = engine.now.max(t);
    let memory = cfg.offence_memory.as_secs() as i64;
    let p = engine.prefixes.entry(prefix).or_insert(PrefixState {
        offences: 0,
        last_offence: i64::MIN,
        banned_until: i64::MIN,
        last_rule: rule,
        last_note: String::new(),
    });
    if p.banned_until > now {
        return None;
    }
    if p.last_offence < now.saturating_sub(memory) {
        p.offences = 0;
    }
    p.offences += 1;
    let duration = cfg.ban_duration(p.offences);
    p.last_offence = t;
    p.banned_until = t.saturating_add(duration.as_secs() as i64);
    p.last_rule = rule;
    p.last_note = note.clone();
    let evidence = engine
        .ips
        .get(&ip)
        .map(|s| s.evidence.iter().cloned().collect())
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
    })
}

/// `user` names the mailbox `rcpt`: equal, or equal to its local part (case-insensitive).
pub(super) fn same_mailbox(user: &str, rcpt: &str) -> bool {
    if user.eq_ignore_ascii_case(rcpt) {
        return true;
    }
    let local = |s: &str| s.rsplit_once('@').map_or(s, |(l, _)| l).to_string();
    !user.contains('@') && user.eq_ignore_ascii_case(&local(rcpt))
}

fn protocol_name(p: Protocol) -> &'static str {
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

/// A short description of an event for evidence lists.
fn describe(ev: &Event) -> String {
    let user = ev.user.as_deref().map(bounded_name);
    let user = user.as_deref().unwrap_or("?");
    let login = ev.protocol.map_or("login".to_string(), |p| {
        format!("{} login", protocol_name(p))
    });
    match ev.kind {
        EventKind::Rcpt => format!(
            "RCPT to <{}>",
            ev.recipient
                .as_deref()
                .map(bounded_name)
                .as_deref()
                .unwrap_or("?")
        ),
        EventKind::MessageAccepted => "message accepted".into(),
        EventKind::TransactionAborted => "SMTP transaction aborted without a message".into(),
        EventKind::LostConnection => "SMTP connection lost".into(),
        EventKind::Disconnect if ev.smtp.is_some_and(|c| c.data_ok > 0) => {
            "SMTP disconnect after a message".into()
        }
        EventKind::Disconnect => "SMTP disconnect without a message".into(),
        EventKind::AuthSuccess => format!("{login} as {user} succeeded"),
        EventKind::AuthFailure => format!("{login} as {user} failed"),
        EventKind::AuthUnknownUser => format!("{login} as non-existent {user} failed"),
        _ => format!("{:?}", ev.kind),
    }
}
