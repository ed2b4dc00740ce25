//! `detector replay`: runs the engine over log files in log time and prints its decisions.
//! Touches no kernel map. Several files are merged by event time (k-way merge; each file keeps
//! its own order), so a Postfix and a Dovecot log can be replayed together.
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::engine::{Action, Decision, Engine, EngineConfig, Rule};
use crate::event::Event;
use crate::parse::{Format, LineParser, Outcome};
use crate::{Error, Result};

/// Replay logs through the correlation engine, in log time, without touching the kernel.
///
/// Prints one line per decision (or one JSON object per line with --json) on stdout and a
/// summary on stderr: bans per rule and how many failed logins each banned address made
/// before its ban.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Log files to replay, merged by time; `-` or nothing reads standard input.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// TOML file whose `[engine]` table sets the thresholds (defaults otherwise).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// One JSON object per decision and line:
    /// {"action","ip","prefix","time","rule","duration_s","evidence":[raw lines],...}.
    #[arg(long)]
    pub json: bool,
    /// Input envelope.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// After the replay, explain what the engine knows about this address (repeatable); the
    /// explanation goes to stderr after the summary.
    #[arg(long, value_name = "IP")]
    pub explain: Vec<IpAddr>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            EngineConfig::from_toml_str(&text)?
        }
        None => EngineConfig::default(),
    };
    let mut inputs = Vec::new();
    let mut total_bytes = 0u64;
    let files = if args.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.files.clone()
    };
    for path in files {
        if path.as_os_str() == "-" {
            inputs.push(Input::new(
                "-".into(),
                Box::new(BufReader::new(std::io::stdin())),
                args.format,
            ));
        } else {
            let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
            total_bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            let name = path.display().to_string();
            inputs.push(Input::new(
                name,
                Box::new(BufReader::with_capacity(1 << 16, f)),
                args.format,
            ));
        }
    }
    let progress = progress_bar(total_bytes);
    let mut stdout = std::io::stdout().lock();
    let json = args.json;
    let mut write_err = None;
    let report = replay(
        inputs,
        Engine::new(cfg),
        |d: &ReplayedDecision| {
            if write_err.is_some() {
                return;
            }
            let r = if json {
                serde_json::to_string(&d.json())
                    .map_err(std::io::Error::other)
                    .and_then(|s| writeln!(stdout, "{s}"))
            } else {
                write_human(&mut stdout, d)
            };
            if let Err(e) = r {
                write_err = Some(e);
            }
        },
        |bytes| {
            if let Some(p) = &progress {
                p.set_position(bytes);
            }
        },
    )?;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    if let Some(e) = write_err {
        // A closed pipe (`| head`) is not an error worth a message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(Error::io("stdout", e));
        }
    }
    eprint!("{}", report.summary());
    if let Some(engine) = &report.engine {
        for ip in &args.explain {
            eprint!("{}", engine.explain(*ip));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One input: its reader, its own parser (year inference and de-duplication are per source).
/// Or, for tests, events that are already parsed.
pub struct Input {
    name: String,
    reader: Box<dyn BufRead>,
    parser: LineParser,
    line_no: u64,
    buf: Vec<u8>,
    done: bool,
    parsed: Option<std::vec::IntoIter<(Event, String)>>,
}

impl Input {
    pub fn new(name: String, reader: Box<dyn BufRead>, format: Format) -> Self {
        Input {
            name,
            reader,
            parser: LineParser::new(format),
            line_no: 0,
            buf: Vec::new(),
            done: false,
            parsed: None,
        }
    }

    /// An input of already parsed events with their raw lines (line numbers are 1, 2, ...).
    pub fn from_events(name: String, events: Vec<(Event, String)>) -> Self {
        let mut input = Input::new(name, Box::new(std::io::empty()), Format::Auto);
        input.parsed = Some(events.into_iter());
        input
    }

    /// The next event and its raw line, skipping lines that carry none.
    fn next_event(&mut self, stats: &mut ReplayStats) -> Result<Option<(Event, String, u64)>> {
        if let Some(parsed) = &mut self.parsed {
            return Ok(parsed.next().map(|(ev, text)| {
                self.line_no += 1;
                stats.lines += 1;
                stats.events += 1;
                stats.bytes += text.len() as u64 + 1;
                (ev, text, self.line_no)
            }));
        }
        while !self.done {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| Error::io(&self.name, e))?;
            if n == 0 {
                self.done = true;
                break;
            }
            stats.bytes += n as u64;
            self.line_no += 1;
            stats.lines += 1;
            let line = trim_eol(&self.buf);
            match self.parser.parse_line(line, self.line_no) {
                Outcome::Event(ev) => {
                    stats.events += 1;
                    return Ok(Some((
                        ev,
                        String::from_utf8_lossy(line).into_owned(),
                        self.line_no,
                    )));
                }
                Outcome::Ignored => {}
                Outcome::Unparsed => stats.unparsed += 1,
            }
        }
        Ok(None)
    }
}

fn trim_eol(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = b {
        b = rest;
    }
    b
}

/// A raw log line behind a decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RawLine {
    pub file: String,
    pub line: u64,
    pub text: String,
}

/// A decision with its evidence mapped back to the raw log lines.
#[derive(Clone, Debug)]
pub struct ReplayedDecision {
    pub decision: Decision,
    pub raw: Vec<RawLine>,
    /// Failed logins the engine counted for the address within the horizon, up to and
    /// including the one that triggered this decision.
    pub attempts_before: u64,
}

/// The `--json` line: field order as documented.
#[derive(Serialize)]
struct JsonDecision<'a> {
    action: Action,
    ip: IpAddr,
    prefix: String,
    time: String,
    rule: Rule,
    duration_s: u64,
    evidence: Vec<&'a str>,
    offence: u32,
    dry_run: bool,
    note: &'a str,
}

impl ReplayedDecision {
    fn json(&self) -> JsonDecision<'_> {
        let d = &self.decision;
        JsonDecision {
            action: d.action,
            ip: d.ip,
            prefix: d.prefix.to_string(),
            time: rfc3339(d.time),
            rule: d.rule,
            duration_s: d.duration.as_secs(),
            evidence: self.raw.iter().map(|r| r.text.as_str()).collect(),
            offence: d.offence,
            dry_run: d.dry_run,
            note: &d.note,
        }
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn write_human(out: &mut impl Write, d: &ReplayedDecision) -> std::io::Result<()> {
    writeln!(out, "{}", d.decision)?;
    for r in &d.raw {
        writeln!(out, "    {}:{}: {}", r.file, r.line, r.text)?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub bytes: u64,
    pub lines: u64,
    pub events: u64,
    pub unparsed: u64,
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub stats: ReplayStats,
    pub decisions: Vec<ReplayedDecision>,
    /// First ban per address: failed logins it made up to and including the banning one.
    pub attempts_before_ban: BTreeMap<IpAddr, u64>,
    /// The engine after the last event (for `explain` and snapshots).
    pub engine: Option<Engine>,
}

impl ReplayReport {
    pub fn bans_per_rule(&self) -> BTreeMap<Rule, usize> {
        let mut m = BTreeMap::new();
        for d in self
            .decisions
            .iter()
            .filter(|d| d.decision.action == Action::Ban)
        {
            *m.entry(d.decision.rule).or_insert(0) += 1;
        }
        m
    }

    /// The human summary printed on stderr.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        let mut out = format!(
            "replay: {} lines, {} events, {} unparsed; {} decisions\n",
            s.lines,
            s.events,
            s.unparsed,
            self.decisions.len()
        );
        for (rule, n) in self.bans_per_rule() {
            out += &format!("  bans by {rule}: {n}\n");
        }
        if !self.attempts_before_ban.is_empty() {
            let mut hist: BTreeMap<u64, usize> = BTreeMap::new();
            for n in self.attempts_before_ban.values() {
                *hist.entry(*n).or_insert(0) += 1;
            }
            out += "  failed logins up to the first ban: ";
            out += &hist
                .iter()
                .map(|(n, ips)| format!("{n}: {ips} IPs"))
                .collect::<Vec<_>>()
                .join(", ");
            out += "\n";
            for (ip, n) in &self.attempts_before_ban {
                out += &format!("  {ip}: {n} failed logins up to its ban\n");
            }
        }
        out
    }
}

/// Raw text of the event lines still within reach of evidence, by global sequence number.
struct LineStore {
    keep_s: i64,
    lines: VecDeque<(u64, i64, RawLine)>,
}

impl LineStore {
    fn push(&mut self, seq: u64, time: i64, raw: RawLine) {
        self.lines.push_back((seq, time, raw));
        // Evidence never reaches beyond the horizon (plus the engine's sweep interval).
        while self
            .lines
            .front()
            .is_some_and(|(_, t, _)| *t < time.saturating_sub(self.keep_s))
        {
            self.lines.pop_front();
        }
    }

    fn get(&self, seq: u64) -> Option<&RawLine> {
        let i = self.lines.binary_search_by_key(&seq, |(s, _, _)| *s).ok()?;
        Some(&self.lines[i].2)
    }
}

/// Heap entry: the next event of one input, ordered by time, then input index (stable).
struct Head {
    time: DateTime<Utc>,
    input: usize,
    event: Event,
    text: String,
    line_no: u64,
}

impl PartialEq for Head {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.input) == (o.time, o.input)
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Head {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: reverse for earliest first.
        (o.time, o.input).cmp(&(self.time, self.input))
    }
}

/// Replays `inputs` through `engine` (usually `Engine::new(cfg)`); calls `on_decision` for
/// each decision as it happens and `on_progress` with the bytes read so far.
pub fn replay(
    mut inputs: Vec<Input>,
    mut engine: Engine,
    mut on_decision: impl FnMut(&ReplayedDecision),
    mut on_progress: impl FnMut(u64),
) -> Result<ReplayReport> {
    let keep_s = engine.config().horizon.as_secs() as i64 + 3600;
    let mut report = ReplayReport::default();
    let mut store = LineStore {
        keep_s,
        lines: VecDeque::new(),
    };
    let mut heap = BinaryHeap::new();
    for (i, input) in inputs.iter_mut().enumerate() {
        if let Some((event, text, line_no)) = input.next_event(&mut report.stats)? {
            heap.push(Head {
                time: event.time,
                input: i,
                event,
                text,
                line_no,
            });
        }
    }
    let mut seq = 0u64;
    let mut last_progress = 0u64;
    while let Some(head) = heap.pop() {
        let Head {
            input,
            mut event,
            text,
            line_no,
            ..
        } = head;
        seq += 1;
        // The engine sees a global sequence number, so evidence maps back to file and line.
        event.line = seq;
        // Only lines the engine can cite as evidence are kept (bounded by the horizon).
        if Engine::may_cite(&event) {
            store.push(
                seq,
                event.time.timestamp(),
                RawLine {
                    file: inputs[input].name.clone(),
                    line: line_no,
                    text,
                },
            );
        }
        for decision in engine.observe(&event) {
            let raw = decision
                .evidence
                .iter()
                .filter_map(|e| store.get(e.line).cloned())
                .collect();
            // The engine's own count: de-duplicated, within the horizon, including the
            // failure that triggered the decision.
            let attempts_before = engine
                .explain(decision.ip)
                .failures
                .iter()
                .map(|f| u64::from(f.count))
                .sum();
            if decision.action == Action::Ban {
                report
                    .attempts_before_ban
                    .entry(decision.ip)
                    .or_insert(attempts_before);
            }
            let d = ReplayedDecision {
                decision,
                raw,
                attempts_before,
            };
            on_decision(&d);
            report.decisions.push(d);
        }
        if let Some((event, text, line_no)) = inputs[input].next_event(&mut report.stats)? {
            heap.push(Head {
                time: event.time,
                input,
                event,
                text,
                line_no,
            });
        }
        if report.stats.bytes - last_progress > 1 << 20 {
            last_progress = report.stats.bytes;
            on_progress(last_progress);
        }
    }
    // Lines after the last event of each input still count in the stats.
    for input in &mut inputs {
        while input.next_event(&mut report.stats)?.is_some() {}
    }
    on_progress(report.stats.bytes);
    report.engine = Some(engine);
    Ok(report)
}

/// A progress bar on stderr for inputs over 16 MiB, only when stderr is a terminal.
fn progress_bar(total_bytes: u64) -> Option<indicatif::ProgressBar> {
    if total_bytes < 16 << 20 || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total_bytes);
    let style =
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {eta} left")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

/// Convenience for tests and tools: inputs from in-memory texts.
pub fn inputs_from_texts(texts: Vec<(String, String)>, format: Format) -> Vec<Input> {
    texts
        .into_iter()
        .map(|(name, text)| {
            let reader: Box<dyn BufRead> = Box::new(std::io::Cursor::new(text.into_bytes()));
            Input::new(name, reader, format)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::event::{EventKind, Protocol, Service, SmtpCounters};

    fn ev(at: i64, kind: EventKind, user: Option<&str>, rcpt: Option<&str>) -> Event {
        Event {
            time: Utc.timestamp_opt(1_795_000_000 + at, 0).unwrap(),
            service: Service::Postfix,
            kind,
            ip: "198.18.0.2".parse().unwrap(),
            user: user.map(Into::into),
            recipient: rcpt.map(Into::into),
            protocol: Some(Protocol::Imap),
            line: 0,
            session: Some("pid:1".into()),
            failures: u32::from(matches!(
                kind,
                EventKind::AuthFailure | EventKind::AuthUnknownUser
            )),
            smtp: (kind == EventKind::TransactionAborted).then_some(SmtpCounters {
                rcpt_ok: 1,
                quit: true,
                ..SmtpCounters::default()
            }),
            peer: None,
        }
    }

    /// Postfix has the probe, Dovecot the login: only the merge by time puts them in order.
    fn inputs() -> Vec<Input> {
        let dovecot = vec![(
            ev(3, EventKind::AuthUnknownUser, Some("x@example.test"), None),
            "dovecot line 1: unknown user".to_string(),
        )];
        let postfix = vec![
            (
                ev(0, EventKind::Rcpt, None, Some("x@example.test")),
                "postfix line 1: RCPT".to_string(),
            ),
            (
                ev(1, EventKind::TransactionAborted, None, None),
                "postfix line 2: disconnect".to_string(),
            ),
            (
                ev(9, EventKind::Other, None, None),
                "postfix line 3: later".to_string(),
            ),
        ];
        vec![
            Input::from_events("dovecot.log".into(), dovecot),
            Input::from_events("postfix.log".into(), postfix),
        ]
    }

    #[test]
    fn merges_inputs_by_time_and_maps_evidence_to_raw_lines() {
        let mut seen = Vec::new();
        let report = replay(
            inputs(),
            Engine::new(EngineConfig::default()),
            |d| seen.push(d.decision.rule),
            |_| {},
        )
        .unwrap();
        assert_eq!(seen, vec![Rule::ProbeLogin]);
        let d = &report.decisions[0];
        let raw: Vec<(&str, u64)> = d.raw.iter().map(|r| (r.file.as_str(), r.line)).collect();
        assert_eq!(
            raw,
            vec![("postfix.log", 1), ("postfix.log", 2), ("dovecot.log", 1)]
        );
        assert_eq!(report.attempts_before_ban[&d.decision.ip], 1);
        assert_eq!(report.stats.events, 4);
        let json = serde_json::to_string(&d.json()).unwrap();
        assert!(
            json.starts_with(
                r#"{"action":"ban","ip":"198.18.0.2","prefix":"198.18.0.2/32","time":"2026-11-18T11:06:43Z","rule":"probe-login","duration_s":3600,"evidence":["postfix line 1: RCPT","postfix line 2: disconnect","dovecot line 1: unknown user"]"#
            ),
            "{json}"
        );
        assert!(
            report.summary().contains("bans by probe-login: 1"),
            "{}",
            report.summary()
        );
    }

    #[test]
    fn without_the_merge_the_login_would_come_first() {
        // Guard for the test above: in file order (dovecot first) probe-login cannot fire.
        let mut all: Vec<(Event, String)> = Vec::new();
        for input in inputs() {
            all.extend(input.parsed.unwrap());
        }
        let c = EngineConfig {
            slow_repeat_score: 100,
            ..EngineConfig::default()
        };
        let report = replay(
            vec![Input::from_events("concat".into(), all)],
            Engine::new(c),
            |_| {},
            |_| {},
        )
        .unwrap();
        assert!(report.decisions.is_empty());
    }

    #[test]
    fn reads_text_lines_and_counts_them() {
        let inputs = inputs_from_texts(
            vec![("a".into(), "one\r\ntwo\n\nthree".into())],
            Format::Auto,
        );
        let report = replay(inputs, Engine::new(EngineConfig::default()), |_| {}, |_| {}).unwrap();
        assert_eq!(report.stats.lines, 4);
        assert_eq!(report.stats.bytes, 15);
    }
}
