//! Turns one policy connection's requests into the events the Postfix log parser gives for
//! the same SMTP session, so the engine needs nothing new.
//!
//! - Each `RCPT` request is an [`EventKind::Rcpt`] (what the log only shows with the `INFO`
//!   access-map recipe), with the session key `pid:N` of the log lines (the smtpd process id
//!   is the first field of `instance`).
//! - One smtpd process serves one SMTP client at a time over one policy connection. A request
//!   for another client (process id, address and port), or the end of the policy connection,
//!   ends the previous SMTP session. If that session named a recipient and never reached
//!   `DATA`/`BDAT`/`END-OF-MESSAGE`, it was a probe: an [`EventKind::TransactionAborted`],
//!   as the log's `disconnect from ... rcpt=1 ...` line without `data=1` gives. With a message
//!   it is a [`EventKind::Disconnect`] whose counters close the recipients.
//! - Only Postfix's configuration tells whether end-of-message requests are sent at all. Until
//!   one was seen (since start, per server port), no session end is reported, because every
//!   delivered message would look like a probe. The logs still report the end then.
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::event::{Event, EventKind, Protocol, Service, SmtpCounters, SmtpPeer};

use super::protocol::Request;

/// Server ports (0: not sent) whose Postfix sends end-of-message (or DATA) requests: only for
/// those can a session without one be taken for a probe.
#[derive(Debug, Default)]
pub struct EndOfDataSeen {
    ports: Mutex<HashSet<u16>>,
}

impl EndOfDataSeen {
    fn mark(&self, port: u16) {
        if let Ok(mut ports) = self.ports.lock() {
            ports.insert(port);
        }
    }

    fn seen(&self, port: u16) -> bool {
        self.ports.lock().is_ok_and(|p| p.contains(&port))
    }
}

/// The SMTP session a policy connection is currently about.
#[derive(Debug)]
struct Session {
    pid: Option<u32>,
    ip: IpAddr,
    client_port: Option<String>,
    server_port: u16,
    protocol: Protocol,
    rcpts: u32,
    message: bool,
    last: DateTime<Utc>,
}

impl Session {
    fn same_client(&self, pid: Option<u32>, ip: IpAddr, client_port: &Option<String>) -> bool {
        self.pid == pid && self.ip == ip && &self.client_port == client_port
    }
}

/// The state of one policy connection.
#[derive(Debug, Default)]
pub struct Tracker {
    current: Option<Session>,
}

impl Tracker {
    /// Events for one request (answered already); `now` is its arrival.
    pub fn request(
        &mut self,
        req: &Request,
        now: DateTime<Utc>,
        eod: &EndOfDataSeen,
        out: &mut Vec<Event>,
    ) {
        if req.request.as_deref() != Some("smtpd_access_policy") {
            return;
        }
        let Some(ip) = req.client_address.as_deref().and_then(parse_ip) else {
            return;
        };
        let pid = req.instance.as_deref().and_then(pid_of_instance);
        let same = self
            .current
            .as_ref()
            .is_some_and(|s| s.same_client(pid, ip, &req.client_port));
        if !same {
            self.close(eod, out);
            let server_port = (req.server_port.as_deref())
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            self.current = Some(Session {
                pid,
                ip,
                client_port: req.client_port.clone(),
                server_port,
                protocol: protocol_of(server_port),
                rcpts: 0,
                message: false,
                last: now,
            });
        }
        let Some(session) = self.current.as_mut() else {
            return;
        };
        session.last = now;
        match req.protocol_state.as_deref() {
            Some("RCPT") => {
                let Some(rcpt) = req.recipient.as_deref().filter(|r| !r.is_empty()) else {
                    return;
                };
                session.rcpts = session.rcpts.saturating_add(1);
                out.push(Event {
                    recipient: Some(rcpt.to_lowercase()),
                    peer: Some(peer(req)),
                    ..base_event(session, EventKind::Rcpt, now)
                });
            }
            Some("DATA" | "BDAT" | "END-OF-MESSAGE") => {
                session.message = true;
                eod.mark(session.server_port);
            }
            _ => {}
        }
    }

    /// The policy connection ended: so did its SMTP session.
    pub fn close(&mut self, eod: &EndOfDataSeen, out: &mut Vec<Event>) {
        let Some(s) = self.current.take() else {
            return;
        };
        if s.rcpts == 0 || !eod.seen(s.server_port) {
            return;
        }
        let data = u32::from(s.message);
        let kind = if s.message {
            EventKind::Disconnect
        } else {
            EventKind::TransactionAborted
        };
        out.push(Event {
            smtp: Some(SmtpCounters {
                rcpt_ok: s.rcpts,
                data_ok: data,
                data_tried: data,
                ..SmtpCounters::default()
            }),
            ..base_event(&s, kind, s.last)
        });
    }
}

fn base_event(s: &Session, kind: EventKind, time: DateTime<Utc>) -> Event {
    Event {
        time,
        service: Service::Postfix,
        kind,
        ip: s.ip,
        user: None,
        recipient: None,
        protocol: Some(s.protocol),
        line: 0,
        session: s.pid.map(|p| format!("pid:{p}")),
        failures: 0,
        smtp: None,
        peer: None,
    }
}

/// Postfix writes IPv6 client addresses without brackets; IPv4-mapped ones stay as they are
/// (the engine canonicalises them).
fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.strip_prefix("ipv6:").unwrap_or(text);
    text.parse().ok()
}

/// The smtpd process id: the first (hex) field of `instance`.
pub fn pid_of_instance(instance: &str) -> Option<u32> {
    let field = instance.split('.').next()?;
    if field.is_empty() || field.len() > 8 {
        return None;
    }
    u32::from_str_radix(field, 16).ok()
}

/// What the log parser takes from the RCPT line, from the same facts: the verified client
/// name (server-written), the sender and the HELO (client-chosen; they may only spare).
fn peer(req: &Request) -> SmtpPeer {
    let name = req.client_name.as_deref().unwrap_or("");
    let has_rdns = !name.is_empty() && name != "unknown";
    let null_sender = req.sender.as_deref() == Some("");
    let helo_is_rdns = has_rdns
        && req
            .helo_name
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(name));
    SmtpPeer {
        has_rdns,
        null_sender,
        helo_is_rdns,
    }
}

/// The protocol of the port the client connected to (Postfix 3.x sends `server_port`).
fn protocol_of(port: u16) -> Protocol {
    match port {
        587 => Protocol::Submission,
        465 => Protocol::Smtps,
        _ => Protocol::Smtp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn req(state: &str, ip: &str, port: &str, instance: &str, rcpt: &str) -> Request {
        Request {
            request: Some("smtpd_access_policy".into()),
            protocol_state: Some(state.into()),
            client_address: Some(ip.into()),
            client_name: Some("unknown".into()),
            client_port: Some(port.into()),
            helo_name: Some("bot".into()),
            sender: Some("x@y.example".into()),
            recipient: (!rcpt.is_empty()).then(|| rcpt.into()),
            instance: Some(instance.into()),
            server_port: Some("25".into()),
            ..Request::default()
        }
    }

    fn kinds(events: &[Event]) -> Vec<(EventKind, Option<String>)> {
        events
            .iter()
            .map(|e| (e.kind, e.recipient.clone()))
            .collect()
    }

    #[test]
    fn the_instance_names_the_smtpd_process() {
        assert_eq!(pid_of_instance("1f2.6745a1b0.3e8.0"), Some(0x1f2));
        assert_eq!(pid_of_instance("zz.1.2.3"), None);
        assert_eq!(pid_of_instance(""), None);
        assert_eq!(pid_of_instance("123456789.1"), None);
    }

    #[test]
    fn a_session_with_recipients_and_no_message_ends_as_an_aborted_transaction() {
        let eod = EndOfDataSeen::default();
        let mut out = Vec::new();
        // An earlier delivery tells that this Postfix sends end-of-message requests.
        let mut first = Tracker::default();
        first.request(
            &req("RCPT", "198.18.0.2", "1", "a.1.1.0", "bob@example.test"),
            t(0),
            &eod,
            &mut out,
        );
        first.request(
            &req("END-OF-MESSAGE", "198.18.0.2", "1", "a.1.1.0", ""),
            t(1),
            &eod,
            &mut out,
        );
        first.close(&eod, &mut out);
        assert_eq!(
            kinds(&out),
            [
                (EventKind::Rcpt, Some("bob@example.test".into())),
                (EventKind::Disconnect, None)
            ]
        );
        assert_eq!(out[1].smtp.unwrap().data_ok, 1);
        out.clear();

        let mut tr = Tracker::default();
        tr.request(
            &req(
                "RCPT",
                "198.18.0.10",
                "4000",
                "1f2.5.6.0",
                "Alice@Example.Test",
            ),
            t(10),
            &eod,
            &mut out,
        );
        tr.request(
            &req("RCPT", "198.18.0.10", "4000", "1f2.5.6.0", "x@example.test"),
            t(11),
            &eod,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].recipient.as_deref(), Some("alice@example.test"));
        assert_eq!(out[0].session.as_deref(), Some("pid:498"));
        assert_eq!(out[0].ip, "198.18.0.10".parse::<IpAddr>().unwrap());
        assert_eq!(out[0].peer, Some(SmtpPeer::default()));
        // The next client of the same smtpd process ends the first session.
        tr.request(
            &req("CONNECT", "198.18.0.11", "5000", "", ""),
            t(20),
            &eod,
            &mut out,
        );
        assert_eq!(out.len(), 3);
        let end = &out[2];
        assert_eq!(end.kind, EventKind::TransactionAborted);
        assert_eq!(end.session.as_deref(), Some("pid:498"));
        assert_eq!(end.time, t(11));
        assert_eq!(end.smtp.unwrap().rcpt_ok, 2);
        assert_eq!(end.smtp.unwrap().data_ok, 0);
        // The new session had no recipient: its end says nothing.
        tr.close(&eod, &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn without_end_of_message_requests_no_session_end_is_reported() {
        let eod = EndOfDataSeen::default();
        let mut out = Vec::new();
        let mut tr = Tracker::default();
        tr.request(
            &req("RCPT", "198.18.0.10", "4000", "1f2.5.6.0", "a@example.test"),
            t(0),
            &eod,
            &mut out,
        );
        tr.close(&eod, &mut out);
        assert_eq!(
            kinds(&out),
            [(EventKind::Rcpt, Some("a@example.test".into()))]
        );
    }

    #[test]
    fn a_new_transaction_of_the_same_client_is_the_same_session() {
        let eod = EndOfDataSeen::default();
        eod.mark(25);
        let mut out = Vec::new();
        let mut tr = Tracker::default();
        tr.request(
            &req("RCPT", "198.18.0.2", "7", "a.1.1.0", "a@example.test"),
            t(0),
            &eod,
            &mut out,
        );
        // RSET, MAIL: a new instance, same process and client connection, then a message.
        tr.request(
            &req("RCPT", "198.18.0.2", "7", "a.1.2.1", "b@example.test"),
            t(1),
            &eod,
            &mut out,
        );
        tr.request(
            &req("END-OF-MESSAGE", "198.18.0.2", "7", "a.1.2.1", ""),
            t(2),
            &eod,
            &mut out,
        );
        tr.close(&eod, &mut out);
        assert_eq!(out.last().unwrap().kind, EventKind::Disconnect);
        assert_eq!(out.last().unwrap().smtp.unwrap().rcpt_ok, 2);
    }

    #[test]
    fn requests_without_a_client_address_or_of_another_kind_give_nothing() {
        let eod = EndOfDataSeen::default();
        let mut out = Vec::new();
        let mut tr = Tracker::default();
        let mut r = req("RCPT", "not-an-ip", "1", "a.1.1.0", "a@example.test");
        tr.request(&r, t(0), &eod, &mut out);
        r.client_address = Some("198.18.0.2".into());
        r.request = Some("something_else".into());
        tr.request(&r, t(0), &eod, &mut out);
        assert!(out.is_empty(), "{out:?}");
        r.request = Some("smtpd_access_policy".into());
        r.client_address = Some("2001:db8::5".into());
        tr.request(&r, t(0), &eod, &mut out);
        assert_eq!(out[0].ip, "2001:db8::5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_peer_is_read_like_the_log_line() {
        let mut r = req("RCPT", "198.18.0.2", "1", "a.1.1.0", "a@example.test");
        r.client_name = Some("mx.example.net".into());
        r.helo_name = Some("MX.example.net".into());
        r.sender = Some(String::new());
        let p = peer(&r);
        assert!(p.has_rdns && p.helo_is_rdns && p.null_sender);
        assert!(p.looks_like_mta());
        r.client_name = Some("unknown".into());
        r.helo_name = Some("unknown".into());
        assert!(!peer(&r).helo_is_rdns);
    }
}
