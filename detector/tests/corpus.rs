//! Conformance against a corpus of real Postfix/Dovecot log lines taken from public projects'
//! test suites (`tests/fixtures/corpus`, or `$DETECTOR_CORPUS`). See `tests/fixtures/README.md`
//! for provenance and the annotation semantics: `attack: false` means "that filter must not
//! count it", not "benign".
//!
//! Rule checked per row of `expectations.jsonl` (each line parsed on its own, fresh parser):
//! - `attack: true` rows must yield a failure/probe-type event with exactly the annotated IP;
//! - `attack: false` rows must not yield one;
//! - no row may yield any IP other than the annotated one.
//!
//! A row that breaks a rule is a disagreement. The deliberate ones are listed in
//! [`DELIBERATE`] with the reason; any other disagreement fails the test. The agreement figure
//! (rows without disagreement / all rows) is printed.
use std::net::IpAddr;
use std::path::PathBuf;

use chrono::{DateTime, FixedOffset, Utc};
use detector::event::{Event, EventKind, Service};
use detector::parse::{Format, LineParser, Outcome, Reference};

/// (text the line contains, annotated `attack`, why we differ).
const DELIBERATE: &[(&str, bool, &str)] = &[
    (
        "lost connection after AUTH from unknown[192.0.2.23]",
        false,
        "lost_connection is reported as a probe event; fail2ban marks it false only to avoid double counting with the \
         following `auth=0/1` disconnect, which our de-dup handles (lost_connection never adds failures)",
    ),
    (
        "improper command pipelining after AUTH from unknown[192.0.2.11]: QUIT",
        false,
        "a client that pipelines before the greeting/AUTH reply is a spam-bot trait; reported as `rejected` in every \
         mode (fail2ban counts the same shape as attack elsewhere in the file)",
    ),
    (
        "SASL CRAM-MD5 authentication failed: Invalid authentication mechanism",
        false,
        "mode-dependent duplicate (fail2ban `auth` mode false, `aggressive` true): asking for an unoffered mechanism \
         is an AUTH attempt that Postfix also counts in `auth=0/1`; we count it",
    ),
    (
        "lost connection after DATA from good-host.example.com[192.0.2.10]",
        false,
        "every `lost connection after X` is a lost_connection event (failures 0); the engine decides what X matters",
    ),
    (
        "warning: hostname bad.example.com does not resolve to address 192.0.2.44",
        true,
        "FCrDNS mismatch is DNS hygiene, not an act of the client (fail2ban aggressive only); reported as `other` with \
         the right IP",
    ),
    (
        "postgrey[919]: action=greylist",
        true,
        "postgrey is neither Postfix nor Dovecot (sshguard files it under Postfix); foreign",
    ),
    (
        "(no auth attempts",
        true,
        "mode-dependent duplicate (fail2ban dovecot `aggressive`): connections without a login attempt (TLS scanners, \
         idle clients) are `disconnect`, not a failure",
    ),
    (
        "(disconnected before auth was ready",
        true,
        "fail2ban dovecot `aggressive` only: no credentials were sent; `disconnect`",
    ),
    (
        "(client didn't finish SASL auth",
        true,
        "fail2ban dovecot `aggressive` only: the client never completed an AUTH exchange; `disconnect`",
    ),
    (
        "(disconnected during TLS handshake) (tls_handshake_not_finished)",
        true,
        "fail2ban dovecot `aggressive` only: TLS handshake aborts are not login attempts; `disconnect`",
    ),
];

const FAILURE_KINDS: &[EventKind] = &[
    EventKind::AuthFailure,
    EventKind::AuthUnknownUser,
    EventKind::Rejected,
    EventKind::RcptRejected,
    EventKind::LostConnection,
    EventKind::TransactionAborted,
];

fn corpus_dir() -> PathBuf {
    let dir = std::env::var_os("DETECTOR_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/corpus")
        });
    assert!(
        dir.join("expectations.jsonl").is_file(),
        "corpus not found at {} (expected expectations.jsonl there)",
        dir.display()
    );
    dir
}

fn parser() -> LineParser {
    let now: DateTime<Utc> = "2026-11-27T06:00:00Z".parse().unwrap();
    LineParser::with_reference(
        Format::Auto,
        Reference::Fixed(now),
        FixedOffset::east_opt(0).unwrap(),
    )
}

fn parse_one(line: &str) -> Option<Event> {
    match parser().parse_line(line.as_bytes(), 1) {
        Outcome::Event(e) => Some(e),
        _ => None,
    }
}

#[derive(serde::Deserialize)]
struct Row {
    source: String,
    line: String,
    attack: bool,
    ip: Option<String>,
}

fn rows(file: &str) -> Vec<Row> {
    let path = corpus_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("corpus row"))
        .collect()
}

#[test]
fn expectations_agreement() {
    let rows = rows("expectations.jsonl");
    assert!(rows.len() > 200, "corpus has only {} rows", rows.len());
    let mut agree = 0;
    let mut used = vec![false; DELIBERATE.len()];
    let mut unexpected = Vec::new();
    for row in &rows {
        let ev = parse_one(&row.line);
        let want_ip: Option<IpAddr> = row.ip.as_deref().and_then(|s| s.parse().ok());
        let mut problems = Vec::new();
        if let (Some(e), Some(want)) = (&ev, want_ip)
            && e.ip != want
        {
            // Never allowed, not even by the deliberate list.
            panic!(
                "WRONG IP {} (annotated {want}) from {}: {}",
                e.ip, row.source, row.line
            );
        }
        let is_probe = ev.as_ref().is_some_and(|e| FAILURE_KINDS.contains(&e.kind));
        if row.attack && !is_probe {
            problems.push(format!(
                "missed attack (got {:?})",
                ev.as_ref().map(|e| e.kind)
            ));
        }
        if !row.attack && is_probe {
            problems.push(format!(
                "counted a non-attack as {:?}",
                ev.as_ref().map(|e| e.kind)
            ));
        }
        if problems.is_empty() {
            agree += 1;
            continue;
        }
        match DELIBERATE
            .iter()
            .position(|(text, attack, _)| row.line.contains(text) && *attack == row.attack)
        {
            Some(i) => used[i] = true,
            None => unexpected.push(format!(
                "{}: {} :: {}",
                row.source,
                problems.join("; "),
                row.line
            )),
        }
    }
    let pct = 100.0 * agree as f64 / rows.len() as f64;
    println!("corpus agreement: {agree}/{} rows = {pct:.1}%", rows.len());
    for (i, (text, attack, why)) in DELIBERATE.iter().enumerate() {
        println!(
            "  deliberate{} attack={attack} `{text}`: {why}",
            if used[i] { "" } else { " (not hit)" }
        );
    }
    assert!(
        unexpected.is_empty(),
        "{} unexpected disagreements:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
    let stale: Vec<_> = DELIBERATE
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(d, _)| d.0)
        .collect();
    assert!(
        stale.is_empty(),
        "deliberate differences that no longer occur (remove them): {stale:?}"
    );
}

#[test]
fn other_mail_daemons_are_foreign() {
    let rows = rows("expectations-other-mail.jsonl");
    assert!(rows.len() > 200);
    let ours: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            parse_one(&r.line)
                .map(|e| format!("{:?} {:?} {} <- {}", e.service, e.kind, e.ip, r.line))
        })
        .collect();
    assert!(
        ours.is_empty(),
        "foreign lines yielded events:\n{}",
        ours.join("\n")
    );
}

/// `postfix-grok-patterns` smtpd/postscreen samples with an annotated `postfix_client_ip`.
#[test]
fn grok_patterns_client_ip() {
    // Shapes we recognise but deliberately report nothing for.
    const NO_EVENT: &[&str] = &[
        "Anonymous TLS connection",
        "SSL_accept error",
        "bare <LF>",
        "WHITELIST VETO",
        "ALLOWLIST VETO",
    ];
    let dir = corpus_dir().join("postfix-grok-patterns");
    let mut checked = 0;
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("grok dir") {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let daemon = if text.contains("%{POSTFIX_SMTPD}") {
            "smtpd"
        } else if text.contains("%{POSTFIX_POSTSCREEN}") {
            "postscreen"
        } else {
            continue;
        };
        let Some(ip) = yaml_value(&text, "postfix_client_ip:") else {
            continue;
        };
        let Some(data) = yaml_value(&text, "data:") else {
            continue;
        };
        let line = format!("Nov 27 05:30:59 mail postfix/{daemon}[1]: {data}");
        let want: IpAddr = ip.parse().unwrap();
        match parse_one(&line) {
            Some(e) => {
                assert_eq!(e.ip, want, "{}: {line}", path.display());
                assert_eq!(e.service, Service::Postfix);
                checked += 1;
            }
            None if NO_EVENT.iter().any(|p| data.starts_with(p)) => {}
            None => missing.push(line),
        }
    }
    println!("grok samples with client ip checked: {checked}");
    assert!(missing.is_empty(), "no event for:\n{}", missing.join("\n"));
    assert!(checked >= 40, "only {checked} grok samples checked");
}

/// A `key: value` YAML scalar (plain or double-quoted with simple escapes).
fn yaml_value(text: &str, key: &str) -> Option<String> {
    let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
    let v = line.trim_start()[key.len()..].trim();
    let Some(q) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return Some(v.to_owned());
    };
    let mut out = String::new();
    let mut chars = q.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some(o) => out.push(o),
            None => {}
        }
    }
    Some(out)
}
