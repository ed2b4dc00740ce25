//! The typed events that parsers produce and the engine consumes.
//!
//! An `Event` only ever carries facts taken from the server-written parts of a log line: the
//! client IP comes from fixed positions (`[ip]` after the client name, `rip=`, the second
//! field of `driver(user,ip,...)`), never from text an attacker controls.
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which daemon wrote the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Postfix,
    Dovecot,
}

impl Service {
    /// The name in `detector parse --json` output and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Service::Postfix => "postfix",
            Service::Dovecot => "dovecot",
        }
    }
}

/// The protocol the client spoke, where the line tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Postfix smtpd on port 25 (and postscreen).
    Smtp,
    /// Postfix submission (587) or Dovecot submission-login.
    Submission,
    /// Postfix smtps (465, implicit TLS).
    Smtps,
    Imap,
    Pop3,
    Managesieve,
    Lmtp,
}

impl Protocol {
    /// The name in `detector parse --json` output (same as serde's).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Submission => "submission",
            Protocol::Smtps => "smtps",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Managesieve => "managesieve",
            Protocol::Lmtp => "lmtp",
        }
    }
}

/// What happened. Serialised names are the `kind` values of `detector parse --json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A client connected (Postfix `connect from`, postscreen `CONNECT from`).
    Connect,
    /// A client disconnected; see [`Event::smtp`] for the command counters.
    Disconnect,
    /// The server accepted a recipient (Postfix `NOQUEUE: info|warn: RCPT ... to=<..>`).
    Rcpt,
    /// The server rejected a recipient (`NOQUEUE: reject: RCPT ...`).
    RcptRejected,
    /// Other SMTP-level rejects: CONNECT/HELO/MAIL/DATA rejects, postscreen PREGREET/DNSBL,
    /// non-SMTP command, too many errors.
    Rejected,
    /// Postfix `lost connection after X`.
    LostConnection,
    /// A transaction that named a recipient ended without an accepted message (derived from
    /// the disconnect counters: `rcpt>=1` and no successful `data`/`bdat`; or cleanup
    /// `removed (canceled)`).
    TransactionAborted,
    /// A failed login whose reason is a wrong password or unknown.
    AuthFailure,
    /// A failed login for a user that does not exist (the strongest signal).
    AuthUnknownUser,
    /// A successful login.
    AuthSuccess,
    /// A message was accepted for delivery.
    MessageAccepted,
    /// A recognised line that matters to no rule.
    Other,
}

impl EventKind {
    /// The `kind` of `detector parse --json` and the daemon's `events` metric label (same as
    /// serde's).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Disconnect => "disconnect",
            EventKind::Rcpt => "rcpt",
            EventKind::RcptRejected => "rcpt_rejected",
            EventKind::Rejected => "rejected",
            EventKind::LostConnection => "lost_connection",
            EventKind::TransactionAborted => "transaction_aborted",
            EventKind::AuthFailure => "auth_failure",
            EventKind::AuthUnknownUser => "auth_unknown_user",
            EventKind::AuthSuccess => "auth_success",
            EventKind::MessageAccepted => "message_accepted",
            EventKind::Other => "other",
        }
    }
}

/// Postfix `disconnect from ...` command counters (`ehlo=1 mail=1 rcpt=1 data=0/1 quit=1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SmtpCounters {
    /// Successful RCPT commands.
    pub rcpt_ok: u32,
    /// Successful DATA/BDAT commands (messages accepted).
    pub data_ok: u32,
    /// DATA/BDAT commands attempted.
    pub data_tried: u32,
    /// Successful AUTH commands.
    pub auth_ok: u32,
    /// AUTH commands attempted.
    pub auth_tried: u32,
    /// The client said QUIT.
    pub quit: bool,
    /// RSET commands seen.
    pub rset: u32,
}

/// What an SMTP client showed of itself on an accepted-RCPT line (Postfix `NOQUEUE: info:
/// RCPT from name[ip]: ...; from=<s> to=<r> proto=ESMTP helo=<h>`). Remote MTAs verifying a
/// sender look different from probing bots: a null sender, a forward-confirmed reverse DNS
/// name, a HELO that is that name. Only `client_name` is server-written (Postfix checked it);
/// the sender and the HELO are chosen by the client, so they may only ever spare an address,
/// never count against it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmtpPeer {
    /// The client had a forward-confirmed reverse DNS name (Postfix did not log `unknown`).
    pub has_rdns: bool,
    /// The envelope sender was null (`from=<>`): bounces and sender-verification callouts.
    pub null_sender: bool,
    /// The HELO name equals the reverse DNS name (case-insensitive).
    pub helo_is_rdns: bool,
}

impl SmtpPeer {
    /// Looks like a mail server verifying a sender rather than a bot probing a mailbox: a null
    /// sender (what callouts use; an office gateway behind NAT may have no reverse DNS), or a
    /// reverse DNS name that the HELO repeats.
    pub fn looks_like_mta(&self) -> bool {
        self.null_sender || self.helo_is_rdns
    }
}

/// One typed event from one log line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// The log's own timestamp (UTC).
    pub time: DateTime<Utc>,
    pub service: Service,
    pub kind: EventKind,
    /// The client IP, from a server-written position of the line.
    pub ip: IpAddr,
    /// The login name (SASL user name, Dovecot `user=<..>`), lower-cased.
    pub user: Option<String>,
    /// The envelope recipient (`to=<..>`), lower-cased.
    pub recipient: Option<String>,
    pub protocol: Option<Protocol>,
    /// 1-based number of the input line this event came from.
    pub line: u64,
    /// Connection identity used to tie lines of one session together: Dovecot `session=<..>`
    /// or the auth request's `<session>`, or `pid:<n>` for Postfix smtpd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// How many new failed login attempts this event adds. Several lines can describe the same
    /// attempt (Dovecot auth + login lines, Postfix SASL warning + `auth=0/1`); the parser's
    /// de-duplication gives the first of them the count and the rest 0. Only failure kinds
    /// carry a non-zero value.
    pub failures: u32,
    /// Disconnect counters, on `Disconnect`/`TransactionAborted` events from Postfix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpCounters>,
    /// On `Rcpt` events from Postfix: what the client showed of itself (see [`SmtpPeer`]).
    /// Not part of `detector parse --json` output.
    #[serde(skip)]
    pub peer: Option<SmtpPeer>,
}

impl Event {
    /// True for kinds that mean a failed login.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self.kind,
            EventKind::AuthFailure | EventKind::AuthUnknownUser
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name()` is written by hand for speed; it must agree with serde's names.
    #[test]
    fn names_agree_with_serde() {
        use EventKind::*;
        for k in [
            Connect,
            Disconnect,
            Rcpt,
            RcptRejected,
            Rejected,
            LostConnection,
            TransactionAborted,
            AuthFailure,
            AuthUnknownUser,
            AuthSuccess,
            MessageAccepted,
            Other,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
        for p in [
            Protocol::Smtp,
            Protocol::Submission,
            Protocol::Smtps,
            Protocol::Imap,
            Protocol::Pop3,
            Protocol::Managesieve,
            Protocol::Lmtp,
        ] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
        }
        for s in [Service::Postfix, Service::Dovecot] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
    }
}
