//! Byte-level helpers shared by the envelope and daemon parsers: no regex, no allocation.
use std::net::IpAddr;

use memchr::memmem;

/// Position of `needle` in `hay`.
#[inline]
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memmem::find(hay, needle)
}

/// Position of the last `needle` in `hay`.
#[inline]
pub(crate) fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memmem::rfind(hay, needle)
}

/// The text after the first `needle`.
#[inline]
pub(crate) fn after<'a>(hay: &'a [u8], needle: &[u8]) -> Option<&'a [u8]> {
    find(hay, needle).map(|i| &hay[i + needle.len()..])
}

/// Parses a decimal number (at most 9 digits, so it never overflows).
pub(crate) fn parse_u32(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 {
        return None;
    }
    let mut n: u32 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(c - b'0');
    }
    Some(n)
}

/// Leading decimal digits of `b` and the rest.
pub(crate) fn split_digits(b: &[u8]) -> (&[u8], &[u8]) {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    b.split_at(n)
}

/// Parses an IPv4 or IPv6 address; accepts Postfix's `IPv6:` prefix and maps `::ffff:a.b.c.d`
/// to the IPv4 address (Dovecot and some Postfix builds log v4-mapped clients that way).
pub(crate) fn parse_ip(b: &[u8]) -> Option<IpAddr> {
    let b = strip_prefix_ci(b, b"IPv6:").unwrap_or(b);
    // Shortest is "::" / "1.2.3.4"; longest sane textual form is well under 64 bytes.
    if b.len() < 2 || b.len() > 64 {
        return None;
    }
    let s = std::str::from_utf8(b).ok()?;
    let ip: IpAddr = s.parse().ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

fn strip_prefix_ci<'a>(b: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if b.len() >= prefix.len() && b[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&b[prefix.len()..])
    } else {
        None
    }
}

/// A Postfix client token `name[ip]`, `name[ip]:port`, `[ip]:port` (postscreen), each possibly
/// followed by `:`. The token starts at `b[0]` and ends at the first space: Postfix only logs
/// validated host names (no spaces, no brackets) or `unknown`, so the address is the LAST
/// `[...]` of that token and nothing the client sends can move it.
pub(crate) fn client_token(b: &[u8]) -> Option<(IpAddr, &[u8])> {
    let end = memchr::memchr(b' ', b).unwrap_or(b.len());
    let (tok, rest) = b.split_at(end);
    let tok = tok.strip_suffix(b",").unwrap_or(tok);
    let tok = tok.strip_suffix(b":").unwrap_or(tok);
    let close = memchr::memrchr(b']', tok)?;
    // After `]` only `:port` may follow.
    let tail = &tok[close + 1..];
    if !tail.is_empty() {
        let port = tail.strip_prefix(b":")?;
        parse_u32(port)?;
    }
    let open = memchr::memrchr(b'[', &tok[..close])?;
    let ip = parse_ip(&tok[open + 1..close])?;
    Some((ip, rest))
}

/// Lossy UTF-8 and ASCII lower-casing for user names and addresses; `None` when empty.
pub(crate) fn owned_lower(b: &[u8]) -> Option<String> {
    if b.is_empty() {
        return None;
    }
    // Cap what an attacker can make us store per event.
    let b = &b[..b.len().min(256)];
    let mut s = String::from_utf8_lossy(b).into_owned();
    s.make_ascii_lowercase();
    Some(s)
}

/// `<addr>` value starting right after `key=<`: up to the next `>`.
pub(crate) fn angle_value<'a>(b: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let v = after(b, key)?;
    let end = memchr::memchr(b'>', v)?;
    Some(&v[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens() {
        let ip = |s: &str| client_token(s.as_bytes()).map(|(ip, _)| ip.to_string());
        assert_eq!(ip("unknown[192.0.2.1]: x").as_deref(), Some("192.0.2.1"));
        assert_eq!(
            ip("unknown[192.0.2.237]:55729: SASL").as_deref(),
            Some("192.0.2.237")
        );
        assert_eq!(ip("[1.2.3.4]:55868:").as_deref(), Some("1.2.3.4"));
        assert_eq!(ip("h[2001:db8::1] ehlo=1").as_deref(), Some("2001:db8::1"));
        assert_eq!(ip("h[IPv6:2001:db8::1]").as_deref(), Some("2001:db8::1"));
        assert_eq!(ip("h[::ffff:198.18.0.9]").as_deref(), Some("198.18.0.9"));
        assert_eq!(ip("a[1.2.3.4]b[5.6.7.8]").as_deref(), Some("5.6.7.8"));
        assert_eq!(ip("unknown[unknown]"), None);
        assert_eq!(ip("x[1.2.3.4]junk"), None);
        assert_eq!(ip("no-brackets"), None);
    }
}
