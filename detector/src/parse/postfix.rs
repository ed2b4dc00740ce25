//! Postfix messages: smtpd (any instance and master.cf service name), postscreen, qmgr.
//!
//! The client address is only ever taken from the client token Postfix writes at a fixed
//! place: right after `connect from `, `disconnect from `, `RCPT from ` (and the other
//! commands), `lost connection after X from `, or right after `warning: ` for SASL failures.
//! Reply texts, HELO names, senders and recipients come later in the line and are never
//! searched for addresses.
use crate::event::{EventKind, Protocol, Service, SmtpCounters, SmtpPeer};

use super::record::{Link, Parsed, Record};
use super::text::{
    ALNUM, after, angle_value, client_token, find, owned_lower, parse_ip, parse_u32, rfind,
    span_of, split_digits,
};

/// `ident` is the syslog tag without pid (`postfix/smtpd`, `postfix-out/submission/smtpd`,
/// `postfix/smtp-25/smtpd`, `postfix/postscreen`).
pub(crate) fn parse(ident: &[u8], msg: &[u8]) -> Parsed {
    let mut parts = ident.rsplitn(3, |&c| c == b'/');
    let daemon = parts.next().unwrap_or_default();
    let (service, instance) = match (parts.next(), parts.next()) {
        (Some(s), Some(i)) => (Some(s), i),
        (Some(i), None) => (None, i),
        _ => return Parsed::Ignored,
    };
    if !instance.starts_with(b"postfix") {
        return Parsed::Ignored;
    }
    match daemon {
        b"smtpd" => smtpd(msg, protocol_of(service)),
        b"postscreen" => postscreen(msg),
        b"qmgr" => qmgr(msg),
        _ => Parsed::Ignored,
    }
}

/// A header-less message that may be an smtpd line (`warning: unknown[1.2.3.4]: SASL ...`).
pub(crate) fn parse_bare(msg: &[u8]) -> Parsed {
    smtpd(msg, Protocol::Smtp)
}

/// master.cf service name -> protocol. Unnamed or other names (`smtp-25`) are port 25.
fn protocol_of(service: Option<&[u8]>) -> Protocol {
    match service {
        Some(b"submission" | b"587" | b"submissions") => Protocol::Submission,
        Some(b"smtps" | b"465") => Protocol::Smtps,
        _ => Protocol::Smtp,
    }
}

fn record(kind: EventKind, ip: std::net::IpAddr, protocol: Protocol) -> Record {
    let mut r = Record::new(Service::Postfix, kind, ip);
    r.protocol = Some(protocol);
    r
}

/// Client token after `prefix`, as a record of `kind`.
fn from_token(rest: &[u8], kind: EventKind, protocol: Protocol) -> Parsed {
    match client_token(rest) {
        Some((ip, _)) => Parsed::Record(record(kind, ip, protocol)),
        None => Parsed::Unparsed,
    }
}

/// `NOQUEUE: ` or `QUEUEID: ` prefix (short hex ids and long base-52 ids).
fn strip_queue_id(msg: &[u8]) -> (Option<&[u8]>, &[u8]) {
    if let Some(r) = msg.strip_prefix(b"NOQUEUE: ") {
        return (None, r);
    }
    let n = span_of(msg, 32, ALNUM);
    let id = &msg[..n];
    // Short ids are upper-case hex; long ids (enable_long_queue_ids) are 12+ base-52 chars
    // with digits. Words such as `warning` or `Anonymous` are neither.
    let short = (6..=20).contains(&n)
        && id
            .iter()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c));
    let long = n >= 12 && id.iter().any(u8::is_ascii_digit);
    if (short || long) && msg[n..].starts_with(b": ") {
        return (Some(id), &msg[n + 2..]);
    }
    (None, msg)
}

fn smtpd(msg: &[u8], proto: Protocol) -> Parsed {
    let (qid, m) = strip_queue_id(msg);
    if let Some(r) = m.strip_prefix(b"connect from ") {
        return match client_token(r) {
            Some((ip, _)) => {
                let mut rec = record(EventKind::Connect, ip, proto);
                rec.link = Link::PostfixConnect;
                Parsed::Record(rec)
            }
            None => Parsed::Unparsed,
        };
    }
    if let Some(r) = m.strip_prefix(b"disconnect from ") {
        return disconnect(r, proto);
    }
    for p in [&b"lost connection after "[..], b"timeout after "] {
        if let Some(r) = m.strip_prefix(p) {
            return after_cmd(r, EventKind::LostConnection, proto);
        }
    }
    for p in [
        &b"too many errors after "[..],
        b"improper command pipelining after ",
    ] {
        if let Some(r) = m.strip_prefix(p) {
            return after_cmd(r, EventKind::Rejected, proto);
        }
    }
    for p in [&b"reject: "[..], b"milter-reject: "] {
        if let Some(r) = m.strip_prefix(p) {
            return command_line(r, true, proto);
        }
    }
    for p in [
        &b"info: "[..],
        b"warn: ",
        b"discard: ",
        b"hold: ",
        b"filter: ",
        b"redirect: ",
        b"reject_warning: ",
    ] {
        if let Some(r) = m.strip_prefix(p) {
            return command_line(r, false, proto);
        }
    }
    if let Some(r) = m.strip_prefix(b"warning: ") {
        return warning(r, proto);
    }
    if let (Some(qid), Some(r)) = (qid, m.strip_prefix(b"client=")) {
        let Some((ip, rest)) = client_token(r) else {
            return Parsed::Unparsed;
        };
        let mut rec = record(EventKind::Other, ip, proto);
        // `client=name[ip], sasl_method=PLAIN, sasl_username=user`: the username is last.
        if let Some(user) = after(rest, b"sasl_username=") {
            rec.kind = EventKind::AuthSuccess;
            rec.user = owned_lower(user);
        }
        rec.link = Link::PostfixQueue(String::from_utf8_lossy(qid).into_owned());
        return Parsed::Record(rec);
    }
    Parsed::Ignored
}

/// `CMD [(N bytes)] from CLIENT` (lost connection, timeout, too many errors, pipelining).
fn after_cmd(r: &[u8], kind: EventKind, proto: Protocol) -> Parsed {
    // The command name is server-written (`RCPT`, `DATA (0 bytes)`, `END-OF-MESSAGE`): the
    // first ` from ` ends it.
    match find(&r[..r.len().min(64)], b" from ") {
        Some(i) => from_token(&r[i + 6..], kind, proto),
        None => Parsed::Unparsed,
    }
}

/// `RCPT from CLIENT: reply; from=<..> to=<..> ...` after `reject: `, `info: ` etc.
fn command_line(r: &[u8], reject: bool, proto: Protocol) -> Parsed {
    let Some(sp) = memchr::memchr(b' ', r) else {
        return Parsed::Unparsed;
    };
    let (cmd, rest) = r.split_at(sp);
    if cmd.len() > 20 {
        return Parsed::Unparsed;
    }
    let Some(rest) = rest.strip_prefix(b" from ") else {
        return Parsed::Unparsed;
    };
    let Some((ip, tail)) = client_token(rest) else {
        return Parsed::Unparsed;
    };
    let client_name = rest.split(|&b| b == b'[').next().unwrap_or_default();
    let is_rcpt = cmd == b"RCPT";
    let kind = match (reject, is_rcpt) {
        (true, true) => EventKind::RcptRejected,
        (true, false) => EventKind::Rejected,
        (false, true) => EventKind::Rcpt,
        (false, false) => EventKind::Other,
    };
    let mut rec = record(kind, ip, proto);
    if is_rcpt {
        rec.recipient = recipient(tail).and_then(owned_lower);
        rec.peer = Some(peer(client_name, tail));
    }
    Parsed::Record(rec)
}

/// The sender and HELO of an RCPT line's tail, and whether the client had a reverse DNS name.
/// Sender and HELO are client-chosen: the engine only lets them spare an address.
fn peer(client_name: &[u8], tail: &[u8]) -> SmtpPeer {
    let has_rdns = !client_name.is_empty() && client_name != b"unknown";
    let null_sender = find(tail, b"; from=<")
        .and_then(|i| angle_value(&tail[i..], b"from=<"))
        .is_some_and(<[u8]>::is_empty);
    // HELO is the last field; a HELO that itself contains ` helo=<` only fools the match
    // into a mismatch.
    let helo = rfind(tail, b" helo=<")
        .map(|i| &tail[i + 7..])
        .map(|h| h.strip_suffix(b">").unwrap_or(h));
    let helo_is_rdns = has_rdns && helo.is_some_and(|h| h.eq_ignore_ascii_case(client_name));
    SmtpPeer {
        has_rdns,
        null_sender,
        helo_is_rdns,
    }
}

/// The envelope recipient from `; from=<s> to=<r>` (smtpd) or `; from=<s>, to=<r>`
/// (postscreen), searched only after the `; from=<` / `; to=<` that ends the reply text.
fn recipient(tail: &[u8]) -> Option<&[u8]> {
    let i = find(tail, b"; from=<").or_else(|| find(tail, b"; to=<"))?;
    angle_value(&tail[i..], b"to=<")
}

fn disconnect(r: &[u8], proto: Protocol) -> Parsed {
    let Some((ip, rest)) = client_token(r) else {
        return Parsed::Unparsed;
    };
    let c = counters(rest);
    let auth_failed = c.auth_tried.saturating_sub(c.auth_ok);
    let kind = if auth_failed > 0 {
        EventKind::AuthFailure
    } else if c.rcpt_ok >= 1 && c.data_ok == 0 {
        EventKind::TransactionAborted
    } else {
        EventKind::Disconnect
    };
    let mut rec = record(kind, ip, proto);
    rec.attempts = auth_failed;
    rec.smtp = Some(c);
    rec.link = Link::PostfixDisconnect;
    Parsed::Record(rec)
}

/// ` ehlo=1 mail=1 rcpt=0/1 data=0/1 quit=1 commands=5/7`: `name=ok` or `name=ok/tried`.
fn counters(rest: &[u8]) -> SmtpCounters {
    let mut c = SmtpCounters::default();
    for field in rest
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .take(32)
    {
        let Some(eq) = memchr::memchr(b'=', field) else {
            continue;
        };
        let (name, value) = (&field[..eq], &field[eq + 1..]);
        let (ok, tried) = match memchr::memchr(b'/', value) {
            Some(s) => (parse_u32(&value[..s]), parse_u32(&value[s + 1..])),
            None => (parse_u32(value), parse_u32(value)),
        };
        let (Some(ok), Some(tried)) = (ok, tried) else {
            continue;
        };
        match name {
            b"rcpt" => c.rcpt_ok = ok,
            b"data" | b"bdat" => {
                c.data_ok = c.data_ok.saturating_add(ok);
                c.data_tried = c.data_tried.saturating_add(tried);
            }
            b"auth" => {
                c.auth_ok = ok;
                c.auth_tried = tried;
            }
            b"quit" => c.quit = ok > 0,
            b"rset" => c.rset = ok,
            _ => {}
        }
    }
    c
}

fn warning(w: &[u8], proto: Protocol) -> Parsed {
    if let Some(r) = w.strip_prefix(b"non-SMTP command from ") {
        return from_token(r, EventKind::Rejected, proto);
    }
    // `Connection rate limit exceeded: 31 from host[ip] for service smtpd` and the other
    // anvil limits (concurrency, message, recipient, TLS session, AUTH rate).
    if let Some(i) = find(&w[..w.len().min(64)], b" limit exceeded: ") {
        let (digits, r) = split_digits(&w[i + 17..]);
        return match (digits.is_empty(), r.strip_prefix(b" from ")) {
            (false, Some(r)) => from_token(r, EventKind::Rejected, proto),
            _ => Parsed::Unparsed,
        };
    }
    // `hostname H does not resolve to address IP[: reason]`: a DNS mismatch, not an act of
    // the client; reported as `other`.
    if let Some(r) = w.strip_prefix(b"hostname ") {
        let Some(sp) = memchr::memchr(b' ', r) else {
            return Parsed::Unparsed;
        };
        let Some(r) = r[sp..].strip_prefix(b" does not resolve to address ") else {
            return Parsed::Ignored;
        };
        // The address ends at the first space or comma (an IPv6 address has colons of its
        // own, so the `:` before the reason is only dropped at the end).
        let addr = &r[..memchr::memchr2(b' ', b',', r).unwrap_or(r.len())];
        let addr = addr.strip_suffix(b":").unwrap_or(addr);
        // IPv6 addresses contain ':', so take the longest prefix that parses.
        let ip = parse_ip(addr).or_else(|| {
            (1..addr.len())
                .rev()
                .filter(|&k| addr[k] == b':')
                .find_map(|k| parse_ip(&addr[..k]))
        });
        return match ip {
            Some(ip) => Parsed::Record(record(EventKind::Other, ip, proto)),
            None => Parsed::Unparsed,
        };
    }
    // `CLIENT: SASL MECH authentication failed: reason[, sasl_username=user]`
    let Some((ip, rest)) = client_token(w) else {
        return Parsed::Ignored;
    };
    let Some(r) = rest.strip_prefix(b" SASL ") else {
        return Parsed::Ignored;
    };
    // The mechanism name is short; the marker must come right after it.
    let Some(i) = find(&r[..r.len().min(64)], b" authentication failed:") else {
        return Parsed::Ignored;
    };
    let r = &r[i + 23..];
    let reason = r.strip_prefix(b" ").unwrap_or(r);
    let mut rec = record(EventKind::AuthFailure, ip, proto);
    rec.link = Link::PostfixSasl;
    if reason.starts_with(b"Connection lost to authentication server") {
        // Server-side trouble, not the client's failure; still accounted for the connection's
        // `auth=0/1` so the disconnect does not count it either.
        rec.kind = EventKind::Other;
    } else {
        rec.attempts = 1;
    }
    if let Some(user) = after(reason, b", sasl_username=")
        && user != b"(unavailable)"
    {
        rec.user = owned_lower(user);
    }
    Parsed::Record(rec)
}

fn postscreen(msg: &[u8]) -> Parsed {
    let p = Protocol::Smtp;
    if let Some(r) = msg.strip_prefix(b"CONNECT from ") {
        return from_token(r, EventKind::Connect, p);
    }
    if let Some(r) = msg.strip_prefix(b"DISCONNECT ") {
        return from_token(r, EventKind::Disconnect, p);
    }
    for prefix in [&b"PREGREET "[..], b"HANGUP after "] {
        if let Some(r) = msg.strip_prefix(prefix) {
            return after_cmd(r, EventKind::Rejected, p);
        }
    }
    for prefix in [
        &b"COMMAND TIME LIMIT from "[..],
        b"COMMAND COUNT LIMIT from ",
        b"COMMAND LENGTH LIMIT from ",
        b"COMMAND PIPELINING from ",
        b"BARE NEWLINE from ",
        b"NON-SMTP COMMAND from ",
        b"BLACKLISTED ",
        b"DENYLISTED ",
    ] {
        if let Some(r) = msg.strip_prefix(prefix) {
            return from_token(r, EventKind::Rejected, p);
        }
    }
    if let Some(r) = msg.strip_prefix(b"DNSBL rank ") {
        let (digits, r) = split_digits(r);
        return match (digits.is_empty(), r.strip_prefix(b" for ")) {
            (false, Some(r)) => from_token(r, EventKind::Rejected, p),
            _ => Parsed::Unparsed,
        };
    }
    for prefix in [
        &b"PASS NEW "[..],
        b"PASS OLD ",
        b"WHITELISTED ",
        b"ALLOWLISTED ",
    ] {
        if let Some(r) = msg.strip_prefix(prefix) {
            return from_token(r, EventKind::Other, p);
        }
    }
    if let Some(r) = msg.strip_prefix(b"NOQUEUE: reject: ") {
        return command_line(r, true, p);
    }
    Parsed::Ignored
}

fn qmgr(msg: &[u8]) -> Parsed {
    let (Some(qid), rest) = strip_queue_id(msg) else {
        return Parsed::Ignored;
    };
    let qid = String::from_utf8_lossy(qid).into_owned();
    if rest == b"removed" {
        Parsed::QueueRemoved(qid)
    } else if rest.starts_with(b"from=<") && rest.ends_with(b"(queue active)") {
        Parsed::QueueActive(qid)
    } else {
        Parsed::Ignored
    }
}
