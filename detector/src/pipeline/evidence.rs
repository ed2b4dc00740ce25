//! The raw text of the lines the engine may cite, kept for as long as it may cite them.
use std::collections::VecDeque;

use serde::Serialize;

/// A raw log line behind a decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RawLine {
    /// The input it came from (a file name, or a source id such as `file:/var/log/mail.log`).
    pub file: String,
    /// 1-based line number within that input.
    pub line: u64,
    pub text: String,
}

/// Raw text of the event lines still within reach of evidence, by the pipeline's sequence
/// number (the `line` the engine records in its evidence).
#[derive(Debug)]
pub(super) struct LineStore {
    /// Lines older than this (log time, seconds) before the newest one are dropped.
    keep_s: i64,
    lines: VecDeque<(u64, i64, RawLine)>,
}

impl LineStore {
    pub(super) fn new(keep_s: i64) -> Self {
        LineStore {
            keep_s,
            lines: VecDeque::new(),
        }
    }

    pub(super) fn push(&mut self, seq: u64, time: i64, raw: RawLine) {
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

    pub(super) fn get(&self, seq: u64) -> Option<&RawLine> {
        let i = self.lines.binary_search_by_key(&seq, |(s, _, _)| *s).ok()?;
        Some(&self.lines[i].2)
    }
}
