//! Rule tests with hand-built events (independent of the parser).
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::event::{Event, EventKind, Protocol, Service, SmtpCounters};

const T0: i64 = 1_795_000_000;

/// Builds events with increasing line numbers.
struct Feed {
    engine: Engine,
    line: u64,
}

impl Feed {
    fn new(cfg: EngineConfig) -> Self {
        Feed {
            engine: Engine::new(cfg),
            line: 0,
        }
    }

    fn ev(&mut self, at: i64, ip: &str, kind: EventKind) -> Event {
        self.line += 1;
        Event {
            time: at_time(at),
            service: match kind {
                EventKind::AuthFailure | EventKind::AuthUnknownUser | EventKind::AuthSuccess => {
                    Service::Dovecot
                }
                _ => Service::Postfix,
            },
            kind,
            ip: ip.parse().unwrap(),
            user: None,
            recipient: None,
            protocol: Some(Protocol::Smtp),
            line: self.line,
            session: None,
            failures: 0,
            smtp: None,
            peer: None,
        }
    }

    fn push(&mut self, ev: Event) -> Vec<Decision> {
        self.engine.observe(&ev)
    }

    /// RCPT to `rcpt` then QUIT before DATA (the disconnect counters say rcpt=1, no data).
    fn probe(&mut self, at: i64, ip: &str, rcpt: &str) -> Vec<Decision> {
        let mut e = self.ev(at, ip, EventKind::Rcpt);
        e.recipient = Some(rcpt.into());
        e.session = Some("pid:100".into());
        let mut out = self.push(e);
        let mut d = self.ev(at, ip, EventKind::TransactionAborted);
        d.session = Some("pid:100".into());
        d.smtp = Some(SmtpCounters {
            rcpt_ok: 1,
            quit: true,
            ..SmtpCounters::default()
        });
        out.extend(self.push(d));
        out
    }

    /// A normal delivery: RCPT, DATA accepted, disconnect with data=1.
    fn delivery(&mut self, at: i64, ip: &str, rcpt: &str) -> Vec<Decision> {
        let mut e = self.ev(at, ip, EventKind::Rcpt);
        e.recipient = Some(rcpt.into());
        e.session = Some("pid:7".into());
        let mut out = self.push(e);
        let mut m = self.ev(at, ip, EventKind::MessageAccepted);
        m.session = Some("pid:7".into());
        out.extend(self.push(m));
        let mut d = self.ev(at, ip, EventKind::Disconnect);
        d.session = Some("pid:7".into());
        d.smtp = Some(SmtpCounters {
            rcpt_ok: 1,
            data_ok: 1,
            data_tried: 1,
            quit: true,
            ..SmtpCounters::default()
        });
        out.extend(self.push(d));
        out
    }

    fn fail(&mut self, at: i64, ip: &str, user: &str) -> Vec<Decision> {
        self.fail_kind(at, ip, user, EventKind::AuthFailure, 1)
    }

    fn fail_unknown(&mut self, at: i64, ip: &str, user: &str) -> Vec<Decision> {
        self.fail_kind(at, ip, user, EventKind::AuthUnknownUser, 1)
    }

    fn fail_kind(
        &mut self,
        at: i64,
        ip: &str,
        user: &str,
        kind: EventKind,
        failures: u32,
    ) -> Vec<Decision> {
        let mut e = self.ev(at, ip, kind);
        e.user = Some(user.into());
        e.protocol = Some(Protocol::Imap);
        e.failures = failures;
        self.push(e)
    }

    fn ok(&mut self, at: i64, ip: &str, user: &str) -> Vec<Decision> {
        let mut e = self.ev(at, ip, EventKind::AuthSuccess);
        e.user = Some(user.into());
        e.protocol = Some(Protocol::Imap);
        self.push(e)
    }
}

fn at_time(offset: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(T0 + offset, 0).unwrap()
}

/// The defaults without the grace period, so the rule tests see bans at once; the grace
/// period has its own tests.
fn cfg() -> EngineConfig {
    EngineConfig {
        grace_period: Duration::ZERO,
        ..EngineConfig::default()
    }
}

/// Config where only the named rule can fire.
fn only(rule: Rule) -> EngineConfig {
    let disabled_rules = Rule::ALL
        .into_iter()
        .filter(|r| *r != rule && *r != Rule::Manual)
        .collect();
    EngineConfig {
        disabled_rules,
        ..cfg()
    }
}

const BOT: &str = "198.18.0.7";

#[test]
fn probe_then_login_as_probed_address_bans_at_once_with_strongest_evidence() {
    let mut f = Feed::new(only(Rule::ProbeLogin));
    assert!(
        f.probe(0, BOT, "txrj3ejbb3@example.test").is_empty(),
        "a probe alone must not ban"
    );
    let d = f.fail_unknown(3, BOT, "TXRJ3EJBB3@example.test");
    assert_eq!(d.len(), 1, "{d:?}");
    let d = &d[0];
    assert_eq!(d.rule, Rule::ProbeLogin);
    assert_eq!(d.action, Action::Ban);
    assert_eq!(d.prefix.to_string(), "198.18.0.7/32");
    assert_eq!(d.duration, Duration::from_secs(3600));
    assert_eq!(d.offence, 1);
    assert_eq!(d.time, at_time(3));
    assert!(
        d.note.contains("probed address <txrj3ejbb3@example.test>"),
        "{}",
        d.note
    );
    assert!(d.note.contains("strongest"), "{}", d.note);
    let lines: Vec<u64> = d.evidence.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![1, 2, 3], "rcpt, abort and the failed login");
}

#[test]
fn probe_login_local_part_matches_and_other_user_is_weaker_evidence() {
    let mut f = Feed::new(only(Rule::ProbeLogin));
    f.probe(0, BOT, "alice@example.test");
    let d = f.fail(5, BOT, "alice");
    assert!(d[0].note.contains("probed address"), "{}", d[0].note);

    let mut f = Feed::new(only(Rule::ProbeLogin));
    f.probe(0, BOT, "alice@example.test");
    let d = f.fail(5, BOT, "bob@example.test");
    assert_eq!(d[0].rule, Rule::ProbeLogin);
    assert!(!d[0].note.contains("strongest"), "{}", d[0].note);
    assert!(
        d[0].note
            .contains("aborted SMTP transaction to <alice@example.test>"),
        "{}",
        d[0].note
    );
}

/// Two sources read out of order (a daemon catching up on the Postfix and Dovecot files after
/// a restart): the login as the probed address reaches the engine before its probe. The log
/// times say probe then login, so it is the seed pattern and bans at the probe.
#[test]
fn probe_login_holds_when_the_login_is_read_before_the_probe() {
    let mut f = Feed::new(EngineConfig {
        grace_period: Duration::from_secs(600),
        ..EngineConfig::default()
    });
    let held = f.fail(5, BOT, "q@example.test");
    assert!(held.is_empty(), "a lone failure is weak: {held:?}");
    let d = f.probe(2, BOT, "q@example.test");
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].rule, Rule::ProbeLogin);
    assert_eq!(d[0].action, Action::Ban);
    assert!(d[0].note.contains("read first"), "{}", d[0].note);
    // A login the log puts before the probe is no probe-login.
    let mut f = Feed::new(only(Rule::ProbeLogin));
    assert!(f.fail(1, BOT, "q@example.test").is_empty());
    assert!(f.probe(2, BOT, "q@example.test").is_empty());
}

#[test]
fn probe_login_respects_window_and_needs_the_same_ip() {
    let mut f = Feed::new(only(Rule::ProbeLogin));
    f.probe(0, BOT, "a@example.test");
    assert!(
        f.fail(3601, BOT, "a@example.test").is_empty(),
        "outside the 1 h link window"
    );
    assert!(
        f.fail(30, "198.18.0.8", "a@example.test").is_empty(),
        "another IP is split-role, not probe-login"
    );
    // Between the probe window and the link window: held for the grace period.
    let mut f = Feed::new(EngineConfig {
        grace_period: Duration::from_secs(600),
        ..only(Rule::ProbeLogin)
    });
    f.probe(0, BOT, "a@example.test");
    assert!(f.fail(1800, BOT, "a@example.test").is_empty(), "weak link");
    let d = f.delivery(1800 + 600, "198.18.0.99", "x@example.test");
    assert_eq!(d.len(), 1, "the grace period ended");
    assert!(d[0].note.contains("link weight 0.50"), "{}", d[0].note);
    assert!(d[0].note.contains("held 10m"), "{}", d[0].note);
    let mut f = Feed::new(only(Rule::ProbeLogin));
    f.probe(0, BOT, "a@example.test");
    assert_eq!(
        f.fail(600, BOT, "a@example.test").len(),
        1,
        "at the edge of the window"
    );
}

#[test]
fn lost_connection_after_rcpt_is_a_probe_and_a_delivery_is_not() {
    let mut f = Feed::new(only(Rule::ProbeLogin));
    let mut r = f.ev(0, BOT, EventKind::Rcpt);
    r.recipient = Some("x@example.test".into());
    r.session = Some("pid:9".into());
    f.push(r);
    let mut l = f.ev(0, BOT, EventKind::LostConnection);
    l.session = Some("pid:9".into());
    f.push(l);
    assert_eq!(f.fail(2, BOT, "x@example.test")[0].rule, Rule::ProbeLogin);

    let mut f = Feed::new(only(Rule::ProbeLogin));
    f.delivery(0, BOT, "x@example.test");
    assert!(
        f.fail(2, BOT, "x@example.test").is_empty(),
        "accepted message is not a probe"
    );
}

#[test]
fn disconnect_counters_alone_make_a_probe() {
    // Hosts that do not log accepted RCPTs: only `disconnect ... rcpt=1 quit=1` tells.
    let mut f = Feed::new(only(Rule::ProbeLogin));
    let mut d = f.ev(0, BOT, EventKind::Disconnect);
    d.smtp = Some(SmtpCounters {
        rcpt_ok: 1,
        data_tried: 1,
        quit: true,
        ..SmtpCounters::default()
    });
    f.push(d);
    let out = f.fail(4, BOT, "y@example.test");
    assert_eq!(out.len(), 1);
    assert!(
        out[0].note.contains("after an aborted SMTP transaction"),
        "{}",
        out[0].note
    );
}

#[test]
fn sender_verification_probes_never_ban() {
    let mut f = Feed::new(cfg());
    for i in 0..200 {
        assert!(
            f.probe(i * 60, BOT, &format!("user{i}@example.test"))
                .is_empty()
        );
    }
    assert_eq!(f.engine.stats().bans, 0);
}

#[test]
fn slow_repeat_bans_the_second_failure_hours_later() {
    let mut f = Feed::new(only(Rule::SlowRepeat));
    assert!(f.fail(0, BOT, "alice@example.test").is_empty());
    let d = f.fail(2 * 3600 + 900, BOT, "alice@example.test");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].rule, Rule::SlowRepeat);
    assert!(d[0].note.contains("2 failed logins"), "{}", d[0].note);
}

#[test]
fn slow_repeat_forgets_beyond_the_horizon() {
    let mut f = Feed::new(only(Rule::SlowRepeat));
    f.fail(0, BOT, "alice@example.test");
    assert!(f.fail(48 * 3600 + 1, BOT, "alice@example.test").is_empty());
}

#[test]
fn unknown_mailbox_counts_double() {
    let mut f = Feed::new(only(Rule::SlowRepeat));
    let d = f.fail_unknown(0, BOT, "nosuch@example.test");
    assert_eq!(d.len(), 1);
    assert!(d[0].note.contains("1 for non-existent"), "{}", d[0].note);
    let mut c = only(Rule::SlowRepeat);
    c.slow_repeat_score = 3;
    let mut f = Feed::new(c);
    assert!(f.fail_unknown(0, BOT, "nosuch@example.test").is_empty());
    assert_eq!(
        f.fail(60, BOT, "alice@example.test").len(),
        1,
        "2 + 1 reaches 3"
    );
}

#[test]
fn duplicate_descriptions_do_not_count() {
    let mut f = Feed::new(only(Rule::SlowRepeat));
    f.fail(0, BOT, "alice@example.test");
    // The Dovecot login line for the same attempt: failures == 0.
    assert!(
        f.fail_kind(1, BOT, "alice@example.test", EventKind::AuthFailure, 0)
            .is_empty()
    );
    assert_eq!(f.engine.explain(BOT.parse().unwrap()).failures.len(), 1);
}

#[test]
fn burst_bans_on_the_fifth_failure_in_ten_minutes() {
    let mut f = Feed::new(only(Rule::Burst));
    for i in 0..4 {
        assert!(
            f.fail(i * 30, BOT, &format!("u{i}@example.test"))
                .is_empty()
        );
    }
    let d = f.fail(150, BOT, "u9@example.test");
    assert_eq!(d[0].rule, Rule::Burst);
    let mut f = Feed::new(only(Rule::Burst));
    for i in 0..10 {
        assert!(
            f.fail(i * 200, BOT, "u@example.test").is_empty(),
            "spread out: no burst"
        );
    }
}

#[test]
fn a_multi_attempt_line_counts_all_its_attempts() {
    let mut f = Feed::new(only(Rule::Burst));
    let d = f.fail_kind(0, BOT, "u@example.test", EventKind::AuthFailure, 5);
    assert_eq!(d[0].rule, Rule::Burst);
}

#[test]
fn target_campaign_bans_every_ip_that_failed_and_new_ones_at_once() {
    let mut f = Feed::new(only(Rule::TargetCampaign));
    assert!(f.fail(0, "198.18.1.1", "ceo@example.test").is_empty());
    assert!(f.fail(3600, "2001:db8:1::5", "ceo@example.test").is_empty());
    let d = f.fail(7200, "198.18.1.3", "ceo@example.test");
    let mut banned: Vec<String> = d.iter().map(|d| d.prefix.to_string()).collect();
    banned.sort();
    assert_eq!(
        banned,
        vec!["198.18.1.1/32", "198.18.1.3/32", "2001:db8:1::/64"]
    );
    assert!(
        d.iter()
            .all(|d| d.rule == Rule::TargetCampaign && d.time == at_time(7200))
    );
    assert!(d[0].note.contains("ceo@example.test"), "{}", d[0].note);
    let d = f.fail(8000, "198.18.1.4", "ceo@example.test");
    assert_eq!(d.len(), 1, "a new IP is banned on its first failure");
    assert!(
        f.fail(8000, "198.18.1.5", "other@example.test").is_empty(),
        "other names are not"
    );
}

#[test]
fn target_campaign_needs_distinct_ips_within_the_window() {
    let mut f = Feed::new(only(Rule::TargetCampaign));
    f.fail(0, "198.18.1.1", "ceo@example.test");
    f.fail(10, "198.18.1.1", "ceo@example.test");
    assert!(
        f.fail(20, "198.18.1.2", "ceo@example.test").is_empty(),
        "two IPs only"
    );
    assert!(
        f.fail(25 * 3600, "198.18.1.3", "ceo@example.test")
            .is_empty(),
        "first IP left the 24h window"
    );
}

#[test]
fn known_user_on_its_own_address_is_lenient() {
    let mut f = Feed::new(cfg());
    let phone = "198.18.5.5";
    f.ok(0, phone, "alice@example.test");
    // Stale password: one failure every 15 minutes for two days.
    for i in 1..200 {
        assert!(
            f.fail(i * 900, phone, "alice@example.test").is_empty(),
            "attempt {i}"
        );
    }
    // But a storm on that name still bans (lenient burst).
    let mut out = Vec::new();
    for i in 0..30 {
        out.extend(f.fail(200 * 900 + i * 10, phone, "alice@example.test"));
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].rule, Rule::LenientBurst);
}

#[test]
fn a_known_client_is_lenient_for_any_user_but_not_forever() {
    let mut f = Feed::new(only(Rule::SlowRepeat));
    f.ok(0, BOT, "alice@example.test");
    f.fail(60, BOT, "bob@example.test");
    assert!(
        f.fail(120, BOT, "bob@example.test").is_empty(),
        "a known client: bob may be the family's other account"
    );
    let mut f = Feed::new(only(Rule::SlowRepeat));
    f.ok(0, BOT, "alice@example.test");
    let day = 86400;
    f.fail(31 * day, BOT, "alice@example.test");
    assert_eq!(
        f.fail(31 * day + 60, BOT, "alice@example.test").len(),
        1,
        "30-day leniency expired"
    );
}

#[test]
fn typo_then_success_is_forgiven() {
    let mut f = Feed::new(only(Rule::SlowRepeat));
    f.fail(0, BOT, "carol@example.test");
    f.ok(20, BOT, "carol@example.test");
    assert!(f.fail(86400, BOT, "carol@example.test").is_empty());
}

#[test]
fn a_late_success_does_not_clear_old_failures() {
    // A guesser that gets in hours later keeps its earlier failures on record.
    let mut c = only(Rule::SlowRepeat);
    c.slow_repeat_score = 3;
    let mut f = Feed::new(c);
    f.fail(0, BOT, "carol@example.test");
    f.fail(60, BOT, "carol@example.test");
    f.ok(4 * 3600, BOT, "carol@example.test");
    let x = f.engine.explain(BOT.parse().unwrap());
    assert!(x.failures.iter().all(|f| !f.lenient), "{x}");
}

#[test]
fn a_shared_address_is_never_banned_for_failures_and_says_so_once() {
    let nat = "198.18.9.9";
    let mut f = Feed::new(cfg());
    for (i, u) in ["a", "b", "c", "d"].iter().enumerate() {
        f.ok(i as i64, nat, &format!("{u}@example.test"));
    }
    let mut out = Vec::new();
    for i in 0..40 {
        out.extend(f.fail(3600 + i, nat, &format!("x{i}@example.test")));
    }
    assert!(out.iter().all(|d| d.action == Action::Alert), "{out:?}");
    assert_eq!(out.len(), 1, "said once: {out:?}");
    assert_eq!(out[0].kind, Some(AlertKind::SharedAddress));
    assert!(
        out[0].note.contains("not banned: a shared address"),
        "{}",
        out[0].note
    );
    assert!(f.engine.explain(nat.parse().unwrap()).shared);
}

#[test]
fn protected_addresses_are_never_banned() {
    let mut c = cfg();
    c.allowlist = vec!["198.18.200.0/24".parse().unwrap()];
    let mut f = Feed::new(c);
    f.engine.set_host_addrs(["198.18.0.1".parse().unwrap()]);
    for ip in [
        "127.0.0.1",
        "::1",
        "198.18.200.7",
        "198.18.0.1",
        "::ffff:127.0.0.1",
        "::ffff:198.18.0.1",
    ] {
        f.probe(0, ip, "x@example.test");
        for i in 0..40 {
            assert!(f.fail(i, ip, "x@example.test").is_empty(), "{ip} banned");
        }
    }
    assert!(f.engine.stats().spared > 0);
}

#[test]
fn no_re_ban_while_banned_then_escalation() {
    let mut c = only(Rule::SlowRepeat);
    c.slow_repeat_score = 1;
    let mut f = Feed::new(c);
    let d = f.fail(0, BOT, "a@example.test");
    assert_eq!(
        (d[0].offence, d[0].duration),
        (1, Duration::from_secs(3600))
    );
    assert!(
        f.fail(1800, BOT, "a@example.test").is_empty(),
        "still banned"
    );
    let d = f.fail(3601, BOT, "a@example.test");
    assert_eq!(
        (d[0].offence, d[0].duration),
        (2, Duration::from_secs(86400))
    );
    let d = f.fail(3601 + 86400, BOT, "a@example.test");
    assert_eq!(
        (d[0].offence, d[0].duration),
        (3, Duration::from_secs(7 * 86400))
    );
    let d = f.fail(3601 + 8 * 86400, BOT, "a@example.test");
    assert_eq!(
        (d[0].offence, d[0].duration),
        (4, Duration::from_secs(30 * 86400))
    );
    let e = f.engine.explain(BOT.parse().unwrap());
    assert_eq!(
        (e.slow_repeat_score, e.slow_repeat_threshold),
        (1, 1),
        "only the last failure is within 48 h: {e}"
    );
    assert_eq!(e.offences, 4);
    assert_eq!(e.next_ban, Duration::from_secs(30 * 86400));
    assert!(e.banned_until.is_some());
}

#[test]
fn ipv6_ban_covers_the_64_and_is_not_re_emitted_for_a_neighbour() {
    let mut c = only(Rule::SlowRepeat);
    c.slow_repeat_score = 1;
    let mut f = Feed::new(c);
    let d = f.fail(0, "2001:db8:5:6::1", "a@example.test");
    assert_eq!(d[0].prefix.to_string(), "2001:db8:5:6::/64");
    assert!(f.fail(10, "2001:db8:5:6::2", "a@example.test").is_empty());
}

#[test]
fn snapshot_round_trip_keeps_state_and_decisions() {
    let events = |f: &mut Feed| {
        let mut all = Vec::new();
        all.extend(f.probe(0, BOT, "q@example.test"));
        all.extend(f.fail(5000, "198.18.3.3", "z@example.test"));
        all.extend(f.fail(9000, "198.18.3.3", "z@example.test"));
        all.extend(f.fail(9100, BOT, "q@example.test"));
        all
    };
    let mut straight = Feed::new(cfg());
    let expect = events(&mut straight);
    assert_eq!(expect.len(), 1, "{expect:?}");

    let mut first = Feed::new(cfg());
    first.probe(0, BOT, "q@example.test");
    first.fail(5000, "198.18.3.3", "z@example.test");
    let json = serde_json::to_string(&first.engine.snapshot()).unwrap();
    let snap: Snapshot = serde_json::from_str(&json).unwrap();
    let mut second = Feed {
        engine: Engine::restore(cfg(), snap).unwrap(),
        line: first.line,
    };
    let mut got = second.fail(9000, "198.18.3.3", "z@example.test");
    got.extend(second.fail(9100, BOT, "q@example.test"));
    assert_eq!(got, expect);
    assert_eq!(second.engine.snapshot().ips, straight.engine.snapshot().ips);
}

#[test]
fn snapshot_of_other_version_is_refused() {
    let mut s = Engine::new(cfg()).snapshot();
    s.version = 99;
    let e = Engine::restore(cfg(), s).unwrap_err();
    assert!(e.to_string().contains("version 99"), "{e}");
}

#[test]
fn restore_with_new_allowlist_unbans() {
    let mut c = only(Rule::SlowRepeat);
    c.slow_repeat_score = 1;
    let mut f = Feed::new(c.clone());
    f.fail(0, BOT, "a@example.test");
    c.allowlist = vec!["198.18.0.0/24".parse().unwrap()];
    let mut e = Engine::restore(c, f.engine.snapshot()).unwrap();
    let d = e.reconcile();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].action, Action::Unban);
}

#[test]
fn state_is_bounded_by_the_caps() {
    let mut c = cfg();
    c.max_tracked_ips = 100;
    c.max_tracked_users = 50;
    let mut f = Feed::new(c);
    for i in 0..5000u32 {
        let ip = IpAddr::from([198, 18, (i >> 8) as u8, i as u8]).to_string();
        f.fail(i64::from(i), &ip, &format!("user{i}@example.test"));
    }
    let (ips, users, _) = f.engine.tracked();
    assert!(ips <= 100 && users <= 50, "{ips} {users}");
    assert!(f.engine.stats().evicted_ips >= 4900);
}

#[test]
fn state_expires_after_the_horizon() {
    let mut f = Feed::new(cfg());
    f.fail(0, BOT, "a@example.test");
    f.fail(49 * 3600, "198.18.77.1", "b@example.test");
    let (ips, users, _) = f.engine.tracked();
    assert_eq!((ips, users), (1, 1));
}

#[test]
fn attacker_names_are_bounded() {
    let mut f = Feed::new(cfg());
    let long = "é".repeat(10_000);
    f.fail(0, BOT, &long);
    let e = f.engine.explain(BOT.parse().unwrap());
    assert!(e.failures[0].user.as_ref().unwrap().len() <= state::MAX_NAME_LEN);
    let mut f = Feed::new(only(Rule::ProbeLogin));
    f.probe(0, BOT, "a@example.test");
    let d = f.fail(1, BOT, "evil\u{1b}[2J\nname");
    assert!(!d[0].note.chars().any(char::is_control), "{:?}", d[0].note);
    assert!(d[0].note.contains("evil?[2J?name"), "{:?}", d[0].note);
}

#[test]
fn same_input_same_decisions() {
    let run = || {
        let mut f = Feed::new(cfg());
        let mut all = Vec::new();
        for i in 0..300i64 {
            let ip = format!("198.18.{}.{}", i % 7, i % 13);
            all.extend(f.probe(i * 40, &ip, &format!("u{}@example.test", i % 5)));
            all.extend(f.fail(i * 40 + 3, &ip, &format!("u{}@example.test", i % 11)));
        }
        serde_json::to_string(&all).unwrap()
    };
    assert_eq!(run(), run());
}

#[test]
fn bytes_per_tracked_ip() {
    // A typical bot: one probe with one recipient, two failures.
    let mut f = Feed::new(cfg());
    f.probe(0, BOT, "txrj3ejbb3@example.test");
    f.fail(3, BOT, "txrj3ejbb3@example.test");
    f.fail_kind(4, BOT, "txrj3ejbb3@example.test", EventKind::AuthFailure, 0);
    f.fail(3 * 3600, BOT, "txrj3ejbb3@example.test");
    let bytes = f.engine.ips[&BOT.parse::<IpAddr>().unwrap()].approx_bytes();
    println!("bytes per tracked bot IP: {bytes}");
    assert!(
        bytes > std::mem::size_of::<state::IpState>() && bytes < 4096,
        "{bytes}"
    );
}

#[test]
fn smtp_auth_counted_by_both_postfix_and_dovecot_parsers_counts_once() {
    // Postfix and Dovecot read from two sources: each parser counts its own line of the one
    // SMTP AUTH attempt (Postfix warning, Dovecot session-less auth line).
    let mut f = Feed::new(only(Rule::SlowRepeat));
    let mut dovecot = f.ev(0, BOT, EventKind::AuthFailure);
    dovecot.service = Service::Dovecot;
    dovecot.user = Some("alice@example.test".into());
    dovecot.failures = 1;
    assert!(f.push(dovecot).is_empty());
    let mut postfix = f.ev(1, BOT, EventKind::AuthFailure);
    postfix.service = Service::Postfix;
    postfix.protocol = Some(Protocol::Submission);
    postfix.session = Some("pid:77".into());
    postfix.user = Some("alice@example.test".into());
    postfix.failures = 1;
    assert!(
        f.push(postfix.clone()).is_empty(),
        "the second half must not count"
    );
    let x = f.engine.explain(BOT.parse().unwrap());
    assert_eq!(x.failures.len(), 1);
    // A second attempt 30 s later does count (and bans: score 2).
    postfix.time = at_time(31);
    assert_eq!(f.push(postfix).len(), 1);

    // IMAP failures carry a Dovecot session and are never paired away.
    let mut f = Feed::new(only(Rule::SlowRepeat));
    let mut imap = f.ev(0, BOT, EventKind::AuthFailure);
    imap.service = Service::Dovecot;
    imap.session = Some("Mb2sXTthtZfGEgAC".into());
    imap.user = Some("alice@example.test".into());
    imap.failures = 1;
    f.push(imap.clone());
    let mut postfix = f.ev(0, BOT, EventKind::AuthFailure);
    postfix.user = Some("alice@example.test".into());
    postfix.failures = 1;
    assert_eq!(
        f.push(postfix).len(),
        1,
        "IMAP + SMTP AUTH are two attempts"
    );
}

#[test]
fn rcpt_and_lost_connection_lines_without_a_session_still_tie_to_the_transaction() {
    // As parsed from the lab: NOQUEUE and `lost connection` lines carry no session key, the
    // disconnect line does. The probed recipient must still be found.
    let mut f = Feed::new(only(Rule::ProbeLogin));
    let mut r = f.ev(0, BOT, EventKind::Rcpt);
    r.recipient = Some("txrj3ejbb3@example.test".into());
    f.push(r);
    let e = f.ev(0, BOT, EventKind::LostConnection);
    f.push(e);
    let mut d = f.ev(0, BOT, EventKind::TransactionAborted);
    d.session = Some("pid:21937".into());
    d.smtp = Some(SmtpCounters {
        rcpt_ok: 1,
        ..SmtpCounters::default()
    });
    f.push(d);
    let x = f.engine.explain(BOT.parse().unwrap());
    assert_eq!(x.probes.len(), 1, "one transaction: {:?}", x.probes);
    assert_eq!(x.probes[0].1, vec!["txrj3ejbb3@example.test".to_string()]);
    let d = f.fail(5, BOT, "txrj3ejbb3@example.test");
    assert!(d[0].note.contains("probed address"), "{}", d[0].note);
}

#[test]
fn target_campaign_retro_bans_once_not_on_every_later_failure() {
    let mut f = Feed::new(only(Rule::TargetCampaign));
    f.fail(0, "198.18.1.1", "ceo@example.test");
    f.fail(60, "198.18.1.2", "ceo@example.test");
    assert_eq!(f.fail(120, "198.18.1.3", "ceo@example.test").len(), 3);
    // Two hours later the 1 h bans have expired; a fourth address fails: only it is banned,
    // the first three did nothing new.
    let d = f.fail(2 * 3600, "198.18.1.4", "ceo@example.test");
    let ips: Vec<String> = d.iter().map(|d| d.ip.to_string()).collect();
    assert_eq!(ips, vec!["198.18.1.4"]);
}

#[test]
fn a_shared_address_is_not_banned_even_for_a_login_as_its_probed_address() {
    let nat = "198.18.9.9";
    let mut f = Feed::new(only(Rule::ProbeLogin));
    for (i, u) in ["a", "b", "c"].iter().enumerate() {
        f.ok(i as i64, nat, &format!("{u}@example.test"));
    }
    // The office MTA verifies a sender; a new colleague mistypes a password: no ban.
    f.probe(100, nat, "someone@partner.example");
    assert!(f.fail(130, nat, "newhire@example.test").is_empty());
    // Not even a login as the probed address bans it: a known (and shared) client.
    f.probe(200, nat, "ghost@example.test");
    assert!(f.fail(205, nat, "ghost@example.test").is_empty());
}

#[test]
fn extreme_log_times_do_not_panic() {
    let mut f = Feed::new(cfg());
    for t in [
        DateTime::<Utc>::MIN_UTC,
        DateTime::<Utc>::MAX_UTC,
        DateTime::<Utc>::UNIX_EPOCH,
    ] {
        for kind in [
            EventKind::Rcpt,
            EventKind::TransactionAborted,
            EventKind::AuthUnknownUser,
        ] {
            let mut e = f.ev(0, BOT, kind);
            e.time = t;
            e.user = Some("x@example.test".into());
            e.recipient = Some("x@example.test".into());
            e.failures = 1;
            for d in f.push(e) {
                let _ = d.expires();
                let _ = d.to_string();
            }
        }
    }
    let _ = f.engine.explain(BOT.parse().unwrap()).to_string();
    let json = serde_json::to_string(&f.engine.snapshot()).unwrap();
    Engine::restore(cfg(), serde_json::from_str(&json).unwrap()).unwrap();
}

#[test]
fn ipv6_state_is_per_64_so_rotating_addresses_are_one_actor() {
    let mut f = Feed::new(only(Rule::ProbeLogin));
    f.probe(0, "2001:db8:5:6::1", "x@example.test");
    let d = f.fail(4, "2001:db8:5:6:aaaa::2", "x@example.test");
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].ip.to_string(),
        "2001:db8:5:6:aaaa::2",
        "the decision names the address"
    );
    assert_eq!(d[0].prefix.to_string(), "2001:db8:5:6::/64");
    assert!(d[0].note.contains("probed address"), "{}", d[0].note);

    // A phone's privacy address changes; its earlier success in the /64 still counts.
    let mut f = Feed::new(only(Rule::SlowRepeat));
    f.ok(0, "2001:db8:7:7::a", "carol@example.test");
    assert!(
        f.fail(86400, "2001:db8:7:7::b", "carol@example.test")
            .is_empty()
    );
    assert!(
        f.fail(90000, "2001:db8:7:7::c", "carol@example.test")
            .is_empty()
    );
}

#[test]
fn a_prefix_that_would_cover_a_protected_address_shrinks_to_the_address() {
    let mut c = only(Rule::SlowRepeat);
    c.slow_repeat_score = 1;
    c.allowlist = vec!["2001:db8:9:9::100/120".parse().unwrap()];
    let mut f = Feed::new(c);
    f.engine.set_host_addrs(["2001:db8::1".parse().unwrap()]);
    let d = f.fail(0, "2001:db8::5", "a@example.test");
    assert_eq!(
        d[0].prefix.to_string(),
        "2001:db8::5/128",
        "the host's own /64"
    );
    let d = f.fail(0, "2001:db8:9:9::7", "a@example.test");
    assert_eq!(
        d[0].prefix.to_string(),
        "2001:db8:9:9::7/128",
        "overlaps the allowlist"
    );
    assert!(
        f.fail(0, "2001:db8:9:9::107", "a@example.test").is_empty(),
        "allowlisted itself"
    );
    let d = f.fail(0, "2001:db8:1:2::3", "a@example.test");
    assert_eq!(d[0].prefix.to_string(), "2001:db8:1:2::/64");
}

// ------------------------------------------------------------------ engine v2: the traps

impl Feed {
    /// A probe whose RCPT line showed the client: a bot (`mta` false: no reverse DNS, a
    /// sender, a made-up HELO) or a mail server verifying a sender (null sender).
    fn probe_by(&mut self, at: i64, ip: &str, rcpt: &str, mta: bool) -> Vec<Decision> {
        let mut e = self.ev(at, ip, EventKind::Rcpt);
        e.recipient = Some(rcpt.into());
        e.session = Some("pid:100".into());
        e.peer = Some(crate::event::SmtpPeer {
            has_rdns: mta,
            null_sender: mta,
            helo_is_rdns: mta,
        });
        let mut out = self.push(e);
        let mut d = self.ev(at, ip, EventKind::TransactionAborted);
        d.session = Some("pid:100".into());
        d.smtp = Some(SmtpCounters {
            rcpt_ok: 1,
            quit: true,
            ..SmtpCounters::default()
        });
        out.extend(self.push(d));
        out
    }

    /// Lets log time pass (an unrelated delivery) and returns what became due.
    fn tick(&mut self, at: i64) -> Vec<Decision> {
        self.delivery(at, "198.18.250.250", "someone@example.test")
    }
}

fn graceful() -> EngineConfig {
    EngineConfig::default()
}

fn bans(out: &[Decision]) -> Vec<&Decision> {
    out.iter().filter(|d| d.action == Action::Ban).collect()
}

fn alerts(out: &[Decision]) -> Vec<&Decision> {
    out.iter().filter(|d| d.action == Action::Alert).collect()
}

const HOME: &str = "198.18.40.1";

#[test]
fn typos_map_to_the_mailbox_meant() {
    let meant = "greta@example.org";
    for typed in [
        "greta",
        "Greta@Example.org",
        "greta@example.com",
        "gerta@example.org",
        "gretta@example.org",
        "greta+list@example.org",
        "greta@exmaple.org",
    ] {
        assert!(typo_of(typed, meant), "{typed}");
    }
    for other in [
        "bob@example.org",
        "gr@example.org",
        "info@example.org",
        "admin",
    ] {
        assert!(!typo_of(other, meant), "{other}");
    }
}

#[test]
fn a_customers_user_name_typo_at_home_never_bans() {
    let mut f = Feed::new(graceful());
    for i in 0..20 {
        f.ok(i * 1800, HOME, "greta@example.org");
    }
    let mut out = f.fail_unknown(40_000, HOME, "greta");
    out.extend(f.fail_unknown(40_010, HOME, "Greta@example.com"));
    out.extend(f.fail(40_020, HOME, "greta@example.org"));
    out.extend(f.tick(90_000));
    assert!(out.is_empty(), "{out:?}");
    let x = f.engine.explain(HOME.parse().unwrap());
    assert!(x.known_client, "{x}");
    assert!(
        x.to_string().contains("not banned because: known client"),
        "{x}"
    );
}

#[test]
fn a_new_hire_failing_then_succeeding_within_the_grace_period_is_not_banned() {
    let new = "198.18.41.1";
    let mut f = Feed::new(graceful());
    let mut out = Vec::new();
    for i in 0..4 {
        out.extend(f.fail(i * 90, new, "nina@example.test"));
    }
    let x = f.engine.explain(new.parse().unwrap());
    assert!(x.pending.is_some(), "{x}");
    assert!(x.to_string().contains("grace period"), "{x}");
    out.extend(f.ok(400, new, "nina@example.test"));
    out.extend(f.tick(10_000));
    assert!(out.is_empty(), "{out:?}");
    assert!(f.engine.explain(new.parse().unwrap()).pending.is_none());

    // Without the success the held ban is made when the grace period ends.
    let mut f = Feed::new(graceful());
    assert!(f.fail(0, new, "nina@example.test").is_empty());
    assert!(f.fail(60, new, "nina@example.test").is_empty());
    assert!(f.tick(60 + 599).is_empty(), "still held");
    let out = f.tick(60 + 600);
    assert_eq!(bans(&out).len(), 1, "{out:?}");
    assert_eq!(out[0].rule, Rule::SlowRepeat);
    assert_eq!(out[0].time, at_time(660), "made at the deadline");
    assert!(out[0].note.contains("held 10m"), "{}", out[0].note);
}

#[test]
fn the_seed_pattern_bans_at_once_despite_the_grace_period() {
    let mut f = Feed::new(graceful());
    f.probe_by(0, BOT, "alice@example.test", false);
    let out = f.fail(5, BOT, "alice@example.test");
    assert_eq!(bans(&out).len(), 1, "{out:?}");
    assert_eq!(out[0].rule, Rule::ProbeLogin);
}

#[test]
fn a_lazy_bot_is_tied_to_its_probe_for_tens_of_minutes() {
    let mut f = Feed::new(graceful());
    f.probe_by(0, BOT, "alice@example.test", false);
    assert!(
        f.fail(30 * 60, BOT, "alice@example.test").is_empty(),
        "held"
    );
    let out = f.tick(40 * 60);
    assert_eq!(bans(&out).len(), 1, "{out:?}");
    assert_eq!(out[0].rule, Rule::ProbeLogin);
    assert!(out[0].note.contains("link weight 0.50"), "{}", out[0].note);
}

#[test]
fn split_roles_ban_the_login_address_and_the_prober() {
    let (p, l) = ("198.18.50.1", "2001:db8:77::5");
    let mut f = Feed::new(graceful());
    assert!(f.probe_by(0, p, "bob@example.test", false).is_empty());
    let out = f.fail(12, l, "bob@example.test");
    let b = bans(&out);
    assert_eq!(b.len(), 2, "{out:?}");
    let rules: Vec<(Rule, String)> = b.iter().map(|d| (d.rule, d.ip.to_string())).collect();
    assert!(
        rules.contains(&(Rule::SplitRole, l.to_string())),
        "{rules:?}"
    );
    assert!(
        rules.contains(&(Rule::SplitRole, p.to_string())),
        "{rules:?}"
    );
    // A mail server's callout ties nobody.
    let mut f = Feed::new(graceful());
    f.probe_by(0, p, "bob@example.test", true);
    assert!(f.fail(12, l, "bob@example.test").is_empty());
    assert!(f.tick(3600).is_empty(), "a single failure only: nothing");
}

#[test]
fn the_owner_of_a_probed_mailbox_who_mistypes_on_a_new_address_is_not_banned() {
    let (bot, owner_home, owner_new) = ("198.18.50.1", "198.18.60.1", "198.18.60.2");
    let mut f = Feed::new(graceful());
    f.ok(0, owner_home, "bob@example.test");
    f.probe_by(100, bot, "bob@example.test", false);
    let mut out = f.fail(110, owner_new, "bob@example.test");
    assert!(out.is_empty(), "held: the mailbox has an owner: {out:?}");
    out.extend(f.ok(150, owner_new, "bob@example.test"));
    out.extend(f.tick(5000));
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_mailbox_under_a_probe_campaign_is_protected_at_the_abort() {
    let mut f = Feed::new(graceful());
    for (i, ip) in ["198.18.70.1", "198.18.70.2"].iter().enumerate() {
        let t = i as i64 * 100;
        f.probe_by(t, ip, "info@example.test", false);
        assert_eq!(bans(&f.fail(t + 5, ip, "info@example.test")).len(), 1);
    }
    // A new address probes it and aborts: banned before its login.
    let out = f.probe_by(300, "198.18.70.3", "info@example.test", false);
    assert_eq!(bans(&out).len(), 1, "{out:?}");
    assert_eq!(out[0].rule, Rule::CampaignProbe);
    // A mail server verifying the sender, and a known client, are not.
    assert!(
        f.probe_by(400, "198.18.80.1", "info@example.test", true)
            .is_empty()
    );
    f.ok(500, "198.18.80.2", "carl@example.test");
    assert!(
        f.probe_by(600, "198.18.80.2", "info@example.test", false)
            .is_empty()
    );
    // Nor a probe without what the client showed (no RCPT line).
    assert!(f.probe(700, "198.18.80.3", "info@example.test").is_empty());
}

#[test]
fn a_guessed_password_is_alerted_and_banned() {
    // After probing the mailbox.
    let mut f = Feed::new(graceful());
    f.probe_by(0, BOT, "alice@example.test", false);
    let out = f.ok(5, BOT, "alice@example.test");
    let a = alerts(&out);
    assert_eq!(a.len(), 1, "{out:?}");
    assert_eq!(a[0].kind, Some(AlertKind::PossibleCompromise));
    assert_eq!(a[0].user.as_deref(), Some("alice@example.test"));
    assert_eq!(bans(&out).len(), 1, "{out:?}");
    assert_eq!(bans(&out)[0].rule, Rule::PossibleCompromise);
    let x = f.engine.explain(BOT.parse().unwrap());
    assert!(x.compromise.is_some() && !x.known_client, "{x}");
    assert!(x.to_string().contains("ALERT possible compromise"), "{x}");

    // After failing as other users (a sprayer that got one right).
    let mut f = Feed::new(EngineConfig {
        slow_repeat_score: 10,
        ..graceful()
    });
    f.fail(0, BOT, "a@example.test");
    f.fail(60, BOT, "b@example.test");
    let out = f.ok(120, BOT, "c@example.test");
    assert_eq!(alerts(&out).len(), 1, "{out:?}");
    assert!(
        alerts(&out)[0]
            .note
            .contains("after failing as 2 other users")
    );
    assert_eq!(bans(&out).len(), 1, "{out:?}");
    // The login does not make it a known client: its later failures still count.
    assert!(!f.engine.explain(BOT.parse().unwrap()).known_client);
}

#[test]
fn ordinary_logins_are_never_alerted() {
    let mut f = Feed::new(graceful());
    let mut out = Vec::new();
    // A typo of the own name, then success; a callout from the office gateway, then users.
    out.extend(f.fail_unknown(0, HOME, "greta"));
    out.extend(f.ok(20, HOME, "greta@example.org"));
    let office = "198.18.90.1";
    out.extend(f.probe_by(100, office, "ann@example.org", true));
    out.extend(f.ok(130, office, "ann@example.org"));
    out.extend(f.probe_by(200, office, "bo@example.org", true));
    out.extend(f.ok(230, office, "bo@example.org"));
    // The owner of a mailbox under attack mistypes on a new address, then succeeds.
    for (i, ip) in ["198.18.91.1", "198.18.91.2", "198.18.91.3"]
        .iter()
        .enumerate()
    {
        out.extend(f.fail(300 + i as i64, ip, "sales@example.org"));
    }
    out.retain(|d| d.action == Action::Alert);
    out.extend(f.fail(400, "198.18.92.1", "sales@example.org"));
    out.extend(f.ok(430, "198.18.92.1", "sales@example.org"));
    assert!(alerts(&out).is_empty(), "{out:?}");
    assert!(!bans(&out).iter().any(|d| d.ip.to_string() == "198.18.92.1"));
}

#[test]
fn a_campaign_is_not_evidence_against_the_mailboxs_own_known_clients() {
    let phone = "198.18.93.1";
    let laptop = "198.18.93.2";
    let mut f = Feed::new(graceful());
    // The laptop failed on the mailbox before it became a known client (as another user).
    let mut out = f.fail(-7200, laptop, "sales@example.org");
    out.extend(f.ok(-3600, laptop, "sales-team@example.org"));
    f.ok(0, phone, "sales@example.org");
    for i in 0..4 {
        out.extend(f.fail(100 + i, &format!("198.18.94.{i}"), "sales@example.org"));
    }
    out.extend(f.fail(200, phone, "sales@example.org"));
    out.extend(f.tick(5000));
    assert!(!out.iter().any(|d| d.ip.to_string() == phone), "{out:?}");
    assert!(!out.iter().any(|d| d.ip.to_string() == laptop), "{out:?}");
    assert!(
        out.iter().any(|d| d.rule == Rule::TargetCampaign),
        "the campaign itself is banned: {out:?}"
    );
}

#[test]
fn user_name_variants_are_one_mailbox() {
    let mut f = Feed::new(graceful());
    f.probe_by(0, BOT, "Name@Example.test", false);
    let out = f.fail(5, BOT, "name+x@example.test");
    assert_eq!(bans(&out).len(), 1, "{out:?}");
    assert_eq!(out[0].rule, Rule::ProbeLogin);
    let mut f = Feed::new(graceful());
    f.probe_by(0, BOT, "name@example.test", false);
    assert_eq!(bans(&f.fail(5, BOT, "name")).len(), 1);
}

#[test]
fn ipv6_hoppers_inside_one_48_escalate_to_the_48() {
    let mut f = Feed::new(graceful());
    let mut out = Vec::new();
    for i in 1..=3 {
        let ip = format!("2001:db8:5:{i}::9");
        out.extend(f.probe_by(i * 100, &ip, "alice@example.test", false));
        out.extend(f.fail(i * 100 + 5, &ip, "alice@example.test"));
    }
    let wide: Vec<&Decision> = bans(&out)
        .into_iter()
        .filter(|d| d.prefix.prefix_len() == 48)
        .collect();
    assert_eq!(wide.len(), 1, "{out:?}");
    assert_eq!(wide[0].prefix.to_string(), "2001:db8:5::/48");
    assert!(
        wide[0].note.contains("3 offending /64s"),
        "{}",
        wide[0].note
    );
    assert_eq!(
        wide[0].duration,
        Duration::from_secs(86400),
        "a repeat offence at once: it outlasts the next round"
    );
    // The 4th hop is covered already: no decision, and explain says the site ban.
    let next = "2001:db8:5:99::1";
    assert!(
        f.probe_by(500, next, "alice@example.test", false)
            .is_empty()
    );
    assert!(f.fail(505, next, "alice@example.test").is_empty());
    assert!(f.engine.explain(next.parse().unwrap()).site_ban.is_some());

    // A /48 that holds a known client is not widened, and the decision says so.
    let mut f = Feed::new(graceful());
    f.ok(0, "2001:db8:6:77::1", "carol@example.test");
    let mut out = Vec::new();
    for i in 1..=3 {
        let ip = format!("2001:db8:6:{i}::9");
        out.extend(f.probe_by(i * 100, &ip, "alice@example.test", false));
        out.extend(f.fail(i * 100 + 5, &ip, "alice@example.test"));
    }
    assert!(
        bans(&out).iter().all(|d| d.prefix.prefix_len() == 64),
        "{out:?}"
    );
    assert!(
        out.iter().any(|d| d.note.contains("not widened")),
        "{out:?}"
    );
}

#[test]
fn pending_bans_survive_a_snapshot() {
    let new = "198.18.41.9";
    let mut f = Feed::new(graceful());
    f.fail(0, new, "x@example.test");
    f.fail(60, new, "x@example.test");
    let snap = f.engine.snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    let mut g = Feed {
        engine: Engine::restore(graceful(), back).unwrap(),
        line: 100,
    };
    assert_eq!(bans(&g.tick(700)).len(), 1);
}

#[test]
fn a_login_after_failing_on_a_mailbox_under_attack_is_a_possible_compromise() {
    let mut f = Feed::new(graceful());
    for i in 0..3 {
        f.fail(i, &format!("198.18.95.{i}"), "info@example.test");
    }
    f.fail(100, BOT, "info@example.test");
    let out = f.ok(200, BOT, "cust17@example.net");
    assert_eq!(alerts(&out).len(), 1, "{out:?}");
    assert!(
        alerts(&out)[0].note.contains("a mailbox under attack"),
        "{out:?}"
    );
    // Its owner mistyping the attacked mailbox and then getting in is not.
    let out = f.fail(300, "198.18.96.1", "info@example.test");
    assert!(alerts(&out).is_empty());
    assert!(alerts(&f.ok(320, "198.18.96.1", "info@example.test")).is_empty());
}

/// The churn attack: a real bot's first failure, then a flood of cheap probes (RCPT and an
/// abort, which never ban alone) from fresh IPv6 /64s, more than the state cap, then the
/// bot's second failure two hours later. Oldest-first eviction forgot the first failure and
/// the bot got away; evicting the least evidence first keeps it, and the flood evicts itself.
#[test]
fn a_flood_of_cheap_probes_does_not_evict_a_real_bots_failure() {
    let mut c = only(Rule::SlowRepeat);
    c.max_tracked_ips = 1000;
    let mut f = Feed::new(c);
    assert!(f.fail(0, BOT, "admin@example.test").is_empty());
    for i in 0..1100u32 {
        let ip = format!("2001:db8:{:x}:{:x}::1", 0x100 + (i >> 16), i & 0xffff);
        let at = 60 + i64::from(i) * 6;
        assert!(f.probe(at, &ip, "info@example.test").is_empty());
    }
    let d = f.fail(2 * 3600, BOT, "admin@example.test");
    assert_eq!(d.len(), 1, "the first failure was forgotten: {d:?}");
    assert_eq!(d[0].rule, Rule::SlowRepeat);
    assert_eq!(d[0].ip, BOT.parse::<IpAddr>().unwrap());
    // The churn shows: probes were evicted, nothing that counts toward a ban.
    let stats = f.engine.stats();
    assert!(stats.evicted_for_space >= 100, "{stats:?}");
    assert_eq!(stats.evicted_with_evidence, 0, "{stats:?}");
}

/// Among addresses with equal evidence the least recently seen goes first, and an address
/// with a customer's successful login (its leniency) outlives failures.
#[test]
fn eviction_prefers_the_least_evidence_then_the_oldest() {
    let mut c = cfg();
    c.max_tracked_ips = 10;
    c.slow_repeat_score = 100;
    let mut f = Feed::new(c);
    f.ok(0, "198.18.5.1", "alice@example.test");
    for i in 0..5 {
        f.fail(
            10 + i,
            &format!("198.18.6.{i}"),
            &format!("u{i}@example.test"),
        );
    }
    for i in 0..6 {
        let mut e = f.ev(100 + i, &format!("198.18.7.{i}"), EventKind::LostConnection);
        e.session = Some(format!("pid:{i}"));
        f.push(e);
    }
    // The 11th address is one too many: down to 9, the two oldest lost connections go
    // first; the 12th makes 10 again.
    let (ips, _, _) = f.engine.tracked();
    assert_eq!(ips, 10);
    let kept = |f: &Feed, ip: &str| f.engine.ips.contains_key(&ip.parse::<IpAddr>().unwrap());
    assert!(kept(&f, "198.18.5.1"), "the customer is kept");
    assert!(
        (0..5).all(|i| kept(&f, &format!("198.18.6.{i}"))),
        "failures are kept"
    );
    assert!(!kept(&f, "198.18.7.0") && !kept(&f, "198.18.7.1") && kept(&f, "198.18.7.2"));
    assert_eq!(f.engine.stats().evicted_with_evidence, 0);
}

/// A version-1 snapshot (written by the previous detector) loads: its ban stays active, its
/// offences escalate the next ban, its evidence and failures are explained as they were.
#[test]
fn a_version_1_snapshot_loads_with_its_bans_and_evidence() {
    let t = T0 + 100;
    let v1 = format!(
        r#"{{"version":1,"now":{t},
        "stats":{{"events":9,"bans":1,"spared":0,"spared_shared":0,"alerts":0,
                  "evicted_ips":0,"evicted_users":0,"evicted_prefixes":0}},
        "ips":[["198.18.0.2",{{"first_seen":{t0},"last_seen":{t},
            "failures":[{{"time":{t},"line":7,"user":"admin@example.test","count":1,
                          "unknown_user":false,"lenient":false,"sasl":null,"paired":false}}],
            "successes":[],
            "pending_rcpts":[{{"session":"pid:9","recipient":"x@example.test","time":{t},
                               "peer":null}}],
            "probes":[{{"time":{t0},"line":5,"session":"pid:100",
                        "recipients":["admin@example.test"],"mta_like":false,
                        "peer_known":false}}],
            "evidence":[{{"line":5,"time":"2026-11-18T11:06:40Z",
                          "what":"SMTP transaction aborted without a message"}},
                        {{"line":7,"time":"2026-11-18T11:08:20Z",
                          "what":"IMAP login as admin@example.test failed"}}],
            "pending":null,"campaign":{t},"shared_noticed":null,
            "compromise":[{t},"bob@example.test"]}}]],
        "users":[["admin",{{"last_seen":{t},"failures":[{{"ip":"198.18.0.2","time":{t},
            "addr":"198.18.0.2"}}],"attacked_until":null,"linked":[],"owner_seen":null}}]],
        "prefixes":[["198.18.0.2/32",{{"offences":1,"last_offence":{t},
            "banned_until":{until},"last_rule":"probe-login","last_note":"a login"}}]],
        "marks":[["admin",[{{"time":{t0},"prober":"198.18.0.2","addr":"198.18.0.2",
            "recipient":"admin@example.test"}}]]],
        "sites":[]}}"#,
        t0 = T0,
        until = t + 3600
    );
    let snap: Snapshot = serde_json::from_str(&v1).unwrap();
    let mut e = Engine::restore(cfg(), snap).unwrap();
    let bans = e.active_bans();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].0, "198.18.0.2/32".parse::<IpNet>().unwrap());
    assert_eq!(bans[0].1.timestamp(), t + 3600);
    let x = e.explain("198.18.0.2".parse().unwrap());
    assert_eq!(x.offences, 1);
    assert_eq!(x.failures.len(), 1);
    assert_eq!(x.failures[0].user.as_deref(), Some("admin@example.test"));
    assert_eq!(x.probes.len(), 1);
    assert!(x.campaign.is_some());
    assert_eq!(x.compromise.as_ref().unwrap().1, "bob@example.test");
    let what: Vec<&str> = x.evidence.iter().map(|e| e.what.as_str()).collect();
    assert_eq!(
        what,
        [
            "SMTP transaction aborted without a message",
            "IMAP login as admin@example.test failed"
        ]
    );
    // Written again, it is version 2 and reads back to the same state.
    let again = e.snapshot();
    assert_eq!(again.version, SNAPSHOT_VERSION);
    let json = serde_json::to_string(&again).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, again);
    // After the ban ends, the next offence is the second one (24 h).
    let mut ev = Feed::new(cfg()).ev(3 * 3600, "198.18.0.2", EventKind::AuthFailure);
    ev.user = Some("root@example.test".into());
    ev.failures = 1;
    let mut d = e.observe(&ev);
    ev.time = at_time(3 * 3600 + 10);
    ev.line += 1;
    d.extend(e.observe(&ev));
    let ban = d.iter().find(|d| d.action == Action::Ban).expect("a ban");
    assert_eq!(ban.offence, 2, "{d:?}");
}

/// Evidence is kept as references and described when needed, in the same words.
#[test]
fn evidence_is_described_from_its_reference() {
    let mut f = Feed::new(only(Rule::ProbeLogin));
    f.probe(0, BOT, "admin@example.test");
    let d = f.fail(5, BOT, "admin@example.test");
    let what: Vec<&str> = d[0].evidence.iter().map(|e| e.what.as_str()).collect();
    assert_eq!(
        what,
        [
            "RCPT to <admin@example.test>",
            "SMTP transaction aborted without a message",
            "IMAP login as admin@example.test failed"
        ]
    );
    assert_eq!(d[0].evidence[2].time, at_time(5));
}

/// One allocation per distinct name, however many records name it; names nobody refers to
/// are dropped at the sweep.
#[test]
fn names_are_interned_and_collected() {
    let mut f = Feed::new(cfg());
    for i in 0..50 {
        f.probe(i, &format!("198.18.9.{i}"), "shared@example.test");
    }
    assert_eq!(f.engine.names.len(), 1);
    f.fail(60, "198.18.10.1", "other@example.test");
    assert_eq!(f.engine.names.len(), 2);
    // Past the horizon everything is swept, and the names with it.
    f.fail(3 * 86400, "198.18.10.2", "late@example.test");
    assert_eq!(f.engine.names.len(), 1, "only the name still referred to");
}

/// A save's copy shares the address states, ban prefixes, probe marks and sites with the
/// engine; what the engine changes after it (the same record, a new one) does not reach the
/// copy.
#[test]
fn a_state_copy_is_the_state_at_its_instant() {
    let mut f = Feed::new(cfg());
    f.fail(0, BOT, "a@example.test");
    f.probe(5, "2001:db8:5::1", "x@example.test");
    // A banned prefix in the copy: a probe and a login as the probed address.
    f.probe(6, "198.18.2.2", "y@example.test");
    assert!(!f.fail(7, "198.18.2.2", "y@example.test").is_empty());
    let at_copy = f.engine.snapshot();
    assert!(!at_copy.prefixes.is_empty() && !at_copy.marks.is_empty());
    let copy = f.engine.state_copy();
    f.fail(10, BOT, "b@example.test");
    f.ok(20, "2001:db8:5::2", "x@example.test");
    f.fail(30, "198.18.1.1", "c@example.test");
    f.probe(31, "198.18.2.9", "y@example.test");
    let ip: IpAddr = "198.18.2.2".parse().unwrap();
    assert!(f.engine.unban(ip, to_time(40)).is_some());
    assert_ne!(f.engine.snapshot(), at_copy);
    assert_eq!(copy.into_snapshot(), at_copy);
}
