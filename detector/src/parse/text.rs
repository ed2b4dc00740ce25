//! Byte-level helpers shared by the envelope and daemon parsers: no regex, no allocation.
use std::net::IpAddr;

use memchr::memmem;

/// Haystacks up to this long are searched without building a [`memmem::Finder`]: building
/// one costs more than searching a log line's few hundred bytes, and a naive scan of this many
/// bytes stays cheap whatever they are. Longer (hostile) text gets memmem's linear search.
const SHORT_HAY: usize = 512;

/// Position of `needle` in `hay`.
#[inline]
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if hay.len() > SHORT_HAY || needle.is_empty() {
        return memmem::find(hay, needle);
    }
    // Look for the needle's first non-space byte (spaces are the commonest byte of a line).
    let k = needle.iter().position(|&c| c != b' ').unwrap_or(0);
    let mut from = k;
    while let Some(j) = memchr::memchr(needle[k], hay.get(from..)?) {
        let at = from + j - k;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        from += j + 1;
    }
    None
}

/// Position of the last `needle` in `hay`.
#[inline]
pub(crate) fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if hay.len() > SHORT_HAY || needle.is_empty() {
        return memmem::rfind(hay, needle);
    }
    let k = needle.iter().position(|&c| c != b' ').unwrap_or(0);
    // Candidates for `needle[k]` lie in `hay[k..end]` with room for the rest after them.
    let mut end = (hay.len() + k + 1).checked_sub(needle.len())?;
    while end > k {
        let j = memchr::memrchr(needle[k], &hay[k..end])? + k;
        let at = j - k;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        end = j;
    }
    None
}

/// The text after the first `needle`.
#[inline]
pub(crate) fn after<'a>(hay: &'a [u8], needle: &[u8]) -> Option<&'a [u8]> {
    find(hay, needle).map(|i| &hay[i + needle.len()..])
}

/// Byte classes for the scans that run on every line (one table load per byte instead of a
/// chain of range tests).
pub(crate) const ALNUM: u8 = 1;
/// `[A-Za-z0-9_./-]`: syslog tags (`postfix/submission/smtpd`, `imap-login`).
pub(crate) const TAG: u8 = 2;

const CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() {
            t[c] = ALNUM | TAG;
        } else if matches!(b, b'_' | b'.' | b'/' | b'-') {
            t[c] = TAG;
        }
        c += 1;
    }
    t
};

/// How many of the first `max` bytes of `b` are of `class`, counted from the start.
#[inline]
pub(crate) fn span_of(b: &[u8], max: usize, class: u8) -> usize {
    let b = &b[..b.len().min(max)];
    b.iter()
        .position(|&c| CLASSES[usize::from(c)] & class == 0)
        .unwrap_or(b.len())
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
    if let Some(v4) = dotted_quad(b) {
        return Some(IpAddr::V4(v4));
    }
    let s = std::str::from_utf8(b).ok()?;
    let ip: IpAddr = s.parse().ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

/// The canonical `a.b.c.d` (1-3 digits per part, no leading zero, each at most 255): the
/// commonest address in a log, read without the general parser. Anything else is `None` and
/// left to `std`, which accepts exactly these and nothing more for IPv4.
fn dotted_quad(b: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut parts = [0u8; 4];
    let mut i = 0;
    for (n, part) in parts.iter_mut().enumerate() {
        if n > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let digits = b[i..]
            .iter()
            .take(4)
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 || digits > 3 || (digits > 1 && b[i] == b'0') {
            return None;
        }
        let v = b[i..i + digits]
            .iter()
            .fold(0u32, |v, c| v * 10 + u32::from(c - b'0'));
        *part = u8::try_from(v).ok()?;
        i += digits;
    }
    (i == b.len()).then(|| parts.into())
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

    /// The short-haystack search finds what memmem finds, first and last, for needles with
    /// and without leading spaces, overlapping candidates, and at both ends.
    #[test]
    fn short_searches_agree_with_memmem() {
        let hays: [&[u8]; 9] = [
            b"",
            b"a",
            b"rip=1.2.3.4, lip=5.6.7.8, rip=9.9.9.9",
            b" from  from x from ",
            b"aaaaaaaaab",
            b"abababababc",
            b"user=<user=<u>>, method=PLAIN, rip=1.2.3.4",
            b"  ",
            b"xx helo=<a> helo=<b>",
        ];
        let needles: [&[u8]; 10] = [
            b"rip=", b" from ", b"aab", b"ababc", b"user=<", b" ", b"  ", b" helo=<", b"b", b"zz",
        ];
        for hay in hays {
            for needle in needles {
                let h = String::from_utf8_lossy(hay);
                let n = String::from_utf8_lossy(needle);
                assert_eq!(find(hay, needle), memmem::find(hay, needle), "{h:?} {n:?}");
                assert_eq!(
                    rfind(hay, needle),
                    memmem::rfind(hay, needle),
                    "{h:?} {n:?}"
                );
            }
        }
        // Every window of a longer text, with needles cut from it.
        let text = b"Nov 27 04:58:37 mail dovecot: imap-login: Disconnected (auth failed, 1 attempts): user=<a>, rip=198.18.0.1";
        for start in 0..text.len() {
            for len in 1..8.min(text.len() - start) {
                let needle = &text[start..start + len];
                for hay in [&text[..], &text[start / 2..], &text[..start + len]] {
                    assert_eq!(find(hay, needle), memmem::find(hay, needle));
                    assert_eq!(rfind(hay, needle), memmem::rfind(hay, needle));
                }
            }
        }
    }

    /// The IPv4 fast path reads exactly what `std` reads, and leaves the rest to it.
    #[test]
    fn dotted_quads_parse_as_std_does() {
        let cases = [
            "1.2.3.4",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "1.2.3.256",
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3.0",
            "1.2.3",
            "1.2.3.4.5",
            "1..3.4",
            ".1.2.3",
            "1.2.3.4.",
            "1234.1.1.1",
            "1.2.3.4 ",
            "+1.2.3.4",
            "1.2.3.4a",
            "198.18.100.200",
            "999.999.999.999",
            "1.2.3.\u{e9}",
        ];
        for c in cases {
            let fast = dotted_quad(c.as_bytes());
            let std = c.parse::<std::net::Ipv4Addr>().ok();
            assert!(fast.is_none() || fast == std, "{c}: {fast:?} vs {std:?}");
            assert_eq!(parse_ip(c.as_bytes()), std.map(IpAddr::V4), "{c}");
        }
        // Every value of one part, with and without leading zeros.
        for v in 0..1000 {
            for text in [
                format!("{v}.1.2.3"),
                format!("9.{v:03}.2.3"),
                format!("9.8.7.{v:02}"),
            ] {
                let std = text.parse::<std::net::Ipv4Addr>().ok();
                assert_eq!(dotted_quad(text.as_bytes()).or(std), std, "{text}");
                assert_eq!(parse_ip(text.as_bytes()), std.map(IpAddr::V4), "{text}");
            }
        }
        assert!(dotted_quad(b"198.18.0.1").is_some());
    }

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
