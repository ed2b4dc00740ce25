//! `detector parse`: run the parsers over log files (or stdin) and print one event per
//! recognised line.
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::event::Event;
use crate::parse::{Format, LineParser, LocalZone, MAX_LINE_BYTES, Outcome, Reference};
use crate::source::read_capped_line;

/// Parse Postfix/Dovecot logs and print the events the detector would see.
///
/// Reads journal JSON (`journalctl -o json`), syslog files (`/var/log/mail.log`, RFC 3164 or
/// RFC 3339 timestamps), Postfix `maillog_file` and Dovecot `log_path` files. Year-less
/// timestamps get the current year (the previous one for lines that would be more than a day
/// in the future). A summary (lines, events, unparsed) goes to stderr.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Log files to read in order; `-` or nothing reads stdin.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Input envelope: detect per line, or force one.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,

    /// Print one JSON object per event (`time`, `service`, `kind`, `ip`, `user`, `recipient`,
    /// `protocol`, `line`, plus `failures`, `session`, `smtp`).
    #[arg(long)]
    pub json: bool,

    /// Also print lines that looked like ours but could not be parsed (to stderr, prefixed
    /// with `unparsed <line>:`).
    #[arg(long)]
    pub show_unknown: bool,
}

pub fn run(args: Args) -> crate::Result<ExitCode> {
    // Check every file first so a typo fails before any output.
    let mut inputs = Vec::new();
    if args.files.is_empty() {
        inputs.push(None);
    }
    for path in &args.files {
        if path.as_os_str() == "-" {
            inputs.push(None);
        } else {
            let f = File::open(path).map_err(|e| crate::Error::io(path, e))?;
            inputs.push(Some((path.clone(), f)));
        }
    }
    // Reading files: "now" for year inference is the start of the run; local times are the
    // host's zone (TZ=Europe/Berlin detector parse ... reads another zone's logs).
    let mut parser = LineParser::with_zone(
        args.format,
        Reference::Fixed(chrono::Utc::now()),
        LocalZone::system(),
    );
    let mut json_buf = Vec::with_capacity(512);
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let stderr = io::stderr();
    let mut line_no = 0u64;
    let mut buf = Vec::with_capacity(4096);
    for input in inputs {
        let (name, reader): (PathBuf, Box<dyn BufRead>) = match input {
            Some((p, f)) => (p, Box::new(BufReader::with_capacity(1 << 16, f))),
            None => (
                "-".into(),
                Box::new(BufReader::with_capacity(1 << 16, io::stdin())),
            ),
        };
        let mut reader = reader;
        while let Some(cut) = read_capped_line(&mut reader, &mut buf, MAX_LINE_BYTES)
            .map_err(|e| crate::Error::io(&name, e))?
        {
            line_no += 1;
            let outcome = if cut {
                parser.skip_truncated()
            } else {
                parser.parse_line(&buf, line_no)
            };
            match outcome {
                Outcome::Event(ev) => {
                    let r = if args.json {
                        write_json(&mut out, &ev, &mut json_buf)
                    } else {
                        write_text(&mut out, &ev)
                    };
                    if let Err(e) = r {
                        return broken_pipe_or(e);
                    }
                }
                Outcome::Unparsed if args.show_unknown => {
                    let text = String::from_utf8_lossy(&buf[..buf.len().min(4096)]);
                    let _ = writeln!(stderr.lock(), "unparsed {line_no}: {}", text.trim_end());
                }
                _ => {}
            }
        }
    }
    if let Err(e) = out.flush() {
        return broken_pipe_or(e);
    }
    let s = parser.stats();
    let _ = writeln!(
        stderr.lock(),
        "{} lines read, {} events, {} unparsed lines ({} longer than {MAX_LINE_BYTES} bytes, \
         not parsed)",
        s.lines,
        s.events,
        s.unparsed,
        s.truncated
    );
    Ok(ExitCode::SUCCESS)
}

/// `detector parse ... | head` is normal use: stop quietly.
fn broken_pipe_or(e: io::Error) -> crate::Result<ExitCode> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(crate::Error::io("stdout", e))
    }
}

/// Writes the event as one JSON line, byte-identical to `serde_json::to_string(ev)` (tested)
/// but without serde's per-field formatting cost: output dominates `parse --json` time.
fn write_json(out: &mut impl Write, ev: &Event, buf: &mut Vec<u8>) -> io::Result<()> {
    use std::io::Write as _;
    buf.clear();
    buf.extend_from_slice(b"{\"time\":\"");
    push_time(buf, ev);
    buf.extend_from_slice(b"\",\"service\":\"");
    buf.extend_from_slice(ev.service.name().as_bytes());
    buf.extend_from_slice(b"\",\"kind\":\"");
    buf.extend_from_slice(ev.kind.name().as_bytes());
    buf.extend_from_slice(b"\",\"ip\":\"");
    let _ = write!(buf, "{}", ev.ip);
    buf.extend_from_slice(b"\",\"user\":");
    push_opt_str(buf, ev.user.as_deref());
    buf.extend_from_slice(b",\"recipient\":");
    push_opt_str(buf, ev.recipient.as_deref());
    buf.extend_from_slice(b",\"protocol\":");
    match ev.protocol {
        Some(p) => {
            buf.push(b'"');
            buf.extend_from_slice(p.name().as_bytes());
            buf.push(b'"');
        }
        None => buf.extend_from_slice(b"null"),
    }
    let _ = write!(buf, ",\"line\":{}", ev.line);
    if let Some(s) = &ev.session {
        buf.extend_from_slice(b",\"session\":");
        push_opt_str(buf, Some(s));
    }
    let _ = write!(buf, ",\"failures\":{}", ev.failures);
    if let Some(c) = &ev.smtp {
        let _ = write!(
            buf,
            ",\"smtp\":{{\"rcpt_ok\":{},\"data_ok\":{},\"data_tried\":{},\"auth_ok\":{},\"auth_tried\":{},\"quit\":{},\"rset\":{}}}",
            c.rcpt_ok, c.data_ok, c.data_tried, c.auth_ok, c.auth_tried, c.quit, c.rset
        );
    }
    buf.extend_from_slice(b"}\n");
    out.write_all(buf)
}

/// RFC 3339 in UTC with `Z` and 0/3/6/9 fraction digits, as chrono's serde does.
fn push_time(buf: &mut Vec<u8>, ev: &Event) {
    use chrono::{Datelike, Timelike};
    use std::io::Write as _;
    let t = ev.time;
    let _ = write!(
        buf,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let n = t.nanosecond();
    if n == 0 {
    } else if n.is_multiple_of(1_000_000) {
        let _ = write!(buf, ".{:03}", n / 1_000_000);
    } else if n.is_multiple_of(1_000) {
        let _ = write!(buf, ".{:06}", n / 1_000);
    } else {
        let _ = write!(buf, ".{n:09}");
    }
    buf.push(b'Z');
}

fn push_opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
    let Some(s) = s else {
        buf.extend_from_slice(b"null");
        return;
    };
    if s.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Rare (attacker-chosen names): let serde_json do the escaping.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

fn write_text(out: &mut impl Write, ev: &Event) -> io::Result<()> {
    let kind = ev.kind.name();
    let service = ev.service.name();
    write!(
        out,
        "{} line {} {service} {kind} {}",
        ev.time.format("%Y-%m-%dT%H:%M:%S%.fZ"),
        ev.line,
        ev.ip
    )?;
    if let Some(p) = ev.protocol {
        write!(out, " proto={}", p.name())?;
    }
    if let Some(u) = &ev.user {
        write!(out, " user={u:?}")?;
    }
    if let Some(r) = &ev.recipient {
        write!(out, " rcpt={r:?}")?;
    }
    if ev.failures > 0 {
        write!(out, " failures={}", ev.failures)?;
    }
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Format;

    /// The hand-written JSON is exactly what serde produces for every event of the lab sample
    /// and for escaped names and sub-second times.
    #[test]
    fn fast_json_matches_serde() {
        let log = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/lab/journal-mode.json"
        ));
        let mut p = LineParser::new(Format::Auto);
        let mut events: Vec<Event> = log
            .lines()
            .enumerate()
            .filter_map(|(i, l)| match p.parse_line(l.as_bytes(), i as u64 + 1) {
                Outcome::Event(e) => Some(e),
                _ => None,
            })
            .collect();
        assert!(events.len() > 20);
        let mut odd = events[0].clone();
        odd.user = Some("a\"b\\c\u{1}d\u{e9}".into());
        odd.time = chrono::DateTime::from_timestamp(1_800_000_000, 123_000_000).unwrap();
        events.push(odd.clone());
        odd.time = chrono::DateTime::from_timestamp(1_800_000_000, 123_456_789).unwrap();
        events.push(odd);
        let mut buf = Vec::new();
        for e in &events {
            let mut out = Vec::new();
            write_json(&mut out, e, &mut buf).unwrap();
            let want = serde_json::to_string(e).unwrap() + "\n";
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
