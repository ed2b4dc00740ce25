//! The one path from log lines to decisions, shared by `detector replay` and the daemon.
//!
//! ```text
//!   lines ──> LineParser ──> Event ──> [clock guard] ──> Engine ──> Decision ──> Sink
//!                             ^                                         │
//!   already-parsed events ────┘              evidence line store <──────┘ (raw text)
//! ```
//!
//! A [`Pipeline`] owns a parser and the engine. It is fed raw lines ([`Pipeline::feed_line`])
//! or events parsed elsewhere ([`Pipeline::feed_event`], used by the replay's time merge),
//! numbers every event with one sequence so evidence maps back to its raw line, and hands each
//! decision, with that raw evidence, to a [`Sink`]. `replay` prints decisions; the daemon's
//! sink writes them into the kernel maps. Nothing here does I/O.
//!
//! Live input goes through a [`ClockGuard`]: an event stamped further ahead of the wall clock
//! than its tolerance is counted and dropped, never given to the engine. The engine's clock is
//! the latest log time it has seen and never runs backwards, so a single trusted far-future
//! line would stop sweeps, reset offences and make `explain` lie for good.
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::{Decision, Engine};
use crate::event::{Event, EventKind};
use crate::parse::{LineParser, Outcome};

mod evidence;

use evidence::LineStore;
pub use evidence::{DEFAULT_TEXT_BYTES, LineAt, LineReader, RawLine};

/// Default tolerance of [`ClockGuard`]: log time may run this far ahead of the wall clock.
pub const DEFAULT_MAX_AHEAD: Duration = Duration::from_secs(300);

/// A decision with its evidence mapped back to the raw log lines.
#[derive(Clone, Debug)]
pub struct DecisionRecord {
    pub decision: Decision,
    /// The raw lines behind the decision's evidence (empty when the pipeline keeps no text).
    pub raw: Vec<RawLine>,
    /// Failed logins the engine counted for the address within the horizon, up to and
    /// including the one that triggered this decision.
    pub attempts_before: u64,
}

/// Where decisions go. Methods other than [`Sink::decision`] have default bodies, so a sink
/// only implements what it cares about.
pub trait Sink {
    fn decision(&mut self, record: &DecisionRecord);

    /// Every event the engine is about to observe, numbered (`event.line`); the daemon's
    /// cluster publisher shares the local ones.
    fn event(&mut self, _event: &Event) {}
}

/// A closure as a sink.
pub struct FnSink<F>(pub F);

impl<F: FnMut(&DecisionRecord)> Sink for FnSink<F> {
    fn decision(&mut self, record: &DecisionRecord) {
        (self.0)(record)
    }
}

/// A sink that keeps nothing.
pub struct NullSink;

impl Sink for NullSink {
    fn decision(&mut self, _: &DecisionRecord) {}
}

/// What became of one line or event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fed {
    /// The engine saw it.
    Event {
        kind: EventKind,
        time: DateTime<Utc>,
    },
    /// A well-formed line that carries nothing we use.
    Ignored,
    /// A line the parser could not make sense of.
    Unparsed,
    /// Stamped further ahead of the wall clock than the guard allows: dropped, not trusted.
    AheadOfClock { ahead: Duration },
}

/// Counters of a pipeline's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PipelineStats {
    /// Events the engine observed.
    pub events: u64,
    /// Events dropped because their time was too far ahead of the wall clock.
    pub ahead_of_clock: u64,
    /// The largest lead over the wall clock among those, in seconds.
    pub max_ahead_s: u64,
    /// Decisions handed to the sink.
    pub decisions: u64,
    /// Citable lines of inputs that cannot be read again (stdin) whose text was dropped to
    /// stay within the text bound before the horizon let them go: decisions citing them show
    /// fewer raw lines (the engine's own evidence summaries are complete).
    pub evidence_text_dropped: u64,
}

/// Drops events whose log time runs ahead of the wall clock by more than `max_ahead`.
pub struct ClockGuard {
    max_ahead: Duration,
    now: Box<dyn Fn() -> DateTime<Utc> + Send>,
}

impl std::fmt::Debug for ClockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClockGuard")
            .field("max_ahead", &self.max_ahead)
            .finish_non_exhaustive()
    }
}

impl ClockGuard {
    /// Against the system's wall clock.
    pub fn wall(max_ahead: Duration) -> Self {
        ClockGuard::with_clock(max_ahead, Utc::now)
    }

    /// Against another clock (tests).
    pub fn with_clock(
        max_ahead: Duration,
        now: impl Fn() -> DateTime<Utc> + Send + 'static,
    ) -> Self {
        ClockGuard {
            max_ahead,
            now: Box::new(now),
        }
    }

    pub fn max_ahead(&self) -> Duration {
        self.max_ahead
    }

    /// How far `time` is ahead of the clock, if that is beyond the tolerance.
    pub fn too_far_ahead(&self, time: DateTime<Utc>) -> Option<Duration> {
        let ahead = (time - (self.now)()).to_std().ok()?;
        (ahead > self.max_ahead).then_some(ahead)
    }
}

/// Parser plus engine, fed lines or events, producing decisions to a sink.
#[derive(Debug)]
pub struct Pipeline {
    parser: LineParser,
    engine: Engine,
    /// Raw text of citable lines (replay); `None` in the daemon, which logs the engine's own
    /// evidence summaries and need not hold hours of log text.
    evidence: Option<LineStore>,
    /// Reads lines kept by reference back from their files (replay).
    reader: Option<Box<dyn LineReader + Send>>,
    guard: Option<ClockGuard>,
    /// Sequence number of the last event: the `line` the engine records in its evidence.
    seq: u64,
    stats: PipelineStats,
}

impl Pipeline {
    /// A pipeline that keeps no raw text and trusts every timestamp (see the builders).
    pub fn new(parser: LineParser, engine: Engine) -> Self {
        Pipeline {
            parser,
            engine,
            evidence: None,
            reader: None,
            guard: None,
            seq: 0,
            stats: PipelineStats::default(),
        }
    }

    /// Keep the lines the engine may cite, so decisions carry their raw evidence: by
    /// reference for lines fed with [`Pipeline::feed_event_at`] (read back through the
    /// [`LineReader`] of [`Pipeline::with_line_reader`]), as text otherwise, at most
    /// [`DEFAULT_TEXT_BYTES`] of it. Bounded by the engine's horizon.
    pub fn with_evidence_text(self) -> Self {
        self.with_evidence_text_bound(DEFAULT_TEXT_BYTES)
    }

    /// [`Pipeline::with_evidence_text`] keeping at most `max_text_bytes` of text.
    pub fn with_evidence_text_bound(mut self, max_text_bytes: usize) -> Self {
        let keep_s = self.engine.config().horizon.as_secs() as i64 + 3600;
        self.evidence = Some(LineStore::new(keep_s, max_text_bytes));
        self
    }

    /// Reads lines kept by reference back from their files when a decision cites them.
    pub fn with_line_reader(mut self, reader: Box<dyn LineReader + Send>) -> Self {
        self.reader = Some(reader);
        self
    }

    /// Drop events too far ahead of the wall clock (live input).
    pub fn with_clock_guard(mut self, guard: ClockGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// For decisions that come from outside the log (an admin's unban, a restore).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    pub fn into_engine(self) -> Engine {
        self.engine
    }

    pub fn parser(&self) -> &LineParser {
        &self.parser
    }

    pub fn stats(&self) -> PipelineStats {
        let mut s = self.stats;
        s.evidence_text_dropped = self.evidence.as_ref().map_or(0, |e| e.text_dropped);
        s
    }

    /// Parses one raw line (without its newline) from `origin`, where it is line `line_no`,
    /// and feeds its event, if any, to the engine.
    pub fn feed_line(
        &mut self,
        origin: &str,
        line_no: u64,
        bytes: &[u8],
        sink: &mut dyn Sink,
    ) -> Fed {
        match self.parser.parse_line(bytes, self.seq + 1) {
            Outcome::Event(event) => {
                let raw = |store: &mut LineStore, seq, time| {
                    let raw = RawLine {
                        file: origin.to_string(),
                        line: line_no,
                        text: String::from_utf8_lossy(bytes).into_owned(),
                    };
                    store.push(seq, time, raw)
                };
                self.feed(event, raw, sink)
            }
            Outcome::Ignored => Fed::Ignored,
            Outcome::Unparsed => Fed::Unparsed,
        }
    }

    /// Counts a line its source had to cut, without parsing it (see
    /// [`crate::parse::ParseStats::truncated`]).
    pub fn skip_truncated(&mut self) -> Fed {
        self.parser.skip_truncated();
        Fed::Unparsed
    }

    /// Feeds an event parsed elsewhere, with the raw line it came from.
    pub fn feed_event(&mut self, event: Event, raw: RawLine, sink: &mut dyn Sink) -> Fed {
        self.feed(event, |store, seq, time| store.push(seq, time, raw), sink)
    }

    /// Feeds an event parsed elsewhere from a line of a file that can be read again: only
    /// where the line lies is kept, its text is read back if a decision cites it.
    pub fn feed_event_at(&mut self, event: Event, at: LineAt, sink: &mut dyn Sink) -> Fed {
        self.feed(event, |store, seq, time| store.push_at(seq, time, at), sink)
    }

    fn feed(
        &mut self,
        mut event: Event,
        keep: impl FnOnce(&mut LineStore, u64, i64),
        sink: &mut dyn Sink,
    ) -> Fed {
        if let Some(ahead) = self
            .guard
            .as_ref()
            .and_then(|g| g.too_far_ahead(event.time))
        {
            self.stats.ahead_of_clock += 1;
            self.stats.max_ahead_s = self.stats.max_ahead_s.max(ahead.as_secs());
            return Fed::AheadOfClock { ahead };
        }
        self.seq += 1;
        // One sequence over every input, so evidence maps back to file and line.
        event.line = self.seq;
        self.stats.events += 1;
        if let Some(store) = &mut self.evidence {
            // Only lines the engine can cite as evidence are kept (bounded by the horizon).
            if Engine::may_cite(&event) {
                keep(store, self.seq, event.time.timestamp());
            }
        }
        sink.event(&event);
        let decisions = self.engine.observe(&event);
        self.deliver(decisions, sink);
        Fed::Event {
            kind: event.kind,
            time: event.time,
        }
    }

    /// Hands decisions made outside [`Pipeline::feed_line`] (e.g. [`Engine::reconcile`] after
    /// a restore) to `sink` the same way.
    pub fn deliver(&mut self, decisions: Vec<Decision>, sink: &mut dyn Sink) {
        for decision in decisions {
            let mut raw = Vec::new();
            if let Some(store) = &self.evidence {
                for e in &decision.evidence {
                    let reader = self.reader.as_deref_mut().map(|r| r as &mut dyn LineReader);
                    raw.extend(store.get(e.line, reader));
                }
            }
            // The engine's own count: de-duplicated, within the horizon, including the
            // failure that triggered the decision.
            let attempts_before = (self.engine.explain(decision.ip).failures.iter())
                .map(|f| u64::from(f.count))
                .sum();
            self.stats.decisions += 1;
            sink.decision(&DecisionRecord {
                decision,
                raw,
                attempts_before,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::engine::{Action, EngineConfig};
    use crate::event::{Protocol, Service};
    use crate::parse::Format;

    fn failure(at: DateTime<Utc>) -> Event {
        Event {
            time: at,
            service: Service::Dovecot,
            kind: EventKind::AuthFailure,
            ip: "198.18.0.9".parse().unwrap(),
            user: Some("x@example.test".into()),
            recipient: None,
            protocol: Some(Protocol::Imap),
            line: 0,
            session: None,
            failures: 1,
            smtp: None,
            peer: None,
        }
    }

    fn raw(n: u64) -> RawLine {
        RawLine {
            file: "t".into(),
            line: n,
            text: format!("line {n}"),
        }
    }

    fn wall() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
    }

    fn guarded() -> Pipeline {
        Pipeline::new(
            LineParser::new(Format::Auto),
            Engine::new(EngineConfig::default()),
        )
        .with_clock_guard(ClockGuard::with_clock(DEFAULT_MAX_AHEAD, wall))
    }

    #[test]
    fn a_far_future_event_is_counted_and_never_reaches_the_engine() {
        let mut p = guarded();
        let far = wall() + chrono::Duration::days(3650);
        let fed = p.feed_event(failure(far), raw(1), &mut NullSink);
        assert!(matches!(fed, Fed::AheadOfClock { .. }), "{fed:?}");
        assert_eq!(p.engine().now(), None, "the engine's clock did not move");
        assert_eq!(p.stats().ahead_of_clock, 1);
        assert!(p.stats().max_ahead_s >= 3650 * 86400);
        // Within the tolerance (clocks of log writers drift a little) is trusted.
        let near = wall() + chrono::Duration::seconds(60);
        assert_eq!(
            p.feed_event(failure(near), raw(2), &mut NullSink),
            Fed::Event {
                kind: EventKind::AuthFailure,
                time: near
            }
        );
        assert_eq!(p.engine().now(), Some(near));
        assert_eq!(p.stats().events, 1);
    }

    #[test]
    fn a_line_stamped_in_the_future_does_not_move_the_clock_through_the_parser_either() {
        let mut p = guarded();
        let line = br#"{"MESSAGE":"auth: Info: passwd-file(x@example.test,198.18.0.9): unknown user","SYSLOG_IDENTIFIER":"dovecot","_PID":"7","__REALTIME_TIMESTAMP":"4102444800000000"}"#;
        let fed = p.feed_line("journal", 1, line, &mut NullSink);
        assert!(matches!(fed, Fed::AheadOfClock { .. }), "{fed:?}");
        assert_eq!(p.engine().now(), None);
    }

    #[test]
    fn without_a_guard_replayed_history_is_taken_as_it_is() {
        let mut p = Pipeline::new(
            LineParser::new(Format::Auto),
            Engine::new(EngineConfig::default()),
        );
        let far = wall() + chrono::Duration::days(3650);
        p.feed_event(failure(far), raw(1), &mut NullSink);
        assert_eq!(p.engine().now(), Some(far));
    }

    #[test]
    fn decisions_carry_their_raw_evidence_and_the_attempt_count() {
        let mut p = Pipeline::new(
            LineParser::new(Format::Auto),
            Engine::new(EngineConfig::default()),
        )
        .with_evidence_text();
        let mut seen = Vec::new();
        let mut sink = FnSink(|d: &DecisionRecord| seen.push(d.clone()));
        let mut fed = 0u64;
        while fed < 50 {
            fed += 1;
            let at = wall() + chrono::Duration::seconds(fed as i64);
            p.feed_event(failure(at), raw(fed), &mut sink);
            if p.stats().decisions > 0 {
                break;
            }
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].decision.action, Action::Ban);
        assert_eq!(seen[0].attempts_before, fed);
        let lines: Vec<u64> = seen[0].raw.iter().map(|r| r.line).collect();
        assert_eq!(lines, (1..=fed).collect::<Vec<_>>());
    }

    /// Two failures ban at once (slow-repeat without the grace period).
    fn no_grace() -> EngineConfig {
        EngineConfig {
            grace_period: Duration::ZERO,
            ..EngineConfig::default()
        }
    }

    /// Reads lines back by reference and counts the reads.
    #[derive(Debug, Default)]
    struct Reads(std::sync::Arc<std::sync::atomic::AtomicU64>);

    impl LineReader for Reads {
        fn read(&mut self, at: &LineAt) -> Option<String> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(format!(
                "read back: {} at {}+{}",
                at.line, at.offset, at.len
            ))
        }
    }

    #[test]
    fn lines_kept_by_reference_are_read_back_only_for_a_decision() {
        let reads = Reads::default();
        let count = reads.0.clone();
        let mut p = Pipeline::new(LineParser::new(Format::Auto), Engine::new(no_grace()))
            .with_evidence_text()
            .with_line_reader(Box::new(reads));
        let mut seen = Vec::new();
        let mut sink = FnSink(|d: &DecisionRecord| seen.push(d.clone()));
        for n in 1..=3u64 {
            let at = LineAt {
                file: "mail.log".into(),
                line: n,
                offset: 100 * n,
                len: 90,
            };
            let t = wall() + chrono::Duration::seconds(n as i64 * 30);
            p.feed_event_at(failure(t), at, &mut sink);
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
        let texts: Vec<&str> = seen[0].raw.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts, ["read back: 1 at 100+90", "read back: 2 at 200+90"]);
        assert_eq!(seen[0].raw[0].file, "mail.log");
        assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn text_that_cannot_be_read_again_is_bounded_and_counted() {
        let mut p = Pipeline::new(LineParser::new(Format::Auto), Engine::new(no_grace()))
            .with_evidence_text_bound(20);
        let mut seen = Vec::new();
        let mut sink = FnSink(|d: &DecisionRecord| seen.push(d.clone()));
        for n in 1..=2u64 {
            let t = wall() + chrono::Duration::seconds(n as i64 * 30);
            // 10 bytes each ("line 1..."): both fit, a third would not.
            let mut r = raw(n);
            r.text = format!("line {n:05}");
            p.feed_event(failure(t), r, &mut sink);
        }
        assert_eq!(p.stats().evidence_text_dropped, 0);
        let lines: Vec<u64> = seen[0].raw.iter().map(|r| r.line).collect();
        assert_eq!(lines, [1, 2]);
        let mut p = Pipeline::new(LineParser::new(Format::Auto), Engine::new(no_grace()))
            .with_evidence_text_bound(15);
        let mut seen = Vec::new();
        let mut sink = FnSink(|d: &DecisionRecord| seen.push(d.clone()));
        for n in 1..=2u64 {
            let t = wall() + chrono::Duration::seconds(n as i64 * 30);
            let mut r = raw(n);
            r.text = format!("line {n:05}");
            p.feed_event(failure(t), r, &mut sink);
        }
        assert_eq!(p.stats().evidence_text_dropped, 1);
        let lines: Vec<u64> = seen[0].raw.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2], "the oldest text went first");
        assert_eq!(
            seen[0].decision.evidence.len(),
            2,
            "the engine's evidence is whole"
        );
    }
}
