//! Dovecot's auth-policy protocol (`src/auth/auth-policy.c`, 2.3 and 2.4), the wire side only.
//!
//! Dovecot POSTs a JSON object to `auth_policy_server_url` plus `?command=allow` (before the
//! password is checked, and with `auth_policy_check_after_auth` once more after a successful
//! passdb lookup) or `?command=report` (after authentication). A URL already ending in `&` gets
//! `command=...` appended instead. The object holds the expanded
//! `auth_policy_request_attributes` (2.3 and 2.4 default: `login`, `pwhash`, `remote`,
//! `device_id`, `protocol`, `session_id`; 2.4 sorts them by key and offers `%{fail_type}`),
//! then `tls` (both versions), and on `report` also `success` and `policy_reject`.
//!
//! `pwhash` is the hex of `hash(nonce || login || NUL || password)` (`auth_policy_hash_mech`,
//! sha256 by default) truncated to `auth_policy_hash_truncate` bits (12 by default): the same
//! password for the same login always gives the same value, and it says nothing useful about
//! the password itself.
//!
//! The answer is `{"status":N,"msg":"..."}`. For `allow`: -1 fails the attempt (with `msg` as
//! the reason), 0 lets it go on, N > 0 delays it N seconds. For `report` the answer is ignored.
//! A non-2xx status, a missing `status`, bad JSON or a timeout make Dovecot use
//! `auth_policy_reject_on_fail` (default `no`: the attempt goes on).
use serde::Deserialize;

/// Largest request body read; Dovecot's are a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// The `command` of the query string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Allow,
    Report,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Allow => "allow",
            Command::Report => "report",
        }
    }
}

/// A request the server cannot answer: the message goes back in a 400 answer (Dovecot logs it
/// and, with `auth_policy_reject_on_fail = no`, lets the attempt go on).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no command in the query string (expected ?command=allow or ?command=report)")]
    NoCommand,
    #[error("unknown command {0:?} (expected allow or report)")]
    UnknownCommand(String),
    #[error("the body is not a JSON object of policy attributes: {0}")]
    BadJson(String),
}

/// `command=...` from a query string (`None` or `""` when the URL had none).
pub fn command(query: Option<&str>) -> Result<Command, RequestError> {
    let value = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "command")
        .map(|(_, v)| v)
        .ok_or(RequestError::NoCommand)?;
    match value {
        "allow" => Ok(Command::Allow),
        "report" => Ok(Command::Report),
        other => Err(RequestError::UnknownCommand(
            other.chars().take(32).collect(),
        )),
    }
}

/// The attributes `detector` uses; any other key (custom attributes, nested objects from keys
/// with `/`) is ignored. Every attribute is optional: an admin may have configured fewer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Request {
    /// `%{requested_username}`: the login name as the client typed it.
    pub login: Option<String>,
    /// `%{hashed_password}`: hex of the truncated salted hash (see the module docs).
    pub pwhash: Option<String>,
    /// `%{rip}` (2.3) / `%{remote_ip}` (2.4): the client address.
    pub remote: Option<String>,
    /// `%s` (2.3) / `%{protocol}` (2.4): `imap`, `pop3`, `smtp` (Postfix SASL), `sieve`...
    pub protocol: Option<String>,
    /// `%{session}`: the same id Dovecot's log lines show as `session=<...>`.
    pub session_id: Option<String>,
    /// `%{fail_type}` (2.4, only when configured): `credentials`, `account`, `expired`,
    /// `disabled`, `internal`, `policy`, or empty.
    pub fail_type: Option<String>,
    /// Both versions append it: the client connection is TLS.
    pub tls: Option<bool>,
    /// `report` only: the authentication succeeded.
    pub success: Option<bool>,
    /// `report` only: the policy server (we) refused it.
    pub policy_reject: Option<bool>,
}

impl Request {
    /// Parses a request body. Never panics; a clear error for anything that is not a JSON
    /// object with attributes of the expected types.
    pub fn parse(body: &[u8]) -> Result<Request, RequestError> {
        serde_json::from_slice(body).map_err(|e| RequestError::BadJson(e.to_string()))
    }

    /// The client address, if `remote` holds one (IPv4-mapped IPv6 read as IPv4).
    pub fn remote_ip(&self) -> Option<std::net::IpAddr> {
        let ip = self.remote.as_deref()?.trim().parse().ok()?;
        Some(crate::engine::canonical(ip))
    }

    /// The login name, lower-cased as log events carry it; `None` when empty.
    pub fn user(&self) -> Option<String> {
        let login = self.login.as_deref()?.trim();
        (!login.is_empty()).then(|| login.to_lowercase())
    }
}

/// An answer to `allow`: `-1` reject, `0` accept, `N > 0` delay N seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: i32,
    pub msg: String,
}

impl Answer {
    pub fn accept() -> Answer {
        Answer {
            status: 0,
            msg: String::new(),
        }
    }

    /// The JSON body Dovecot reads.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "status": self.status, "msg": self.msg }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the lab's Dovecot 2.3.19.1 sent with the default attributes (`auth_debug = yes`
    /// logs "Policy server request JSON: ..."; session id shortened).
    const ALLOW_23: &str = r#"{"device_id":"","login":"alice@example.test","protocol":"imap","pwhash":"01fb","remote":"198.18.0.2","session_id":"2D8WH5dhgpXGEgAC","tls":false}"#;
    /// Its report after a login the policy refused.
    const REPORT_23: &str = r#"{"device_id":"","login":"alice@example.test","protocol":"pop3","pwhash":"01fb","remote":"198.18.0.13","session_id":"RSNpIJdhvqzGEgAN","success":false,"policy_reject":true,"tls":false}"#;
    /// 2.4 writes the attributes sorted, then `success`, `policy_reject` and `tls`; here with
    /// `fail_type` configured.
    const REPORT_24: &str = r#"{"device_id":"","fail_type":"account","login":"Nobody@Example.Test","protocol":"pop3","pwhash":"0c3","remote":"::ffff:198.18.1.3","session_id":"abc","success":false,"policy_reject":false,"tls":true}"#;

    #[test]
    fn commands_come_from_the_query_string() {
        assert_eq!(command(Some("command=allow")), Ok(Command::Allow));
        assert_eq!(command(Some("x=1&command=report")), Ok(Command::Report));
        assert_eq!(command(None), Err(RequestError::NoCommand));
        assert_eq!(command(Some("")), Err(RequestError::NoCommand));
        assert_eq!(
            command(Some("command=drop")),
            Err(RequestError::UnknownCommand("drop".into()))
        );
    }

    #[test]
    fn a_23_allow_request_is_read() {
        let r = Request::parse(ALLOW_23.as_bytes()).unwrap();
        assert_eq!(r.user().as_deref(), Some("alice@example.test"));
        assert_eq!(r.remote_ip(), Some("198.18.0.2".parse().unwrap()));
        assert_eq!(r.protocol.as_deref(), Some("imap"));
        assert_eq!(r.session_id.as_deref(), Some("2D8WH5dhgpXGEgAC"));
        assert_eq!(r.pwhash.as_deref(), Some("01fb"));
        assert_eq!(r.tls, Some(false));
        assert_eq!(r.success, None);
        assert_eq!(r.fail_type, None);
        let r = Request::parse(REPORT_23.as_bytes()).unwrap();
        assert_eq!((r.success, r.policy_reject), (Some(false), Some(true)));
        assert_eq!(r.protocol.as_deref(), Some("pop3"));
    }

    #[test]
    fn a_24_report_is_read_lower_cased_and_unmapped() {
        let r = Request::parse(REPORT_24.as_bytes()).unwrap();
        assert_eq!(r.user().as_deref(), Some("nobody@example.test"));
        assert_eq!(r.remote_ip(), Some("198.18.1.3".parse().unwrap()));
        assert_eq!(r.success, Some(false));
        assert_eq!(r.policy_reject, Some(false));
        assert_eq!(r.fail_type.as_deref(), Some("account"));
        assert_eq!(r.tls, Some(true));
    }

    #[test]
    fn custom_and_nested_attributes_are_ignored() {
        let body = r#"{"login":"a","remote":"198.18.0.1","extra":{"nested":"x"},"n":5}"#;
        let r = Request::parse(body.as_bytes()).unwrap();
        assert_eq!(r.user().as_deref(), Some("a"));
    }

    #[test]
    fn bad_bodies_are_clear_errors() {
        for body in [
            &b""[..],
            b"not json",
            b"[1,2]",
            b"{\"login\":5}",
            b"{\"success\":\"yes\"}",
            b"{\"login\":\"a\"",
            b"\xff\xfe",
        ] {
            let err = Request::parse(body).unwrap_err();
            assert!(
                matches!(err, RequestError::BadJson(_)),
                "{:?}: {err:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// Every prefix and every one-byte change of real bodies parses or fails cleanly, and what
    /// parses yields its address and user without a panic.
    #[test]
    fn mangled_bodies_never_panic() {
        for body in [ALLOW_23, REPORT_23, REPORT_24] {
            let b = body.as_bytes();
            for cut in 0..b.len() {
                let _ = Request::parse(&b[..cut]);
            }
            for i in 0..b.len() {
                for x in [0u8, b'"', b'\\', b'{', 0xff, b'9'] {
                    let mut m = b.to_vec();
                    m[i] = x;
                    if let Ok(r) = Request::parse(&m) {
                        let _ = (r.remote_ip(), r.user());
                    }
                }
            }
        }
    }

    #[test]
    fn an_unparseable_remote_is_none() {
        let r = Request::parse(br#"{"remote":""}"#).unwrap();
        assert_eq!(r.remote_ip(), None);
        let r = Request::parse(br#"{"remote":"not-an-ip"}"#).unwrap();
        assert_eq!(r.remote_ip(), None);
    }

    #[test]
    fn answers_are_what_dovecot_parses() {
        let a = Answer {
            status: -1,
            msg: "a \"quoted\" reason".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(v["status"], -1);
        assert_eq!(v["msg"], "a \"quoted\" reason");
        assert_eq!(Answer::accept().to_json(), r#"{"msg":"","status":0}"#);
    }
}
