//! Following a plain log file by name, through rotation, like `tail -F` but with positions.
//!
//! - **Wake-ups.** An inotify watch on the file's *directory* (via `notify`) wakes the
//!   follower as soon as the file (or a rotated sibling such as `mail.log.1`) is written,
//!   created, renamed or truncated, so lines arrive within a millisecond or two. A poll every
//!   `poll_interval` (default 250 ms) is the safety net for file systems without inotify, a
//!   directory that is replaced, or a full inotify queue.
//! - **First start.** With a checkpoint for the same file (device + inode), reading resumes at
//!   its offset. Without one, at the end of the file (`file_start = "end"`, and if the writer
//!   is mid-line, from the next full line) or at its beginning. A file that does not exist yet
//!   is waited for and read from its beginning when it appears.
//! - **Rename rotation** (logrotate `create`, Postfix `postfix logrotate`): when the path names
//!   a new file, the old one is *retired*, not dropped: it is still read until it has not grown
//!   for `rotate_grace` (default 10 s), because writers such as rsyslog keep writing to it until
//!   they are told to reopen. The new file is read from its beginning at once.
//! - **copytruncate**: the file shrinks below the read offset; reading restarts at offset 0.
//!   (If it is truncated *and* refilled past the old offset between two looks, the refill is
//!   taken as growth: inotify makes that window tiny, but copytruncate is lossy by design.)
//! - **Rotated while stopped**: if the checkpoint's inode is no longer at the path, a sibling
//!   in the same directory whose name starts with the file's name (`mail.log.1`,
//!   `mail.log-20261127`) and has that inode is read from the saved offset, then the new file
//!   from its start. Compressed rotations have new inodes; their unread tail is reported lost.
//! - **Partial lines** wait for their newline (a retired file's last partial line is delivered
//!   when it is closed). Lines over `max_line_bytes` are cut; see [`LineSplitter`].
//!
//! Known limits: a file that appears at the path and is renamed away again before the
//! follower looks (within a millisecond or so) is never seen, as with any follow-by-name.
//! While a retired file is still being read, lines of the old and the new file interleave; a
//! crash in that window can repeat some lines of the new file on restart.
use std::ffi::OsString;
use std::fs::Metadata;
use std::io::{self, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::io::AsyncSeekExt;
use tokio::sync::Notify;

use super::lines::{Line, LineSplitter};
use super::{Flow, Position, SourceCtx, StartAt, StatusEvent};

pub(super) struct FileOptions {
    pub path: PathBuf,
    pub start: StartAt,
    pub max_line: usize,
    pub poll_interval: Duration,
    pub rotate_grace: Duration,
}

/// A file's identity: the same (device, inode) is the same file whatever its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    inode: u64,
}

impl FileId {
    fn of(meta: &Metadata) -> Self {
        FileId {
            dev: meta.dev(),
            inode: meta.ino(),
        }
    }
}

/// An open file being read.
struct Tail {
    file: tokio::fs::File,
    id: FileId,
    /// The name it was opened under (for messages).
    opened_as: PathBuf,
    splitter: LineSplitter,
}

/// A rotated-away file, still read until it goes quiet.
struct Retired {
    tail: Tail,
    last_growth: Instant,
}

pub(super) async fn run(opts: FileOptions, resume: Option<Position>, ctx: SourceCtx) {
    let wake = Arc::new(Notify::new());
    let mut watch = DirWatch::new(&opts.path, wake.clone(), &ctx);
    let mut follower = Follower {
        opts,
        ctx: ctx.clone(),
        current: None,
        retired: None,
        last_error: None,
    };
    follower.open_initial(resume).await;
    let mut poll = tokio::time::interval(follower.opts.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if follower.step().await == Flow::Stop {
            break;
        }
        // A retired file is closed when its grace period ends, not only at the next poll.
        let grace_end = follower
            .retired
            .as_ref()
            .map(|r| r.last_growth + follower.opts.rotate_grace);
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => break,
            _ = wake.notified() => {}
            _ = poll.tick() => watch.refresh(),
            _ = sleep_until_opt(grace_end) => {}
        }
    }
    ctx.report(StatusEvent::Stopped);
}

/// Sleeps until `deadline`, or forever if there is none.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

struct Follower {
    opts: FileOptions,
    ctx: SourceCtx,
    current: Option<Tail>,
    retired: Option<Retired>,
    /// The last error reported, so a persistent problem is logged once, not every poll.
    last_error: Option<String>,
}

impl Follower {
    /// Opens the file for the first time, from the checkpoint or the start policy.
    async fn open_initial(&mut self, resume: Option<Position>) {
        let path = self.opts.path.clone();
        let at_path = self.stat_path();
        let saved = match resume {
            Some(Position::File {
                dev, inode, offset, ..
            }) => Some((FileId { dev, inode }, offset)),
            _ => None,
        };
        let Some((saved_id, saved_offset)) = saved else {
            // No checkpoint: the start policy (a missing file is read from 0 once it appears).
            if let Some(meta) = at_path {
                let offset = match self.opts.start {
                    StartAt::End => meta.len(),
                    StartAt::Beginning => 0,
                };
                self.current = self.open(&path, offset);
            }
            return;
        };
        match at_path {
            Some(meta) if FileId::of(&meta) == saved_id => {
                let offset = if saved_offset <= meta.len() {
                    saved_offset
                } else {
                    self.ctx.report(StatusEvent::Warning(format!(
                        "{} is shorter than the saved offset {saved_offset}; it was truncated while \
                         detector was stopped, reading it from the start",
                        path.display()
                    )));
                    0
                };
                self.current = self.open(&path, offset);
            }
            at_path => {
                match find_rotated(&path, saved_id) {
                    Some((rotated, len)) => {
                        let offset = if saved_offset <= len { saved_offset } else { 0 };
                        if let Some(tail) = self.open(&rotated, offset) {
                            self.retired = Some(Retired { tail, last_growth: Instant::now() });
                        }
                    }
                    None => self.ctx.report(StatusEvent::Warning(format!(
                        "{} was replaced while detector was stopped and the old file is not next to it \
                         (compressed or deleted?): lines written to it after the last checkpoint are \
                         not read",
                        path.display()
                    ))),
                }
                if at_path.is_some() {
                    self.current = self.open(&path, 0);
                }
            }
        }
    }

    /// Opens `name` at `offset` (see [`open_at`]); failures are reported, once.
    fn open(&mut self, name: &Path, offset: u64) -> Option<Tail> {
        match open_at(name, offset, self.opts.max_line) {
            Ok(tail) => {
                self.last_error = None;
                self.ctx.report(StatusEvent::Started {
                    detail: format!(
                        "following {} from offset {}",
                        name.display(),
                        tail.splitter.read_offset()
                    ),
                });
                Some(tail)
            }
            Err(e) => {
                self.error(format!("cannot open {}: {e}", name.display()));
                None
            }
        }
    }

    /// The path's metadata, or `None` if it does not exist (or is unusable, reported once).
    fn stat_path(&mut self) -> Option<Metadata> {
        match std::fs::metadata(&self.opts.path) {
            Ok(meta) if meta.is_file() => Some(meta),
            Ok(_) => {
                self.error(format!(
                    "{} is not a regular file",
                    self.opts.path.display()
                ));
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                self.error(format!("{}: {e}", self.opts.path.display()));
                None
            }
        }
    }

    fn error(&mut self, message: String) {
        if self.last_error.as_ref() != Some(&message) {
            self.ctx.report(StatusEvent::Warning(message.clone()));
            self.last_error = Some(message);
        }
    }

    /// Reads everything new: the retired file, the current file, and whatever a rotation or
    /// truncation found by the path check brings.
    async fn step(&mut self) -> Flow {
        if self.drain_retired().await == Flow::Stop {
            return Flow::Stop;
        }
        // Bounded: each round either finds nothing new at the path or switches files once.
        for _ in 0..4 {
            if let Some(tail) = &mut self.current {
                let (flow, _) = drain(tail, &self.opts.path, &self.ctx).await;
                if flow == Flow::Stop {
                    return Flow::Stop;
                }
            }
            match self.check_path().await {
                PathCheck::Reread => continue,
                PathCheck::Unchanged => break,
                PathCheck::Stop => return Flow::Stop,
            }
        }
        Flow::Continue
    }

    /// Reads the retired file; closes it once it has been quiet for `rotate_grace`.
    async fn drain_retired(&mut self) -> Flow {
        let Some(retired) = &mut self.retired else {
            return Flow::Continue;
        };
        let (flow, grew) = drain(&mut retired.tail, &self.opts.path, &self.ctx).await;
        if flow == Flow::Stop {
            return Flow::Stop;
        }
        if grew {
            retired.last_growth = Instant::now();
        } else if retired.last_growth.elapsed() >= self.opts.rotate_grace {
            return self.close_retired().await;
        }
        Flow::Continue
    }

    /// Reads the retired file to its end once more, delivers a last partial line, closes it.
    async fn close_retired(&mut self) -> Flow {
        let Some(mut retired) = self.retired.take() else {
            return Flow::Continue;
        };
        let (flow, _) = drain(&mut retired.tail, &self.opts.path, &self.ctx).await;
        if flow == Flow::Stop {
            return Flow::Stop;
        }
        tracing::debug!(source = %self.ctx.id, file = %retired.tail.opened_as.display(), "closing rotated file");
        match retired.tail.splitter.finish() {
            Some(line) => deliver(&mut retired.tail, line, &self.opts.path, &self.ctx).await,
            None => Flow::Continue,
        }
    }

    /// Looks at what the path names now and reacts to a rotation or truncation.
    async fn check_path(&mut self) -> PathCheck {
        let Some(meta) = self.stat_path() else {
            return PathCheck::Unchanged;
        };
        let id = FileId::of(&meta);
        let path = self.opts.path.clone();
        let same_file = self
            .current
            .as_ref()
            .map(|tail| (tail.id == id, tail.splitter.read_offset()));
        match same_file {
            Some((true, read)) if meta.len() >= read => PathCheck::Unchanged,
            Some((true, _)) => {
                // copytruncate (or `> file`): start over at 0.
                let Some(tail) = &mut self.current else {
                    return PathCheck::Unchanged;
                };
                if let Err(e) = tail.file.seek(SeekFrom::Start(0)).await {
                    self.error(format!("cannot rewind {}: {e}", path.display()));
                    return PathCheck::Unchanged;
                }
                tail.splitter.reset(0);
                self.ctx
                    .counters
                    .truncations
                    .fetch_add(1, Ordering::Relaxed);
                self.ctx.report(StatusEvent::Truncated { path });
                PathCheck::Reread
            }
            had => {
                // A new file at the path: rotation, or the file appeared. Read it from 0.
                let Some(new) = self.open(&path, 0) else {
                    return PathCheck::Unchanged;
                };
                if let Some(old) = self.current.replace(new) {
                    // At most one retired file: an older one is finished first.
                    if self.close_retired().await == Flow::Stop {
                        return PathCheck::Stop;
                    }
                    self.retired = Some(Retired {
                        tail: old,
                        last_growth: Instant::now(),
                    });
                }
                if had.is_some() {
                    self.ctx.counters.rotations.fetch_add(1, Ordering::Relaxed);
                    self.ctx.report(StatusEvent::Rotated { path });
                }
                PathCheck::Reread
            }
        }
    }
}

enum PathCheck {
    /// Same file, nothing to do.
    Unchanged,
    /// Switched files or rewound: read again.
    Reread,
    /// Delivery was stopped.
    Stop,
}

/// Reads `tail` to its current end and delivers every complete line. Returns whether any
/// bytes were read.
async fn drain(tail: &mut Tail, path: &Path, ctx: &SourceCtx) -> (Flow, bool) {
    let mut grew = false;
    loop {
        match tail.splitter.read_from(&mut tail.file).await {
            Ok(0) => return (Flow::Continue, grew),
            Ok(_) => grew = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Rare (EIO, a vanished network file system); try again on the next wake-up.
                tracing::warn!(source = %ctx.id, file = %tail.opened_as.display(), "read failed: {e}");
                return (Flow::Continue, grew);
            }
        }
        while let Some(line) = tail.splitter.next_line() {
            if deliver(tail, line, path, ctx).await == Flow::Stop {
                return (Flow::Stop, grew);
            }
        }
        if ctx.stopping() {
            return (Flow::Stop, grew);
        }
    }
}

async fn deliver(tail: &mut Tail, line: Line, path: &Path, ctx: &SourceCtx) -> Flow {
    let position = Position::File {
        path: path.to_path_buf(),
        dev: tail.id.dev,
        inode: tail.id.inode,
        offset: line.end_offset,
    };
    ctx.deliver(line, position).await
}

/// Opens `name` for reading at `offset`. A non-zero offset whose preceding byte is not a
/// newline is mid-line (the writer was caught mid-write, or the offset is stale): the
/// fragment up to the next newline is skipped rather than delivered as a broken line.
fn open_at(name: &Path, offset: u64, max_line: usize) -> io::Result<Tail> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Never block in open() on a FIFO that was put where the log used to be.
        .custom_flags(libc::O_NONBLOCK)
        .open(name)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let offset = offset.min(meta.len());
    let mut splitter = LineSplitter::new(max_line, offset);
    if offset > 0 {
        let mut before = [0u8; 1];
        let n = file.read_at(&mut before, offset - 1)?;
        if n == 1 && before[0] != b'\n' {
            splitter.skip_to_next_line();
        }
    }
    let mut file = file;
    std::io::Seek::seek(&mut file, SeekFrom::Start(offset))?;
    Ok(Tail {
        file: tokio::fs::File::from_std(file),
        id: FileId::of(&meta),
        opened_as: name.to_path_buf(),
        splitter,
    })
}

/// Finds the file with identity `id` next to `path` under a name starting with `path`'s
/// name (where logrotate and savelog put it).
fn find_rotated(path: &Path, id: FileId) -> Option<(PathBuf, u64)> {
    let name = path.file_name()?.as_bytes();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().as_bytes().starts_with(name) && e.file_name().as_bytes() != name)
        .map(|e| e.path())
        .find_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            (meta.is_file() && FileId::of(&meta) == id).then_some((p, meta.len()))
        })
}

/// The inotify watch on the file's directory. Absent (poll only) if inotify is unavailable;
/// re-established when the directory appears or is replaced.
struct DirWatch {
    watcher: Option<notify::RecommendedWatcher>,
    dir: PathBuf,
    watched: Option<FileId>,
}

impl DirWatch {
    fn new(path: &Path, wake: Arc<Notify>, ctx: &SourceCtx) -> Self {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let prefix: OsString = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let handler = move |event: notify::Result<notify::Event>| {
            let relevant = match &event {
                Ok(ev) => {
                    ev.need_rescan()
                        || ev.paths.is_empty()
                        || ev.paths.iter().any(|p| {
                            p.file_name()
                                .is_some_and(|n| n.as_bytes().starts_with(prefix.as_bytes()))
                        })
                }
                Err(_) => true,
            };
            if relevant {
                wake.notify_one();
            }
        };
        let watcher = match notify::recommended_watcher(handler) {
            Ok(w) => Some(w),
            Err(e) => {
                ctx.report(StatusEvent::Warning(format!(
                    "inotify unavailable ({e}); checking {} every poll_interval",
                    path.display()
                )));
                None
            }
        };
        let mut watch = DirWatch {
            watcher,
            dir,
            watched: None,
        };
        watch.refresh();
        watch
    }

    /// (Re)adds the watch if the directory exists and is not the one watched.
    fn refresh(&mut self) {
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        let current = std::fs::metadata(&self.dir).ok().map(|m| FileId::of(&m));
        if current == self.watched {
            return;
        }
        if self.watched.is_some() {
            let _ = watcher.unwatch(&self.dir);
        }
        self.watched = match current {
            Some(id)
                if watcher
                    .watch(&self.dir, RecursiveMode::NonRecursive)
                    .is_ok() =>
            {
                Some(id)
            }
            _ => None,
        };
    }
}
