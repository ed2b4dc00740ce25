//! The lines the engine may cite, kept for as long as it may cite them: by reference (file
//! and byte offset) when the input is a file that can be read again, as text otherwise.
use std::collections::VecDeque;
use std::sync::Arc;

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

/// Where a line lies in a file that can be read again: `len` bytes at `offset` (without the
/// line end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineAt {
    pub file: Arc<str>,
    pub line: u64,
    pub offset: u64,
    pub len: u32,
}

/// Reads a line back from its file when a decision cites it (replay of files).
pub trait LineReader: std::fmt::Debug {
    /// The line's text, or `None` when it cannot be read (the file changed or went away).
    fn read(&mut self, at: &LineAt) -> Option<String>;
}

/// Default bound on the text kept for inputs that cannot be read again (stdin): the most
/// recent citable lines up to this many bytes.
pub const DEFAULT_TEXT_BYTES: usize = 64 << 20;

#[derive(Debug)]
enum Kept {
    At(LineAt),
    Text {
        file: Arc<str>,
        line: u64,
        text: Box<str>,
    },
}

/// Citable lines by the pipeline's sequence number (the `line` the engine records).
#[derive(Debug)]
pub(super) struct LineStore {
    /// Lines older than this (log time, seconds) before the newest one are dropped.
    keep_s: i64,
    lines: VecDeque<(u64, i64, Kept)>,
    /// Bytes of text kept, and the bound.
    text_bytes: usize,
    max_text_bytes: usize,
    /// Text lines dropped to stay within the bound before the horizon let them go.
    pub(super) text_dropped: u64,
    /// The last file name handed in, shared by its lines.
    last_file: Option<Arc<str>>,
}

impl LineStore {
    pub(super) fn new(keep_s: i64, max_text_bytes: usize) -> Self {
        LineStore {
            keep_s,
            lines: VecDeque::new(),
            text_bytes: 0,
            max_text_bytes,
            text_dropped: 0,
            last_file: None,
        }
    }

    fn file(&mut self, name: &str) -> Arc<str> {
        match &self.last_file {
            Some(f) if **f == *name => f.clone(),
            _ => {
                let f: Arc<str> = name.into();
                self.last_file = Some(f.clone());
                f
            }
        }
    }

    pub(super) fn push(&mut self, seq: u64, time: i64, raw: RawLine) {
        let file = self.file(&raw.file);
        self.text_bytes += raw.text.len();
        self.keep(
            seq,
            time,
            Kept::Text {
                file,
                line: raw.line,
                text: raw.text.into_boxed_str(),
            },
        );
        // Text that cannot be read again is bounded: the oldest goes first.
        while self.text_bytes > self.max_text_bytes {
            let Some(i) = (self.lines.iter()).position(|(_, _, k)| matches!(k, Kept::Text { .. }))
            else {
                break;
            };
            if let Some((_, _, Kept::Text { text, .. })) = self.lines.remove(i) {
                self.text_bytes -= text.len();
                self.text_dropped += 1;
            }
        }
    }

    pub(super) fn push_at(&mut self, seq: u64, time: i64, at: LineAt) {
        self.keep(seq, time, Kept::At(at));
    }

    fn keep(&mut self, seq: u64, time: i64, kept: Kept) {
        self.lines.push_back((seq, time, kept));
        // Evidence never reaches beyond the horizon (plus the engine's sweep interval).
        while self
            .lines
            .front()
            .is_some_and(|(_, t, _)| *t < time.saturating_sub(self.keep_s))
        {
            if let Some((_, _, Kept::Text { text, .. })) = self.lines.pop_front() {
                self.text_bytes -= text.len();
            }
        }
    }

    /// The raw line of evidence `seq`, read back through `reader` when it is kept by
    /// reference.
    pub(super) fn get(&self, seq: u64, reader: Option<&mut dyn LineReader>) -> Option<RawLine> {
        let i = self.lines.binary_search_by_key(&seq, |(s, _, _)| *s).ok()?;
        match &self.lines[i].2 {
            Kept::Text { file, line, text } => Some(RawLine {
                file: file.to_string(),
                line: *line,
                text: text.to_string(),
            }),
            Kept::At(at) => Some(RawLine {
                file: at.file.to_string(),
                line: at.line,
                text: reader?.read(at)?,
            }),
        }
    }
}
