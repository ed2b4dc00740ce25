//! Text and HTML renderings of a [`Report`]. Names are attacker-controlled: text replaces
//! control characters (terminal escapes), HTML escapes markup.
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};

use super::Report;

/// Replaces control characters (escape sequences, newlines) with `?`.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Escapes `& < > " '` for HTML text and attribute values; control characters become `?`.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map_or("-".to_string(), |t| {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    })
}

/// Rows of one section: a title, column names and cells (raw, escaped by the renderer).
struct Section {
    title: &'static str,
    columns: &'static [&'static str],
    rows: Vec<Vec<String>>,
}

fn sections(r: &Report) -> Vec<Section> {
    let t = |x| ts(Some(x));
    vec![
        Section {
            title: "Campaigns (mailboxes under attack)",
            columns: &[
                "mailbox",
                "status",
                "failing IPs",
                "probe-linked IPs",
                "until",
            ],
            rows: (r.campaigns.iter())
                .map(|c| {
                    vec![
                        c.mailbox.clone(),
                        c.mailbox_status.to_string(),
                        c.failing_ips.to_string(),
                        c.probe_linked_ips.to_string(),
                        ts(c.attacked_until),
                    ]
                })
                .collect(),
        },
        Section {
            title: "Possible compromises (change these passwords)",
            columns: &["time", "ip", "user"],
            rows: (r.compromises.iter())
                .map(|c| vec![t(c.time), c.ip.to_string(), c.user.clone()])
                .collect(),
        },
        Section {
            title: "Bans per rule",
            columns: &["rule", "bans"],
            rows: (r.bans_per_rule.iter())
                .map(|(k, v)| vec![k.clone(), v.to_string()])
                .collect(),
        },
        Section {
            title: "Bans per origin",
            columns: &["origin", "bans"],
            rows: (r.bans_per_origin.iter())
                .map(|(k, v)| vec![k.clone(), v.to_string()])
                .collect(),
        },
        Section {
            title: "Top networks (/24, /48)",
            columns: &["network", "bans"],
            rows: (r.top_networks.iter())
                .map(|n| vec![n.network.to_string(), n.bans.to_string()])
                .collect(),
        },
        Section {
            title: "Bans",
            columns: &["time", "prefix", "rule", "offence", "until", "note"],
            rows: (r.bans.iter())
                .map(|b| {
                    vec![
                        t(b.time),
                        b.prefix.to_string(),
                        b.rule.clone(),
                        b.offences.to_string(),
                        t(b.until),
                        b.note.clone(),
                    ]
                })
                .collect(),
        },
        Section {
            title: "Spared: shared addresses (many users log in there)",
            columns: &["ip", "users"],
            rows: (r.spared.shared_addresses.iter())
                .map(|s| vec![s.ip.to_string(), s.users.to_string()])
                .collect(),
        },
        Section {
            title: "Spared: known clients with failed logins",
            columns: &["ip", "failures", "logged in as"],
            rows: (r.spared.known_clients.iter())
                .map(|k| vec![k.ip.to_string(), k.failures.to_string(), k.users.join(", ")])
                .collect(),
        },
    ]
}

impl Report {
    /// Plain text for a terminal or a mail body.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "detector report: {} .. {} (log time)",
            ts(self.since),
            ts(self.until)
        );
        let _ = writeln!(
            out,
            "spared since the state began: {} protected (allowlist, host, loopback), {} shared",
            self.spared.protected_total, self.spared.shared_total
        );
        for s in sections(self) {
            let _ = writeln!(out, "\n== {} ==", s.title);
            if s.rows.is_empty() {
                out.push_str("  (none)\n");
                continue;
            }
            let _ = writeln!(out, "  {}", s.columns.join(" | "));
            for row in &s.rows {
                let cells: Vec<String> = row.iter().map(|c| clean(c)).collect();
                let _ = writeln!(out, "  {}", cells.join(" | "));
            }
        }
        out
    }

    /// A standalone HTML page; every value is escaped.
    pub fn to_html(&self) -> String {
        let mut out = String::from(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>detector report</title>\
             </head><body>\n",
        );
        let _ = writeln!(
            out,
            "<h1>detector report</h1>\n<p>{} .. {} (log time). Spared since the state began: \
             {} protected, {} shared.</p>",
            escape_html(&ts(self.since)),
            escape_html(&ts(self.until)),
            self.spared.protected_total,
            self.spared.shared_total
        );
        for s in sections(self) {
            let _ = writeln!(out, "<h2>{}</h2>", escape_html(s.title));
            if s.rows.is_empty() {
                out.push_str("<p>(none)</p>\n");
                continue;
            }
            out.push_str("<table border=\"1\"><tr>");
            for c in s.columns {
                let _ = write!(out, "<th>{}</th>", escape_html(c));
            }
            out.push_str("</tr>\n");
            for row in &s.rows {
                out.push_str("<tr>");
                for c in row {
                    let _ = write!(out, "<td>{}</td>", escape_html(c));
                }
                out.push_str("</tr>\n");
            }
            out.push_str("</table>\n");
        }
        out.push_str("</body></html>\n");
        out
    }
}
