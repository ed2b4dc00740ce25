//! Parsers: one input line (any supported envelope) -> at most one typed [`Event`].
//!
//! The public contract other modules rely on (keep these names and signatures):
//! - [`LineParser::new`] / [`LineParser::parse_line`]
//! - [`Outcome`]
//! - [`ParseStats`]
//!
//! Layout: [`envelope`] unwraps journal JSON / syslog / Dovecot log_path / bare lines,
//! `postfix` and `dovecot` turn messages into records, [`dedup`] holds the cross-line state
//! (failure de-duplication, Postfix connection and queue tracking). No regex anywhere: fixed
//! prefixes and `memchr`, bounded work per line.
use chrono::{DateTime, FixedOffset, Utc};

use crate::event::{Event, EventKind, Service};

pub mod dedup;
mod dovecot;
pub mod envelope;
mod postfix;
mod record;
mod text;
pub mod time;
pub mod zone;

use record::{Link, Parsed, Record};
pub use time::Reference;
pub use zone::LocalZone;

/// Longer lines are not parsed at all (counted as truncated): the one limit the sources cut
/// at, defined beside them.
pub use crate::source::MAX_LINE_BYTES;

/// Input envelope: how a line wraps the daemon's message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Detect per line.
    #[default]
    Auto,
    /// `journalctl -o json` objects.
    JournalJson,
    /// Syslog (RFC 3164 / RFC 3339 timestamps), Postfix maillog_file, Dovecot log_path.
    Syslog,
}

/// What one line turned out to be.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// A recognised Postfix/Dovecot line.
    Event(Event),
    /// A well-formed line that is not ours or carries nothing we use.
    Ignored,
    /// A line we could not make sense of (junk, truncated, unknown shape).
    Unparsed,
}

/// Counters for the summary line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    pub lines: u64,
    pub events: u64,
    pub unparsed: u64,
    /// Lines that were cut (by a source) or are longer than [`MAX_LINE_BYTES`]: not parsed,
    /// since what is left of them could name another address than the whole line. Also
    /// counted in `unparsed`.
    pub truncated: u64,
}

/// Stateful line parser: holds year inference and the cross-line de-duplication state.
///
/// Timestamps without an offset (RFC 3164, Postfix `maillog_file`, Dovecot `log_path`) are
/// wall-clock times of the host's zone, each converted with the zone's rules for its own
/// instant ([`LocalZone`]; [`LineParser::with_zone`] lets callers choose the zone).
#[derive(Debug)]
pub struct LineParser {
    format: Format,
    stats: ParseStats,
    reference: Reference,
    zone: LocalZone,
    state: dedup::State,
}

impl Default for LineParser {
    fn default() -> Self {
        LineParser::new(Format::Auto)
    }
}

impl LineParser {
    /// A parser for live input: the year of year-less timestamps comes from the wall clock,
    /// local times are the host's zone.
    pub fn new(format: Format) -> Self {
        LineParser::with_zone(format, Reference::WallClock, LocalZone::system())
    }

    /// A parser with an explicit reference time (year inference, time of header-less lines)
    /// and one fixed offset for timestamps that carry none (tests, UTC hosts).
    pub fn with_reference(format: Format, reference: Reference, naive_offset: FixedOffset) -> Self {
        LineParser::with_zone(format, reference, LocalZone::fixed(naive_offset))
    }

    /// A parser with an explicit reference time and the zone of timestamps without offset.
    pub fn with_zone(format: Format, reference: Reference, zone: LocalZone) -> Self {
        LineParser {
            format,
            stats: ParseStats::default(),
            reference,
            zone,
            state: dedup::State::default(),
        }
    }

    /// Counts a line that a source had to cut, without parsing it (see
    /// [`ParseStats::truncated`]); always [`Outcome::Unparsed`].
    pub fn skip_truncated(&mut self) -> Outcome {
        self.stats.lines += 1;
        self.stats.truncated += 1;
        self.stats.unparsed += 1;
        Outcome::Unparsed
    }

    /// Parses one line (without its trailing newline). `line_no` is 1-based.
    pub fn parse_line(&mut self, line: &[u8], line_no: u64) -> Outcome {
        if line.len() > MAX_LINE_BYTES {
            return self.skip_truncated();
        }
        self.stats.lines += 1;
        let outcome = self.parse_inner(line, line_no);
        match outcome {
            Outcome::Event(_) => self.stats.events += 1,
            Outcome::Unparsed => self.stats.unparsed += 1,
            Outcome::Ignored => {}
        }
        outcome
    }

    pub fn stats(&self) -> ParseStats {
        self.stats
    }

    /// Entries held in the cross-line state (bounded; see [`dedup`]).
    pub fn state_len(&self) -> usize {
        self.state.len()
    }

    fn parse_inner(&mut self, line: &[u8], line_no: u64) -> Outcome {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Outcome::Ignored;
        }
        let json = match self.format {
            Format::JournalJson => true,
            Format::Syslog => false,
            Format::Auto => envelope::looks_like_json(line),
        };
        // `docker compose logs`: the container's own line follows the service prefix.
        let line = if json {
            line
        } else {
            envelope::strip_compose_prefix(line)
        };
        let env = if json {
            match envelope::journal(line) {
                Some(e) => e,
                None => return Outcome::Unparsed,
            }
        } else {
            envelope::syslog(line, &self.reference, &mut self.zone)
        };
        let parsed = dispatch(&env, line);
        let time = (env.time.filter(time::plausible)).unwrap_or_else(|| self.reference.now());
        self.finish(parsed, time, env.pid, line_no)
    }

    fn finish(
        &mut self,
        parsed: Parsed,
        time: DateTime<Utc>,
        pid: Option<u32>,
        line_no: u64,
    ) -> Outcome {
        let rec = match parsed {
            Parsed::Record(r) => r,
            Parsed::QueueActive(qid) => {
                return match self.state.queue_take(&qid) {
                    Some((ip, protocol)) => {
                        let mut r = Record::new(Service::Postfix, EventKind::MessageAccepted, ip);
                        r.protocol = protocol;
                        Outcome::Event(event(r, time, line_no, None, 0))
                    }
                    None => Outcome::Ignored,
                };
            }
            Parsed::QueueRemoved(qid) => {
                self.state.queue_take(&qid);
                return Outcome::Ignored;
            }
            Parsed::Ignored => return Outcome::Ignored,
            Parsed::Unparsed => return Outcome::Unparsed,
        };
        let st = &mut self.state;
        let (failures, session) = match &rec.link {
            Link::None => (rec.attempts, None),
            Link::DovecotAuth { session: Some(s) } => {
                (st.dovecot_auth_session(s, time), Some(s.clone()))
            }
            Link::DovecotAuth { session: None } => {
                (st.dovecot_auth_no_session(rec.ip, &rec.user, time), None)
            }
            Link::DovecotLogin { session } => {
                let f = if rec.attempts > 0 {
                    st.dovecot_login(session.as_deref(), rec.ip, &rec.user, rec.attempts, time)
                } else {
                    0
                };
                (f, session.clone())
            }
            Link::PostfixConnect => {
                st.postfix_connect(pid, rec.ip, time);
                (0, pid_session(pid))
            }
            Link::PostfixSasl => (
                st.postfix_sasl(pid, rec.ip, &rec.user, rec.attempts, time),
                pid_session(pid),
            ),
            Link::PostfixDisconnect => (
                st.postfix_disconnect(pid, rec.ip, rec.attempts, time),
                pid_session(pid),
            ),
            Link::PostfixQueue(qid) => {
                st.queue_client(qid.clone(), rec.ip, rec.protocol, time);
                (0, pid_session(pid))
            }
        };
        Outcome::Event(event(rec, time, line_no, session, failures))
    }
}

/// `pid:<n>`, written without `core::fmt` (once per Postfix line).
fn pid_session(pid: Option<u32>) -> Option<String> {
    let pid = pid?;
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut v = pid;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut s = String::with_capacity(4 + digits.len() - i);
    s.push_str("pid:");
    s.extend(digits[i..].iter().map(|&d| char::from(d)));
    Some(s)
}

fn event(
    r: Record,
    time: DateTime<Utc>,
    line: u64,
    session: Option<String>,
    failures: u32,
) -> Event {
    let failure_kind = matches!(r.kind, EventKind::AuthFailure | EventKind::AuthUnknownUser);
    Event {
        time,
        service: r.service,
        kind: r.kind,
        ip: r.ip,
        user: r.user,
        recipient: r.recipient,
        protocol: r.protocol,
        line,
        session,
        failures: if failure_kind { failures } else { 0 },
        smtp: r.smtp,
        peer: r.peer,
    }
}

/// Routes the message to the daemon parser its tag names.
fn dispatch(env: &envelope::Envelope<'_>, line: &[u8]) -> Parsed {
    let msg: &[u8] = &env.message;
    if let Some(id) = env.ident.as_deref() {
        if id.starts_with(b"postfix") && id.contains(&b'/') {
            return postfix::parse(id, msg);
        }
        if dovecot::is_dovecot_ident(id) {
            return dovecot::parse(Some(id), msg);
        }
        if env.has_header {
            return Parsed::Ignored;
        }
    } else if env.has_header {
        return dovecot::parse(None, msg);
    }
    // A bare message (no timestamp): a Dovecot process prefix, or an smtpd message; anything
    // else without a header is junk to us.
    match dovecot::parse(None, line) {
        Parsed::Ignored => match postfix::parse_bare(line) {
            Parsed::Ignored => Parsed::Unparsed,
            p => p,
        },
        p => p,
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
