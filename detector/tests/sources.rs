//! Log sources through their public API: `source::spawn` with real files and a fake journalctl.
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use detector::source::{
    self, JournalConfig, Position, SourceConfig, SourceHandle, SourceId, SourceLine, SourceStatus,
    StartAt, StatusEvent,
};
use detector::store::{Checkpoints, StateDir};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Long enough for a loaded 2-core machine; only reached when a test is failing.
const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

struct Running {
    lines: mpsc::Receiver<SourceLine>,
    status: mpsc::UnboundedReceiver<SourceStatus>,
    seen_status: Vec<StatusEvent>,
    cancel: CancellationToken,
    handles: Vec<SourceHandle>,
}

fn start(config: &SourceConfig, checkpoints: &Checkpoints) -> Running {
    // A small channel, so backpressure is exercised too.
    let (tx, lines) = mpsc::channel(4);
    let (status_tx, status) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let handles =
        source::spawn(config, checkpoints.resume(), tx, status_tx, cancel.clone()).expect("spawn");
    Running {
        lines,
        status,
        seen_status: Vec::new(),
        cancel,
        handles,
    }
}

impl Running {
    async fn line(&mut self) -> SourceLine {
        timeout(WAIT, self.lines.recv())
            .await
            .expect("timed out waiting for a line")
            .expect("channel closed")
    }

    async fn text(&mut self) -> String {
        String::from_utf8(self.line().await.bytes.to_vec()).unwrap()
    }

    async fn texts(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.text().await);
        }
        out
    }

    async fn quiet(&mut self) {
        if let Ok(Some(line)) = timeout(QUIET, self.lines.recv()).await {
            panic!("unexpected line {:?}", String::from_utf8_lossy(&line.bytes));
        }
    }

    /// Waits until a status event matching `want` has been reported (earlier ones count).
    async fn status_where(
        &mut self,
        what: &str,
        want: impl Fn(&StatusEvent) -> bool,
    ) -> StatusEvent {
        if let Some(e) = self.seen_status.iter().find(|e| want(e)) {
            return e.clone();
        }
        loop {
            let s = timeout(WAIT, self.status.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} status; saw {:?}", self.seen_status))
                .expect("status channel closed");
            self.seen_status.push(s.event.clone());
            if want(&s.event) {
                return s.event;
            }
        }
    }

    /// Cancels and waits for every task; each must report `Stopped`.
    async fn stop(mut self) -> Vec<StatusEvent> {
        self.cancel.cancel();
        for h in self.handles {
            timeout(WAIT, h.task)
                .await
                .expect("source did not stop")
                .expect("source task panicked");
        }
        while let Ok(s) = self.status.try_recv() {
            self.seen_status.push(s.event);
        }
        assert_eq!(
            self.seen_status.last(),
            Some(&StatusEvent::Stopped),
            "{:?}",
            self.seen_status
        );
        self.seen_status
    }
}

fn files_config(path: &Path, file_start: StartAt) -> SourceConfig {
    SourceConfig {
        files: vec![path.to_path_buf()],
        file_start,
        // Longer than WAIT: these tests only pass if inotify wake-ups work, not through the poll.
        poll_interval: Duration::from_secs(60),
        rotate_grace: Duration::from_secs(2),
        ..SourceConfig::none()
    }
}

fn append(path: &Path, data: &str) {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(data.as_bytes()).unwrap();
}

fn file_offset(line: &SourceLine) -> (u64, u64) {
    match &line.position {
        Position::File { inode, offset, .. } => (*inode, *offset),
        other => panic!("not a file position: {other:?}"),
    }
}

#[tokio::test]
async fn file_follows_appends_from_the_end_and_waits_for_partial_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("mail.log");
    fs::write(&log, "old 1\nold 2\nwriter is mid-li").unwrap();
    let mut run = start(&files_config(&log, StartAt::End), &Checkpoints::default());
    run.status_where("started", |e| matches!(e, StatusEvent::Started { .. }))
        .await;

    // The fragment the writer was in the middle of is not delivered as a line.
    append(&log, "ne\nnew 1\n");
    let line = run.line().await;
    assert_eq!(&line.bytes[..], b"new 1");
    assert_eq!(line.origin, SourceId::file(&log));
    let inode = fs::metadata(&log).unwrap().ino();
    assert_eq!(
        file_offset(&line),
        (inode, fs::metadata(&log).unwrap().len())
    );

    append(&log, "half a ");
    run.quiet().await;
    append(&log, "line\nand one more\n");
    assert_eq!(run.texts(2).await, ["half a line", "and one more"]);
    run.stop().await;
}

#[tokio::test]
async fn file_rotation_by_rename_reads_old_file_to_the_end_then_the_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("mail.log");
    let rotated = tmp.path().join("mail.log.1");
    fs::write(&log, "").unwrap();
    let mut run = start(&files_config(&log, StartAt::End), &Checkpoints::default());
    run.status_where("started", |e| matches!(e, StatusEvent::Started { .. }))
        .await;
    append(&log, "before 1\n");
    assert_eq!(run.text().await, "before 1");

    // logrotate: rename, create a new file; the writer still has the old one open for a moment.
    let mut old_writer = OpenOptions::new().append(true).open(&log).unwrap();
    fs::rename(&log, &rotated).unwrap();
    old_writer.write_all(b"late in old\n").unwrap();
    fs::write(&log, "new 1\n").unwrap();
    let mut got = run.texts(2).await;
    got.sort();
    assert_eq!(got, ["late in old", "new 1"]);
    run.status_where("rotated", |e| matches!(e, StatusEvent::Rotated { .. }))
        .await;

    // Still inside rotate_grace: the old file is still read, and so is the new one.
    old_writer.write_all(b"later in old\n").unwrap();
    assert_eq!(run.text().await, "later in old");
    append(&log, "new 2\n");
    let line = run.line().await;
    assert_eq!(&line.bytes[..], b"new 2");
    assert_eq!(file_offset(&line), (fs::metadata(&log).unwrap().ino(), 12));
    assert_eq!(run.handles[0].counters.snapshot().rotations, 1);
    run.stop().await;
}

#[tokio::test]
async fn file_copytruncate_restarts_at_offset_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("maillog");
    fs::write(&log, "").unwrap();
    let mut run = start(&files_config(&log, StartAt::End), &Checkpoints::default());
    run.status_where("started", |e| matches!(e, StatusEvent::Started { .. }))
        .await;
    append(
        &log,
        "first line before truncation\nsecond line before truncation\n",
    );
    assert_eq!(run.texts(2).await.len(), 2);

    // copytruncate: copy away, truncate in place, the writer (O_APPEND) goes on at 0.
    fs::copy(&log, tmp.path().join("maillog.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    run.status_where("truncated", |e| matches!(e, StatusEvent::Truncated { .. }))
        .await;
    append(&log, "after\n");
    let line = run.line().await;
    assert_eq!(&line.bytes[..], b"after");
    assert_eq!(file_offset(&line).1, 6);
    assert_eq!(run.handles[0].counters.snapshot().truncations, 1);
    run.stop().await;
}

#[tokio::test]
async fn file_that_appears_later_is_read_from_its_start() {
    let tmp = tempfile::tempdir().unwrap();
    // Even the directory does not exist yet: the watch must be set up once it does, so a
    // short poll interval is used here.
    let dir = tmp.path().join("later");
    let log = dir.join("dovecot.log");
    let config = SourceConfig {
        poll_interval: Duration::from_millis(50),
        ..files_config(&log, StartAt::End)
    };
    let mut run = start(&config, &Checkpoints::default());
    run.quiet().await;
    fs::create_dir(&dir).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    fs::write(&log, "created with this line\n").unwrap();
    assert_eq!(run.text().await, "created with this line");
    append(&log, "then this\n");
    assert_eq!(run.text().await, "then this");
    run.stop().await;
}

#[tokio::test]
async fn file_resume_from_checkpoint_neither_loses_nor_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::open(tmp.path().join("state")).unwrap();
    let log = tmp.path().join("mail.log");
    fs::write(&log, "a\nb\nc\n").unwrap();
    let config = files_config(&log, StartAt::Beginning);
    let id = SourceId::file(&log);

    // Run 1 processes a and b; c is delivered but the "engine" never finishes it.
    let mut checkpoints = Checkpoints::load(&state).unwrap();
    let mut run = start(&config, &checkpoints);
    for want in ["a", "b"] {
        let line = run.line().await;
        assert_eq!(&line.bytes[..], want.as_bytes());
        checkpoints.commit(&line.origin, &line.position);
    }
    assert_eq!(run.text().await, "c");
    run.stop().await;
    checkpoints.save(&state).unwrap();

    // Written while detector was down.
    append(&log, "d\n");

    let checkpoints = Checkpoints::load(&state).unwrap();
    assert!(matches!(
        checkpoints.get(&id),
        Some(Position::File { offset: 4, .. })
    ));
    let mut run = start(&config, &checkpoints);
    assert_eq!(run.texts(2).await, ["c", "d"]);
    run.quiet().await;
    run.stop().await;
}

#[tokio::test]
async fn file_rotated_while_stopped_resumes_in_the_rotated_file() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("mail.log");
    fs::write(&log, "one\n").unwrap();
    let meta = fs::metadata(&log).unwrap();
    let mut checkpoints = Checkpoints::default();
    checkpoints.commit(
        &SourceId::file(&log),
        &Position::File {
            path: log.clone(),
            dev: meta.dev(),
            inode: meta.ino(),
            offset: 4,
        },
    );
    // While stopped: more lines, then rotation, then lines in the new file.
    append(&log, "two\n");
    fs::rename(&log, tmp.path().join("mail.log.1")).unwrap();
    fs::write(&log, "three\n").unwrap();

    let mut run = start(&files_config(&log, StartAt::End), &checkpoints);
    let mut got = run.texts(2).await;
    got.sort();
    assert_eq!(got, ["three", "two"]);
    run.quiet().await;
    run.stop().await;
}

#[tokio::test]
async fn file_overlong_line_is_cut_and_counted_not_buffered() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("mail.log");
    fs::write(&log, "").unwrap();
    let config = SourceConfig {
        max_line_bytes: 1024,
        ..files_config(&log, StartAt::End)
    };
    let mut run = start(&config, &Checkpoints::default());
    run.status_where("started", |e| matches!(e, StatusEvent::Started { .. }))
        .await;
    let huge = "x".repeat(1 << 20);
    append(&log, &format!("{huge}\nnormal\n"));
    let cut = run.line().await;
    assert!(cut.truncated);
    assert_eq!(cut.bytes.len(), 1024);
    // The position is after the whole line, so a resume does not land inside it.
    assert_eq!(file_offset(&cut).1, (1 << 20) + 1);
    let next = run.line().await;
    assert_eq!((&next.bytes[..], next.truncated), (&b"normal"[..], false));
    assert_eq!(run.handles[0].counters.snapshot().truncated_lines, 1);
    run.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Journal, against a fake journalctl
// ---------------------------------------------------------------------------------------------

/// Writes an executable fake journalctl that logs its arguments (one invocation per line,
/// prefixed with a timestamp in ms) and its pid (written first, so it is complete once the
/// invocation is logged), then behaves as `cases` says for run N; later runs just sleep.
fn fake_journalctl(dir: &Path, cases: &str) -> PathBuf {
    let path = dir.join("journalctl");
    let script = format!(
        r#"#!/bin/sh
d='{dir}'
n=$(cat "$d/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$d/count"
echo $$ > "$d/pid.new" && mv "$d/pid.new" "$d/pid"
echo "$(date +%s%3N) $*" >> "$d/invocations"
case $n in
{cases}
*) exec sleep 60 ;;
esac
"#,
        dir = dir.display()
    );
    // Written by a child process: if this test process held a write descriptor on the script,
    // a fork by a concurrent test could inherit it and make exec fail with ETXTBSY.
    let source = dir.join("journalctl.src");
    fs::write(&source, script).unwrap();
    let installed = std::process::Command::new("install")
        .arg("-m755")
        .arg(&source)
        .arg(&path)
        .status()
        .unwrap();
    assert!(installed.success());
    path
}

fn invocations(dir: &Path) -> Vec<(u64, String)> {
    fs::read_to_string(dir.join("invocations"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (ms, args) = l.split_once(' ').unwrap();
            (ms.parse().unwrap(), args.to_string())
        })
        .collect()
}

fn journal_config(program: PathBuf) -> SourceConfig {
    SourceConfig {
        journal: Some(JournalConfig {
            journalctl: program,
            directory: Some("/nonexistent/journal".into()),
            matches: vec![
                "SYSLOG_FACILITY=2".into(),
                "+".into(),
                "SYSLOG_IDENTIFIER=dovecot".into(),
            ],
            restart_delay: Duration::from_millis(100),
            restart_delay_max: Duration::from_millis(400),
            ..JournalConfig::default()
        }),
        ..SourceConfig::none()
    }
}

/// An entry from Dovecot's log process, with the trusted fields journald gives it on Debian.
fn entry(i: u32, msg: &str) -> String {
    format!(
        r#"{{"__CURSOR":"s=abc;i={i:x};b=def;m=1;t=2;x=3","MESSAGE":"{msg}","_PID":"7","_UID":"0","_EXE":"/usr/lib/dovecot/log","_COMM":"log","_SYSTEMD_UNIT":"dovecot.service","SYSLOG_IDENTIFIER":"dovecot"}}"#
    )
}

/// The same entry as `logger -t dovecot` by an unprivileged user would make it.
fn forged_entry(i: u32, msg: &str) -> String {
    format!(
        r#"{{"__CURSOR":"s=abc;i={i:x};b=def;m=1;t=2;x=3","MESSAGE":"{msg}","_PID":"9","_UID":"65534","_EXE":"/usr/bin/logger","_COMM":"logger","SYSLOG_IDENTIFIER":"dovecot"}}"#
    )
}

#[tokio::test]
async fn journal_entries_from_other_processes_are_counted_and_not_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    // An opendkim line on the mail facility is foreign, not a forgery: counted apart.
    let foreign = r#"{"__CURSOR":"s=abc;i=3;b=def;m=1;t=2;x=3","MESSAGE":"x","_UID":"110","_EXE":"/usr/sbin/opendkim","SYSLOG_IDENTIFIER":"opendkim"}"#;
    let program = fake_journalctl(
        tmp.path(),
        &format!(
            "1) printf '%s\\n%s\\n%s\\n%s\\n' '{f}' '{g}' '{o}' '{f2}'; exec sleep 60 ;;",
            f = forged_entry(1, "forged"),
            g = entry(2, "genuine"),
            o = foreign,
            f2 = forged_entry(4, "forged again"),
        ),
    );
    let mut run = start(&journal_config(program), &Checkpoints::default());
    let line = run.line().await;
    let json: serde_json::Value = serde_json::from_slice(&line.bytes).unwrap();
    assert_eq!(json["MESSAGE"], "genuine");
    assert_eq!(line.position, Position::Journal { cursor: cursor(2) });
    run.quiet().await;
    let warning = run
        .status_where(
            "untrusted warning",
            |e| matches!(e, StatusEvent::Warning(m) if m.contains("came from another process")),
        )
        .await;
    let StatusEvent::Warning(text) = warning else {
        unreachable!()
    };
    assert!(text.contains("_UID=65534 _EXE=/usr/bin/logger"), "{text}");
    let counters = run.handles[0].counters.snapshot();
    assert_eq!((counters.untrusted, counters.foreign), (2, 1));
    let last = run.handles[0].counters.last_untrusted().unwrap();
    assert!(last.contains("_COMM=logger"), "{last}");
    run.stop().await;
}

fn cursor(i: u32) -> String {
    format!("s=abc;i={i:x};b=def;m=1;t=2;x=3")
}

#[tokio::test]
async fn journal_restarts_after_exit_resuming_after_the_last_cursor_with_backoff() {
    let tmp = tempfile::tempdir().unwrap();
    let program = fake_journalctl(
        tmp.path(),
        &format!(
            "1) printf '%s\\n%s\\n' '{e1}' '{e2}'; exit 0 ;;\n\
             2) echo 'Failed to open journal: Permission denied' >&2; exit 1 ;;\n\
             3) printf '%s\\n' '{e3}'; exit 0 ;;",
            e1 = entry(1, "one"),
            e2 = entry(2, "two"),
            e3 = entry(3, "three"),
        ),
    );
    let mut run = start(&journal_config(program), &Checkpoints::default());
    let mut got = Vec::new();
    for _ in 0..3 {
        let line = run.line().await;
        assert_eq!(
            line.origin,
            SourceId::journal(Some(Path::new("/nonexistent/journal")))
        );
        let Position::Journal { cursor } = line.position else {
            panic!("not a journal position")
        };
        // The raw JSON line is forwarded untouched.
        let json: serde_json::Value = serde_json::from_slice(&line.bytes).unwrap();
        got.push((json["MESSAGE"].as_str().unwrap().to_string(), cursor));
    }
    assert_eq!(
        got,
        [
            ("one".to_string(), cursor(1)),
            ("two".to_string(), cursor(2)),
            ("three".to_string(), cursor(3))
        ]
    );
    // Run 4 (the fake sleeps) has started once this status arrives.
    let restart_reason = run
        .status_where("restart with stderr", |e| {
            matches!(e, StatusEvent::Restarting { reason, .. } if reason.contains("Permission denied"))
        })
        .await;
    let StatusEvent::Restarting { reason, .. } = restart_reason else {
        unreachable!()
    };
    assert!(reason.contains("exit status: 1"), "{reason}");
    while invocations(tmp.path()).len() < 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = invocations(tmp.path());
    let common = "--follow --output=json --no-pager --all --directory=/nonexistent/journal";
    let matches = "-- SYSLOG_FACILITY=2 + SYSLOG_IDENTIFIER=dovecot";
    // First start without a checkpoint: entries from the source's start time on.
    let first = calls[0]
        .1
        .strip_prefix(&format!("{common} --since=@"))
        .expect(&calls[0].1);
    let (since, rest) = first.split_once(' ').unwrap();
    assert_eq!(rest, format!("--no-tail {matches}"));
    let since: f64 = since.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(since <= now && now - since < 60.0, "{since} vs {now}");
    let after2 = format!("{common} --after-cursor={} --no-tail {matches}", cursor(2));
    assert_eq!(calls[1].1, after2);
    assert_eq!(calls[2].1, after2, "a run without output keeps the cursor");
    assert_eq!(
        calls[3].1,
        format!("{common} --after-cursor={} --no-tail {matches}", cursor(3))
    );
    // Exponential backoff: 100, 200, 400 ms (the cap). Lower bounds only: a loaded machine
    // may be slower, never faster.
    let gaps: Vec<u64> = calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
    for (gap, min) in gaps.iter().zip([100, 200, 400]) {
        assert!(*gap >= min, "gaps {gaps:?}");
    }
    assert_eq!(run.handles[0].counters.snapshot().restarts, 3);

    // Stopping kills the running journalctl.
    let pid: i32 = fs::read_to_string(tmp.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    run.stop().await;
    let alive = fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    assert!(!alive, "journalctl {pid} survived the stop");
}

#[tokio::test]
async fn journal_resumes_from_checkpoint_and_drops_a_cursor_journalctl_rejects() {
    let tmp = tempfile::tempdir().unwrap();
    let program = fake_journalctl(
        tmp.path(),
        &format!(
            "1) echo 'Failed to seek to cursor: Invalid argument' >&2; exit 1 ;;\n\
             2) printf '%s\\n' '{e}'; exec sleep 60 ;;",
            e = entry(5, "five")
        ),
    );
    let config = journal_config(program);
    let mut checkpoints = Checkpoints::default();
    let id = SourceId::journal(Some(Path::new("/nonexistent/journal")));
    checkpoints.commit(
        &id,
        &Position::Journal {
            cursor: "s=old;i=1".into(),
        },
    );
    let mut run = start(&config, &checkpoints);
    assert_eq!(
        run.line().await.position,
        Position::Journal { cursor: cursor(5) }
    );
    run.status_where(
        "cursor warning",
        |e| matches!(e, StatusEvent::Warning(w) if w.contains("cursor")),
    )
    .await;
    let calls = invocations(tmp.path());
    assert!(
        calls[0].1.contains(" --after-cursor=s=old;i=1 --no-tail "),
        "{}",
        calls[0].1
    );
    // Without a usable cursor, a restart covers the gap since the source started.
    assert!(calls[1].1.contains(" --since=@"), "{}", calls[1].1);
    assert!(!calls[1].1.contains("--after-cursor"), "{}", calls[1].1);
    run.stop().await;
}

#[tokio::test]
async fn journal_missing_journalctl_is_a_clear_error_before_anything_starts() {
    let (tx, _rx) = mpsc::channel(1);
    let (stx, _srx) = mpsc::unbounded_channel();
    let mut config = journal_config("detector-test-no-such-journalctl".into());
    config.files.push("/tmp/never-opened.log".into());
    let err = source::spawn(&config, |_| None, tx, stx, CancellationToken::new()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("detector-test-no-such-journalctl not found in PATH"),
        "{msg}"
    );
}

#[tokio::test]
async fn backpressure_blocks_without_loss_and_cancel_stops_a_blocked_source() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("mail.log");
    let all: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
    fs::write(
        &log,
        all.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let config = files_config(&log, StartAt::Beginning);

    // The consumer takes 3 lines and then stops reading: the source blocks on the full channel.
    let mut checkpoints = Checkpoints::default();
    let mut run = start(&config, &checkpoints);
    for want in &all[..3] {
        let line = run.line().await;
        assert_eq!(String::from_utf8_lossy(&line.bytes), *want);
        checkpoints.commit(&line.origin, &line.position);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        run.handles[0].counters.snapshot().lines < 200,
        "the source should be blocked, not dropping"
    );
    run.stop().await; // returns only if the blocked source honours cancellation

    // Everything after the committed position comes back, in order, exactly once.
    let mut run = start(&config, &checkpoints);
    let mut got = Vec::new();
    for _ in 3..200 {
        got.push(run.text().await);
    }
    assert_eq!(got, all[3..]);
    run.quiet().await;
    run.stop().await;
}

#[tokio::test]
async fn rotated_file_is_closed_after_grace_with_its_last_partial_line_and_rotations_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("mail.log");
    fs::write(&log, "").unwrap();
    let config = SourceConfig {
        rotate_grace: Duration::from_millis(300),
        ..files_config(&log, StartAt::End)
    };
    let mut run = start(&config, &Checkpoints::default());
    run.status_where("started", |e| matches!(e, StatusEvent::Started { .. }))
        .await;

    // First rotation; the old writer leaves a last line without its newline.
    let mut old_writer = OpenOptions::new().append(true).open(&log).unwrap();
    fs::rename(&log, tmp.path().join("mail.log.1")).unwrap();
    fs::write(&log, "second file\n").unwrap();
    assert_eq!(run.text().await, "second file");
    old_writer.write_all(b"cut short").unwrap();
    // Delivered once the old file has been quiet for rotate_grace (the poll notices that).
    assert_eq!(run.text().await, "cut short");

    // Two more rotations, the second within the first one's grace period: the older retired
    // file is finished and replaced, and every file is read to its end.
    let mut second_writer = OpenOptions::new().append(true).open(&log).unwrap();
    fs::rename(&log, tmp.path().join("mail.log.2")).unwrap();
    fs::write(&log, "third file\n").unwrap();
    assert_eq!(run.text().await, "third file");
    fs::rename(&log, tmp.path().join("mail.log.3")).unwrap();
    second_writer.write_all(b"second file, late\n").unwrap();
    fs::write(&log, "fourth file\n").unwrap();
    let mut got = run.texts(2).await;
    got.sort();
    assert_eq!(got, ["fourth file", "second file, late"]);
    assert_eq!(run.handles[0].counters.snapshot().rotations, 3);
    run.quiet().await;
    run.stop().await;
}
