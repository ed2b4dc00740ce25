//! The systemd journal, through `journalctl --follow --output=json`.
//!
//! journalctl is the stable interface to the journal (the file format and libsystemd's ABI are
//! not ours to track), and it already handles journal rotation, vacuuming and new files.
//!
//! Command line:
//! ```text
//! journalctl --follow --output=json --no-pager --all [--directory=DIR] START -- MATCHES...
//! ```
//! - `--all` keeps long and binary fields (otherwise they become `null`).
//! - START: `--after-cursor=C --no-tail` when a cursor is known (the checkpoint, or the last
//!   entry this task delivered). Without a cursor, [`StartAt::End`] uses
//!   `--since=@<time this source started> --no-tail`: only new entries, and none lost in the
//!   moment journalctl needs to start up or when it is restarted before delivering anything
//!   (`--lines=0` would skip those). [`StartAt::Beginning`] uses `--no-tail`.
//! - MATCHES ([`DEFAULT_MATCHES`]): journalctl matches are exact strings, and Postfix logs under
//!   many identifiers (`postfix/smtpd`, `postfix/submission/smtpd`, `postfix-out/smtpd` for a
//!   second instance), so the default does not list identifiers. It takes the *mail syslog
//!   facility* (`SYSLOG_FACILITY=2`, what both Postfix and Dovecot use by default, and what
//!   rsyslog's `mail.*` selects for mail.log), or the Postfix and Dovecot units (stdout
//!   logging, `maillog_file = /dev/stdout`), or the identifier `dovecot` (a Dovecot configured
//!   with another facility). Other mail-facility programs (opendkim, …) come through too; the
//!   parser ignores them cheaply.
//!
//! Note: journalctl ≥ 250 limits `--follow` to the current boot. After a reboot the entries
//! written after the daemon's last checkpoint in the previous boot are not replayed.
//!
//! Latency: journald writes an entry at once, but tells followers (by an `ftruncate` that
//! fires inotify) only on a 250 ms timer, so `journalctl --follow` delivers entries 250–500 ms
//! after they were logged (measured: median 500 ms against a real journald, see
//! tests/journald.rs). Hosts that need faster bans should also log to a file (Postfix
//! `maillog_file`, Dovecot `log_path`, rsyslog `mail.*`) and follow that file: the file source
//! delivers in well under a millisecond.
//!
//! Each stdout line is one entry. Only `__CURSOR` and the sender's trusted fields are decoded
//! here (a borrowed serde parse that ignores every other field); the raw line goes to the
//! parser. An entry whose trusted fields do not show a mail server process ([`Trust`]) is not
//! delivered: it is counted (`untrusted` when it claims to be Postfix or Dovecot, `foreign`
//! otherwise) and its cursor is still passed, so the next delivered line commits past it. If journalctl exits, it is
//! started again after the last delivered cursor, with exponential backoff from
//! `restart_delay` up to `restart_delay_max`, reset after a run of at least
//! [`HEALTHY_RUN`]. journalctl's stderr is logged and quoted in the restart reason.
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use super::lines::LineSplitter;
use super::trust::{Sender, Trust};
use super::{Flow, JournalConfig, Position, SourceCtx, StartAt, StatusEvent};
use crate::{Error, Result};

/// The default journal matches (see the module docs for why).
pub const DEFAULT_MATCHES: &[&str] = &[
    "SYSLOG_FACILITY=2",
    "+",
    "_SYSTEMD_UNIT=postfix.service",
    "_SYSTEMD_UNIT=postfix@-.service",
    "_SYSTEMD_UNIT=dovecot.service",
    "+",
    "SYSLOG_IDENTIFIER=dovecot",
];

/// A journalctl that ran at least this long was healthy: the backoff starts over.
pub const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// Checks the match arguments: `+` or `FIELD=value` with an upper-case field name.
pub(super) fn check_matches(matches: &[String]) -> Result<()> {
    for m in matches {
        if m == "+" {
            continue;
        }
        let field = m.split_once('=').map(|(f, _)| f).unwrap_or("");
        let valid = !field.is_empty()
            && field
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(Error::config(
                "sources.journal.matches",
                format!(
                    "{m:?} is not a journal match (FIELD=value with an upper-case FIELD, or \"+\")"
                ),
            ));
        }
    }
    if matches.first().is_some_and(|m| m == "+") || matches.last().is_some_and(|m| m == "+") {
        return Err(Error::config(
            "sources.journal.matches",
            "\"+\" must stand between two matches",
        ));
    }
    Ok(())
}

/// Finds the journalctl program: a path with a slash is taken as is, a bare name is looked up
/// in PATH. The error says what to do.
pub(super) fn resolve_program(program: &Path) -> Result<PathBuf> {
    let usable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let key = "sources.journal.journalctl";
    if program.as_os_str().is_empty() {
        return Err(Error::config(key, "is empty"));
    }
    if program.components().count() > 1 {
        return if usable(program) {
            Ok(program.to_path_buf())
        } else {
            Err(Error::config(
                key,
                format!("{} is not an executable file", program.display()),
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| usable(candidate))
        .ok_or_else(|| {
            Error::Source(format!(
                "{} not found in PATH: install systemd's journalctl, set {key} to its path, \
                 or remove [sources.journal] to follow log files instead",
                program.display()
            ))
        })
}

/// The fields we need from each entry. `Cow` because a cursor never contains escapes in
/// practice, but a borrowed `&str` would fail on one.
#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(rename = "__CURSOR", borrow)]
    cursor: Option<Cow<'a, str>>,
    #[serde(rename = "_UID", borrow, default)]
    uid: Field<'a>,
    #[serde(rename = "_EXE", borrow, default)]
    exe: Field<'a>,
    #[serde(rename = "_COMM", borrow, default)]
    comm: Field<'a>,
    #[serde(rename = "_SYSTEMD_UNIT", borrow, default)]
    unit: Field<'a>,
    #[serde(rename = "SYSLOG_IDENTIFIER", borrow, default)]
    identifier: Field<'a>,
}

impl Entry<'_> {
    fn sender(&self) -> Sender<'_> {
        Sender {
            uid: self.uid.get(),
            exe: self.exe.get(),
            unit: self.unit.get(),
            identifier: self.identifier.get(),
            comm: self.comm.get(),
        }
    }
}

/// A journal field that is a plain string, or `None` for anything else journalctl may print
/// (an array of bytes for binary data, an array of strings for a repeated field, null).
#[derive(Default)]
struct Field<'a>(Option<Cow<'a, str>>);

impl Field<'_> {
    fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a journal field")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(Field(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(Field(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Field(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Field(None))
            }
            fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
                Ok(Field(None))
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Self::Value, E> {
                Ok(Field(None))
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<Self::Value, E> {
                Ok(Field(None))
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Self::Value, E> {
                Ok(Field(None))
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Self::Value, E> {
                Ok(Field(None))
            }
        }
        d.deserialize_any(Visit)
    }
}

fn parse_entry(line: &[u8]) -> Option<Entry<'_>> {
    serde_json::from_slice(line).ok()
}

#[cfg(test)]
fn extract_cursor(line: &[u8]) -> Option<String> {
    parse_entry(line)?
        .cursor
        .filter(|c| valid_cursor(c))
        .map(Cow::into_owned)
}

/// Real cursors are `s=<hex>;i=<hex>;b=<hex>;m=<hex>;t=<hex>;x=<hex>`. Anything else is not
/// passed back to journalctl.
fn valid_cursor(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 512
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b';')
}

/// How one journalctl run ended.
enum RunEnd {
    /// Cancelled, or the line receiver is gone.
    Stop,
    /// journalctl exited (or its stdout closed, or it could not be started).
    Exited { reason: String, delivered: u64 },
}

pub(super) async fn run(
    cfg: JournalConfig,
    program: PathBuf,
    resume: Option<String>,
    trust: Trust,
    ctx: SourceCtx,
) {
    let started_at = SystemTime::now();
    let mut cursor = resume.filter(|c| {
        let ok = valid_cursor(c);
        if !ok {
            ctx.report(StatusEvent::Warning(format!(
                "ignoring invalid saved cursor {c:?}"
            )));
        }
        ok
    });
    let mut delay = cfg.restart_delay;
    let mut attempt = 0u32;
    loop {
        let args = command_args(&cfg, cursor.as_deref(), started_at);
        let launched = Instant::now();
        let used_cursor = cursor.is_some();
        let run = run_once(&cfg, &program, &args, &trust, &mut cursor, &ctx);
        let (reason, delivered) = match run.await {
            RunEnd::Stop => return ctx.report(StatusEvent::Stopped),
            RunEnd::Exited { reason, delivered } => (reason, delivered),
        };
        // A cursor journalctl cannot seek to (a damaged checkpoint, a cursor from another
        // journal) would make every restart fail the same way: drop it and fall back.
        if used_cursor && delivered == 0 && reason.contains("cursor") {
            ctx.report(StatusEvent::Warning(format!(
                "journalctl rejected the saved cursor; continuing without it ({reason})"
            )));
            cursor = None;
        }
        if launched.elapsed() >= HEALTHY_RUN {
            delay = cfg.restart_delay;
            attempt = 0;
        }
        attempt = attempt.saturating_add(1);
        ctx.counters.restarts.fetch_add(1, Ordering::Relaxed);
        ctx.report(StatusEvent::Restarting {
            attempt,
            delay,
            reason,
        });
        if ctx.sleep(delay).await == Flow::Stop {
            return ctx.report(StatusEvent::Stopped);
        }
        delay = (delay * 2).min(cfg.restart_delay_max);
    }
}

/// The full journalctl argument list for one run.
fn command_args(cfg: &JournalConfig, cursor: Option<&str>, started_at: SystemTime) -> Vec<String> {
    let mut args: Vec<String> = ["--follow", "--output=json", "--no-pager", "--all"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(dir) = &cfg.directory {
        args.push(format!("--directory={}", dir.display()));
    }
    match (cursor, cfg.start) {
        (Some(c), _) => {
            args.push(format!("--after-cursor={c}"));
            args.push("--no-tail".into());
        }
        (None, StartAt::Beginning) => args.push("--no-tail".into()),
        (None, StartAt::End) => {
            let since = started_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            args.push(format!(
                "--since=@{}.{:06}",
                since.as_secs(),
                since.subsec_micros()
            ));
            args.push("--no-tail".into());
        }
    }
    // `--` so that no match can ever be taken for an option.
    args.push("--".into());
    args.extend(cfg.matches.iter().cloned());
    args
}

async fn run_once(
    cfg: &JournalConfig,
    program: &Path,
    args: &[String],
    trust: &Trust,
    cursor: &mut Option<String>,
    ctx: &SourceCtx,
) -> RunEnd {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("SYSTEMD_COLORS", "0")
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return RunEnd::Exited {
                reason: format!("cannot start {}: {e}", program.display()),
                delivered: 0,
            };
        }
    };
    ctx.report(StatusEvent::Started {
        detail: format!("{} {}", program.display(), args.join(" ")),
    });

    let last_stderr = Arc::new(Mutex::new(String::new()));
    let stderr_task = child
        .stderr
        .take()
        .map(|err| tokio::spawn(log_stderr(err, ctx.id.clone(), last_stderr.clone())));
    let Some(mut stdout) = child.stdout.take() else {
        return RunEnd::Exited {
            reason: "journalctl has no stdout".into(),
            delivered: 0,
        };
    };

    let mut splitter = LineSplitter::new(cfg.max_line_bytes, 0);
    let mut delivered = 0u64;
    let end = 'read: loop {
        let read = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => break 'read None,
            read = splitter.read_from(&mut stdout) => read,
        };
        match read {
            Ok(0) => break 'read Some("journalctl closed its output".to_string()),
            Ok(_) => {
                while let Some(line) = splitter.next_line() {
                    if line.bytes.is_empty() {
                        continue;
                    }
                    let entry = parse_entry(&line.bytes);
                    match entry.as_ref().and_then(|e| e.cursor.as_deref()) {
                        Some(c) if valid_cursor(c) => *cursor = Some(c.to_owned()),
                        // A line without a cursor (not JSON, cut): deliver it anyway, with the
                        // previous position, so committing it changes nothing.
                        _ => {
                            tracing::debug!(source = %ctx.id, "journal line without a usable __CURSOR")
                        }
                    }
                    // Not JSON (cut): the parser counts it as unparsed. JSON that does not come
                    // from a mail server process: counted here and never parsed.
                    if let Some(entry) = &entry {
                        let sender = entry.sender();
                        if !trust.allows(&sender) {
                            ctx.untrusted(&sender);
                            continue;
                        }
                    }
                    let position = Position::Journal {
                        cursor: cursor.clone().unwrap_or_default(),
                    };
                    if ctx.deliver(line, position).await == Flow::Stop {
                        break 'read None;
                    }
                    delivered += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break 'read Some(format!("reading journalctl output: {e}")),
        }
    };
    let Some(why) = end else {
        stop_child(&mut child).await;
        return RunEnd::Stop;
    };
    // Output closed: collect the exit status (give it a moment, then make sure it is gone).
    let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => {
            stop_child(&mut child).await;
            "did not exit after closing its output; killed".into()
        }
    };
    if let Some(task) = stderr_task {
        let _ = tokio::time::timeout(Duration::from_millis(500), task).await;
    }
    let stderr = last_stderr.lock().map(|s| s.clone()).unwrap_or_default();
    let mut reason = format!("journalctl exited ({status}) after {delivered} entries");
    if why != "journalctl closed its output" {
        reason = format!("{why}; {reason}");
    }
    if !stderr.is_empty() {
        reason.push_str(&format!(": {stderr}"));
    }
    RunEnd::Exited { reason, delivered }
}

async fn stop_child(child: &mut Child) {
    // journalctl only reads; SIGKILL loses nothing.
    let _ = child.kill().await;
}

/// Logs journalctl's stderr and keeps its last line for the restart reason.
async fn log_stderr<R: AsyncRead + Unpin>(
    stderr: R,
    source: super::SourceId,
    last: Arc<Mutex<String>>,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line: String = line.chars().take(500).collect();
        tracing::warn!(%source, "journalctl: {line}");
        if let Ok(mut l) = last.lock() {
            *l = line;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_extraction() {
        let line =
            br#"{"MESSAGE":"x \" __CURSOR","__CURSOR":"s=ab;i=1;b=cd;m=2;t=3;x=4","_PID":"1"}"#;
        assert_eq!(
            extract_cursor(line).as_deref(),
            Some("s=ab;i=1;b=cd;m=2;t=3;x=4")
        );
        assert_eq!(extract_cursor(br#"{"MESSAGE":"no cursor"}"#), None);
        assert_eq!(extract_cursor(br#"{"__CURSOR":"--evil option"}"#), None);
        assert_eq!(extract_cursor(br#"{"__CURSOR":"s=1", "trunc"#), None);
        assert_eq!(extract_cursor(b"not json"), None);
        // Escaped but valid cursor text still works (Cow).
        assert_eq!(
            extract_cursor(br#"{"__CURSOR":"s\u003d1"}"#).as_deref(),
            Some("s=1")
        );
    }

    /// Entries shaped as journald writes them for Dovecot's log process on Debian, and for the
    /// same text sent with `logger -t dovecot` by the web server's user.
    #[test]
    fn trusted_fields_tell_the_mail_server_from_a_forgery() {
        use crate::source::trust::TrustConfig;
        let passwd = "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/sh\n";
        let trust = Trust::new(&TrustConfig::default(), passwd);
        let genuine = br#"{"__CURSOR":"s=1;i=2;b=3;m=4;t=5;x=6","MESSAGE":"auth: passwd-file(x@y,198.18.0.9): unknown user","SYSLOG_IDENTIFIER":"dovecot","_UID":"0","_GID":"0","_COMM":"log","_EXE":"/usr/lib/dovecot/log","_CMDLINE":"dovecot/log","_SYSTEMD_UNIT":"dovecot.service","_TRANSPORT":"syslog"}"#;
        let forged = br#"{"__CURSOR":"s=1;i=3;b=3;m=4;t=5;x=6","MESSAGE":"auth: passwd-file(x@y,198.18.0.9): unknown user","SYSLOG_IDENTIFIER":"dovecot","_UID":"33","_GID":"33","_COMM":"logger","_EXE":"/usr/bin/logger","_SYSTEMD_UNIT":"php8.2-fpm.service","_TRANSPORT":"syslog"}"#;
        let e = parse_entry(genuine).unwrap();
        assert!(trust.allows(&e.sender()));
        let e = parse_entry(forged).unwrap();
        assert!(!trust.allows(&e.sender()));
        assert!(e.sender().claims_mail_server());
        assert_eq!(e.cursor.as_deref(), Some("s=1;i=3;b=3;m=4;t=5;x=6"));
    }

    #[test]
    fn fields_that_are_not_strings_do_not_break_the_entry() {
        // journalctl prints binary or repeated fields as arrays; the cursor must survive them.
        let line = br#"{"__CURSOR":"s=1","MESSAGE":[104,105],"_EXE":[1,2],"_UID":["0","33"],"_COMM":null,"SYSLOG_IDENTIFIER":7}"#;
        let e = parse_entry(line).unwrap();
        assert_eq!(e.cursor.as_deref(), Some("s=1"));
        let sender = e.sender();
        assert_eq!(sender, Sender::default());
        let trust = Trust::new(&crate::source::TrustConfig::default(), "");
        assert!(!trust.allows(&sender), "no uid, no exe: not trusted");
    }

    #[test]
    fn matches_are_checked() {
        let ok = |v: &[&str]| check_matches(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        ok(DEFAULT_MATCHES).unwrap();
        ok(&[]).unwrap();
        ok(&["_SYSTEMD_UNIT=postfix@-.service"]).unwrap();
        assert!(ok(&["-u"]).is_err());
        assert!(ok(&["syslog_identifier=x"]).is_err());
        assert!(ok(&["=x"]).is_err());
        assert!(ok(&["+", "A=b"]).is_err());
        assert!(ok(&["A=b", "+"]).is_err());
    }

    #[test]
    fn start_arguments() {
        let cfg = JournalConfig {
            directory: Some("/j".into()),
            matches: vec!["A=b".into()],
            ..Default::default()
        };
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_757_470_000_042);
        let tail = |args: Vec<String>| args[4..].join(" ");
        assert_eq!(
            tail(command_args(&cfg, None, t)),
            "--directory=/j --since=@1795757470.000042 --no-tail -- A=b"
        );
        assert_eq!(
            tail(command_args(&cfg, Some("s=1"), t)),
            "--directory=/j --after-cursor=s=1 --no-tail -- A=b"
        );
        let cfg = JournalConfig {
            start: StartAt::Beginning,
            matches: vec![],
            ..Default::default()
        };
        assert_eq!(tail(command_args(&cfg, None, t)), "--no-tail --");
    }
}
