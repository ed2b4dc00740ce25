//! The HTTP side: hyper's HTTP/1.1 server on the policy listener (TCP or unix socket).
//!
//! `allow` is answered from the [`PolicyView`] in the connection's own task: a read lock and a
//! few hash lookups, no channel round trip to the engine. `report` answers at once and hands
//! the request to the daemon task through a bounded channel (`try_send`: when the daemon task
//! is behind, the report is dropped and counted; Dovecot is never made to wait for it).
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ListenerStatus;
use super::protocol::{self, Answer, Command, MAX_BODY, Request};
use super::view::{PolicyView, Verdict};
use crate::policy::{Listener, Stream};

/// How long a client may take to send its request head and body. Dovecot sends both at once.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Reports waiting for the daemon task.
pub const REPORT_CHANNEL: usize = 4096;

/// The header Dovecot sends the key in (`auth_policy_server_api_header = X-API-Key:KEY`, or
/// just `KEY`, which Dovecot sends as `X-API-Key`).
const API_KEY_HEADER: &str = "x-api-key";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    pub command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabel {
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: &'static str,
}

/// `detector_dovecot_policy_*` metrics.
#[derive(Debug, Clone)]
pub struct PolicyMetrics {
    pub requests: Family<CommandLabel, Counter>,
    pub answers: Family<AnswerLabel, Counter>,
    pub errors: Family<ErrorLabel, Counter>,
    /// From the request head to the answer, seconds.
    pub latency: Histogram,
}

impl Default for PolicyMetrics {
    fn default() -> Self {
        PolicyMetrics {
            requests: Family::default(),
            answers: Family::default(),
            errors: Family::default(),
            // 25 µs .. ~100 ms
            latency: Histogram::new(exponential_buckets(25e-6, 2.0, 13)),
        }
    }
}

impl PolicyMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "dovecot_policy_requests",
            "Dovecot auth-policy requests, per command (allow, report)",
            self.requests.clone(),
        );
        registry.register(
            "dovecot_policy_answers",
            "Answers to Dovecot allow requests, per verdict",
            self.answers.clone(),
        );
        registry.register(
            "dovecot_policy_errors",
            "Dovecot auth-policy requests not served normally: unauthorized, bad_request, report_dropped",
            self.errors.clone(),
        );
        registry.register(
            "dovecot_policy_latency_seconds",
            "Time from a policy request's head to its answer",
            self.latency.clone(),
        );
    }

    /// Touches every series once, so a test can see every name `/metrics` exports.
    #[doc(hidden)]
    pub fn exercise_for_tests(&self) {
        self.requests
            .get_or_create(&CommandLabel { command: "allow" })
            .inc();
        self.answers
            .get_or_create(&AnswerLabel { verdict: "accept" })
            .inc();
        self.error("bad_request");
        self.latency.observe(1e-4);
    }

    fn error(&self, error: &'static str) {
        self.errors.get_or_create(&ErrorLabel { error }).inc();
    }

    /// The counters for `detector status`.
    pub fn status(&self, listen: String) -> ListenerStatus {
        let req = |command| self.requests.get_or_create(&CommandLabel { command }).get();
        let err = |error| self.errors.get_or_create(&ErrorLabel { error }).get();
        let answers = ALL_VERDICTS
            .iter()
            .map(|v| {
                let n = self
                    .answers
                    .get_or_create(&AnswerLabel { verdict: v.name() });
                (v.name().to_string(), n.get())
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        ListenerStatus {
            listen,
            requests_allow: req("allow"),
            requests_report: req("report"),
            answers,
            unauthorized: err("unauthorized"),
            bad_requests: err("bad_request"),
            reports_dropped: err("report_dropped"),
        }
    }
}

const ALL_VERDICTS: [Verdict; 8] = [
    Verdict::Accept,
    Verdict::KnownClient,
    Verdict::Protected,
    Verdict::RejectBanned,
    Verdict::RejectCampaign,
    Verdict::DelayCampaign,
    Verdict::DryRun,
    Verdict::NoAddress,
];

/// A `report` on its way to the daemon task.
#[derive(Debug)]
pub struct Received {
    pub request: Request,
    pub time: DateTime<Utc>,
}

/// What every connection task shares.
#[derive(Debug)]
pub struct Server {
    pub view: Arc<PolicyView>,
    pub api_key: Option<Vec<u8>>,
    pub reports: mpsc::Sender<Received>,
    pub metrics: PolicyMetrics,
}

type Response = hyper::Response<Full<Bytes>>;

impl Server {
    /// Accepts connections on `listener` until `cancel` fires; each connection is served in its
    /// own task (Dovecot keeps a pool of persistent connections).
    pub async fn serve(self: Arc<Self>, listener: Listener, cancel: CancellationToken) {
        tracing::info!(listen = %listener.local_addr(), "serving the Dovecot auth policy");
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "dovecot policy: accept failed");
                        // EMFILE and friends: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            tokio::spawn(Arc::clone(&self).connection(stream, cancel.clone()));
        }
    }

    async fn connection(self: Arc<Self>, stream: Stream, cancel: CancellationToken) {
        let server = Arc::clone(&self);
        let service = service_fn(move |req| {
            let server = Arc::clone(&server);
            async move { Ok::<_, Infallible>(server.handle(req).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "dovecot policy connection ended");
                }
            }
            _ = cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
            }
        }
    }

    /// One request. Every path ends in an answer; nothing here panics on input.
    pub async fn handle(&self, req: hyper::Request<Incoming>) -> Response {
        let start = Instant::now();
        let response = self.answer(req).await;
        self.metrics.latency.observe(start.elapsed().as_secs_f64());
        response
    }

    async fn answer(&self, req: hyper::Request<Incoming>) -> Response {
        if req.method() != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "POST only");
        }
        if let Some(key) = &self.api_key {
            let sent = req
                .headers()
                .get(API_KEY_HEADER)
                .map(|v| v.as_bytes().trim_ascii());
            if !sent.is_some_and(|s| same_key(s, key)) {
                self.metrics.error("unauthorized");
                return reply(StatusCode::UNAUTHORIZED, "missing or wrong X-API-Key");
            }
        }
        let command = match protocol::command(req.uri().query()) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.error("bad_request");
                return reply(StatusCode::BAD_REQUEST, &e.to_string());
            }
        };
        self.metrics
            .requests
            .get_or_create(&CommandLabel {
                command: command.name(),
            })
            .inc();
        let body = tokio::time::timeout(
            READ_TIMEOUT,
            Limited::new(req.into_body(), MAX_BODY).collect(),
        )
        .await;
        let body = match body {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => {
                self.metrics.error("bad_request");
                let status = if e.is::<http_body_util::LengthLimitError>() {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                return reply(status, &format!("cannot read the body: {e}"));
            }
            Err(_) => {
                self.metrics.error("bad_request");
                return reply(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive in time",
                );
            }
        };
        let request = match Request::parse(&body) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.error("bad_request");
                return reply(StatusCode::BAD_REQUEST, &e.to_string());
            }
        };
        match command {
            Command::Allow => {
                let (answer, verdict) = self.view.answer(&request, Utc::now().timestamp());
                self.metrics
                    .answers
                    .get_or_create(&AnswerLabel {
                        verdict: verdict.name(),
                    })
                    .inc();
                if answer.status != 0 {
                    tracing::info!(
                        remote = request.remote.as_deref().unwrap_or(""),
                        login = request.user().as_deref().unwrap_or(""),
                        status = answer.status,
                        verdict = verdict.name(),
                        "dovecot policy: refused or delayed"
                    );
                }
                json(&answer)
            }
            Command::Report => {
                let received = Received {
                    request,
                    time: Utc::now(),
                };
                if self.reports.try_send(received).is_err() {
                    self.metrics.error("report_dropped");
                }
                json(&Answer::accept())
            }
        }
    }
}

/// Compares without stopping at the first differing byte (the key is a secret).
fn same_key(sent: &[u8], key: &[u8]) -> bool {
    sent.len() == key.len() && sent.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn json(answer: &Answer) -> Response {
    let mut r = hyper::Response::new(Full::new(Bytes::from(answer.to_json())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// An error answer: Dovecot logs the status (`Policy server HTTP error`) and fails open.
fn reply(status: StatusCode, msg: &str) -> Response {
    let mut r = json(&Answer {
        status: 0,
        msg: msg.to_string(),
    });
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(same_key(b"secret", b"secret"));
        assert!(!same_key(b"secreT", b"secret"));
        assert!(!same_key(b"secret2", b"secret"));
        assert!(!same_key(b"", b"secret"));
    }
}

/// The server over a real socket: what Dovecot's HTTP client sees.
#[cfg(test)]
mod http_tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::policy::dovecot::CampaignAction;
    use crate::policy::{ListenAddr, UnixSocketOptions};

    struct Running {
        url: String,
        reports: mpsc::Receiver<Received>,
        metrics: PolicyMetrics,
        cancel: CancellationToken,
    }

    async fn start(api_key: Option<&str>) -> Running {
        let view = Arc::new(PolicyView::new(
            EngineConfig::default(),
            CampaignAction::Reject,
        ));
        view.test_ban("198.18.2.66/32".parse().unwrap(), i64::MAX);
        let addr = ListenAddr::parse("test", "127.0.0.1:0").unwrap();
        let listener = addr.bind(&UnixSocketOptions::default()).await.unwrap();
        let url = format!("http://{}/", listener.local_addr());
        let (tx, rx) = mpsc::channel(16);
        let metrics = PolicyMetrics::default();
        let server = Arc::new(Server {
            view,
            api_key: api_key.map(|k| k.as_bytes().to_vec()),
            reports: tx,
            metrics: metrics.clone(),
        });
        let cancel = CancellationToken::new();
        tokio::spawn(server.serve(listener, cancel.clone()));
        Running {
            url,
            reports: rx,
            metrics,
            cancel,
        }
    }

    async fn post(
        url: &str,
        query: &str,
        key: Option<&str>,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let mut req = client()
            .post(format!("{url}{query}"))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            // As Dovecot sends `auth_policy_server_api_header = X-API-Key: KEY` (the space kept).
            req = req.header("X-API-Key", format!(" {k}"));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json)
    }

    /// Loopback only: never through a proxy from the environment.
    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    const ALLOW: &str = r#"{"device_id":"","login":"a@example.test","protocol":"imap","pwhash":"0a1","remote":"198.18.2.1","session_id":"s","tls":false}"#;

    #[tokio::test]
    async fn allow_report_and_errors_over_http() {
        let mut s = start(Some("k3y")).await;
        let (code, v) = post(&s.url, "?command=allow", Some("k3y"), ALLOW).await;
        assert_eq!((code, v["status"].as_i64()), (200, Some(0)), "{v}");
        let banned = ALLOW.replace("198.18.2.1", "198.18.2.66");
        let (code, v) = post(&s.url, "?command=allow", Some("k3y"), &banned).await;
        assert_eq!((code, v["status"].as_i64()), (200, Some(-1)), "{v}");
        assert_eq!(v["msg"], "address banned");

        let report = ALLOW.replace(
            r#""tls":false"#,
            r#""tls":false,"success":false,"policy_reject":false"#,
        );
        let (code, _) = post(&s.url, "?command=report", Some("k3y"), &report).await;
        assert_eq!(code, 200);
        let got = s.reports.recv().await.unwrap();
        assert_eq!(got.request.success, Some(false));
        assert_eq!(got.request.user().as_deref(), Some("a@example.test"));

        // The key: missing or wrong is 401, and nothing is judged or reported.
        assert_eq!(post(&s.url, "?command=allow", None, ALLOW).await.0, 401);
        assert_eq!(
            post(&s.url, "?command=report", Some("k3Y"), &report)
                .await
                .0,
            401
        );
        assert!(s.reports.try_recv().is_err());

        // Bad requests say what is wrong.
        let (code, v) = post(&s.url, "?command=allow", Some("k3y"), "{not json").await;
        assert_eq!(code, 400);
        assert!(
            v["msg"].as_str().unwrap().contains("not a JSON object"),
            "{v}"
        );
        let (code, v) = post(&s.url, "", Some("k3y"), ALLOW).await;
        assert_eq!(code, 400);
        assert!(v["msg"].as_str().unwrap().contains("command=allow"), "{v}");
        let (code, _) = post(&s.url, "?command=nuke", Some("k3y"), ALLOW).await;
        assert_eq!(code, 400);
        let huge = format!(r#"{{"login":"{}"}}"#, "x".repeat(MAX_BODY));
        assert_eq!(
            post(&s.url, "?command=allow", Some("k3y"), &huge).await.0,
            413
        );
        let get = reqwest::get(format!("{}?command=allow", s.url))
            .await
            .unwrap();
        assert_eq!(get.status().as_u16(), 405);

        let status = s.metrics.status("x".into());
        assert_eq!((status.requests_allow, status.requests_report), (4, 1));
        assert_eq!(status.unauthorized, 2);
        assert_eq!(status.bad_requests, 4);
        assert_eq!(
            status.answers,
            vec![("accept".to_string(), 1), ("reject_banned".to_string(), 1)]
        );
        s.cancel.cancel();
    }

    #[tokio::test]
    async fn without_a_key_configured_any_request_is_served() {
        let s = start(None).await;
        let (code, v) = post(&s.url, "?command=allow", None, ALLOW).await;
        assert_eq!((code, v["status"].as_i64()), (200, Some(0)));
        s.cancel.cancel();
    }
}
