//! CrowdSec: detector as an XDP bouncer of a CrowdSec Local API, and (with `push = true`) as
//! a source of alerts for it.
//!
//! Bouncer: a task polls `GET /v1/decisions/stream` (`startup=true` first and after every
//! outage, then `startup=false` every `poll_interval`) and hands each answer to the daemon's
//! task, which owns the enforcer and applies it with [`Bouncer`]: `ban` decisions of scope
//! `Ip`/`Range` become kernel bans with reason `crowdsec` for their remaining time; the
//! origin and scenario of each are kept in the state directory ([`status`]) for `list` and
//! `explain`.
//!
//! Push: [`push`] sends the daemon's own bans as alerts (scenario `detector/<rule>`), which the
//! bouncer then recognises and skips.
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Error;

mod bouncer;
pub mod client;
pub mod duration;
pub mod model;
mod narrow;
pub mod push;
pub mod status;

pub use bouncer::{Applied, BanTable, Bouncer, Counts, Filter, OWN_ORIGIN, OWN_SCENARIO_PREFIX};
pub use narrow::{Narrowed, narrow};

/// `[crowdsec]` in detector.toml.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrowdsecConfig {
    /// The Local API, e.g. `http://127.0.0.1:8080/`; absent = no CrowdSec.
    pub lapi_url: Option<String>,
    /// File holding the bouncer API key (`cscli bouncers add detector -o raw > FILE`).
    pub api_key_file: Option<PathBuf>,
    /// How often to pull new and deleted decisions.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Only decisions of these origins (`crowdsec`, `cscli`, `CAPI`, `lists`); empty = all.
    pub origins: Vec<String>,
    /// Only decisions whose scenario contains one of these words; empty = all.
    pub scenarios: Vec<String>,
    /// Send detector's own bans to the Local API as alerts (needs `credentials_file`).
    pub push: bool,
    /// Machine credentials for `push` (`cscli machines add detector --auto -f FILE`).
    pub credentials_file: Option<PathBuf>,
}

impl Default for CrowdsecConfig {
    fn default() -> Self {
        CrowdsecConfig {
            lapi_url: None,
            api_key_file: None,
            poll_interval: Duration::from_secs(10),
            origins: Vec::new(),
            scenarios: Vec::new(),
            push: false,
            credentials_file: None,
        }
    }
}

impl CrowdsecConfig {
    /// The bouncer runs when a Local API is configured.
    pub fn enabled(&self) -> bool {
        self.lapi_url.is_some()
    }

    pub fn validate(&self) -> crate::Result<()> {
        let Some(url) = &self.lapi_url else {
            if self.push {
                return Err(Error::config(
                    "crowdsec.push",
                    "needs crowdsec.lapi_url (the Local API to push to)",
                ));
            }
            return Ok(());
        };
        client::base_url(url)?;
        if self.api_key_file.is_none() {
            return Err(Error::config(
                "crowdsec.api_key_file",
                "is required with crowdsec.lapi_url (`cscli bouncers add detector -o raw > FILE`)",
            ));
        }
        if self.poll_interval < Duration::from_secs(1)
            || self.poll_interval > Duration::from_secs(3600)
        {
            return Err(Error::config(
                "crowdsec.poll_interval",
                "must be between 1s and 1h",
            ));
        }
        if self.push && self.credentials_file.is_none() {
            return Err(Error::config(
                "crowdsec.credentials_file",
                "is required with crowdsec.push = true (`cscli machines add detector --auto -f FILE`)",
            ));
        }
        Ok(())
    }

    /// Reads the API key file (first non-empty line).
    pub fn api_key(&self) -> crate::Result<String> {
        let path = self.api_key_file.as_ref().ok_or_else(|| {
            Error::config(
                "crowdsec.api_key_file",
                "is required with crowdsec.lapi_url",
            )
        })?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(String::from)
            .ok_or_else(|| {
                Error::config(
                    "crowdsec.api_key_file",
                    format!("{} is empty", path.display()),
                )
            })
    }

    pub fn filter(&self) -> Filter {
        Filter {
            origins: self.origins.clone(),
            scenarios: self.scenarios.clone(),
        }
    }
}

/// One answer of the decision stream.
#[derive(Debug)]
pub struct Pull {
    /// The answer lists every live decision (a full resync).
    pub startup: bool,
    pub response: model::StreamResponse,
}

/// Starts the polling task if a Local API is configured. The key is read now, so a missing
/// file stops the daemon at start rather than later.
pub fn spawn_poller(
    config: &CrowdsecConfig,
    cancel: CancellationToken,
) -> crate::Result<Option<mpsc::Receiver<Pull>>> {
    let Some(url) = &config.lapi_url else {
        return Ok(None);
    };
    let base = client::base_url(url)?;
    let client = client::BouncerClient::new(&base, config.api_key()?)?;
    let interval = config.poll_interval;
    let (tx, rx) = mpsc::channel(4);
    tracing::info!(lapi = %base, poll_interval = %humantime::format_duration(interval), "CrowdSec bouncer: pulling decisions");
    tokio::spawn(poll(client, interval, tx, cancel));
    Ok(Some(rx))
}

async fn poll(
    client: client::BouncerClient,
    interval: Duration,
    tx: mpsc::Sender<Pull>,
    cancel: CancellationToken,
) {
    // A full pull first, and again after any failure: the Local API may have restarted with
    // other decisions, and a delta would not say what disappeared meanwhile.
    let mut startup = true;
    let mut failing = false;
    loop {
        let answer = tokio::select! {
            _ = cancel.cancelled() => return,
            answer = client.stream(startup) => answer,
        };
        match answer {
            Ok(response) => {
                if failing {
                    tracing::info!("CrowdSec Local API reachable again; full resync");
                }
                failing = false;
                if tx.send(Pull { startup, response }).await.is_err() {
                    return;
                }
                startup = false;
            }
            Err(e) => {
                if failing {
                    tracing::debug!(error = %e, "CrowdSec Local API still unreachable");
                } else {
                    tracing::warn!(error = %e, "CrowdSec Local API unreachable; bans already pulled stay, retrying every poll interval");
                }
                failing = true;
                startup = true;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// The next pull, or never when the bouncer is off (for the daemon's `select!`).
pub async fn next_pull(pulls: &mut Option<mpsc::Receiver<Pull>>) -> Option<Pull> {
    match pulls {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rules() {
        let mut c = CrowdsecConfig::default();
        assert!(!c.enabled());
        c.validate().unwrap();
        c.push = true;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("crowdsec.push")
        );
        c.push = false;
        c.lapi_url = Some("http://127.0.0.1:8080".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("crowdsec.api_key_file")
        );
        c.api_key_file = Some("/nonexistent/key".into());
        c.validate().unwrap();
        c.poll_interval = Duration::from_millis(10);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("poll_interval")
        );
        c.poll_interval = Duration::from_secs(10);
        c.push = true;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("credentials_file")
        );
        c.lapi_url = Some("gopher://x".into());
        assert!(c.validate().unwrap_err().to_string().contains("lapi_url"));
    }

    #[test]
    fn api_key_is_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "\n  abc123  \n").unwrap();
        let c = CrowdsecConfig {
            api_key_file: Some(path.clone()),
            ..CrowdsecConfig::default()
        };
        assert_eq!(c.api_key().unwrap(), "abc123");
        std::fs::write(&path, "\n").unwrap();
        assert!(c.api_key().is_err());
    }
}
