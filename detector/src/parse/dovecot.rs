//! Dovecot 2.3 / 2.4 messages: `*-login` results and auth process failures.
//!
//! Attacker-controlled text in these lines: the user name (`user=<..>`, the first field of
//! `driver(user,ip,...)`, PAM `ruser=`/`user=`) and, with `auth_verbose_passwords`, the given
//! password. Addresses are taken so that neither can move them:
//! - login lines: `rip=` is the LAST `rip=` of the line. Dovecot writes the fields in the fixed
//!   order `user=<..>, method=, rip=, lip=, mpid=, TLS.., session=<..>`, so a user value (which
//!   comes first) cannot come after the real `rip=`;
//! - auth lines: every `)` that could close `driver(...)` is tried; a candidate is valid when
//!   the parenthesised text ends with `,IP` or `,IP,<session>` / `,IP,sasl:mech` / `,IP,`.
//!   The real one is always valid, so when a user name or password adds another valid
//!   candidate the line is ambiguous and yields no address at all (the login line for the same
//!   attempt still counts);
//! - PAM lines: `rhost=IP` must be followed by the end or by `  user=`; again a unique match is
//!   required.
use crate::event::{EventKind, Protocol, Service};

use super::record::{Link, Parsed, Record};
use super::text::{find, owned_lower, parse_ip, parse_u32, rfind, split_digits};

/// Longest auth message we try to disambiguate (bounds the per-candidate scans).
const MAX_AUTH_LINE: usize = 8 * 1024;

/// Syslog identifiers under which Dovecot (or its PAM stack) logs.
pub(crate) fn is_dovecot_ident(id: &[u8]) -> bool {
    matches!(id, b"dovecot" | b"dovecot-auth" | b"auth" | b"auth-worker") || id.ends_with(b"-login")
}

/// `ident` is the syslog tag; `None` (Dovecot `log_path`, bare lines, unusual prefixes) means
/// the message starts with the process prefix itself.
pub(crate) fn parse(ident: Option<&[u8]>, msg: &[u8]) -> Parsed {
    match ident {
        Some(b"dovecot") | None => process_message(strip_doubled(msg)),
        Some(b"dovecot-auth") => by_process(b"auth", msg),
        Some(id) => by_process(id, msg),
    }
}

/// The doubled form `dovecot[442]: dovecot: auth(default): ...` and the `dovecot: ` of
/// syslog lines without tag.
fn strip_doubled(msg: &[u8]) -> &[u8] {
    if let Some(r) = msg.strip_prefix(b"dovecot: ") {
        return r;
    }
    if let Some(r) = msg.strip_prefix(b"dovecot[") {
        let (d, r) = split_digits(r);
        if !d.is_empty()
            && let Some(r) = r.strip_prefix(b"]: ")
        {
            return r;
        }
    }
    msg
}

/// `process: ...`, `process(x): ...`, 2.4 `auth(user,ip,sasl:mech)<session>: ...`, or a bare
/// `pam_unix(dovecot:auth): ...`.
fn process_message(m: &[u8]) -> Parsed {
    if let Some(r) = m.strip_prefix(b"pam_unix(dovecot:auth): ") {
        return pam(r);
    }
    let n = m
        .iter()
        .take(40)
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'-' || **c == b'_')
        .count();
    let name = &m[..n];
    if n == 0 {
        return Parsed::Ignored;
    }
    let name = if name == b"dovecot-auth" {
        &b"auth"[..]
    } else {
        name
    };
    match m.get(n) {
        Some(b':') if m.get(n + 1) == Some(&b' ') => by_process(name, &m[n + 2..]),
        Some(b'(') if name == b"auth" || name == b"auth-worker" => {
            // 2.3 `auth(default): ` / `auth-worker(1234): ` (no comma inside) is a process
            // prefix; anything else is the 2.4 `auth(user,ip,...)<session>: ` form.
            let inner = &m[n + 1..];
            if let Some(close) = inner.iter().take(40).position(|&c| c == b')')
                && !inner[..close].contains(&b',')
                && inner[close + 1..].starts_with(b": ")
            {
                return auth_message(&inner[close + 3..]);
            }
            driver_line(m)
        }
        _ => Parsed::Ignored,
    }
}

fn by_process(name: &[u8], rest: &[u8]) -> Parsed {
    if name.ends_with(b"-login") {
        login_line(name, rest)
    } else if name == b"auth" || name == b"auth-worker" {
        auth_message(rest)
    } else {
        Parsed::Ignored
    }
}

fn strip_level(m: &[u8]) -> &[u8] {
    for level in [&b"Info: "[..], b"Warning: ", b"Error: "] {
        if let Some(r) = m.strip_prefix(level) {
            return r;
        }
    }
    m
}

/// Auth process message after its prefix (2.3): `[Info: ][conn unix:auth-worker (..):
/// auth-worker<N>: ]driver(user,ip[,<session>]): text`.
fn auth_message(m: &[u8]) -> Parsed {
    let mut m = strip_level(m);
    if m.starts_with(b"conn ") {
        // `conn unix:auth-worker (pid=14830,uid=109): auth-worker<6>: ` (server-written).
        let head = &m[..m.len().min(160)];
        let Some(i) = find(head, b"): auth-worker<") else {
            return Parsed::Ignored;
        };
        let Some(j) = find(&head[i..], b">: ") else {
            return Parsed::Ignored;
        };
        m = &m[i + j + 3..];
    }
    if let Some(r) = m.strip_prefix(b"pam_unix(dovecot:auth): ") {
        return pam(r);
    }
    driver_line(m)
}

/// `driver(user,ip[,<session>|,sasl:mech|,])[<session>]: [Info: ][driver: ]text`.
fn driver_line(s: &[u8]) -> Parsed {
    // Dovecot truncates user names and log lines far below this; longer is hostile.
    if s.len() > MAX_AUTH_LINE {
        return Parsed::Unparsed;
    }
    let n = s
        .iter()
        .take(40)
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
        .count();
    if n == 0 || s.get(n) != Some(&b'(') {
        return Parsed::Ignored;
    }
    let open = n;
    let mut found: Option<(AuthFields<'_>, &[u8])> = None;
    // Cap the work on hostile lines: at most 64 closing parentheses are considered.
    for close in memchr::memchr_iter(b')', &s[open + 1..])
        .take(64)
        .map(|i| i + open + 1)
    {
        let Some((session2, text)) = after_driver_fields(&s[close + 1..]) else {
            continue;
        };
        let Some(mut f) = fields(&s[open + 1..close]) else {
            continue;
        };
        if found.is_some() {
            // A user name or password produced a second well-formed candidate.
            return Parsed::Unparsed;
        }
        f.session = f.session.or(session2);
        found = Some((f, text));
    }
    let Some((AuthFields { ip, user, session }, text)) = found else {
        return Parsed::Ignored;
    };
    let text = strip_level(text);
    // 2.4 repeats the passdb name: `sql: Password mismatch`.
    let k = text
        .iter()
        .take(24)
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
        .count();
    let text = if k > 0 && text[k..].starts_with(b": ") {
        &text[k + 2..]
    } else {
        text
    };
    let kind = if text.starts_with(b"unknown user") || text.starts_with(b"user not found") {
        EventKind::AuthUnknownUser
    } else if text.starts_with(b"Password mismatch")
        || text.starts_with(b"invalid credentials")
        || text.starts_with(b"pam_authenticate() failed")
        || text.starts_with(b"Invalid password")
    {
        EventKind::AuthFailure
    } else {
        return Parsed::Ignored;
    };
    if tries_next_db(text) {
        return Parsed::Ignored;
    }
    let mut rec = Record::new(Service::Dovecot, kind, ip);
    // 2.4 writes `?` when the request has no user name yet.
    rec.user = owned_lower(user).filter(|u| u != "?");
    rec.attempts = 1;
    rec.link = Link::DovecotAuth {
        session: session.filter(|s| !s.is_empty()).map(lossy),
    };
    Parsed::Record(rec)
}

/// What follows the closing `)` of `driver(...)`: `[<session>]: ` (2.3, 2.4 auth), or the 2.4
/// auth-worker's `<pid>[<session>]: request [N]: ` (auth-request.c `get_log_prefix()`, worker
/// branch). Returns the session and the text after the prefix.
fn after_driver_fields(mut after: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let mut groups: [Option<&[u8]>; 2] = [None, None];
    for slot in &mut groups {
        if after.first() != Some(&b'<') {
            break;
        }
        let end = after.iter().take(80).position(|&c| c == b'>')?;
        if !after[1..end].iter().all(is_session_char) {
            return None;
        }
        *slot = Some(&after[1..end]);
        after = &after[end + 1..];
    }
    let text = after.strip_prefix(b": ")?;
    match text.strip_prefix(b"request [") {
        // Worker: the first group is the worker's pid, the second (if any) the session.
        Some(r) => {
            let (digits, r) = split_digits(r);
            let text = r.strip_prefix(b"]: ")?;
            let pid = groups[0]?;
            if digits.is_empty() || !pid.iter().all(u8::is_ascii_digit) {
                return None;
            }
            Some((groups[1], text))
        }
        None if groups[1].is_some() => None,
        None => Some((groups[0], text)),
    }
}

/// `unknown user - trying the next passdb` (auth-request.c `auth_request_log_login_failure()`,
/// written with `auth_verbose_passwords` when another passdb/userdb follows): not the final
/// answer, the last database logs its own line. Only the server-written forms count (the
/// message alone or with the SHA1 of the password); after a plain `(given password: ..)` the
/// suffix could be the client's password, so such a line still counts as a failure.
fn tries_next_db(text: &[u8]) -> bool {
    let Some(head) = text
        .strip_suffix(b" - trying the next passdb")
        .or_else(|| text.strip_suffix(b" - trying the next userdb"))
    else {
        return false;
    };
    let head = head.strip_suffix(b" ").unwrap_or(head);
    let head = match head.strip_suffix(b")") {
        Some(h) => match rfind(h, b" (SHA1 of given password: ") {
            Some(i) if h[i + 26..].iter().all(u8::is_ascii_hexdigit) => &h[..i],
            _ => return false,
        },
        None => head,
    };
    matches!(head, b"unknown user" | b"Password mismatch")
}

fn is_session_char(c: &u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_')
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The parts of `driver(user,ip[,<session>])`.
struct AuthFields<'a> {
    ip: std::net::IpAddr,
    user: &'a [u8],
    session: Option<&'a [u8]>,
}

/// The parenthesised `user,ip[,<session>|,sasl:mech|,][,master]`: 2.3 writes the session
/// (or an empty field) after the address; 2.4 (auth-request.c `get_log_prefix()`) writes
/// `,sasl:<mech>` and, for a master-user login, `,master`.
fn fields(c: &[u8]) -> Option<AuthFields<'_>> {
    let c = c.strip_suffix(b",master").unwrap_or(c);
    let last_comma = memchr::memrchr(b',', c)?;
    let last = &c[last_comma + 1..];
    if let Some(ip) = parse_ip(last) {
        return Some(AuthFields {
            ip,
            user: &c[..last_comma],
            session: None,
        });
    }
    let session = if last.is_empty() || last.starts_with(b"sasl:") {
        None
    } else if last.len() >= 2
        && last[0] == b'<'
        && last[last.len() - 1] == b'>'
        && last[1..last.len() - 1].iter().all(is_session_char)
    {
        Some(&last[1..last.len() - 1])
    } else {
        return None;
    };
    let head = &c[..last_comma];
    let comma = memchr::memrchr(b',', head)?;
    let ip = parse_ip(&head[comma + 1..])?;
    Some(AuthFields {
        ip,
        user: &head[..comma],
        session,
    })
}

/// `authentication failure; logname= uid=0 euid=0 tty=dovecot ruser=X rhost=IP[  user=Y]`.
fn pam(r: &[u8]) -> Parsed {
    let Some(r) = r.strip_prefix(b"authentication failure; ") else {
        return Parsed::Ignored;
    };
    let Some(ruser_at) = find(r, b" ruser=") else {
        return Parsed::Unparsed;
    };
    let fields = &r[ruser_at + 7..];
    let mut found = None;
    let mut start = 0;
    for _ in 0..16 {
        let Some(i) = find(&fields[start..], b" rhost=").map(|i| i + start) else {
            break;
        };
        start = i + 1;
        let v = &fields[i + 7..];
        let end = memchr::memchr(b' ', v).unwrap_or(v.len());
        let Some(ip) = parse_ip(&v[..end]) else {
            continue;
        };
        let tail = &v[end..];
        let trailing_user = if tail.iter().all(|&c| c == b' ') {
            Some(None)
        } else {
            let t = tail.strip_prefix(b" ").unwrap_or(tail);
            t.strip_prefix(b" user=").map(Some)
        };
        let Some(trailing_user) = trailing_user else {
            continue;
        };
        if found.is_some() {
            return Parsed::Unparsed;
        }
        found = Some((ip, &fields[..i], trailing_user));
    }
    let Some((ip, ruser, trailing)) = found else {
        return Parsed::Unparsed;
    };
    let mut rec = Record::new(Service::Dovecot, EventKind::AuthFailure, ip);
    rec.user = owned_lower(ruser).or_else(|| trailing.and_then(owned_lower));
    rec.attempts = 1;
    rec.link = Link::DovecotAuth { session: None };
    Parsed::Record(rec)
}

fn login_protocol(name: &[u8]) -> Option<Protocol> {
    match name {
        b"imap-login" => Some(Protocol::Imap),
        b"pop3-login" => Some(Protocol::Pop3),
        b"submission-login" => Some(Protocol::Submission),
        b"managesieve-login" => Some(Protocol::Managesieve),
        b"lmtp-login" => Some(Protocol::Lmtp),
        _ => None,
    }
}

/// `*-login: [Info: ]Login: user=<..>, ...` (2.3), `Logged in: user=<..>, ...` (2.4), or
/// `<reason>: user=<..>, method=.., rip=.., ...`.
fn login_line(name: &[u8], rest: &[u8]) -> Parsed {
    let rest = strip_level(rest);
    if rest.starts_with(b"proxy(") {
        return proxy_line(name, rest);
    }
    // client-common-auth.c `sasl_callback()`: `client_destroy_success(client, "Login")` in 2.3,
    // `"Logged in"` in 2.4; the login_log_format `%s: %{elements}` adds the `: `.
    let (success, body) = match rest
        .strip_prefix(b"Login: ")
        .or_else(|| rest.strip_prefix(b"Logged in: "))
    {
        Some(kv) => (true, kv),
        None => (false, rest),
    };
    // The key=value list starts at the first of these keys; everything before it is the
    // server-written reason.
    let kv_start = [&b"user=<"[..], b"method=", b"rip="]
        .iter()
        .filter_map(|k| find(body, k))
        .min()
        .unwrap_or(body.len());
    let reason = &body[..kv_start];
    let kv = &body[kv_start..];
    let Some((rip_at, ip)) = last_rip(kv) else {
        return Parsed::Ignored;
    };
    let (kind, attempts) = if success {
        (EventKind::AuthSuccess, 0)
    } else {
        classify_reason(reason)
    };
    let mut rec = Record::new(Service::Dovecot, kind, ip);
    rec.protocol = login_protocol(name);
    rec.attempts = attempts;
    rec.user = login_user(&kv[..rip_at]).and_then(owned_lower);
    let session = find(&kv[rip_at..], b"session=<").and_then(|i| {
        let v = &kv[rip_at + i + 9..];
        let end = memchr::memchr(b'>', v)?;
        Some(lossy(&v[..end]))
    });
    rec.link = Link::DovecotLogin { session };
    Parsed::Record(rec)
}

/// A login proxy's line: `proxy(USER,HOST:PORT): MESSAGE: user=<USER>, ..., rip=IP, ...`
/// (login-proxy.c `login_proxy_set_destination()` sets the prefix; 2.3.21 has the same).
/// `Started proxying to ...` (client-common-auth.c `client_proxy_finish_destroy_client()`)
/// means the remote server accepted the login: a success. Every other proxy line (`Login
/// failed`, `Disconnected by server`, ...) counts nothing; the failed attempt is counted by
/// the `Login aborted: ... (proxy dest authentication failure, ...)` line.
///
/// USER is the client's login name and appears twice. It is accepted only when exactly one
/// split of the line has the same USER in `proxy(USER,` and in `user=<USER>`, with a
/// server-written `HOST:PORT): ` after the first, so a name carrying `): Started proxying to`
/// cannot turn a failure into a success.
fn proxy_line(name: &[u8], rest: &[u8]) -> Parsed {
    let Some((rip_at, ip)) = last_rip(rest) else {
        return Parsed::Ignored;
    };
    let before_rip = &rest[..rip_at];
    // `>, method=M, ` or `>, ` right before `rip=`: the end of USER.
    let Some(user_end) =
        before_rip
            .strip_suffix(b", ")
            .and_then(|v| match rfind(v, b">, method=") {
                Some(i) if !v[i + 10..].contains(&b' ') => Some(i),
                _ => v.strip_suffix(b">").map(|u| u.len()),
            })
    else {
        return Parsed::Ignored;
    };
    let head = &rest[6..];
    let mut found: Option<(&[u8], bool)> = None;
    let mut from = 0;
    for _ in 0..16 {
        let Some(i) = find(&rest[from..user_end], b"user=<").map(|i| i + from) else {
            break;
        };
        from = i + 1;
        let user = &rest[i + 6..user_end];
        let Some(after_user) = head.strip_prefix(user).and_then(|r| r.strip_prefix(b",")) else {
            continue;
        };
        let n = after_user
            .iter()
            .take(300)
            .take_while(|c| !matches!(c, b')' | b' ' | b','))
            .count();
        let Some(msg) = after_user[n..].strip_prefix(b"): ") else {
            continue;
        };
        if n == 0 || found.is_some() {
            return Parsed::Ignored;
        }
        found = Some((user, msg.starts_with(b"Started proxying to ")));
    }
    let Some((user, success)) = found else {
        return Parsed::Ignored;
    };
    let kind = if success {
        EventKind::AuthSuccess
    } else {
        EventKind::Other
    };
    let mut rec = Record::new(Service::Dovecot, kind, ip);
    rec.protocol = login_protocol(name);
    rec.user = owned_lower(user);
    let session = find(&rest[rip_at..], b"session=<").and_then(|i| {
        let v = &rest[rip_at + i + 9..];
        let end = memchr::memchr(b'>', v)?;
        Some(lossy(&v[..end]))
    });
    rec.link = Link::DovecotLogin { session };
    Parsed::Record(rec)
}

/// The last `rip=IP` that starts the list or follows a space, and is followed by `,` or the end.
fn last_rip(kv: &[u8]) -> Option<(usize, std::net::IpAddr)> {
    let mut end = kv.len();
    for _ in 0..16 {
        let i = rfind(&kv[..end], b"rip=")?;
        end = i;
        if i > 0 && kv[i - 1] != b' ' {
            continue;
        }
        let v = &kv[i + 4..];
        let stop = memchr::memchr2(b',', b' ', v).unwrap_or(v.len());
        if stop < v.len() && v[stop] != b',' {
            continue;
        }
        if let Some(ip) = parse_ip(&v[..stop]) {
            return Some((i, ip));
        }
    }
    None
}

/// `user=<X>, [method=M, ]` right before `rip=`: X is everything between `user=<` and that
/// closing `>` (it may itself contain `>` or `, `).
fn login_user(before_rip: &[u8]) -> Option<&[u8]> {
    let v = before_rip.strip_prefix(b"user=<")?;
    let v = v.strip_suffix(b", ")?;
    let v = match rfind(v, b">, method=") {
        Some(i) if !v[i + 10..].contains(&b' ') => &v[..i + 1],
        _ => v,
    };
    v.strip_suffix(b">")
}

/// How Dovecot's own disconnect reasons start (2.x login processes, submission-login, 2.4's
/// `Login aborted`; the list fail2ban's filter uses too). Other text before the key=value list
/// is not a disconnect and may be the client's (`ID sent: name=...`: `imap_id_log` quotes the
/// client's ID values verbatim), so it never counts.
const DISCONNECT_REASONS: [&[u8]; 6] = [
    b"Disconnected",
    b"Aborted login",
    b"Login aborted",
    b"Connection closed",
    b"Remote closed connection",
    b"Client has quit the connection",
];

/// Reason text -> kind and the number of failed attempts it reports.
///
/// The count comes only from the note Dovecot appends to its disconnect reason, as the last
/// parenthesised group right before the key=value list (2.4 puts a ` (code)` after it):
/// `Disconnected: Inactivity (auth failed, 3 attempts in 12 secs): user=<..>, ...`.
fn classify_reason(reason: &[u8]) -> (EventKind, u32) {
    if !DISCONNECT_REASONS.iter().any(|p| reason.starts_with(p)) {
        return (EventKind::Other, 0);
    }
    // The reason ends at the `): ` that closes the note (or, with no note, anywhere).
    let mut r = match rfind(reason, b"): ") {
        Some(i) => &reason[..i + 1],
        None => reason.strip_suffix(b": ").unwrap_or(reason),
    };
    if let Some(open) = memchr::memrchr(b'(', r)
        && let Some(code) = r[open + 1..].strip_suffix(b")")
        && !code.is_empty()
        && code.iter().all(|c| c.is_ascii_lowercase() || *c == b'_')
        && r[..open].ends_with(b") ")
    {
        r = &r[..open - 1];
    }
    let note = match memchr::memrchr(b'(', r) {
        Some(open) if r.ends_with(b")") => &r[open..],
        _ => return (EventKind::Disconnect, 0),
    };
    if let Some(n) = note.strip_prefix(b"(auth failed, ") {
        let (digits, rest) = split_digits(n);
        if rest.starts_with(b" attempt") {
            let n = parse_u32(digits).unwrap_or(1).max(1);
            return (EventKind::AuthFailure, n);
        }
        return (EventKind::AuthFailure, 1);
    }
    for marker in [
        &b"(tried to use disallowed "[..],
        b"(tried to use disabled ",
        b"(proxy dest auth failed)",
        // 2.4 client-common.c `client_get_extra_disconnect_reason()`.
        b"(proxy dest authentication failure, ",
    ] {
        if note.starts_with(marker) {
            return (EventKind::AuthFailure, 1);
        }
    }
    (EventKind::Disconnect, 0)
}
