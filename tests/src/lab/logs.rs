//! Reading the lab's logs: the two log files, or the journal through `journalctl -o json`.
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{Lab, LogMode};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogOrigin {
    PostfixFile,
    DovecotFile,
    Journal,
}

#[derive(Clone, Debug)]
pub struct LogLine {
    pub origin: LogOrigin,
    /// The whole line (files), or `IDENTIFIER[PID]: MESSAGE` (journal, like `journalctl -o
    /// short` without time and host), so that one pattern matches both modes. Note that
    /// Dovecot's journal messages carry no "Info: " severity word:
    /// `dovecot: imap-login: Disconnected: ...`.
    pub text: String,
    /// The whole line (files), or just the MESSAGE field (journal).
    pub message: String,
    /// The journal entry (journal mode): `SYSLOG_IDENTIFIER`, `_PID`, `_SYSTEMD_UNIT`, ...
    pub fields: Option<Value>,
}

impl LogLine {
    /// A journal field as a string (journal mode).
    pub fn field(&self, name: &str) -> Option<String> {
        self.fields.as_ref()?.get(name).and_then(field_text)
    }
}

pub fn read_files(files: &[(LogOrigin, PathBuf)]) -> Result<Vec<LogLine>> {
    let mut lines = Vec::new();
    for (origin, path) in files {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let text = String::from_utf8_lossy(&bytes);
        // A line still being written (no newline yet) is left for the next read.
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        lines.extend(complete.lines().map(|l| LogLine {
            origin: *origin,
            text: l.to_string(),
            message: l.to_string(),
            fields: None,
        }));
    }
    Ok(lines)
}

pub fn read_journal(dir: &Path) -> Result<Vec<LogLine>> {
    let out = super::sys::run(
        Command::new("journalctl")
            .arg(format!("--directory={}", dir.display()))
            .args(["-o", "json", "--no-pager", "-q"]),
    )?;
    let mut lines = Vec::new();
    for raw in out.lines().filter(|l| !l.trim().is_empty()) {
        let entry: Value = serde_json::from_str(raw)
            .with_context(|| format!("journalctl printed a non-JSON line: {raw:?}"))?;
        let message = entry
            .get("MESSAGE")
            .and_then(field_text)
            .unwrap_or_default();
        let ident = entry.get("SYSLOG_IDENTIFIER").and_then(field_text);
        let pid = entry.get("SYSLOG_PID").and_then(field_text);
        let text = match (ident, pid) {
            (Some(i), Some(p)) => format!("{i}[{p}]: {message}"),
            (Some(i), None) => format!("{i}: {message}"),
            _ => message.clone(),
        };
        lines.push(LogLine {
            origin: LogOrigin::Journal,
            text,
            message,
            fields: Some(entry),
        });
    }
    Ok(lines)
}

/// journalctl prints a field as a string, or as an array of bytes when it is not UTF-8.
fn field_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => {
            let bytes: Vec<u8> = a
                .iter()
                .filter_map(|b| b.as_u64().map(|b| b as u8))
                .collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        _ => None,
    }
}

impl Lab {
    /// All log lines written so far (files, or the journal via `journalctl -o json`).
    pub fn log_lines(&self) -> Result<Vec<LogLine>> {
        read_logs(&self.state.dir, self.state.log_mode)
    }

    /// Waits until a log line satisfies `pred`, polling every 100 ms.
    pub fn wait_for_log(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&LogLine) -> bool,
    ) -> Result<LogLine> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_lines()?.into_iter().find(|l| pred(l)) {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                bail!("no matching log line within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until a log line contains every one of `parts`; the error lists the log.
    pub fn expect_log(&self, timeout: Duration, parts: &[&str]) -> Result<LogLine> {
        self.wait_for_log(timeout, |l| parts.iter().all(|p| l.text.contains(p)))
            .map_err(|_| {
                let lines = self.log_lines().unwrap_or_default();
                let dump: Vec<String> = lines.iter().map(|l| l.text.clone()).collect();
                anyhow::anyhow!(
                    "no log line contains all of {parts:?} within {timeout:?}; the log has:\n{}",
                    dump.join("\n")
                )
            })
    }
}

pub(super) fn read_logs(dir: &Path, mode: LogMode) -> Result<Vec<LogLine>> {
    match mode {
        LogMode::File => read_files(&[
            (LogOrigin::PostfixFile, dir.join("log/postfix.log")),
            (LogOrigin::DovecotFile, dir.join("log/dovecot.log")),
        ]),
        LogMode::Journal => read_journal(&dir.join("journal")),
    }
}
