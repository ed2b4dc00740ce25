//! `detector parse`: run the parsers over log files (or stdin) and print one event per
//! recognised line.
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::event::Event;
use crate::parse::{Format, LineParser, Outcome};

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
    let mut parser = LineParser::new(args.format);
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
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| crate::Error::io(&name, e))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            match parser.parse_line(&buf, line_no) {
                Outcome::Event(ev) => {
                    let r = if args.json {
                        write_json(&mut out, &ev)
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
        "{} lines read, {} events, {} unparsed lines",
        s.lines,
        s.events,
        s.unparsed
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

fn write_json(out: &mut impl Write, ev: &Event) -> io::Result<()> {
    serde_json::to_writer(&mut *out, ev).map_err(io::Error::other)?;
    out.write_all(b"\n")
}

fn write_text(out: &mut impl Write, ev: &Event) -> io::Result<()> {
    let kind = serde_json::to_value(ev.kind).ok();
    let kind = kind.as_ref().and_then(|k| k.as_str()).unwrap_or("?");
    let service = match ev.service {
        crate::event::Service::Postfix => "postfix",
        crate::event::Service::Dovecot => "dovecot",
    };
    write!(
        out,
        "{} line {} {service} {kind} {}",
        ev.time.format("%Y-%m-%dT%H:%M:%S%.fZ"),
        ev.line,
        ev.ip
    )?;
    if let Some(p) = ev.protocol {
        let p = serde_json::to_value(p).ok();
        write!(
            out,
            " proto={}",
            p.as_ref().and_then(|p| p.as_str()).unwrap_or("?")
        )?;
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
