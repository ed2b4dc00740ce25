//! The Local API's JSON, as far as detector reads or writes it (CrowdSec's
//! `pkg/models/localapi_swagger.yaml`: `DecisionsStreamResponse`, `Decision`, `Alert`).
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `GET /v1/decisions/stream`: either list may be `null`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamResponse {
    #[serde(default)]
    pub new: Option<Vec<Decision>>,
    #[serde(default)]
    pub deleted: Option<Vec<Decision>>,
}

/// One decision. Everything but `id` is required by the swagger; defaults keep one odd
/// decision from failing a whole pull (it is then refused on its own, with a log line).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Decision {
    #[serde(default)]
    pub id: i64,
    #[serde(default)]
    pub origin: String,
    /// `ban`, `captcha`, or anything custom.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `Ip`, `Range` (matched case-insensitively), `Country`, `AS`, ...
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub value: String,
    /// Time remaining, Go syntax.
    #[serde(default)]
    pub duration: String,
    #[serde(default)]
    pub scenario: String,
    #[serde(default)]
    pub simulated: Option<bool>,
}

impl Decision {
    /// The address or prefix of an `Ip` or `Range` decision; `None` for other scopes.
    /// An IPv4 `Ip` value may come as `1.2.3.4/32`; a `Range` with host bits is truncated (the
    /// Local API stores what it was given).
    pub fn target(&self) -> Option<Result<IpNet, String>> {
        let value = self.value.trim();
        let net = if self.scope.eq_ignore_ascii_case("ip") {
            value
                .parse::<IpAddr>()
                .map(IpNet::from)
                .or_else(|_| value.parse::<IpNet>())
                .ok()
                .filter(|n| n.prefix_len() == n.max_prefix_len())
        } else if self.scope.eq_ignore_ascii_case("range") {
            value.parse::<IpNet>().ok().map(|n| n.trunc())
        } else {
            return None;
        };
        Some(net.ok_or_else(|| format!("{} `{}` is not valid", self.scope, self.value)))
    }
}

/// `POST /v1/watchers/login`.
#[derive(Clone, Debug, Serialize)]
pub struct WatcherAuthRequest<'a> {
    pub machine_id: &'a str,
    pub password: &'a str,
    pub scenarios: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct WatcherAuthResponse {
    pub token: String,
    /// RFC 3339 expiry of the token.
    #[serde(default)]
    pub expire: Option<String>,
}

/// `POST /v1/alerts` takes an array of these.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub scenario: String,
    pub scenario_hash: String,
    pub scenario_version: String,
    pub message: String,
    pub events_count: i32,
    pub start_at: String,
    pub stop_at: String,
    pub capacity: i32,
    pub leakspeed: String,
    pub simulated: bool,
    pub events: Vec<AlertEvent>,
    pub remediation: bool,
    pub decisions: Vec<Decision>,
    pub source: Source,
}

#[derive(Clone, Debug, Serialize)]
pub struct AlertEvent {
    pub timestamp: String,
    pub meta: Vec<Meta>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Source {
    pub scope: String,
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A startup answer as CrowdSec 1.4 sends it (captured from `crowdsec -no-cs`).
    const STARTUP: &str = r#"{"deleted":null,"new":[{"duration":"59m58.98673255s","id":2,"origin":"cscli","scenario":"manual 'captcha' from 'test'","scope":"Range","type":"captcha","value":"198.18.5.0/24"},{"duration":"3h59m58.986730987s","id":1,"origin":"cscli","scenario":"manual 'ban' from 'test'","scope":"Ip","type":"ban","value":"198.18.0.7"},{"duration":"3h59m58.986730537s","id":3,"origin":"cscli","scenario":"manual 'ban' from 'test'","scope":"Ip","type":"ban","value":"2001:db8::7"}]}"#;

    #[test]
    fn reads_a_startup_answer() {
        let r: StreamResponse = serde_json::from_str(STARTUP).unwrap();
        assert!(r.deleted.is_none());
        let new = r.new.unwrap();
        assert_eq!(new.len(), 3);
        assert_eq!(new[0].kind, "captcha");
        assert_eq!(
            new[0].target().unwrap().unwrap().to_string(),
            "198.18.5.0/24"
        );
        assert_eq!(
            new[2].target().unwrap().unwrap().to_string(),
            "2001:db8::7/128"
        );
        let r: StreamResponse = serde_json::from_str(r#"{"new":null,"deleted":null}"#).unwrap();
        assert!(r.new.is_none() && r.deleted.is_none());
        let r: StreamResponse = serde_json::from_str("{}").unwrap();
        assert!(r.new.is_none());
    }

    #[test]
    fn targets_by_scope() {
        let d = |scope: &str, value: &str| Decision {
            scope: scope.into(),
            value: value.into(),
            ..Decision::default()
        };
        assert_eq!(
            d("ip", "198.18.0.7/32")
                .target()
                .unwrap()
                .unwrap()
                .to_string(),
            "198.18.0.7/32"
        );
        assert!(d("Ip", "198.18.0.0/24").target().unwrap().is_err());
        assert!(d("Ip", "nonsense").target().unwrap().is_err());
        assert_eq!(
            d("Range", "198.18.0.9/24")
                .target()
                .unwrap()
                .unwrap()
                .to_string(),
            "198.18.0.0/24"
        );
        assert!(d("Country", "FR").target().is_none());
        assert!(d("Username", "bob").target().is_none());
    }
}
