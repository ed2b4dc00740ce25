//! The Postfix policy delegation protocol (SMTPD_POLICY_README): a request is `name=value`
//! lines ended by an empty line; the reply is one `action=...` line and an empty line; the
//! connection stays open for the next request.
//!
//! Every value is attacker-influenced (HELO, sender and recipient come from the SMTP client,
//! through Postfix), so reading is bounded: a line longer than [`MAX_LINE`] or a request with
//! more than [`MAX_ATTRS`] attributes is malformed (answered `DUNNO`, its content unused), and
//! a request longer than [`MAX_REQUEST`] ends the connection, since where the next request
//! starts can no longer be trusted.
use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest attribute line (without its newline). Postfix bounds SMTP command lines at 2048
/// bytes (`line_length_limit`); certificate subjects may be longer.
pub const MAX_LINE: usize = 4096;
/// Most attributes in one request. Postfix 3.7 sends about 40.
pub const MAX_ATTRS: usize = 128;
/// Most bytes in one request. A peer past this is not Postfix: the connection is closed.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The attributes `detector` uses; the others are read and ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `smtpd_access_policy` for every request Postfix's SMTP server sends.
    pub request: Option<String>,
    /// `CONNECT`, `EHLO`, `HELO`, `MAIL`, `RCPT`, `DATA`, `BDAT`, `END-OF-MESSAGE`, `VRFY`,
    /// `ETRN`.
    pub protocol_state: Option<String>,
    pub protocol_name: Option<String>,
    pub client_address: Option<String>,
    /// `unknown` when the client has no forward-confirmed reverse DNS name.
    pub client_name: Option<String>,
    pub client_port: Option<String>,
    pub helo_name: Option<String>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub sasl_username: Option<String>,
    /// `PID.SECONDS.MICROSECONDS.SEQ` (hex), new at each MAIL FROM: identifies one mail
    /// transaction, and its first field is the smtpd process id the log lines carry.
    pub instance: Option<String>,
    pub queue_id: Option<String>,
    pub server_port: Option<String>,
}

/// What one read from the connection gave.
// Made once per request and matched in place; a Box would add an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    Request(Request),
    /// A request that broke a bound or the syntax; answer `DUNNO` and go on.
    Malformed(&'static str),
    /// The peer closed the connection (a partial request is dropped).
    Closed,
    /// More than [`MAX_REQUEST`] bytes without an empty line: close the connection.
    TooLarge,
}

/// A `DUNNO`, `REJECT` or `450` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Dunno,
    Reject,
    Defer,
}

impl Verdict {
    /// The complete reply, empty line included.
    pub fn reply(self) -> &'static [u8] {
        match self {
            Verdict::Dunno => b"action=DUNNO\n\n",
            Verdict::Reject => b"action=REJECT 5.7.1 Access denied\n\n",
            Verdict::Defer => b"action=450 4.7.1 Try again later\n\n",
        }
    }

    /// The metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Dunno => "dunno",
            Verdict::Reject => "reject",
            Verdict::Defer => "defer",
        }
    }
}

/// Reads one request. `line` is a buffer reused between calls.
pub async fn read_request<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> io::Result<Read> {
    let mut req = Request::default();
    let mut attrs = 0usize;
    let mut total = 0usize;
    let mut problem: Option<&'static str> = None;
    loop {
        line.clear();
        let n = read_bounded_line(reader, line, &mut total).await?;
        match n {
            LineRead::Eof => return Ok(Read::Closed),
            LineRead::TooLarge => return Ok(Read::TooLarge),
            LineRead::Overlong => {
                problem.get_or_insert("line too long");
                continue;
            }
            LineRead::Line => {}
        }
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        if text.is_empty() {
            return Ok(match problem {
                Some(p) => Read::Malformed(p),
                None if attrs == 0 => Read::Malformed("empty request"),
                None => Read::Request(req),
            });
        }
        attrs += 1;
        if attrs > MAX_ATTRS {
            problem.get_or_insert("too many attributes");
            continue;
        }
        let Some(eq) = memchr::memchr(b'=', text) else {
            problem.get_or_insert("line without '='");
            continue;
        };
        let (name, value) = (&text[..eq], &text[eq + 1..]);
        let slot = match name {
            b"request" => &mut req.request,
            b"protocol_state" => &mut req.protocol_state,
            b"protocol_name" => &mut req.protocol_name,
            b"client_address" => &mut req.client_address,
            b"client_name" => &mut req.client_name,
            b"client_port" => &mut req.client_port,
            b"helo_name" => &mut req.helo_name,
            b"sender" => &mut req.sender,
            b"recipient" => &mut req.recipient,
            b"sasl_username" => &mut req.sasl_username,
            b"instance" => &mut req.instance,
            b"queue_id" => &mut req.queue_id,
            b"server_port" => &mut req.server_port,
            _ => continue,
        };
        *slot = Some(String::from_utf8_lossy(value).into_owned());
    }
}

enum LineRead {
    Line,
    /// Longer than [`MAX_LINE`]; skipped up to its newline.
    Overlong,
    Eof,
    TooLarge,
}

/// Reads up to a newline (not kept) into `line`, at most [`MAX_LINE`] bytes of it; counts
/// every byte in `total` and stops at [`MAX_REQUEST`].
async fn read_bounded_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    total: &mut usize,
) -> io::Result<LineRead> {
    let mut overlong = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(LineRead::Eof);
        }
        let (chunk, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let used = done.unwrap_or(chunk.len());
        *total += used;
        if !overlong {
            if line.len() + chunk.len() > MAX_LINE {
                overlong = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        reader.consume(used);
        if *total > MAX_REQUEST {
            return Ok(LineRead::TooLarge);
        }
        if done.is_some() {
            return Ok(if overlong {
                LineRead::Overlong
            } else {
                LineRead::Line
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn read_all(input: &[u8]) -> Vec<Read> {
        let mut r = BufReader::with_capacity(64, input);
        let mut line = Vec::new();
        let mut out = Vec::new();
        loop {
            let got = read_request(&mut r, &mut line).await.unwrap();
            let end = matches!(got, Read::Closed | Read::TooLarge);
            out.push(got);
            if end {
                return out;
            }
        }
    }

    const RCPT: &[u8] = b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
client_address=198.18.0.10\nclient_name=unknown\nreverse_client_name=unknown\nclient_port=40000\n\
helo_name=bot.example\nsender=a@b.example\nrecipient=Alice@Example.Test\nrecipient_count=0\n\
queue_id=\ninstance=1f2.6745a1b0.3e8.0\nsize=0\nsasl_username=\nserver_port=25\n\n";

    #[tokio::test]
    async fn a_request_is_read_with_its_attributes() {
        let got = read_all(RCPT).await;
        let Read::Request(r) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(r.request.as_deref(), Some("smtpd_access_policy"));
        assert_eq!(r.protocol_state.as_deref(), Some("RCPT"));
        assert_eq!(r.client_address.as_deref(), Some("198.18.0.10"));
        assert_eq!(r.recipient.as_deref(), Some("Alice@Example.Test"));
        assert_eq!(r.instance.as_deref(), Some("1f2.6745a1b0.3e8.0"));
        assert_eq!(r.sasl_username.as_deref(), Some(""));
        assert_eq!(r.queue_id.as_deref(), Some(""));
        assert_eq!(r.server_port.as_deref(), Some("25"));
        assert_eq!(got[1], Read::Closed);
    }

    #[tokio::test]
    async fn several_requests_on_one_connection_each_come_whole() {
        let mut input = RCPT.to_vec();
        input.extend_from_slice(b"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\n\n");
        input.extend_from_slice(RCPT);
        let got = read_all(&input).await;
        assert_eq!(got.len(), 4, "{got:?}");
        let states: Vec<_> = got[..3]
            .iter()
            .map(|r| match r {
                Read::Request(r) => r.protocol_state.clone().unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(states, ["RCPT", "END-OF-MESSAGE", "RCPT"]);
        // The second request does not inherit the first one's recipient.
        let Read::Request(eom) = &got[1] else {
            panic!()
        };
        assert_eq!(eom.recipient, None);
    }

    #[tokio::test]
    async fn an_overlong_line_makes_the_request_malformed_and_the_next_one_is_fine() {
        let mut input = b"request=smtpd_access_policy\nhelo_name=".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        input.extend_from_slice(b"\nclient_address=198.18.0.10\n\n");
        input.extend_from_slice(RCPT);
        let got = read_all(&input).await;
        assert_eq!(got[0], Read::Malformed("line too long"));
        assert!(matches!(&got[1], Read::Request(r) if r.protocol_state.as_deref() == Some("RCPT")));
        // Exactly MAX_LINE is still fine.
        let mut input = b"helo_name=".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE - 10));
        input.extend_from_slice(b"\n\n");
        assert!(matches!(read_all(&input).await[0], Read::Request(_)));
    }

    #[tokio::test]
    async fn garbage_and_too_many_attributes_are_malformed_not_fatal() {
        let got = read_all(b"hello world\n\n\n\xff\xfe=\x00\n\n").await;
        assert_eq!(got[0], Read::Malformed("line without '='"));
        assert_eq!(got[1], Read::Malformed("empty request"));
        assert!(matches!(got[2], Read::Request(_)), "{got:?}");
        let mut many = Vec::new();
        for i in 0..=MAX_ATTRS {
            many.extend_from_slice(format!("a{i}=1\n").as_bytes());
        }
        many.extend_from_slice(b"\n");
        assert_eq!(
            read_all(&many).await[0],
            Read::Malformed("too many attributes")
        );
    }

    #[tokio::test]
    async fn an_endless_request_ends_the_connection() {
        let input: Vec<u8> = std::iter::repeat_n(b"a=b\n".as_slice(), MAX_REQUEST / 4 + 1)
            .flatten()
            .copied()
            .collect();
        assert_eq!(read_all(&input).await, vec![Read::TooLarge]);
        // One endless line too.
        let input = vec![b'x'; MAX_REQUEST + 1];
        assert_eq!(read_all(&input).await, vec![Read::TooLarge]);
        // A partial request at EOF is dropped.
        assert_eq!(read_all(b"request=smtpd").await, vec![Read::Closed]);
    }

    #[test]
    fn replies_are_one_action_line_and_an_empty_line() {
        for v in [Verdict::Dunno, Verdict::Reject, Verdict::Defer] {
            let text = std::str::from_utf8(v.reply()).unwrap();
            assert!(text.starts_with("action="), "{text}");
            assert!(text.ends_with("\n\n"), "{text}");
            assert_eq!(text.matches('\n').count(), 2, "{text}");
        }
        assert_eq!(Verdict::Dunno.reply(), b"action=DUNNO\n\n");
        assert!(Verdict::Defer.reply().starts_with(b"action=450 "));
        assert!(Verdict::Reject.reply().starts_with(b"action=REJECT "));
    }
}
