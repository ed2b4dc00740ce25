//! What the streams hold: one JSON object per stream entry, in the entry's field `m`.
//!
//! ```text
//! <prefix>:events  {"v":1,"n":"mx1","o":[1764612000000,17],"k":"ev","e":{"t":1764612001123456,"s":"postfix","k":"rcpt","ip":"198.18.0.7","r":"a@example.test",...}}
//!                  {"v":1,"n":"mx1","o":[1764612000000,18],"k":"hb","t":1764612005000}
//! <prefix>:bans    {"v":1,"n":"imap1","o":[1764611000000,3],"k":"ban","b":{"p":"198.18.0.7/32","ip":"198.18.0.7","r":"probe-login","until":1764615601000,"o":1,"c":["imap1","mx1"]}}
//! ```
//!
//! - `v`: the format version; a node skips (and counts) messages of a version it does not
//!   know, so a fleet can be upgraded one node at a time by adding fields (old nodes ignore
//!   them) before raising `v`.
//! - `n`: the node that published it; `o`: its origin stamp, `[boot, seq]`: the node's start
//!   time in ms and a counter. A node's stamps only grow, so a consumer keeps one high-water
//!   mark per node and stream and counts anything at or below it once already (at-least-once
//!   delivery, retried publishes).
//! - `k`: `ev` a parsed event (`e`), `ban` a ban decision (`b`), `unban` an administrator's
//!   unban of the prefix `u` (bans stream), `hb` a heartbeat (`t`: wall clock), so quiet
//!   peers still show in `detector status`.
//!
//! Events carry only what the engine reads: the log time in µs, service, kind, client address,
//! user, recipient, protocol, session, new failures, the SMTP counters and what an SMTP client
//! showed of itself. A ban carries its prefix, rule, wall-clock end in ms, offence and the
//! nodes whose events contributed (`c`).
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::engine::Rule;
use crate::event::{Event, EventKind, Protocol, Service, SmtpCounters, SmtpPeer};

/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// Where a message came from: the publishing node's start time (ms) and a counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp(pub u64, pub u64);

/// One stream entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub v: u32,
    /// The publishing node.
    pub n: String,
    pub o: Stamp,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Body {
    #[serde(rename = "ev")]
    Event { e: WireEvent },
    #[serde(rename = "ban")]
    Ban { b: WireBan },
    #[serde(rename = "hb")]
    Heartbeat { t: i64 },
    /// An administrator lifted the ban of `u` (`detector unban` on the publishing node).
    #[serde(rename = "unban")]
    Unban { u: IpNet },
}

/// Why a stream entry was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON of this format.
    Malformed(String),
    /// A version this build does not know.
    Version(u32),
}

impl Message {
    pub fn encode(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(text: &[u8]) -> Result<Message, DecodeError> {
        #[derive(Deserialize)]
        struct Versioned {
            v: u32,
        }
        let v = serde_json::from_slice::<Versioned>(text)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?
            .v;
        if v != VERSION {
            return Err(DecodeError::Version(v));
        }
        serde_json::from_slice(text).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

/// A parsed event, compact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    /// Log time, µs since the epoch.
    pub t: i64,
    pub s: Service,
    pub k: EventKind,
    pub ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ss: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub f: u32,
    /// SMTP counters: rcpt_ok, data_ok, data_tried, auth_ok, auth_tried, quit, rset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<[u32; 7]>,
    /// What the SMTP client showed: has_rdns, null_sender, helo_is_rdns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pe: Option<[bool; 3]>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl From<&Event> for WireEvent {
    fn from(e: &Event) -> Self {
        WireEvent {
            t: e.time.timestamp_micros(),
            s: e.service,
            k: e.kind,
            ip: e.ip,
            u: e.user.clone(),
            r: e.recipient.clone(),
            p: e.protocol,
            ss: e.session.clone(),
            f: e.failures,
            c: e.smtp.map(|c| {
                [
                    c.rcpt_ok,
                    c.data_ok,
                    c.data_tried,
                    c.auth_ok,
                    c.auth_tried,
                    u32::from(c.quit),
                    c.rset,
                ]
            }),
            pe: e
                .peer
                .as_ref()
                .map(|p| [p.has_rdns, p.null_sender, p.helo_is_rdns]),
        }
    }
}

impl WireEvent {
    /// The event, or `None` when its time is out of range.
    pub fn to_event(&self) -> Option<Event> {
        let time = DateTime::<Utc>::from_timestamp_micros(self.t)?;
        Some(Event {
            time,
            service: self.s,
            kind: self.k,
            ip: self.ip,
            user: self.u.clone(),
            recipient: self.r.clone(),
            protocol: self.p,
            line: 0,
            session: self.ss.clone(),
            failures: self.f,
            smtp: self.c.map(|c| SmtpCounters {
                rcpt_ok: c[0],
                data_ok: c[1],
                data_tried: c[2],
                auth_ok: c[3],
                auth_tried: c[4],
                quit: c[5] != 0,
                rset: c[6],
            }),
            peer: self.pe.map(|p| SmtpPeer {
                has_rdns: p[0],
                null_sender: p[1],
                helo_is_rdns: p[2],
            }),
        })
    }
}

/// A ban decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireBan {
    pub p: IpNet,
    pub ip: IpAddr,
    pub r: Rule,
    /// Wall-clock end, ms since the epoch.
    pub until: i64,
    /// Offence number at the deciding node.
    pub o: u32,
    /// The nodes whose events led to it.
    #[serde(default)]
    pub c: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            time: DateTime::<Utc>::from_timestamp_micros(1_764_612_001_123_456).unwrap(),
            service: Service::Postfix,
            kind: EventKind::TransactionAborted,
            ip: "198.18.0.7".parse().unwrap(),
            user: None,
            recipient: Some("a@example.test".into()),
            protocol: Some(Protocol::Smtp),
            line: 42,
            session: Some("pid:17".into()),
            failures: 0,
            smtp: Some(SmtpCounters {
                rcpt_ok: 1,
                data_tried: 1,
                quit: true,
                ..SmtpCounters::default()
            }),
            peer: Some(SmtpPeer {
                has_rdns: true,
                null_sender: false,
                helo_is_rdns: true,
            }),
        }
    }

    #[test]
    fn an_event_survives_the_wire_except_its_local_line_number() {
        let msg = Message {
            v: VERSION,
            n: "mx1".into(),
            o: Stamp(1, 2),
            body: Body::Event {
                e: WireEvent::from(&event()),
            },
        };
        let text = msg.encode();
        assert!(text.starts_with(r#"{"v":1,"n":"mx1","o":[1,2],"k":"ev","e":{"t":1764612001123456,"s":"postfix","k":"transaction_aborted""#), "{text}");
        let back = Message::decode(text.as_bytes()).unwrap();
        assert_eq!(back, msg);
        let Body::Event { e } = back.body else {
            panic!("not an event")
        };
        let expected = Event { line: 0, ..event() };
        assert_eq!(e.to_event().unwrap(), expected);
        assert_eq!(e.to_event().unwrap().peer, expected.peer);
    }

    #[test]
    fn a_ban_survives_the_wire() {
        let msg = Message {
            v: VERSION,
            n: "imap1".into(),
            o: Stamp(5, 9),
            body: Body::Ban {
                b: WireBan {
                    p: "2001:db8::/64".parse().unwrap(),
                    ip: "2001:db8::7".parse().unwrap(),
                    r: Rule::ProbeLogin,
                    until: 1_764_615_601_000,
                    o: 2,
                    c: vec!["imap1".into(), "mx1".into()],
                    dry: false,
                },
            },
        };
        let text = msg.encode();
        assert!(!text.contains("dry"), "{text}");
        assert_eq!(Message::decode(text.as_bytes()).unwrap(), msg);
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused_not_guessed() {
        assert_eq!(
            Message::decode(br#"{"v":2,"n":"x","o":[1,1],"k":"hb","t":1}"#),
            Err(DecodeError::Version(2))
        );
        for bad in [
            &b"not json"[..],
            br#"{"v":1}"#,
            br#"{"v":1,"n":"x","o":[1,1],"k":"nope"}"#,
            br#"{"v":1,"n":"x","o":[1,1],"k":"ev","e":{"t":1,"s":"exim","k":"rcpt","ip":"198.18.0.1"}}"#,
        ] {
            assert!(
                matches!(Message::decode(bad), Err(DecodeError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let far = WireEvent {
            t: i64::MAX,
            ..WireEvent::from(&event())
        };
        assert_eq!(far.to_event(), None);
    }
}
