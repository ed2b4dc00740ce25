//! How `detector replay` prints what the pipeline produced: one human block or one JSON
//! object per line. New kinds of output line get a variant in [`JsonLine`] and a method on
//! [`Printer`] (and on [`crate::pipeline::Sink`]).
use std::io::{self, Write};
use std::net::IpAddr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::engine::{Action, Rule};
use crate::pipeline::{DecisionRecord, Sink};

/// The `--json` line of a decision, field order as documented in `detector replay --help`.
#[derive(Debug, Serialize)]
pub struct JsonDecision<'a> {
    pub action: Action,
    pub ip: IpAddr,
    pub prefix: String,
    pub time: String,
    pub rule: Rule,
    pub duration_s: u64,
    pub evidence: Vec<&'a str>,
    pub offence: u32,
    pub dry_run: bool,
    pub note: &'a str,
}

impl<'a> JsonDecision<'a> {
    pub fn of(record: &'a DecisionRecord) -> Self {
        let d = &record.decision;
        JsonDecision {
            action: d.action,
            ip: d.ip,
            prefix: d.prefix.to_string(),
            time: rfc3339(d.time),
            rule: d.rule,
            duration_s: d.duration.as_secs(),
            evidence: record.raw.iter().map(|r| r.text.as_str()).collect(),
            offence: d.offence,
            dry_run: d.dry_run,
            note: &d.note,
        }
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The decision and its raw lines, indented, as `detector replay` prints them.
pub fn write_human(out: &mut impl Write, record: &DecisionRecord) -> io::Result<()> {
    writeln!(out, "{}", record.decision)?;
    for r in &record.raw {
        writeln!(out, "    {}:{}: {}", r.file, r.line, r.text)?;
    }
    Ok(())
}

/// Output style.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Human,
    Json,
}

/// A sink that prints each decision. The first write error is kept (see [`Printer::finish`])
/// and later output is skipped, so a closed pipe does not cost a message per decision.
pub struct Printer<W: Write> {
    out: W,
    style: Style,
    error: Option<io::Error>,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, style: Style) -> Self {
        Printer {
            out,
            style,
            error: None,
        }
    }

    fn write(&mut self, f: impl FnOnce(&mut W, Style) -> io::Result<()>) {
        if self.error.is_none()
            && let Err(e) = f(&mut self.out, self.style)
        {
            self.error = Some(e);
        }
    }

    /// Flushes; the first write error, if any.
    pub fn finish(mut self) -> io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.out.flush()
    }
}

impl<W: Write> Sink for Printer<W> {
    fn decision(&mut self, record: &DecisionRecord) {
        self.write(|out, style| match style {
            Style::Json => {
                let line =
                    serde_json::to_string(&JsonDecision::of(record)).map_err(io::Error::other)?;
                writeln!(out, "{line}")
            }
            Style::Human => write_human(out, record),
        });
    }
}
