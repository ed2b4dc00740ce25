//! Log sources: the systemd journal, plain log files and standard input.
//!
//! A source knows bytes and positions, nothing about Postfix or Dovecot. Each configured source
//! runs as one tokio task and hands out [`SourceLine`]s, one per log line, in order.
//!
//! # Contract with the daemon
//!
//! ```text
//!  let (tx, mut rx) = tokio::sync::mpsc::channel(4096);        // bounded: backpressure
//!  let (status_tx, mut status_rx) = tokio::sync::mpsc::unbounded_channel();
//!  let cancel = CancellationToken::new();
//!  let checkpoints = Checkpoints::load(&state_dir)?;        // or any resume function
//!  let handles = source::spawn(&config.sources, checkpoints.resume(), tx, status_tx, cancel.clone())?;
//!  while let Some(line) = rx.recv().await {
//!      engine.handle(parser.parse_line(&line.bytes, ..));
//!      checkpoints.commit(&line.origin, &line.position);   // only after the engine is done
//!      // ... every second or so, and on shutdown: checkpoints.save(&state_dir) (blocking)
//!  }
//! ```
//!
//! - **Lines.** [`SourceLine::bytes`] is one line without its newline, raw bytes (not
//!   necessarily UTF-8). For the journal it is the whole `journalctl -o json` object; the
//!   parser's envelope decodes it. Lines longer than the configured cap (at most, and by
//!   default, [`MAX_LINE_BYTES`]) are cut to the cap and flagged [`SourceLine::truncated`] (and
//!   counted), so one huge line cannot exhaust memory. The parser never reads a cut line: the
//!   part that is left could name another address than the whole line did.
//! - **Backpressure, no silent loss.** Sources `send().await` into the bounded channel: when
//!   the daemon falls behind, sources wait (and journalctl/the kernel buffer behind them).
//!   Nothing is dropped. A line that was in flight at cancellation has no committed position,
//!   so it is read again on the next start.
//! - **Positions.** Every line carries the [`Position`] *just after* it. Committing it and
//!   restarting resumes at the next line: the journal with `--after-cursor`, a file at the byte
//!   offset if it is still the same file (device + inode), stdin does not resume.
//! - **First start** (no checkpoint): the journal and files start at their *end*, so a new
//!   install does not replay months of history ([`StartAt`], configurable). A file that
//!   appears only after the daemon started is read from its beginning: all of it is new.
//! - **Status.** Each source logs through `tracing` and also sends [`SourceStatus`] messages
//!   (started, restarting, rotated, truncated, finished, stopped, errors) on the status channel,
//!   and keeps [`SourceCounters`]. Sources never panic and never end on their own, except
//!   stdin at end of input.
//! - **Stopping.** Cancelling the token stops every source promptly (the journal's child
//!   process is killed); the task then reports [`StatusEvent::Stopped`] and ends. Dropping the
//!   line receiver stops them as well.
//!
//! # Configuration (`[sources]` in detector.toml)
//!
//! ```toml
//! [sources]
//! files = ["/var/log/mail.log"]   # plain files to follow (default: none)
//! stdin = false                   # read standard input until EOF (default: false)
//! file_start = "end"              # where to start a file without a checkpoint: "end" | "beginning"
//! max_line_bytes = 1048576        # longer lines are cut (files and stdin); at most 1 MiB
//! poll_interval = "250ms"         # safety-net re-check of files; changes are seen at once via inotify
//! rotate_grace = "10s"            # keep reading a renamed (rotated) file until idle this long
//!
//! [sources.journal]               # present = follow the journal
//! journalctl = "journalctl"       # program (looked up in PATH)
//! # directory = "/var/log/journal"  # like journalctl --directory (default: the system journal)
//! matches = ["SYSLOG_FACILITY=2", "+", "_SYSTEMD_UNIT=postfix.service",
//!            "_SYSTEMD_UNIT=postfix@-.service", "_SYSTEMD_UNIT=dovecot.service",
//!            "+", "SYSLOG_IDENTIFIER=dovecot"]
//! start = "end"                   # first start without a cursor: "end" | "beginning"
//! restart_delay = "100ms"         # first delay before restarting an exited journalctl ...
//! restart_delay_max = "30s"       # ... doubling up to this
//! max_line_bytes = 1048576        # the same cap for journal JSON objects
//!
//! [sources.journal.trust]         # only entries from the mail server processes count
//! enabled = true
//! users = ["root", "postfix", "dovecot", "dovenull"]
//! executables = ["/usr/lib/postfix/sbin/", "/usr/libexec/postfix/", "/usr/lib/dovecot/",
//!                "/usr/libexec/dovecot/", "/usr/sbin/dovecot"]
//! units = ["postfix.service", "postfix@*.service", "dovecot.service"]
//! ```
//!
//! Without a `[sources]` table the daemon uses [`SourceConfig::default`]: the journal with the
//! defaults above. With a `[sources]` table only what it lists is followed.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

mod file;
mod journal;
mod lines;
mod stdin;
mod trust;

pub use journal::DEFAULT_MATCHES;
pub use lines::CappedLines;
pub use trust::{Sender, Trust, TrustConfig};

/// The one line-length limit: what sources deliver by default and at most, and the longest
/// line the parser reads. Real Postfix/Dovecot lines stay well under 8 KiB; a journal JSON
/// object with a long binary `MESSAGE` (written as an array of numbers) can take a few
/// hundred KiB.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// What flows to the daemon
// ---------------------------------------------------------------------------------------------

/// Names a source; also the key of its checkpoint. Cheap to clone.
///
/// `journal` (or `journal:<directory>`), `file:<path>`, `stdin`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(Arc<str>);

impl Serialize for SourceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl SourceId {
    /// The journal source; a non-default journal directory gets its own id so that a cursor is
    /// never applied to a different journal.
    pub fn journal(directory: Option<&Path>) -> Self {
        match directory {
            None => SourceId("journal".into()),
            Some(dir) => SourceId(format!("journal:{}", dir.display()).into()),
        }
    }

    pub fn file(path: &Path) -> Self {
        SourceId(format!("file:{}", path.display()).into())
    }

    pub fn stdin() -> Self {
        SourceId("stdin".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Where a source is, just after a line. Stored as JSON in the checkpoints file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Position {
    /// The journal entry's `__CURSOR`.
    Journal { cursor: String },
    /// A byte offset in one particular file (device + inode), just after the line's newline.
    /// `path` is the configured path; after a rotation the file may have another name.
    File {
        path: PathBuf,
        dev: u64,
        inode: u64,
        offset: u64,
    },
    /// The 1-based number of the line on standard input.
    Stdin { line: u64 },
}

/// One log line from a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLine {
    /// The line, without its trailing newline. At most the source's `max_line_bytes`.
    pub bytes: Bytes,
    /// The line was longer than the cap and was cut.
    pub truncated: bool,
    pub origin: SourceId,
    /// The position just after this line: commit it once the line is processed.
    pub position: Position,
}

/// Something a source wants the daemon (and the admin) to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStatus {
    pub source: SourceId,
    pub event: StatusEvent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusEvent {
    /// The source is reading; `detail` says from where (command line, file and offset).
    Started { detail: String },
    /// journalctl exited or could not be started; it is started again after `delay`.
    Restarting {
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    /// The followed path now names a new file (rename rotation, or a file that appeared).
    Rotated { path: PathBuf },
    /// The file shrank below the read offset (copytruncate); reading restarts at offset 0.
    Truncated { path: PathBuf },
    /// Something is wrong but the source carries on (e.g. an unusable checkpoint).
    Warning(String),
    /// The source cannot go on (e.g. a read error on stdin) and has ended.
    Error(String),
    /// End of input (stdin only); the task has ended.
    Finished,
    /// Stopped on cancellation (or because the line receiver is gone).
    Stopped,
}

impl fmt::Display for StatusEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusEvent::Started { detail } => write!(f, "started: {detail}"),
            StatusEvent::Restarting {
                attempt,
                delay,
                reason,
            } => write!(
                f,
                "{reason}; restart #{attempt} in {}",
                humantime::format_duration(*delay)
            ),
            StatusEvent::Rotated { path } => {
                write!(f, "{} was rotated; following the new file", path.display())
            }
            StatusEvent::Truncated { path } => write!(
                f,
                "{} was truncated; reading from the start",
                path.display()
            ),
            StatusEvent::Warning(m) => write!(f, "warning: {m}"),
            StatusEvent::Error(m) => write!(f, "error: {m}"),
            StatusEvent::Finished => f.write_str("end of input"),
            StatusEvent::Stopped => f.write_str("stopped"),
        }
    }
}

/// Per-source counters, updated by the source task, readable at any time.
#[derive(Debug, Default)]
pub struct SourceCounters {
    pub lines: AtomicU64,
    pub bytes: AtomicU64,
    /// Lines cut to `max_line_bytes`.
    pub truncated_lines: AtomicU64,
    /// journalctl restarts.
    pub restarts: AtomicU64,
    /// File rotations by rename (and files that appeared).
    pub rotations: AtomicU64,
    /// File truncations (copytruncate).
    pub truncations: AtomicU64,
    /// Journal entries that claim to be Postfix or Dovecot but whose trusted fields show
    /// another process (dropped).
    pub untrusted: AtomicU64,
    /// Other journal entries from processes that are not mail servers (dropped).
    pub foreign: AtomicU64,
    /// The last untrusted entry's trusted fields ([`Sender::describe`]).
    pub last_untrusted: std::sync::Mutex<Option<String>>,
}

/// A point-in-time copy of [`SourceCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CounterSnapshot {
    pub lines: u64,
    pub bytes: u64,
    pub truncated_lines: u64,
    pub restarts: u64,
    pub rotations: u64,
    pub truncations: u64,
    pub untrusted: u64,
    pub foreign: u64,
}

impl SourceCounters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            lines: get(&self.lines),
            bytes: get(&self.bytes),
            truncated_lines: get(&self.truncated_lines),
            restarts: get(&self.restarts),
            rotations: get(&self.rotations),
            truncations: get(&self.truncations),
            untrusted: get(&self.untrusted),
            foreign: get(&self.foreign),
        }
    }

    /// The last untrusted entry, described.
    pub fn last_untrusted(&self) -> Option<String> {
        self.last_untrusted
            .lock()
            .map_or_else(|e| e.into_inner().clone(), |l| l.clone())
    }
}

/// A running source.
#[derive(Debug)]
pub struct SourceHandle {
    pub id: SourceId,
    pub counters: Arc<SourceCounters>,
    /// Ends after cancellation (or, for stdin, at end of input). Never returns an error: errors
    /// go to the status channel.
    pub task: JoinHandle<()>,
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Where to start a source that has no checkpoint yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// Only what is written from now on (the default: no replay of old history).
    #[default]
    End,
    /// Everything that is there.
    Beginning,
}

/// The `[sources]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Follow the systemd journal (`[sources.journal]`). Absent: no journal.
    #[serde(default)]
    pub journal: Option<JournalConfig>,
    /// Plain log files to follow (Postfix `maillog_file`, Dovecot `log_path`, rsyslog files).
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Read standard input until end of file.
    #[serde(default)]
    pub stdin: bool,
    /// Where to start a file that has no checkpoint (default: its end).
    #[serde(default)]
    pub file_start: StartAt,
    /// Cap on one line from a file or stdin; longer lines are cut (default and maximum
    /// [`MAX_LINE_BYTES`]).
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
    /// How often files are re-checked even without an inotify event (default 250 ms).
    #[serde(default = "default_poll_interval", with = "humantime_duration")]
    pub poll_interval: Duration,
    /// How long a rotated (renamed) file is still read after its last growth, for writers that
    /// reopen their log only a little after the rename (default 10 s).
    #[serde(default = "default_rotate_grace", with = "humantime_duration")]
    pub rotate_grace: Duration,
}

/// The `[sources.journal]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// The journalctl program; a bare name is looked up in PATH.
    #[serde(default = "default_journalctl")]
    pub journalctl: PathBuf,
    /// Read the journal files in this directory (`journalctl --directory`) instead of the
    /// system journal.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// journalctl match arguments: `FIELD=value` terms and `+` separators. Terms on the same
    /// field are ORed, on different fields ANDed, `+` ORs groups. Empty: the whole journal.
    /// Default: [`DEFAULT_MATCHES`] (the mail facility, the Postfix and Dovecot units, and the
    /// `dovecot` identifier).
    #[serde(default = "default_matches")]
    pub matches: Vec<String>,
    /// Where to start without a saved cursor (default: the end, i.e. only new entries).
    #[serde(default)]
    pub start: StartAt,
    /// First delay before journalctl is started again after it exited; doubles each time.
    #[serde(default = "default_restart_delay", with = "humantime_duration")]
    pub restart_delay: Duration,
    /// Cap on the restart delay.
    #[serde(default = "default_restart_delay_max", with = "humantime_duration")]
    pub restart_delay_max: Duration,
    /// Cap on one JSON line (default and maximum [`MAX_LINE_BYTES`]). A cut line is counted
    /// and not parsed.
    #[serde(default = "default_journal_max_line")]
    pub max_line_bytes: usize,
    /// Which senders count (`[sources.journal.trust]`): by default only the Postfix and
    /// Dovecot processes, told by the fields journald sets itself.
    #[serde(default)]
    pub trust: TrustConfig,
}

fn default_max_line() -> usize {
    MAX_LINE_BYTES
}
fn default_poll_interval() -> Duration {
    Duration::from_millis(250)
}
fn default_rotate_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_journalctl() -> PathBuf {
    PathBuf::from("journalctl")
}
fn default_matches() -> Vec<String> {
    DEFAULT_MATCHES.iter().map(|s| s.to_string()).collect()
}
fn default_restart_delay() -> Duration {
    Duration::from_millis(100)
}
fn default_restart_delay_max() -> Duration {
    Duration::from_secs(30)
}
fn default_journal_max_line() -> usize {
    MAX_LINE_BYTES
}

/// Durations are written the humantime way: "250ms", "10s", "1m 30s".
mod humantime_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            journalctl: default_journalctl(),
            directory: None,
            matches: default_matches(),
            start: StartAt::End,
            restart_delay: default_restart_delay(),
            restart_delay_max: default_restart_delay_max(),
            max_line_bytes: default_journal_max_line(),
            trust: TrustConfig::default(),
        }
    }
}

impl SourceConfig {
    /// No source at all; the base for building a configuration in code.
    pub fn none() -> Self {
        SourceConfig {
            journal: None,
            files: Vec::new(),
            stdin: false,
            file_start: StartAt::End,
            max_line_bytes: default_max_line(),
            poll_interval: default_poll_interval(),
            rotate_grace: default_rotate_grace(),
        }
    }

    /// Whether nothing would be read.
    pub fn is_empty(&self) -> bool {
        self.journal.is_none() && self.files.is_empty() && !self.stdin
    }

    /// Checks the settings without starting anything; [`spawn`] calls it too.
    pub fn validate(&self) -> Result<()> {
        if self.is_empty() {
            return Err(Error::config(
                "sources",
                "no source configured (journal, files or stdin)",
            ));
        }
        check_max_line("sources.max_line_bytes", self.max_line_bytes)?;
        if self.poll_interval < Duration::from_millis(10)
            || self.poll_interval > Duration::from_secs(60)
        {
            return Err(Error::config(
                "sources.poll_interval",
                "must be between 10ms and 60s",
            ));
        }
        if self.rotate_grace > Duration::from_secs(24 * 3600) {
            return Err(Error::config("sources.rotate_grace", "must be at most 24h"));
        }
        for (i, path) in self.files.iter().enumerate() {
            if path.file_name().is_none() {
                return Err(Error::config(
                    "sources.files",
                    format!("{} is not a file path", path.display()),
                ));
            }
            if self.files[..i].contains(path) {
                return Err(Error::config(
                    "sources.files",
                    format!("{} is listed twice", path.display()),
                ));
            }
        }
        if let Some(journal) = &self.journal {
            journal.validate()?;
        }
        Ok(())
    }
}

impl Default for SourceConfig {
    /// The journal with its defaults (what a typical systemd mail host needs).
    fn default() -> Self {
        SourceConfig {
            journal: Some(JournalConfig::default()),
            ..SourceConfig::none()
        }
    }
}

impl JournalConfig {
    pub fn validate(&self) -> Result<()> {
        check_max_line("sources.journal.max_line_bytes", self.max_line_bytes)?;
        journal::check_matches(&self.matches)?;
        self.trust.validate()?;
        if self.restart_delay.is_zero() || self.restart_delay > self.restart_delay_max {
            return Err(Error::config(
                "sources.journal.restart_delay",
                "must be above zero and at most restart_delay_max",
            ));
        }
        journal::resolve_program(&self.journalctl).map(drop)
    }
}

fn check_max_line(key: &str, value: usize) -> Result<()> {
    if !(256..=MAX_LINE_BYTES).contains(&value) {
        return Err(Error::config(
            key,
            format!(
                "{value} is out of range (256 bytes to {MAX_LINE_BYTES}, the longest line the \
                 parser reads)"
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Starting the sources
// ---------------------------------------------------------------------------------------------

/// Validates `config` and starts one task per source, each resuming just after the position
/// `resume` gives for its id (`None`: the configured start; `|_| None` for no checkpoints).
/// Must be called inside a tokio runtime. Errors (bad settings, journalctl not found) are
/// returned before any task is started. Relative file paths are made absolute
/// (without resolving symlinks: the name is what is followed).
pub fn spawn(
    config: &SourceConfig,
    resume: impl Fn(&SourceId) -> Option<Position>,
    lines: mpsc::Sender<SourceLine>,
    status: mpsc::UnboundedSender<SourceStatus>,
    cancel: CancellationToken,
) -> Result<Vec<SourceHandle>> {
    config.validate()?;
    let journal_program = match &config.journal {
        Some(j) => Some(journal::resolve_program(&j.journalctl)?),
        None => None,
    };
    // Relative paths are taken from the current directory now, so that the source id (the
    // checkpoint key) does not depend on where the daemon is started next time.
    let files = (config.files.iter())
        .map(|p| std::path::absolute(p).map_err(|e| Error::io(p, e)))
        .collect::<Result<Vec<_>>>()?;

    let mut handles = Vec::new();
    let ctx = |id: SourceId| SourceCtx {
        counters: Arc::new(SourceCounters::default()),
        id,
        lines: lines.clone(),
        status: status.clone(),
        cancel: cancel.clone(),
    };
    let finish = |ctx: &SourceCtx, task| SourceHandle {
        id: ctx.id.clone(),
        counters: ctx.counters.clone(),
        task,
    };

    if let (Some(journal), Some(program)) = (&config.journal, journal_program) {
        let ctx = ctx(SourceId::journal(journal.directory.as_deref()));
        let cursor = match resume(&ctx.id) {
            Some(Position::Journal { cursor }) => Some(cursor),
            _ => None,
        };
        let trust = Trust::from_system(&journal.trust);
        let task = tokio::spawn(journal::run(
            journal.clone(),
            program,
            cursor,
            trust,
            ctx.clone(),
        ));
        handles.push(finish(&ctx, task));
    }
    for path in files {
        let ctx = ctx(SourceId::file(&path));
        let opts = file::FileOptions {
            path,
            start: config.file_start,
            max_line: config.max_line_bytes,
            poll_interval: config.poll_interval,
            rotate_grace: config.rotate_grace,
        };
        let task = tokio::spawn(file::run(opts, resume(&ctx.id), ctx.clone()));
        handles.push(finish(&ctx, task));
    }
    if config.stdin {
        let ctx = ctx(SourceId::stdin());
        let task = tokio::spawn(stdin::run(
            tokio::io::stdin(),
            config.max_line_bytes,
            ctx.clone(),
        ));
        handles.push(finish(&ctx, task));
    }
    Ok(handles)
}

/// What every source task holds: its identity and the ways out.
#[derive(Clone)]
struct SourceCtx {
    id: SourceId,
    lines: mpsc::Sender<SourceLine>,
    status: mpsc::UnboundedSender<SourceStatus>,
    cancel: CancellationToken,
    counters: Arc<SourceCounters>,
}

/// Whether a source should keep going after trying to deliver a line.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
enum Flow {
    Continue,
    Stop,
}

impl SourceCtx {
    /// Sends one line, waiting while the channel is full. `Stop` on cancellation or when the
    /// receiver is gone; the line's position is then not committed, so nothing is lost.
    async fn deliver(&self, line: lines::Line, position: Position) -> Flow {
        let counters = &self.counters;
        counters.lines.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(line.bytes.len() as u64, Ordering::Relaxed);
        if line.truncated {
            let n = counters.truncated_lines.fetch_add(1, Ordering::Relaxed) + 1;
            // Attackers can send long lines at will: log the first and then every 1000th.
            if n == 1 || n.is_multiple_of(1000) {
                tracing::warn!(source = %self.id, truncated_lines = n, "line longer than max_line_bytes was cut");
            }
        }
        let msg = SourceLine {
            bytes: line.bytes,
            truncated: line.truncated,
            origin: self.id.clone(),
            position,
        };
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Flow::Stop,
            sent = self.lines.send(msg) => if sent.is_ok() { Flow::Continue } else { Flow::Stop },
        }
    }

    /// Counts a journal entry that did not come from a mail server process. One claiming to be
    /// Postfix or Dovecot is a forgery or a misconfigured trust list: the first and every
    /// 1000th are reported, with the fields that gave it away.
    fn untrusted(&self, sender: &trust::Sender<'_>) {
        if !sender.claims_mail_server() {
            self.counters.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let n = self.counters.untrusted.fetch_add(1, Ordering::Relaxed) + 1;
        let described = sender.describe();
        if n == 1 || n.is_multiple_of(1000) {
            self.report(StatusEvent::Warning(format!(
                "{n} journal entries named a mail server but came from another process, not \
                 counted (last: {described}); if this is your mail server, add it to \
                 [sources.journal.trust]"
            )));
        }
        if let Ok(mut last) = self.counters.last_untrusted.lock() {
            *last = Some(described);
        }
    }

    /// Logs `event` and sends it on the status channel (a gone receiver is fine).
    fn report(&self, event: StatusEvent) {
        match &event {
            StatusEvent::Warning(_) | StatusEvent::Restarting { .. } => {
                tracing::warn!(source = %self.id, "{event}")
            }
            StatusEvent::Error(_) => tracing::error!(source = %self.id, "{event}"),
            _ => tracing::info!(source = %self.id, "{event}"),
        }
        let _ = self.status.send(SourceStatus {
            source: self.id.clone(),
            event,
        });
    }

    /// Sleeps for `delay` unless cancelled first (then `Stop`).
    async fn sleep(&self, delay: Duration) -> Flow {
        tokio::select! {
            _ = self.cancel.cancelled() => Flow::Stop,
            _ = tokio::time::sleep(delay) => Flow::Continue,
        }
    }

    fn stopping(&self) -> bool {
        self.cancel.is_cancelled() || self.lines.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_defaults_and_overrides() {
        #[derive(Deserialize)]
        struct Top {
            sources: SourceConfig,
        }
        let top: Top = toml::from_str(
            r#"
            [sources]
            files = ["/var/log/mail.log"]
            poll_interval = "100ms"
            [sources.journal]
            directory = "/run/log/journal"
            start = "beginning"
            "#,
        )
        .unwrap();
        let s = top.sources;
        assert_eq!(s.files, vec![PathBuf::from("/var/log/mail.log")]);
        assert_eq!(s.poll_interval, Duration::from_millis(100));
        assert_eq!(s.max_line_bytes, MAX_LINE_BYTES);
        assert_eq!(s.file_start, StartAt::End);
        assert!(!s.stdin);
        let j = s.journal.unwrap();
        assert_eq!(j.directory, Some(PathBuf::from("/run/log/journal")));
        assert_eq!(j.start, StartAt::Beginning);
        assert_eq!(j.matches, default_matches());
        assert_eq!(j.restart_delay_max, Duration::from_secs(30));

        // A [sources] table without [sources.journal] means: no journal.
        let top: Top = toml::from_str("[sources]\nstdin = true\n").unwrap();
        assert!(top.sources.journal.is_none());
        assert!(top.sources.stdin);
    }

    #[test]
    fn effective_settings_serialise_back_to_the_same_toml() {
        let mut config = SourceConfig::default();
        config.files.push("/var/log/mail.log".into());
        config.poll_interval = Duration::from_millis(1500);
        let text = toml::to_string(&config).unwrap();
        assert!(text.contains("poll_interval = \"1s 500ms\""), "{text}");
        assert_eq!(toml::from_str::<SourceConfig>(&text).unwrap(), config);
    }

    #[test]
    fn toml_errors_name_the_problem() {
        let err = toml::from_str::<SourceConfig>("poll_interval = \"fast\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid duration \"fast\""), "{err}");
        let err = toml::from_str::<SourceConfig>("filez = []")
            .unwrap_err()
            .to_string();
        assert!(err.contains("filez"), "{err}");
        let err = toml::from_str::<SourceConfig>("file_start = \"middle\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("middle"), "{err}");
    }

    #[test]
    fn validate_rejects_bad_settings() {
        assert!(
            SourceConfig::none()
                .validate()
                .unwrap_err()
                .to_string()
                .contains("no source")
        );
        let mut c = SourceConfig {
            files: vec!["/a/x.log".into(), "/a/x.log".into()],
            ..SourceConfig::none()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
        c.files.pop();
        c.validate().unwrap();
        c.max_line_bytes = 10;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("sources.max_line_bytes")
        );
        c.max_line_bytes = MAX_LINE_BYTES + 1;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("sources.max_line_bytes")
        );
        c.max_line_bytes = 4096;
        c.poll_interval = Duration::from_millis(1);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("poll_interval")
        );

        let mut j = JournalConfig {
            journalctl: "/nonexistent/journalctl".into(),
            ..JournalConfig::default()
        };
        let err = j.validate().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/journalctl"), "{err}");
        j.journalctl = "detector-no-such-program".into();
        let err = j.validate().unwrap_err().to_string();
        assert!(err.contains("not found in PATH"), "{err}");
    }

    #[test]
    fn position_json_shape_is_stable() {
        let p = Position::File {
            path: "/var/log/mail.log".into(),
            dev: 1,
            inode: 2,
            offset: 3,
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"kind":"file","path":"/var/log/mail.log","dev":1,"inode":2,"offset":3}"#
        );
        let j: Position = serde_json::from_str(r#"{"kind":"journal","cursor":"s=1"}"#).unwrap();
        assert_eq!(
            j,
            Position::Journal {
                cursor: "s=1".into()
            }
        );
    }

    #[test]
    fn source_ids() {
        assert_eq!(SourceId::journal(None).as_str(), "journal");
        assert_eq!(
            SourceId::journal(Some(Path::new("/j"))).as_str(),
            "journal:/j"
        );
        assert_eq!(
            SourceId::file(Path::new("/var/log/mail.log")).to_string(),
            "file:/var/log/mail.log"
        );
        assert_eq!(SourceId::stdin().as_str(), "stdin");
    }
}
