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
    /// PEM file of the CA(s) that signed an `https://` Local API's certificate, trusted on top
    /// of the system's roots (a private CA, a self-signed certificate).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for TLS client authentication; with `key_file`. The Local API
    /// then identifies the bouncer by the certificate's OU and no API key is needed.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
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
            ca_file: None,
            cert_file: None,
            key_file: None,
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
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Error::config(
                "crowdsec.cert_file",
                "cert_file and key_file go together (a client certificate and its key)",
            ));
        }
        if self.api_key_file.is_none() && self.cert_file.is_none() {
            return Err(Error::config(
                "crowdsec.api_key_file",
                "is required with crowdsec.lapi_url (`cscli bouncers add detector -o raw > FILE`), \
                 unless a client certificate (cert_file, key_file) authenticates the bouncer",
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
    /// The TLS material named in the configuration, read and checked now.
    pub fn tls(&self) -> crate::Result<client::Tls> {
        client::Tls::load(
            self.ca_file.as_deref(),
            self.cert_file.as_deref().zip(self.key_file.as_deref()),
        )
    }

    /// The bouncer's API key; `None` when a client certificate stands in for it.
    pub fn bouncer_key(&self) -> crate::Result<Option<String>> {
        if self.api_key_file.is_none() && self.cert_file.is_some() {
            return Ok(None);
        }
        self.api_key().map(Some)
    }

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
    let client = client::BouncerClient::new(&base, config.bouncer_key()?, &config.tls()?)?;
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
    fn a_client_certificate_needs_its_key_and_stands_in_for_the_api_key() {
        let with = |cert: bool, key: bool, api_key: bool| CrowdsecConfig {
            lapi_url: Some("https://127.0.0.1:8080/".into()),
            cert_file: cert.then(|| PathBuf::from("/c.pem")),
            key_file: key.then(|| PathBuf::from("/c.key")),
            api_key_file: api_key.then(|| PathBuf::from("/k")),
            ..CrowdsecConfig::default()
        };
        assert!(with(true, false, true).validate().is_err());
        assert!(with(false, true, true).validate().is_err());
        assert!(with(false, false, false).validate().is_err());
        assert!(with(true, true, false).validate().is_ok());
        assert_eq!(with(true, true, false).bouncer_key().unwrap(), None);
    }

    #[test]
    fn tls_files_that_are_not_pem_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let err = client::Tls::load(Some(&junk), None)
            .err()
            .expect("junk CA accepted");
        assert!(err.to_string().contains("junk.pem"), "{err}");
        let err = client::Tls::load(None, Some((&junk, &junk)))
            .err()
            .expect("junk identity accepted");
        assert!(err.to_string().contains("junk.pem"), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(client::Tls::load(Some(&missing), None).is_err());
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
