//! What the daemon parsers hand back before de-duplication and cross-line state.
use std::net::IpAddr;

use crate::event::{EventKind, Protocol, Service, SmtpCounters};

/// Result of parsing one message.
#[derive(Debug)]
pub(crate) enum Parsed {
    Record(Record),
    /// qmgr `QUEUEID: from=<..>, size=N, nrcpt=M (queue active)`: the message was committed.
    QueueActive(String),
    /// qmgr `QUEUEID: removed`.
    QueueRemoved(String),
    /// Ours (or well-formed but foreign), nothing to report.
    Ignored,
    /// Looks like ours but the shape is broken or ambiguous.
    Unparsed,
}

/// One recognised line, before [`super::dedup`] decides how many failures it adds.
#[derive(Debug)]
pub(crate) struct Record {
    pub service: Service,
    pub kind: EventKind,
    pub ip: IpAddr,
    pub user: Option<String>,
    pub recipient: Option<String>,
    pub protocol: Option<Protocol>,
    /// Failed login attempts this line reports on its own.
    pub attempts: u32,
    pub link: Link,
    pub smtp: Option<SmtpCounters>,
    pub peer: Option<crate::event::SmtpPeer>,
}

/// How the line relates to other lines of the same attempt or connection.
#[derive(Debug, PartialEq)]
pub(crate) enum Link {
    None,
    /// Dovecot auth process line (`passwd-file(user,ip[,<session>])`).
    DovecotAuth {
        session: Option<String>,
    },
    /// Dovecot `*-login` line with `(auth failed, N attempts)` or a login result.
    DovecotLogin {
        session: Option<String>,
    },
    /// Postfix smtpd `connect from`.
    PostfixConnect,
    /// Postfix smtpd SASL warning (counted into the connection's `auth=` counter).
    PostfixSasl,
    /// Postfix smtpd `disconnect from` (its `auth=ok/tried` counter is in `attempts`).
    PostfixDisconnect,
    /// Postfix `QUEUEID: client=...`: remember queue id -> client.
    PostfixQueue(String),
}

impl Record {
    pub(crate) fn new(service: Service, kind: EventKind, ip: IpAddr) -> Self {
        Record {
            service,
            kind,
            ip,
            user: None,
            recipient: None,
            protocol: None,
            attempts: 0,
            link: Link::None,
            smtp: None,
            peer: None,
        }
    }
}
