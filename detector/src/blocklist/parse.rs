//! Reading blocklists: plain lines, `ipset save` output, and CrowdSec's decisions JSON.
//!
//! Plain: one address or CIDR prefix per line, then optionally a duration (`24h`, `7d`,
//! `permanent`, `-` for the default) and a free-text reason; columns are separated by
//! whitespace, commas or semicolons, and `#` starts a comment. `ipset save`: the `add SET
//! ENTRY [timeout SECONDS] [comment "..."]` lines (the `create` lines are skipped). CrowdSec:
//! `cscli decisions list -o json` (alerts with decisions), a decision array, or a stream
//! answer (`{"new": [...]}`); only `ban` decisions of scope Ip/Range are taken.
use std::collections::HashMap;
use std::time::Duration;

use ipnet::IpNet;

use crate::crowdsec::duration as go_duration;
use crate::crowdsec::model::Decision;
use crate::enforce::canonical;

/// One good entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub net: IpNet,
    /// `None`: the command's default (`--for` / `--permanent`); `Some(None)`: permanent.
    pub ttl: Option<Option<Duration>>,
    /// The reason column, if any.
    pub note: Option<String>,
    /// 1-based line (or JSON entry) number.
    pub line: usize,
}

/// One rejected line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub why: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    pub bad: Vec<BadLine>,
    /// Lines that were neither entries nor errors (comments, blanks, ipset `create`, other
    /// decision types).
    pub skipped: usize,
    /// The format that was recognised.
    pub format: &'static str,
}

/// Reads any of the supported formats (recognised from the content).
pub fn parse(text: &str) -> Parsed {
    let start = text.trim_start();
    let mut parsed = if start.starts_with('[') || start.starts_with('{') {
        parse_crowdsec_json(text)
    } else if text.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("create ") || l.starts_with("add ")
    }) {
        parse_ipset(text)
    } else {
        parse_plain(text)
    };
    merge_duplicates(&mut parsed);
    parsed
}

/// An address (host ban) or a prefix, IPv4-mapped forms as IPv4. Host bits in a prefix are an
/// error, not silently cleared: `198.51.100.7/24` is probably a typo. Shared by the list
/// formats and the `IP|CIDR` arguments of `ban`, `unban` and `trace`.
pub fn target(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<std::net::IpAddr>() {
        return Ok(canonical(IpNet::from(addr)));
    }
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("`{s}` is not an IP address or CIDR prefix"))?;
    if net.trunc() != net {
        return Err(format!(
            "`{s}` has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(canonical(net))
}

fn ttl_column(s: &str) -> Result<Option<Option<Duration>>, String> {
    match s.to_ascii_lowercase().as_str() {
        "-" | "default" => Ok(None),
        "permanent" | "never" | "0" => Ok(Some(None)),
        _ => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Ok(Some(Some(d))),
            Ok(_) => Err("a duration of 0 (write `permanent` for no expiry)".into()),
            Err(_) => Err(format!(
                "`{s}` is not a duration (24h, 7d, permanent, or - for the default)"
            )),
        },
    }
}

fn parse_plain(text: &str) -> Parsed {
    let mut p = Parsed {
        format: "plain",
        ..Parsed::default()
    };
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            p.skipped += 1;
            continue;
        }
        let (addr, rest) = next_column(content);
        let net = match target(addr) {
            Ok(n) => n,
            Err(why) => {
                p.bad.push(BadLine { line, why });
                continue;
            }
        };
        let (second, third) = next_column(rest);
        let (ttl, note) = if second.is_empty() {
            (None, None)
        } else {
            match ttl_column(second) {
                Ok(ttl) => (ttl, Some(third.to_string())),
                // A second column that is no duration is the reason.
                Err(why) if looks_like_duration(second) => {
                    p.bad.push(BadLine { line, why });
                    continue;
                }
                Err(_) => (None, Some(rest.to_string())),
            }
        };
        p.entries.push(Entry {
            net,
            ttl,
            note: note.filter(|n| !n.is_empty()),
            line,
        });
    }
    p
}

fn is_separator(c: char) -> bool {
    c.is_whitespace() || c == ',' || c == ';'
}

/// The first column of `s` and what follows it (separators trimmed).
fn next_column(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(is_separator);
    match s.find(is_separator) {
        Some(i) => (&s[..i], s[i..].trim_matches(is_separator)),
        None => (s, ""),
    }
}

/// `1h`, `30x`, `7d`: starts with a digit, so it was meant as a duration.
fn looks_like_duration(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_digit())
}

fn parse_ipset(text: &str) -> Parsed {
    let mut p = Parsed {
        format: "ipset",
        ..Parsed::default()
    };
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let words: Vec<&str> = raw.split_whitespace().collect();
        match words.as_slice() {
            ["add", _set, entry, opts @ ..] => {
                let net = match target(entry) {
                    Ok(n) => n,
                    Err(why) => {
                        p.bad.push(BadLine {
                            line,
                            why: format!("{why} (only hash:ip and hash:net sets can be loaded)"),
                        });
                        continue;
                    }
                };
                let mut ttl = None;
                let mut note = None;
                let mut it = opts.iter();
                while let Some(opt) = it.next() {
                    match *opt {
                        "timeout" => match it.next().and_then(|v| v.parse::<u64>().ok()) {
                            Some(0) => ttl = Some(None),
                            Some(s) => ttl = Some(Some(Duration::from_secs(s))),
                            None => {}
                        },
                        "comment" => {
                            let rest: Vec<&str> = it.by_ref().copied().collect();
                            note = Some(rest.join(" ").trim_matches('"').to_string());
                        }
                        _ => {}
                    }
                }
                p.entries.push(Entry {
                    net,
                    ttl,
                    note,
                    line,
                });
            }
            ["add", ..] => p.bad.push(BadLine {
                line,
                why: "an `add` line needs a set and an entry".into(),
            }),
            _ => p.skipped += 1,
        }
    }
    p
}

fn parse_crowdsec_json(text: &str) -> Parsed {
    let mut p = Parsed {
        format: "crowdsec-json",
        ..Parsed::default()
    };
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            p.bad.push(BadLine {
                line: e.line(),
                why: format!("not valid JSON: {e}"),
            });
            return p;
        }
    };
    // Alerts carry their decisions; a stream answer has "new"; else an array of decisions.
    let mut raw: Vec<&serde_json::Value> = Vec::new();
    match &value {
        serde_json::Value::Object(o) => raw.extend(
            o.get("new")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten(),
        ),
        serde_json::Value::Array(items) => {
            for item in items {
                match item.get("decisions").and_then(|d| d.as_array()) {
                    Some(ds) => raw.extend(ds),
                    None => raw.push(item),
                }
            }
        }
        _ => {}
    }
    for (i, v) in raw.into_iter().enumerate() {
        let line = i + 1;
        let d: Decision = match serde_json::from_value(v.clone()) {
            Ok(d) => d,
            Err(e) => {
                p.bad.push(BadLine {
                    line,
                    why: format!("decision {line}: {e}"),
                });
                continue;
            }
        };
        if !d.kind.eq_ignore_ascii_case("ban") {
            p.skipped += 1;
            continue;
        }
        let net = match d.target() {
            None => {
                p.skipped += 1;
                continue;
            }
            Some(Err(why)) => {
                p.bad.push(BadLine {
                    line,
                    why: format!("decision {line}: {why}"),
                });
                continue;
            }
            Some(Ok(n)) => canonical(n),
        };
        let ttl = match go_duration::parse(&d.duration).map(|g| g.remaining()) {
            Ok(Some(t)) => Some(Some(t)),
            Ok(None) => {
                p.skipped += 1; // already over
                continue;
            }
            Err(why) => {
                p.bad.push(BadLine {
                    line,
                    why: format!("decision {line}: {why}"),
                });
                continue;
            }
        };
        p.entries.push(Entry {
            net,
            ttl,
            note: Some(format!("{}/{}", d.origin, d.scenario)),
            line,
        });
    }
    p
}

/// The same prefix twice: one entry with the longer time (permanent wins).
fn merge_duplicates(p: &mut Parsed) {
    let mut seen: HashMap<IpNet, usize> = HashMap::with_capacity(p.entries.len());
    let mut out: Vec<Entry> = Vec::with_capacity(p.entries.len());
    for e in p.entries.drain(..) {
        match seen.get(&e.net) {
            Some(&i) => {
                let kept = &mut out[i];
                kept.ttl = match (kept.ttl, e.ttl) {
                    (Some(None), _) | (_, Some(None)) => Some(None),
                    (Some(Some(a)), Some(Some(b))) => Some(Some(a.max(b))),
                    (a, None) => a,
                    (None, b) => b,
                };
                if kept.note.is_none() {
                    kept.note = e.note;
                }
            }
            None => {
                seen.insert(e.net, out.len());
                out.push(e);
            }
        }
    }
    p.entries = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(p: &Parsed) -> Vec<String> {
        p.entries.iter().map(|e| e.net.to_string()).collect()
    }

    #[test]
    fn plain_lines_with_optional_columns_and_comments() {
        let p = parse(
            "# a blocklist\n\
             198.51.100.7\n\
             198.51.100.0/24 7d spam source\n\
             2001:db8::/48, permanent, hosting range\n\
             \n\
             203.0.113.9 - noisy # trailing comment\n\
             203.0.113.10 scanner\n\
             ::ffff:192.0.2.1\n",
        );
        assert_eq!(p.format, "plain");
        assert!(p.bad.is_empty(), "{:?}", p.bad);
        assert_eq!(
            nets(&p),
            [
                "198.51.100.7/32",
                "198.51.100.0/24",
                "2001:db8::/48",
                "203.0.113.9/32",
                "203.0.113.10/32",
                "192.0.2.1/32"
            ]
        );
        assert_eq!(p.entries[1].ttl, Some(Some(Duration::from_secs(7 * 86400))));
        assert_eq!(p.entries[1].note.as_deref(), Some("spam source"));
        assert_eq!(p.entries[2].ttl, Some(None));
        assert_eq!(p.entries[3].ttl, None);
        assert_eq!(p.entries[3].note.as_deref(), Some("noisy"));
        assert_eq!(p.entries[4].note.as_deref(), Some("scanner"));
        assert_eq!(p.entries[4].line, 7);
        assert_eq!(p.skipped, 2);
    }

    #[test]
    fn bad_lines_are_reported_with_their_numbers() {
        let p = parse(
            "198.51.100.7\nnonsense\n198.51.100.7/24\n1.2.3.4 12x\n1.2.3.4/33\n198.51.100.8\n",
        );
        assert_eq!(nets(&p), ["198.51.100.7/32", "198.51.100.8/32"]);
        let lines: Vec<usize> = p.bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, [2, 3, 4, 5]);
        assert!(p.bad[1].why.contains("198.51.100.0/24"), "{:?}", p.bad[1]);
        assert!(p.bad[2].why.contains("12x"), "{:?}", p.bad[2]);
    }

    #[test]
    fn ipset_save_output() {
        let p = parse(
            "create blocked hash:net family inet hashsize 1024 maxelem 65536 timeout 0\n\
             add blocked 198.51.100.0/24\n\
             add blocked 203.0.113.7 timeout 3600 comment \"brute force\"\n\
             create ports hash:ip,port family inet\n\
             add ports 203.0.113.8,tcp:25\n",
        );
        assert_eq!(p.format, "ipset");
        assert_eq!(nets(&p), ["198.51.100.0/24", "203.0.113.7/32"]);
        assert_eq!(p.entries[1].ttl, Some(Some(Duration::from_secs(3600))));
        assert_eq!(p.entries[1].note.as_deref(), Some("brute force"));
        assert_eq!(p.bad.len(), 1);
        assert_eq!(p.bad[0].line, 5);
    }

    #[test]
    fn crowdsec_decisions_json() {
        let alerts = r#"[{"id":3,"decisions":[{"duration":"3h54m52.1s","id":3,"origin":"cscli","scenario":"manual 'ban' from 'test'","scope":"Ip","type":"ban","value":"2001:db8::7"},{"duration":"1h","id":4,"origin":"cscli","scenario":"x","scope":"Ip","type":"captcha","value":"198.51.100.9"}]}]"#;
        let p = parse(alerts);
        assert_eq!(p.format, "crowdsec-json");
        assert_eq!(nets(&p), ["2001:db8::7/128"]);
        assert_eq!(p.skipped, 1);
        let stream = r#"{"new":[{"duration":"-1s","id":1,"origin":"CAPI","scenario":"ssh","scope":"Range","type":"ban","value":"198.51.100.0/24"},{"duration":"10m","id":2,"origin":"CAPI","scenario":"ssh","scope":"Range","type":"ban","value":"203.0.113.0/24"},{"duration":"10m","id":5,"scope":"Ip","type":"ban","value":"bogus"}],"deleted":null}"#;
        let p = parse(stream);
        assert_eq!(nets(&p), ["203.0.113.0/24"]);
        assert_eq!(p.bad.len(), 1);
        assert!(parse("[not json").bad[0].why.contains("JSON"));
    }

    #[test]
    fn duplicates_keep_the_longest_time() {
        let p =
            parse("198.51.100.7 1h\n198.51.100.7 2h\n198.51.100.8 permanent\n198.51.100.8 1h\n");
        assert_eq!(p.entries.len(), 2);
        assert_eq!(p.entries[0].ttl, Some(Some(Duration::from_secs(7200))));
        assert_eq!(p.entries[1].ttl, Some(None));
    }
}
