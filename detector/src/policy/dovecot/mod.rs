//! Dovecot's auth-policy server (`auth_policy_server_url`): answers before the password is
//! checked, and takes the outcome of every authentication as an event source.
//!
//! ```text
//!  Dovecot ──allow──> server ──reads──> PolicyView <──updates── daemon task (engine)
//!          ──report─> server ──channel────────────────────────> daemon task ──> pipeline
//! ```
//!
//! - [`protocol`]: the request and answer format of `src/auth/auth-policy.c`.
//! - [`view`]: the engine facts `allow` needs, kept current by the daemon task.
//! - [`report`]: `report` requests as login events, counting a repeated password once.
//! - [`server`]: the HTTP server (hyper), the API key, the metrics.
//!
//! It fails open by design: Dovecot goes on when it gets no answer
//! (`auth_policy_reject_on_fail = no`, the default) and a full report channel drops the report
//! (counted) rather than slow the answer.
pub mod protocol;
pub mod report;
pub mod server;
pub mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::policy::{ListenAddr, UnixSocketOptions};
use crate::{Error, Result};

pub use server::{PolicyMetrics, Received, Server};
pub use view::{CampaignAction, PolicyView, Verdict, ViewUpdater};

/// `[dovecot_policy]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DovecotPolicyConfig {
    /// `127.0.0.1:9478` or a unix socket path; absent = off.
    pub listen: Option<ListenAddr>,
    /// A file holding the API key Dovecot sends (`auth_policy_server_api_header =
    /// X-API-Key:KEY`); requests without it are refused (401, which Dovecot treats as a failed
    /// lookup: fail open). Absent: no key required (keep the listener on loopback).
    pub api_key_file: Option<PathBuf>,
    /// For a mailbox under a campaign, an address that never logged in as it: `reject` (the
    /// attempt fails before its password is checked) or `delay` (Dovecot waits
    /// `campaign_delay`, then checks it).
    pub campaign_action: CampaignActionName,
    #[serde(with = "humantime_serde")]
    pub campaign_delay: Duration,
}

impl Default for DovecotPolicyConfig {
    fn default() -> Self {
        DovecotPolicyConfig {
            listen: None,
            api_key_file: None,
            campaign_action: CampaignActionName::Reject,
            campaign_delay: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignActionName {
    #[default]
    Reject,
    Delay,
}

impl DovecotPolicyConfig {
    pub fn enabled(&self) -> bool {
        self.listen.is_some()
    }

    pub fn validate(&self) -> Result<()> {
        if self.campaign_action == CampaignActionName::Delay {
            let s = self.campaign_delay.as_secs();
            if !(1..=60).contains(&s) {
                return Err(Error::config(
                    "dovecot_policy.campaign_delay",
                    "must be 1 s to 60 s (Dovecot delays in whole seconds, and a long delay holds \
                     a login process)",
                ));
            }
        }
        Ok(())
    }

    pub fn action(&self) -> CampaignAction {
        match self.campaign_action {
            CampaignActionName::Reject => CampaignAction::Reject,
            CampaignActionName::Delay => {
                CampaignAction::Delay(self.campaign_delay.as_secs().clamp(1, 60) as u32)
            }
        }
    }

    /// Reads the API key file: its content without surrounding white space, not empty.
    pub fn api_key(&self) -> Result<Option<Vec<u8>>> {
        let Some(path) = &self.api_key_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let key = text.trim();
        if key.is_empty() {
            return Err(Error::config(
                "dovecot_policy.api_key_file",
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Some(key.as_bytes().to_vec()))
    }
}

/// Status of the listener, saved with the daemon's counters for `detector status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ListenerStatus {
    pub listen: String,
    pub requests_allow: u64,
    pub requests_report: u64,
    /// Answers to `allow`, by verdict name.
    pub answers: Vec<(String, u64)>,
    /// Refused for a missing or wrong API key.
    pub unauthorized: u64,
    /// Bodies that were not policy requests (400).
    pub bad_requests: u64,
    /// Reports dropped because the daemon task was behind.
    pub reports_dropped: u64,
}

/// The policy server as the daemon runs it: the view it answers from, and the reports on
/// their way to the pipeline.
#[derive(Debug)]
pub struct Running {
    config: DovecotPolicyConfig,
    pub view: Arc<PolicyView>,
    reports: Option<mpsc::Receiver<Received>>,
    converter: report::Reports,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The bound address (a port 0 in the configuration resolved).
    listening: Option<String>,
    /// Bound, not yet serving: the listener and the API key.
    bound: Option<(crate::policy::Listener, Option<Vec<u8>>)>,
}

impl Running {
    /// The parts that need no socket yet (the pipeline's observer is made from `view`).
    pub fn new(config: &DovecotPolicyConfig, engine: &EngineConfig) -> Running {
        Running {
            config: config.clone(),
            view: Arc::new(PolicyView::new(engine.clone(), config.action())),
            reports: None,
            converter: report::Reports::new(engine.horizon),
            task: None,
            listening: None,
            bound: None,
        }
    }

    /// Reads the API key and binds the listener. A key file that cannot be read or an address
    /// in use is an error: the daemon does not start half-configured.
    pub async fn bind(&mut self) -> Result<()> {
        let Some(addr) = &self.config.listen else {
            return Ok(());
        };
        let api_key = self.config.api_key()?;
        if api_key.is_none() && matches!(addr, ListenAddr::Tcp(a) if !a.ip().is_loopback()) {
            tracing::warn!(%addr, "dovecot_policy.listen is not a loopback address and no api_key_file is set");
        }
        let listener = addr.bind(&UnixSocketOptions::default()).await?;
        self.listening = Some(listener.local_addr().to_string());
        self.bound = Some((listener, api_key));
        Ok(())
    }

    /// Starts serving on the listener [`Running::bind`] opened.
    pub fn serve(&mut self, metrics: &Metrics, cancel: CancellationToken) {
        let Some((listener, api_key)) = self.bound.take() else {
            return;
        };
        let (tx, rx) = mpsc::channel(server::REPORT_CHANNEL);
        let server = Arc::new(Server {
            view: Arc::clone(&self.view),
            api_key,
            reports: tx,
            metrics: metrics.dovecot_policy.clone(),
        });
        self.task = Some(tokio::spawn(server.serve(listener, cancel)));
        self.reports = Some(rx);
    }

    /// The next report (pending forever when not started).
    pub async fn next(&mut self) -> Option<Received> {
        match &mut self.reports {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// The event a report stands for (see [`report::Reports::event`]).
    pub fn event(&mut self, received: &Received) -> Option<Event> {
        self.converter.event(&received.request, received.time)
    }

    /// Waits for the server task after cancellation.
    pub async fn stopped(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub fn status(&self, metrics: &Metrics) -> Option<ListenerStatus> {
        let listen = self.listening.clone()?;
        Some(metrics.dovecot_policy.status(listen))
    }
}

/// How a report appears where a log line would (evidence, `explain`): no password hash.
pub fn describe(ev: &Event) -> String {
    format!(
        "dovecot auth policy report: {} {} from {} ({})",
        ev.kind.name(),
        ev.user.as_deref().unwrap_or("-"),
        ev.ip,
        ev.protocol.map_or("-", |p| p.name())
    )
}

#[cfg(test)]
mod tests;
