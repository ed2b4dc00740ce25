//! Replay: log files through the [`Pipeline`] in log time, with no kernel and no wall clock.
//!
//! Several inputs are merged by event time (k-way merge; each input keeps its own order and
//! its own parser, since year inference and de-duplication follow one log's order), so a
//! Postfix and a Dovecot log can be replayed together. Each decision comes with the log lines
//! behind it: for a file the pipeline keeps only where each citable line lies and reads the
//! cited ones back when a decision is printed, so a replay does not hold the log in memory;
//! for stdin, which cannot be read again, it keeps the text of the most recent citable lines
//! up to [`crate::pipeline::DEFAULT_TEXT_BYTES`] (older evidence is then shown by the
//! engine's own summaries only; the summary says how many lines that was).
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fs::File;
use std::io::BufRead;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::engine::{Action, Engine, Rule};
use crate::event::Event;
use crate::parse::{Format, LineParser, Outcome};
use crate::pipeline::{DecisionRecord, FnSink, LineAt, LineReader, Pipeline, RawLine, Sink};
use crate::source::MAX_LINE_BYTES;
use crate::{Error, Result};

pub mod output;

/// One input: its reader, its own parser. Or, for tests, events that are already parsed.
pub struct Input {
    name: String,
    /// The file, when it can be read again (evidence is then kept by offset).
    path: Option<PathBuf>,
    /// Bytes read so far: the offset of the next line.
    offset: u64,
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
            path: None,
            offset: 0,
            reader,
            parser: LineParser::new(format),
            line_no: 0,
            buf: Vec::new(),
            done: false,
            parsed: None,
        }
    }

    /// A log file: read once in order, cited lines read again by offset when a decision
    /// needs them.
    pub fn file(path: &Path, format: Format) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let reader = Box::new(std::io::BufReader::with_capacity(1 << 16, f));
        let mut input = Input::new(path.display().to_string(), reader, format);
        input.path = Some(path.to_path_buf());
        Ok(input)
    }

    /// An input of already parsed events with their raw lines (line numbers are 1, 2, ...).
    pub fn from_events(name: String, events: Vec<(Event, String)>) -> Self {
        let mut input = Input::new(name, Box::new(std::io::empty()), Format::Auto);
        input.parsed = Some(events.into_iter());
        input
    }

    /// Inputs from in-memory texts (tests and tools).
    pub fn from_texts(texts: Vec<(String, String)>, format: Format) -> Vec<Input> {
        texts
            .into_iter()
            .map(|(name, text)| {
                let reader: Box<dyn BufRead> = Box::new(std::io::Cursor::new(text.into_bytes()));
                Input::new(name, reader, format)
            })
            .collect()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one line of at most [`MAX_LINE_BYTES`] into `buf`, skipping the rest of a longer
    /// one: `(bytes consumed, cut)`, or `None` at the end.
    fn read_capped(&mut self) -> std::io::Result<Option<(u64, bool)>> {
        use std::io::Read;
        let limit = MAX_LINE_BYTES as u64 + 1;
        self.buf.clear();
        let mut n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf)? as u64;
        if n == 0 {
            return Ok(None);
        }
        let cut = self.buf.len() > MAX_LINE_BYTES && self.buf.last() != Some(&b'\n');
        if cut {
            let mut rest = Vec::new();
            loop {
                rest.clear();
                let m = (&mut self.reader)
                    .take(limit)
                    .read_until(b'\n', &mut rest)?;
                n += m as u64;
                if m == 0 || rest.last() == Some(&b'\n') {
                    break;
                }
            }
        }
        Ok(Some((n, cut)))
    }

    /// The next event and its raw line, skipping lines that carry none.
    fn next_event(&mut self, stats: &mut ReplayStats) -> Result<Option<Head>> {
        if let Some(parsed) = &mut self.parsed {
            return Ok(parsed.next().map(|(event, text)| {
                self.line_no += 1;
                stats.lines += 1;
                stats.events += 1;
                stats.bytes += text.len() as u64 + 1;
                Head::new(event, Line::Text(text), self.line_no)
            }));
        }
        while !self.done {
            // The same cap as the live sources: a cut line is counted, never parsed (what is
            // left of it could end on a client-written field that looks like the server's).
            let n = self.read_capped().map_err(|e| Error::io(&self.name, e))?;
            let Some((n, cut)) = n else {
                self.done = true;
                break;
            };
            stats.bytes += n;
            let offset = self.offset;
            self.offset += n;
            self.line_no += 1;
            stats.lines += 1;
            if cut {
                stats.truncated += 1;
                continue;
            }
            let line = trim_eol(&self.buf);
            match self.parser.parse_line(line, self.line_no) {
                Outcome::Event(event) => {
                    stats.events += 1;
                    let line = match self.path {
                        Some(_) => Line::At {
                            offset,
                            len: line.len() as u32,
                        },
                        None => Line::Text(String::from_utf8_lossy(line).into_owned()),
                    };
                    return Ok(Some(Head::new(event, line, self.line_no)));
                }
                Outcome::Ignored => {}
                Outcome::Unparsed => stats.unparsed += 1,
            }
        }
        Ok(None)
    }
}

/// Convenience for tests and tools: inputs from in-memory texts.
pub fn inputs_from_texts(texts: Vec<(String, String)>, format: Format) -> Vec<Input> {
    Input::from_texts(texts, format)
}

fn trim_eol(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = b {
        b = rest;
    }
    b
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub bytes: u64,
    pub lines: u64,
    pub events: u64,
    pub unparsed: u64,
    /// Lines longer than [`MAX_LINE_BYTES`]: counted, not parsed.
    pub truncated: u64,
    /// Citable stdin lines whose text was let go to bound memory (see the module docs).
    pub evidence_text_dropped: u64,
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub stats: ReplayStats,
    pub decisions: Vec<DecisionRecord>,
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
        if s.evidence_text_dropped > 0 {
            out += &format!(
                "  stdin cannot be read again: the text of {} older citable lines was let go \
                 (the newest {} MiB are kept); their decisions show fewer raw lines\n",
                s.evidence_text_dropped,
                crate::pipeline::DEFAULT_TEXT_BYTES >> 20
            );
        }
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

/// An event's raw line: where it lies in its file, or its text (stdin, parsed events).
enum Line {
    At { offset: u64, len: u32 },
    Text(String),
}

/// Heap entry: the next event of one input, ordered by time, then input index (stable).
struct Head {
    time: DateTime<Utc>,
    input: usize,
    event: Event,
    line: Line,
    line_no: u64,
}

impl Head {
    fn new(event: Event, line: Line, line_no: u64) -> Self {
        Head {
            time: event.time,
            input: 0,
            event,
            line,
            line_no,
        }
    }

    fn from(mut self, input: usize) -> Self {
        self.input = input;
        self
    }
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

/// Reads cited lines back from the replayed files (opened once, on first use).
#[derive(Debug)]
struct FileLines {
    paths: HashMap<Arc<str>, PathBuf>,
    open: HashMap<Arc<str>, File>,
}

impl LineReader for FileLines {
    fn read(&mut self, at: &LineAt) -> Option<String> {
        use std::os::unix::fs::FileExt;
        if !self.open.contains_key(&at.file) {
            let f = File::open(self.paths.get(&at.file)?).ok()?;
            self.open.insert(at.file.clone(), f);
        }
        let f = self.open.get(&at.file)?;
        let mut buf = vec![0u8; at.len as usize];
        f.read_exact_at(&mut buf, at.offset).ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// Keeps every decision for the report and passes it on.
struct Collect<'a> {
    inner: &'a mut dyn Sink,
    decisions: Vec<DecisionRecord>,
    attempts_before_ban: BTreeMap<IpAddr, u64>,
}

impl Sink for Collect<'_> {
    fn decision(&mut self, record: &DecisionRecord) {
        if record.decision.action == Action::Ban {
            self.attempts_before_ban
                .entry(record.decision.ip)
                .or_insert(record.attempts_before);
        }
        self.inner.decision(record);
        self.decisions.push(record.clone());
    }
}

/// Replays `inputs` through `engine` (usually `Engine::new(cfg)`); calls `on_decision` for
/// each decision as it happens and `on_progress` with the bytes read so far.
pub fn replay(
    inputs: Vec<Input>,
    engine: Engine,
    on_decision: impl FnMut(&DecisionRecord),
    on_progress: impl FnMut(u64),
) -> Result<ReplayReport> {
    replay_into(inputs, engine, &mut FnSink(on_decision), on_progress)
}

/// [`replay`] with any [`Sink`].
pub fn replay_into(
    mut inputs: Vec<Input>,
    engine: Engine,
    sink: &mut dyn Sink,
    mut on_progress: impl FnMut(u64),
) -> Result<ReplayReport> {
    let files: HashMap<Arc<str>, PathBuf> = (inputs.iter())
        .filter_map(|i| Some((Arc::from(i.name.as_str()), i.path.clone()?)))
        .collect();
    let names: Vec<Arc<str>> = inputs.iter().map(|i| Arc::from(i.name.as_str())).collect();
    let mut pipeline = Pipeline::new(LineParser::new(Format::Auto), engine)
        .with_evidence_text()
        .with_line_reader(Box::new(FileLines {
            paths: files,
            open: HashMap::new(),
        }));
    let mut stats = ReplayStats::default();
    let mut collect = Collect {
        inner: sink,
        decisions: Vec::new(),
        attempts_before_ban: BTreeMap::new(),
    };
    let mut heap = BinaryHeap::new();
    for (i, input) in inputs.iter_mut().enumerate() {
        if let Some(head) = input.next_event(&mut stats)? {
            heap.push(head.from(i));
        }
    }
    let mut last_progress = 0u64;
    while let Some(head) = heap.pop() {
        let input = head.input;
        match head.line {
            Line::At { offset, len } => {
                let at = LineAt {
                    file: names[input].clone(),
                    line: head.line_no,
                    offset,
                    len,
                };
                pipeline.feed_event_at(head.event, at, &mut collect);
            }
            Line::Text(text) => {
                let raw = RawLine {
                    file: inputs[input].name.clone(),
                    line: head.line_no,
                    text,
                };
                pipeline.feed_event(head.event, raw, &mut collect);
            }
        }
        if let Some(next) = inputs[input].next_event(&mut stats)? {
            heap.push(next.from(input));
        }
        if stats.bytes - last_progress > 1 << 20 {
            last_progress = stats.bytes;
            on_progress(last_progress);
        }
    }
    // Bans still held for the grace period at the end of the log: no success came.
    let held = pipeline.engine_mut().flush_pending();
    pipeline.deliver(held, &mut collect);
    // Lines after the last event of each input still count in the stats.
    for input in &mut inputs {
        while input.next_event(&mut stats)?.is_some() {}
    }
    on_progress(stats.bytes);
    stats.evidence_text_dropped = pipeline.stats().evidence_text_dropped;
    Ok(ReplayReport {
        stats,
        decisions: collect.decisions,
        attempts_before_ban: collect.attempts_before_ban,
        engine: Some(pipeline.into_engine()),
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::output::JsonDecision;
    use super::*;
    use crate::engine::EngineConfig;
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

    /// A line over the one limit is counted and not parsed, and the lines after it still are.
    #[test]
    fn overlong_lines_are_counted_not_parsed() {
        let good = "2025-06-01T10:00:00+00:00 mx dovecot: auth: passwd-file(x@example.test,198.18.0.7): unknown user";
        let long = format!("{good}{}\n", " ".repeat(MAX_LINE_BYTES));
        let text = format!("{long}{good}\n");
        let inputs = inputs_from_texts(vec![("log".into(), text)], Format::Auto);
        let engine = Engine::new(EngineConfig::default());
        let report = replay(inputs, engine, |_| {}, |_| {}).unwrap();
        assert_eq!(report.stats.lines, 2);
        assert_eq!(report.stats.truncated, 1);
        assert_eq!(report.stats.events, 1, "{:?}", report.stats);
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
        assert!(
            !d.decision.note.contains("read first"),
            "merged by time, the probe comes first: {}",
            d.decision.note
        );
        let raw: Vec<(&str, u64)> = d.raw.iter().map(|r| (r.file.as_str(), r.line)).collect();
        assert_eq!(
            raw,
            vec![("postfix.log", 1), ("postfix.log", 2), ("dovecot.log", 1)]
        );
        assert_eq!(report.attempts_before_ban[&d.decision.ip], 1);
        assert_eq!(report.stats.events, 4);
        let json = serde_json::to_string(&JsonDecision::of(d)).unwrap();
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
    fn a_guessed_password_is_an_alert_line_in_json() {
        // Probe, then a successful login as the probed address: possible compromise.
        let mut ok = ev(3, EventKind::AuthSuccess, Some("x@example.test"), None);
        ok.service = Service::Dovecot;
        let postfix = vec![
            (
                ev(0, EventKind::Rcpt, None, Some("x@example.test")),
                "postfix: RCPT".to_string(),
            ),
            (
                ev(1, EventKind::TransactionAborted, None, None),
                "postfix: disconnect".to_string(),
            ),
            (ok, "dovecot: Logged in".to_string()),
        ];
        let inputs = vec![Input::from_events("mail.log".into(), postfix)];
        let report = replay(inputs, Engine::new(EngineConfig::default()), |_| {}, |_| {}).unwrap();
        let alert = (report.decisions.iter())
            .find(|d| d.decision.action == Action::Alert)
            .expect("an alert");
        let mut out = Vec::new();
        let mut printer = output::Printer::new(&mut out, output::Style::Json);
        printer.decision(alert);
        printer.finish().unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.starts_with(
                r#"{"action":"alert","kind":"possible-compromise","user":"x@example.test","ip":"198.18.0.2","time":"2026-11-18T11:06:43Z","evidence":["postfix: RCPT","postfix: disconnect","dovecot: Logged in"]"#
            ),
            "{line}"
        );
        assert!(
            (report.decisions.iter())
                .any(|d| d.decision.action == Action::Ban
                    && d.decision.rule == Rule::PossibleCompromise),
            "and a ban"
        );
    }

    #[test]
    fn without_the_merge_the_login_would_come_first() {
        // Guard for the test above: in file order (dovecot first) the engine sees the login
        // before its probe; only the out-of-order rule catches it, and its note says so.
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
        assert_eq!(report.decisions.len(), 1, "{:?}", report.decisions);
        let note = &report.decisions[0].decision.note;
        assert!(note.contains("the login was read first"), "{note}");
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

    /// A file input keeps its citable lines by offset and reads the cited ones back.
    #[test]
    fn a_file_input_cites_lines_read_back_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.log");
        let lines = [
            "2025-06-01T10:00:00+00:00 mx dovecot: auth: passwd-file(x@example.test,198.18.0.7): unknown user",
            "2025-06-01T10:00:01+00:00 mx postfix/anvil[1]: statistics: nothing",
            "2025-06-01T10:05:00+00:00 mx dovecot: auth: passwd-file(y@example.test,198.18.0.7): unknown user",
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let inputs = vec![Input::file(&path, Format::Auto).unwrap()];
        let report = replay(inputs, Engine::new(EngineConfig::default()), |_| {}, |_| {}).unwrap();
        let ban = (report.decisions.iter())
            .find(|d| d.decision.action == Action::Ban)
            .expect("a ban");
        let raw: Vec<(u64, &str)> = ban.raw.iter().map(|r| (r.line, r.text.as_str())).collect();
        assert_eq!(raw, [(1, lines[0]), (3, lines[2])]);
        assert_eq!(ban.raw[0].file, path.display().to_string());
    }
}
