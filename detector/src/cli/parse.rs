//! `detector parse`: run the parsers over log files (or stdin) and print one event per
//! recognised line.
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::event::Event;
use crate::parse::{Format, LineParser, LocalZone, MAX_LINE_BYTES, Outcome, Reference};
use crate::source::CappedLines;

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
    // Output is built in one buffer and written in large pieces; stdout is locked once.
    let mut out = Output::new(io::stdout().lock());
    let stderr = io::stderr();
    let mut line_no = 0u64;
    for input in inputs {
        let (name, reader): (PathBuf, Box<dyn Read>) = match input {
            Some((p, f)) => (p, Box::new(f)),
            None => ("-".into(), Box::new(io::stdin().lock())),
        };
        let mut lines = CappedLines::new(reader, MAX_LINE_BYTES);
        while let Some((line, cut)) = lines.next_line().map_err(|e| crate::Error::io(&name, e))? {
            line_no += 1;
            let outcome = if cut {
                parser.skip_truncated()
            } else {
                parser.parse_line(line, line_no)
            };
            match outcome {
                Outcome::Event(ev) => {
                    if args.json {
                        out.json.push(&mut out.buf, &ev);
                    } else {
                        write_text(&mut out.buf, &ev);
                    }
                    if let Err(e) = out.flush_if_full() {
                        return broken_pipe_or(e);
                    }
                }
                Outcome::Unparsed if args.show_unknown => {
                    let text = String::from_utf8_lossy(&line[..line.len().min(4096)]);
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

/// Events as text, flushed to stdout in large writes.
struct Output<W: Write> {
    w: W,
    buf: Vec<u8>,
    json: JsonWriter,
}

/// Bytes gathered before one write to stdout.
const OUTPUT_CHUNK: usize = 64 * 1024;

impl<W: Write> Output<W> {
    fn new(w: W) -> Self {
        Output {
            w,
            buf: Vec::with_capacity(OUTPUT_CHUNK + 4096),
            json: JsonWriter::default(),
        }
    }

    fn flush_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() >= OUTPUT_CHUNK {
            self.w.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        self.w.flush()
    }
}

/// Writes events as JSON lines, byte-identical to `serde_json::to_string(ev)` (tested) but
/// without serde's and `core::fmt`'s per-field cost: output dominates `parse --json` time.
/// Logs repeat one second for many lines, so the text of the last second is kept.
#[derive(Default)]
struct JsonWriter {
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    second_text: Option<(i64, [u8; 19])>,
}

impl JsonWriter {
    fn push(&mut self, buf: &mut Vec<u8>, ev: &Event) {
        buf.extend_from_slice(b"{\"time\":\"");
        self.push_time(buf, ev.time);
        buf.extend_from_slice(b"\",\"service\":\"");
        buf.extend_from_slice(ev.service.name().as_bytes());
        buf.extend_from_slice(b"\",\"kind\":\"");
        buf.extend_from_slice(ev.kind.name().as_bytes());
        buf.extend_from_slice(b"\",\"ip\":\"");
        push_ip(buf, ev.ip);
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
        buf.extend_from_slice(b",\"line\":");
        push_u64(buf, ev.line);
        if let Some(s) = &ev.session {
            buf.extend_from_slice(b",\"session\":");
            push_opt_str(buf, Some(s));
        }
        buf.extend_from_slice(b",\"failures\":");
        push_u64(buf, ev.failures.into());
        if let Some(c) = &ev.smtp {
            let fields: [(&[u8], u32); 5] = [
                (b",\"smtp\":{\"rcpt_ok\":", c.rcpt_ok),
                (b",\"data_ok\":", c.data_ok),
                (b",\"data_tried\":", c.data_tried),
                (b",\"auth_ok\":", c.auth_ok),
                (b",\"auth_tried\":", c.auth_tried),
            ];
            for (name, v) in fields {
                buf.extend_from_slice(name);
                push_u64(buf, v.into());
            }
            buf.extend_from_slice(b",\"quit\":");
            buf.extend_from_slice(if c.quit { b"true" } else { b"false" });
            buf.extend_from_slice(b",\"rset\":");
            push_u64(buf, c.rset.into());
            buf.push(b'}');
        }
        buf.extend_from_slice(b"}\n");
    }

    /// RFC 3339 in UTC with `Z` and 0/3/6/9 fraction digits, as chrono's serde does.
    fn push_time(&mut self, buf: &mut Vec<u8>, t: chrono::DateTime<chrono::Utc>) {
        use chrono::{Datelike, Timelike};
        let second = t.timestamp();
        if t.nanosecond() >= 1_000_000_000 || !(0..=9999).contains(&t.year()) {
            // A leap second or a year of more than four digits: never from a log line (their
            // times are 1970..=9999 and have no leap seconds); chrono's own text, quotes off.
            let text = serde_json::to_string(&t).unwrap_or_default();
            let text = text.trim_matches('"');
            buf.extend_from_slice(text.as_bytes());
            return;
        }
        match self.second_text {
            Some((s, text)) if s == second => buf.extend_from_slice(&text),
            _ => {
                let mut text = [0u8; 19];
                let two = |v: u32| [b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8];
                let year = t.year() as u32;
                text[..2].copy_from_slice(&two(year / 100));
                text[2..4].copy_from_slice(&two(year % 100));
                text[4] = b'-';
                text[5..7].copy_from_slice(&two(t.month()));
                text[7] = b'-';
                text[8..10].copy_from_slice(&two(t.day()));
                text[10] = b'T';
                text[11..13].copy_from_slice(&two(t.hour()));
                text[13] = b':';
                text[14..16].copy_from_slice(&two(t.minute()));
                text[16] = b':';
                text[17..19].copy_from_slice(&two(t.second()));
                buf.extend_from_slice(&text);
                self.second_text = Some((second, text));
            }
        }
        let n = t.nanosecond();
        let digits = if n == 0 {
            0
        } else if n.is_multiple_of(1_000_000) {
            3
        } else if n.is_multiple_of(1_000) {
            6
        } else {
            9
        };
        if digits > 0 {
            buf.push(b'.');
            let frac = n / 10u32.pow(9 - digits);
            for k in (0..digits).rev() {
                buf.push(b'0' + (frac / 10u32.pow(k) % 10) as u8);
            }
        }
        buf.push(b'Z');
    }
}

/// Decimal digits of `v`. Written into a fixed array that is appended whole and cut back: a
/// fixed-size copy is a few moves, a variable-length one a call to `memcpy`.
fn push_u64(buf: &mut Vec<u8>, v: u64) {
    if v < 10 {
        buf.push(b'0' + v as u8);
        return;
    }
    let mut digits = [0u8; 20];
    let n = decimal_len(v);
    let mut rest = v;
    for d in digits[..n].iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let len = buf.len();
    buf.extend_from_slice(&digits);
    buf.truncate(len + n);
}

fn decimal_len(v: u64) -> usize {
    let mut n = 1;
    let mut p = 10u64;
    while n < 20 && v >= p {
        n += 1;
        p = p.saturating_mul(10);
    }
    n
}

/// The address as `Display` writes it; IPv4 by hand, IPv6 (its zero-run rules) by `std`.
fn push_ip(buf: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = [0u8; 16];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            let len = buf.len();
            buf.extend_from_slice(&text);
            buf.truncate(len + n);
        }
        v6 => {
            let _ = write!(buf, "{v6}");
        }
    }
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

fn write_text(out: &mut Vec<u8>, ev: &Event) {
    let kind = ev.kind.name();
    let service = ev.service.name();
    let _ = write!(
        out,
        "{} line {} {service} {kind} {}",
        ev.time.format("%Y-%m-%dT%H:%M:%S%.fZ"),
        ev.line,
        ev.ip
    );
    if let Some(p) = ev.protocol {
        let _ = write!(out, " proto={}", p.name());
    }
    if let Some(u) = &ev.user {
        let _ = write!(out, " user={u:?}");
    }
    if let Some(r) = &ev.recipient {
        let _ = write!(out, " rcpt={r:?}");
    }
    if ev.failures > 0 {
        let _ = write!(out, " failures={}", ev.failures);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Format;

    /// Every line of the fixture corpus: the lab samples and the annotated upstream lines.
    fn corpus_lines() -> Vec<String> {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
        let mut lines = Vec::new();
        for lab in [
            "lab/journal-mode.json",
            "lab/journal-mode.short-iso-precise.log",
            "lab/file-mode.log",
        ] {
            let text = std::fs::read_to_string(format!("{fixtures}/{lab}")).unwrap();
            lines.extend(text.lines().map(str::to_owned));
        }
        for rows in [
            "corpus/expectations.jsonl",
            "corpus/expectations-other-mail.jsonl",
        ] {
            let text = std::fs::read_to_string(format!("{fixtures}/{rows}")).unwrap();
            for row in text.lines() {
                let v: serde_json::Value = serde_json::from_str(row).unwrap();
                lines.push(v["line"].as_str().unwrap().to_owned());
            }
        }
        lines
    }

    /// The hand-written JSON is exactly what serde produces for every event of the fixture
    /// corpus (in order, so the kept second is reused and replaced), and for escaped names,
    /// IPv6 and IPv4 edge addresses, sub-second and leap-second times, and counters.
    #[test]
    fn fast_json_matches_serde_on_the_fixture_corpus() {
        let reference = Reference::Fixed("2026-11-27T06:00:00Z".parse().unwrap());
        let mut p = LineParser::with_zone(Format::Auto, reference, LocalZone::system());
        let mut events: Vec<Event> = corpus_lines()
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match p.parse_line(l.as_bytes(), i as u64 + 1) {
                Outcome::Event(e) => Some(e),
                _ => None,
            })
            .collect();
        assert!(events.len() > 300, "{}", events.len());
        assert!(events.iter().any(|e| e.smtp.is_some()));
        assert!(events.iter().any(|e| e.session.is_some()));
        assert!(events.iter().any(|e| e.ip.is_ipv6()));
        let mut odd = events[0].clone();
        odd.user = Some("a\"b\\c\u{1}d\u{e9}".into());
        odd.line = u64::MAX;
        odd.failures = u32::MAX;
        for line in [
            0,
            9,
            10,
            99,
            100,
            999_999,
            1_000_000,
            10_000_000_000_000_000_000,
        ] {
            let mut e = odd.clone();
            e.line = line;
            events.push(e);
        }
        for (secs, nanos) in [
            (1_800_000_000, 123_000_000),
            (1_800_000_000, 123_456_789),
            (1_800_000_000, 123_456_000),
            (1_800_000_000, 0),
            (1_800_000_059, 1_500_000_000),
            (0, 7),
            (253_402_300_799, 999_999_999),
        ] {
            odd.time = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
            events.push(odd.clone());
        }
        for secs in [-62_198_755_200, -62_198_755_201, 253_402_300_800] {
            odd.time = chrono::DateTime::from_timestamp(secs, 0).unwrap();
            events.push(odd.clone());
        }
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "::",
            "2001:db8::1:0:0:1",
        ] {
            odd.ip = ip.parse().unwrap();
            events.push(odd.clone());
        }
        odd.smtp = Some(crate::event::SmtpCounters {
            rcpt_ok: 1,
            data_ok: 0,
            data_tried: u32::MAX,
            auth_ok: 10,
            auth_tried: 100,
            quit: true,
            rset: 7,
        });
        events.push(odd);
        let mut json = JsonWriter::default();
        for e in &events {
            let mut out = Vec::new();
            json.push(&mut out, e);
            let want = serde_json::to_string(e).unwrap() + "\n";
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
