//! Alerts to the Local API (`[crowdsec] push = true`): detector's own bans, so CrowdSec users
//! see them in `cscli alerts list` (and CrowdSec's other bouncers apply them).
//!
//! Each ban becomes one alert with scenario `detector/<rule>`, the banned address or prefix as
//! source, the evidence count and its time range, and one `ban` decision for the ban's
//! remaining time. The decision's origin is `crowdsec`, as for any log processor's alert:
//! CrowdSec 1.4's `cscli alerts list` shows only origins `crowdsec` and `cscli` unless `-a`.
//! The bouncer recognises them by the `detector/` scenario prefix and skips them. A task owns the watcher client: the daemon only queues alerts, so a
//! slow or absent Local API never holds up a ban.
use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::CrowdsecConfig;
use super::bouncer::OWN_SCENARIO_PREFIX;
use super::client::{MachineCredentials, WatcherClient, base_url};
use super::duration::format_seconds;
use super::model::{Alert, Decision, Source};
use crate::Error;
use crate::engine::Rule;

/// The origin of the decisions we push.
const PUSH_ORIGIN: &str = "crowdsec";
/// Alerts kept while the Local API is unreachable; the oldest go first beyond this.
const MAX_QUEUED: usize = 10_000;
/// Alerts per `POST /v1/alerts`.
const BATCH: usize = 100;
const RETRY: Duration = Duration::from_secs(10);

/// What the daemon knows about one of its bans.
#[derive(Clone, Debug)]
pub struct OwnBan {
    pub prefix: ipnet::IpNet,
    pub ip: std::net::IpAddr,
    pub rule: Rule,
    pub ttl: Duration,
    pub evidence: usize,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub note: String,
    pub dry_run: bool,
}

/// The daemon's handle: queues alerts for the push task.
#[derive(Clone, Debug)]
pub struct Pusher {
    tx: mpsc::UnboundedSender<Alert>,
}

impl Pusher {
    pub fn push(&self, ban: &OwnBan) {
        // The task only ends at shutdown; an alert queued then is lost, like any at shutdown.
        let _ = self.tx.send(alert(ban));
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The alert for one ban.
pub fn alert(ban: &OwnBan) -> Alert {
    let scenario = format!("{OWN_SCENARIO_PREFIX}{}", ban.rule.name());
    let host = ban.prefix.prefix_len() == ban.prefix.max_prefix_len();
    let (scope, value) = if host {
        ("Ip", ban.prefix.addr().to_string())
    } else {
        ("Range", ban.prefix.to_string())
    };
    Alert {
        scenario: scenario.clone(),
        scenario_hash: String::new(),
        scenario_version: env!("CARGO_PKG_VERSION").to_string(),
        message: format!(
            "detector banned {value} ({}): {} events from {} to {}: {}",
            ban.rule.name(),
            ban.evidence,
            rfc3339(ban.first),
            rfc3339(ban.last),
            ban.note
        ),
        events_count: i32::try_from(ban.evidence).unwrap_or(i32::MAX),
        start_at: rfc3339(ban.first),
        stop_at: rfc3339(ban.last),
        capacity: 0,
        leakspeed: "0".into(),
        simulated: ban.dry_run,
        events: Vec::new(),
        remediation: true,
        decisions: vec![Decision {
            id: 0,
            origin: PUSH_ORIGIN.into(),
            kind: "ban".into(),
            scope: scope.into(),
            value: value.clone(),
            duration: format_seconds(ban.ttl.max(Duration::from_secs(1))),
            scenario,
            simulated: None,
        }],
        source: Source {
            scope: scope.into(),
            value,
            ip: Some(ban.ip.to_string()),
            range: (!host).then(|| ban.prefix.to_string()),
        },
    }
}

/// Starts the push task when `push = true`; the credentials are read now.
pub fn spawn(config: &CrowdsecConfig, cancel: CancellationToken) -> crate::Result<Option<Pusher>> {
    let (true, Some(url)) = (config.push, &config.lapi_url) else {
        return Ok(None);
    };
    let path = config.credentials_file.as_ref().ok_or_else(|| {
        Error::config(
            "crowdsec.credentials_file",
            "is required with crowdsec.push = true",
        )
    })?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let credentials = MachineCredentials::parse(&text).map_err(|why| {
        Error::config(
            "crowdsec.credentials_file",
            format!("{}: {why}", path.display()),
        )
    })?;
    let scenarios = Rule::ALL
        .iter()
        .map(|r| format!("{OWN_SCENARIO_PREFIX}{}", r.name()))
        .collect();
    let client = WatcherClient::new(&base_url(url)?, credentials, scenarios, &config.tls()?)?;
    let (tx, rx) = mpsc::unbounded_channel();
    tracing::info!(lapi = %url, "CrowdSec: pushing detector's bans as alerts");
    tokio::spawn(run(client, rx, cancel));
    Ok(Some(Pusher { tx }))
}

async fn run(
    mut client: WatcherClient,
    mut rx: mpsc::UnboundedReceiver<Alert>,
    cancel: CancellationToken,
) {
    let mut queue: VecDeque<Alert> = VecDeque::new();
    let mut failing = false;
    loop {
        if queue.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                next = rx.recv() => match next {
                    Some(a) => queue.push_back(a),
                    None => return,
                },
            }
        }
        while let Ok(a) = rx.try_recv() {
            queue.push_back(a);
        }
        if queue.len() > MAX_QUEUED {
            let dropped = queue.len() - MAX_QUEUED;
            queue.drain(..dropped);
            tracing::warn!(dropped, "CrowdSec alert queue full; oldest alerts dropped");
        }
        let n = queue.len().min(BATCH);
        let batch: Vec<Alert> = queue.iter().take(n).cloned().collect();
        match client.post_alerts(&batch).await {
            Ok(()) => {
                if failing {
                    tracing::info!("CrowdSec Local API takes alerts again");
                }
                failing = false;
                queue.drain(..n);
                tracing::debug!(alerts = n, "alerts pushed to CrowdSec");
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, queued = queue.len(), "pushing alerts to CrowdSec failed; retrying");
                }
                failing = true;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_carries_rule_source_count_and_time_range() {
        let t0: DateTime<Utc> = "2026-11-27T05:00:00Z".parse().unwrap();
        let ban = OwnBan {
            prefix: "2001:db8:5::/64".parse().unwrap(),
            ip: "2001:db8:5::7".parse().unwrap(),
            rule: Rule::ProbeLogin,
            ttl: Duration::from_secs(3600),
            evidence: 3,
            first: t0,
            last: t0 + chrono::Duration::minutes(40),
            note: "login as the probed address".into(),
            dry_run: false,
        };
        let a = alert(&ban);
        assert_eq!(a.scenario, "detector/probe-login");
        assert_eq!(a.events_count, 3);
        assert_eq!(a.start_at, "2026-11-27T05:00:00Z");
        assert_eq!(a.stop_at, "2026-11-27T05:40:00Z");
        assert_eq!(
            (a.source.scope.as_str(), a.source.value.as_str()),
            ("Range", "2001:db8:5::/64")
        );
        assert_eq!(a.decisions[0].origin, "crowdsec");
        assert!(a.decisions[0].scenario.starts_with(OWN_SCENARIO_PREFIX));
        assert_eq!(a.decisions[0].duration, "1h0m0s");
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["decisions"][0]["type"], "ban");
        assert_eq!(json["source"]["ip"], "2001:db8:5::7");
    }
}
