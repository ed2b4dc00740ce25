//! The Postfix policy service: `check_policy_service` in `smtpd_recipient_restrictions` (and
//! `smtpd_end_of_data_restrictions`) asks `detector` at each RCPT and at the end of each
//! message, over a persistent connection per smtpd process.
//!
//! ```text
//!   Postfix smtpd ──request──> connection task ──reply (DUNNO / REJECT / 450)──> smtpd
//!                                   │ BanView (read lock)     ▲ bans written by the daemon
//!                                   └─ events (Rcpt, TransactionAborted) ──> daemon ──> Pipeline
//! ```
//!
//! The reply comes first and only reads the [`BanView`]; the events the request gives
//! ([`transaction`]) go to the daemon's engine task afterwards through a bounded channel
//! (when it is full they are counted and dropped, never waited for). The answer is `DUNNO`
//! unless `banned_action` says otherwise for a banned client and XDP is attached nowhere; any
//! trouble (a malformed request, a panic in our code) is `DUNNO` too, never a `451`. If
//! `detector` is down, Postfix's `default_action=DUNNO` takes over after its timeouts.
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::metrics::VerdictLabel;
use crate::policy::bans::BanView;
use crate::policy::listen::{ListenAddr, UnixSocketOptions};

#[cfg(test)]
mod pipeline_tests;
pub mod protocol;
mod server;
pub mod transaction;

pub use protocol::Verdict;
pub use server::{Shared, serve};

/// Default address: loopback, next to Dovecot's 9478.
pub const DEFAULT_PORT: u16 = 9479;

/// `[postfix_policy]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostfixPolicyConfig {
    /// `IP:PORT` or an absolute unix socket path; absent: no policy service.
    pub listen: Option<ListenAddr>,
    /// The answer for a banned client when XDP is attached nowhere: `dunno` (default: only
    /// observe), `reject` (`REJECT 5.7.1`) or `defer` (`450 4.7.1`).
    pub banned_action: BannedAction,
    /// Permission bits of a unix socket (smtpd needs write permission to connect).
    pub socket_mode: u32,
    /// Group of a unix socket (a name from /etc/group or a numeric gid), e.g. `postfix`.
    pub socket_group: Option<String>,
    /// Connections served at once; more are closed at once (Postfix then uses its
    /// `default_action`). Each smtpd process holds one.
    pub max_connections: usize,
}

impl Default for PostfixPolicyConfig {
    fn default() -> Self {
        PostfixPolicyConfig {
            listen: None,
            banned_action: BannedAction::Dunno,
            socket_mode: 0o660,
            socket_group: None,
            max_connections: 1024,
        }
    }
}

impl PostfixPolicyConfig {
    pub fn enabled(&self) -> bool {
        self.listen.is_some()
    }

    pub fn validate(&self) -> crate::Result<()> {
        if self.socket_mode > 0o777 {
            return Err(crate::Error::config(
                "postfix_policy.socket_mode",
                format!(
                    "{:o} is not a permission mode (at most 0o777)",
                    self.socket_mode
                ),
            ));
        }
        if self.max_connections == 0 {
            return Err(crate::Error::config(
                "postfix_policy.max_connections",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// How a unix socket is created (the group name resolved now).
    pub fn unix_options(&self) -> crate::Result<UnixSocketOptions> {
        UnixSocketOptions::new(
            "postfix_policy.socket_group",
            self.socket_mode,
            self.socket_group.as_deref(),
        )
    }
}

/// What a banned client is told (see [`PostfixPolicyConfig::banned_action`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BannedAction {
    #[default]
    Dunno,
    Reject,
    Defer,
}

impl BannedAction {
    fn verdict(self) -> Verdict {
        match self {
            BannedAction::Dunno => Verdict::Dunno,
            BannedAction::Reject => Verdict::Reject,
            BannedAction::Defer => Verdict::Defer,
        }
    }
}

/// The service's metrics (`detector_postfix_policy_*`).
#[derive(Clone, Debug)]
pub struct PolicyMetrics {
    pub requests: Counter,
    pub answers: Family<VerdictLabel, Counter>,
    pub malformed: Counter,
    /// From the request's last byte read to the reply written.
    pub reply_seconds: Histogram,
    pub connections: Gauge,
    pub refused: Counter,
    pub events_dropped: Counter,
}

impl Default for PolicyMetrics {
    fn default() -> Self {
        PolicyMetrics {
            requests: Counter::default(),
            answers: Family::default(),
            malformed: Counter::default(),
            // 5 µs .. ~40 ms
            reply_seconds: Histogram::new([
                5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 4e-2,
            ]),
            connections: Gauge::default(),
            refused: Counter::default(),
            events_dropped: Counter::default(),
        }
    }
}

impl PolicyMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("postfix_policy");
        r.register(
            "requests",
            "Postfix policy requests answered",
            self.requests.clone(),
        );
        r.register(
            "answers",
            "Postfix policy answers, per verdict (dunno, reject, defer)",
            self.answers.clone(),
        );
        r.register(
            "malformed",
            "Postfix policy requests that broke the protocol or a size bound (answered DUNNO)",
            self.malformed.clone(),
        );
        r.register(
            "reply_seconds",
            "Time from a Postfix policy request read to its reply written",
            self.reply_seconds.clone(),
        );
        r.register(
            "connections",
            "Open Postfix policy connections (one per smtpd process)",
            self.connections.clone(),
        );
        r.register(
            "refused",
            "Postfix policy connections closed at once because max_connections were open",
            self.refused.clone(),
        );
        r.register(
            "events_dropped",
            "Events from Postfix policy requests dropped because the engine was behind",
            self.events_dropped.clone(),
        );
    }

    fn answered(&self, verdict: Verdict, took: std::time::Duration) {
        self.requests.inc();
        self.answers
            .get_or_create(&VerdictLabel {
                verdict: verdict.name().to_string(),
            })
            .inc();
        self.reply_seconds.observe(took.as_secs_f64());
    }
}

/// What the daemon hands the service.
pub fn shared(
    config: &PostfixPolicyConfig,
    bans: Arc<BanView>,
    metrics: PolicyMetrics,
    events: tokio::sync::mpsc::Sender<crate::event::Event>,
) -> Arc<Shared> {
    Arc::new(Shared::new(config, bans, metrics, events))
}

/// Capacity of the event channel from the connections to the engine task.
const EVENT_CHANNEL: usize = 4096;

/// The service's socket, bound at start (so an address in use stops the start), not yet
/// serving.
#[derive(Debug)]
pub struct Bound {
    listener: crate::policy::Listener,
    config: PostfixPolicyConfig,
}

impl Bound {
    /// Binds `[postfix_policy] listen`, if set. Must run inside the tokio runtime.
    pub fn bind(config: &PostfixPolicyConfig) -> crate::Result<Option<Bound>> {
        let Some(addr) = &config.listen else {
            return Ok(None);
        };
        let listener = addr.bind_now(&config.unix_options()?)?;
        Ok(Some(Bound {
            listener,
            config: config.clone(),
        }))
    }

    pub fn local_addr(&self) -> ListenAddr {
        self.listener.local_addr()
    }

    /// Serves until `cancel`; the events of the requests come out of the receiver.
    pub fn spawn(
        self,
        bans: Arc<BanView>,
        metrics: PolicyMetrics,
        cancel: tokio_util::sync::CancellationToken,
    ) -> (
        tokio::task::JoinHandle<()>,
        tokio::sync::mpsc::Receiver<crate::event::Event>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_CHANNEL);
        let shared = shared(&self.config, bans, metrics, tx);
        (tokio::spawn(serve(self.listener, shared, cancel)), rx)
    }
}

/// The next event of a running service; never resolves without one (for `select!`).
pub async fn next_event(
    events: &mut Option<tokio::sync::mpsc::Receiver<crate::event::Event>>,
) -> Option<crate::event::Event> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
