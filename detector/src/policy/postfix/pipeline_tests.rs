//! The policy service's events in the same pipeline as the log lines: they give the engine
//! the probe it would get from the `INFO` recipe, and a fact both report counts once.
use chrono::{DateTime, FixedOffset, TimeZone, Utc};

use super::protocol::Request;
use super::transaction::{EndOfDataSeen, Tracker};
use crate::engine::{Action, Engine, EngineConfig, Rule};
use crate::event::{Event, EventKind, Protocol, Service};
use crate::parse::{Format, LineParser, Reference};
use crate::pipeline::{DecisionRecord, FnSink, Pipeline, RawLine};

fn at(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap() + chrono::Duration::seconds(s)
}

fn pipeline() -> Pipeline {
    let parser = LineParser::with_reference(
        Format::Auto,
        Reference::Fixed(at(3600)),
        FixedOffset::east_opt(0).unwrap(),
    );
    Pipeline::new(parser, Engine::new(EngineConfig::default())).with_cross_source()
}

fn raw() -> RawLine {
    RawLine {
        file: "postfix-policy".into(),
        line: 0,
        text: String::new(),
    }
}

fn request(state: &str, ip: &str, rcpt: Option<&str>) -> Request {
    Request {
        request: Some("smtpd_access_policy".into()),
        protocol_state: Some(state.into()),
        client_address: Some(ip.into()),
        client_name: Some("unknown".into()),
        client_port: Some("40000".into()),
        helo_name: Some("bot".into()),
        sender: Some("s@bot.example".into()),
        recipient: rcpt.map(str::to_string),
        instance: Some("1f2.6745a1b0.3e8.0".into()),
        server_port: Some("25".into()),
        ..Request::default()
    }
}

fn failed_login(time: DateTime<Utc>, ip: &str, user: &str) -> Event {
    Event {
        time,
        service: Service::Dovecot,
        kind: EventKind::AuthUnknownUser,
        ip: ip.parse().unwrap(),
        user: Some(user.into()),
        recipient: None,
        protocol: Some(Protocol::Imap),
        line: 0,
        session: None,
        failures: 1,
        smtp: None,
        peer: None,
    }
}

#[test]
fn a_probe_reported_only_by_the_policy_service_bans_the_login_as_its_mailbox() {
    let mut p = pipeline();
    let mut bans = Vec::new();
    let mut sink = FnSink(|d: &DecisionRecord| bans.push(d.decision.clone()));
    let eod = EndOfDataSeen::default();
    let mut events = Vec::new();
    // A delivery first: this Postfix sends end-of-message requests.
    let mut customer = Tracker::default();
    customer.request(
        &request("RCPT", "198.18.0.2", Some("bob@example.test")),
        at(0),
        &eod,
        &mut events,
    );
    customer.request(
        &request("END-OF-MESSAGE", "198.18.0.2", None),
        at(1),
        &eod,
        &mut events,
    );
    customer.close(&eod, &mut events);
    // The bot: RCPT, then the smtpd process serves someone else.
    let mut bot = Tracker::default();
    bot.request(
        &request("RCPT", "198.18.0.10", Some("x7q@example.test")),
        at(10),
        &eod,
        &mut events,
    );
    bot.request(
        &request("CONNECT", "198.18.0.3", None),
        at(12),
        &eod,
        &mut events,
    );
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Rcpt,
            EventKind::Disconnect,
            EventKind::Rcpt,
            EventKind::TransactionAborted
        ]
    );
    for ev in events {
        p.feed_policy_event(ev, raw(), &mut sink);
    }
    p.feed_event(
        failed_login(at(13), "198.18.0.10", "x7q@example.test"),
        raw(),
        &mut sink,
    );
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].rule, Rule::ProbeLogin);
    assert_eq!(bans[0].action, Action::Ban);
    assert_eq!(bans[0].ip.to_string(), "198.18.0.10");
    assert!(
        bans[0].note.contains("x7q@example.test"),
        "{}",
        bans[0].note
    );
}

#[test]
fn an_rcpt_and_a_session_end_reported_by_both_reach_the_engine_once() {
    let mut p = pipeline();
    let mut sink = crate::pipeline::NullSink;
    let eod = EndOfDataSeen::default();
    let mut events = Vec::new();
    let mut t = Tracker::default();
    t.request(
        &request("END-OF-MESSAGE", "198.18.0.3", None),
        at(0),
        &eod,
        &mut events,
    );
    t.request(
        &request("RCPT", "198.18.0.10", Some("a@example.test")),
        at(10),
        &eod,
        &mut events,
    );
    for ev in events.drain(..) {
        p.feed_policy_event(ev, raw(), &mut sink);
    }
    let log = [
        "2026-06-01T12:00:10.100000+00:00 mail postfix/smtpd[498]: NOQUEUE: info: RCPT from unknown[198.18.0.10]: lab-rcpt=<a@example.test>; from=<s@bot.example> to=<a@example.test> proto=ESMTP helo=<bot>",
        "2026-06-01T12:00:11.000000+00:00 mail postfix/smtpd[498]: disconnect from unknown[198.18.0.10] ehlo=1 mail=1 rcpt=1 quit=1 commands=4",
    ];
    for (i, line) in log.iter().enumerate() {
        p.feed_line("postfix.log", i as u64 + 1, line.as_bytes(), &mut sink);
    }
    assert_eq!(p.stats().cross_source_duplicates, 1, "the log's RCPT line");
    // The policy service learns of the end at the process's next client: a duplicate too.
    t.request(
        &request("CONNECT", "198.18.0.4", None),
        at(30),
        &eod,
        &mut events,
    );
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::TransactionAborted);
    for ev in events.drain(..) {
        p.feed_policy_event(ev, raw(), &mut sink);
    }
    assert_eq!(p.stats().cross_source_duplicates, 2);
    // Engine events: the policy's RCPT (and the delivery's nothing) plus the log's abort.
    assert_eq!(p.stats().events, 2);
}
