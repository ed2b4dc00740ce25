//! HTTP calls to a CrowdSec Local API: the bouncer's decision stream (API key) and the
//! watcher's login and alerts (machine credentials, bearer token).
use std::path::Path;
use std::time::Duration;

use reqwest::{StatusCode, Url};

use super::model::{Alert, StreamResponse, WatcherAuthRequest, WatcherAuthResponse};
use crate::Error;

/// The Local API guesses a bouncer's type from its user agent (`cscli bouncers list`).
const USER_AGENT: &str = concat!("crowdsec-detector-bouncer/v", env!("CARGO_PKG_VERSION"));
/// A startup answer with the community blocklist is tens of thousands of decisions.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn lapi_error(message: impl Into<String>, source: Option<reqwest::Error>) -> Error {
    Error::CrowdSec {
        message: message.into(),
        source,
    }
}

/// The Local API's base URL, with a trailing slash so that `v1/...` joins under any path.
pub fn base_url(text: &str) -> crate::Result<Url> {
    let mut text = text.trim().to_string();
    if !text.ends_with('/') {
        text.push('/');
    }
    let url = Url::parse(&text)
        .map_err(|e| Error::config("crowdsec.lapi_url", format!("`{text}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::config(
            "crowdsec.lapi_url",
            format!("`{text}` is not an http:// or https:// URL"),
        ));
    }
    Ok(url)
}

/// What an `https://` Local API needs beyond the system's roots: a private CA, and a client
/// certificate when the Local API authenticates by certificate.
#[derive(Clone, Default)]
pub struct Tls {
    roots: Vec<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
}

impl Tls {
    /// Reads `ca` (one or more PEM certificates) and `client` (certificate, key), with errors
    /// that name the file.
    pub fn load(ca: Option<&Path>, client: Option<(&Path, &Path)>) -> crate::Result<Tls> {
        let mut tls = Tls::default();
        if let Some(path) = ca {
            let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            tls.roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                lapi_error(format!("{}: not PEM certificates", path.display()), Some(e))
            })?;
            if tls.roots.is_empty() {
                return Err(Error::config(
                    "crowdsec.ca_file",
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
        }
        if let Some((cert, key)) = client {
            let mut pem = std::fs::read(cert).map_err(|e| Error::io(cert, e))?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|e| Error::io(key, e))?);
            tls.identity = Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                lapi_error(
                    format!(
                        "{} and {}: not a PEM certificate and its private key",
                        cert.display(),
                        key.display()
                    ),
                    Some(e),
                )
            })?);
        }
        Ok(tls)
    }
}

fn http_client(tls: &Tls) -> crate::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT);
    for root in &tls.roots {
        builder = builder.add_root_certificate(root.clone());
    }
    if let Some(identity) = &tls.identity {
        builder = builder.identity(identity.clone());
    }
    builder
        .build()
        .map_err(|e| lapi_error("cannot build the HTTP client", Some(e)))
}

/// A bouncer's view of the Local API.
#[derive(Clone, Debug)]
pub struct BouncerClient {
    http: reqwest::Client,
    stream: Url,
    /// `None`: the client certificate authenticates.
    api_key: Option<String>,
}

impl BouncerClient {
    pub fn new(base: &Url, api_key: Option<String>, tls: &Tls) -> crate::Result<Self> {
        let stream = base
            .join("v1/decisions/stream")
            .map_err(|e| Error::config("crowdsec.lapi_url", e.to_string()))?;
        Ok(BouncerClient {
            http: http_client(tls)?,
            stream,
            api_key,
        })
    }

    /// `GET /v1/decisions/stream?startup=...`: everything live (`startup`), or what changed
    /// since this bouncer's previous pull.
    pub async fn stream(&self, startup: bool) -> crate::Result<StreamResponse> {
        let mut request = self
            .http
            .get(self.stream.clone())
            .query(&[("startup", if startup { "true" } else { "false" })]);
        if let Some(key) = &self.api_key {
            request = request.header("X-Api-Key", key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| lapi_error(format!("GET {}", self.stream), Some(e)))?;
        let status = response.status();
        if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
            return Err(lapi_error(
                format!(
                    "GET {}: {status}: the API key was refused (create one with `cscli bouncers add NAME`)",
                    self.stream
                ),
                None,
            ));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(lapi_error(
                format!("GET {}: {status}: {}", self.stream, one_line(&body)),
                None,
            ));
        }
        response
            .json::<StreamResponse>()
            .await
            .map_err(|e| lapi_error(format!("GET {}: unreadable answer", self.stream), Some(e)))
    }
}

/// Machine credentials as `cscli machines add NAME --auto -f FILE` writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineCredentials {
    pub url: Option<String>,
    pub login: String,
    pub password: String,
}

impl MachineCredentials {
    /// Reads the three `key: value` lines of cscli's YAML file (no other YAML is needed).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut url = None;
        let mut login = None;
        let mut password = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
            match key.trim() {
                "url" => url = Some(value.to_string()),
                "login" => login = Some(value.to_string()),
                "password" => password = Some(value.to_string()),
                _ => {}
            }
        }
        match (login, password) {
            (Some(login), Some(password)) if !login.is_empty() && !password.is_empty() => {
                Ok(MachineCredentials {
                    url,
                    login,
                    password,
                })
            }
            _ => Err("no `login:` and `password:` lines".to_string()),
        }
    }
}

/// A watcher's view: logs in with machine credentials and posts alerts.
#[derive(Debug)]
pub struct WatcherClient {
    http: reqwest::Client,
    login_url: Url,
    alerts_url: Url,
    credentials: MachineCredentials,
    scenarios: Vec<String>,
    token: Option<String>,
}

impl WatcherClient {
    pub fn new(
        base: &Url,
        credentials: MachineCredentials,
        scenarios: Vec<String>,
        tls: &Tls,
    ) -> crate::Result<Self> {
        let join = |p: &str| {
            base.join(p)
                .map_err(|e| Error::config("crowdsec.lapi_url", e.to_string()))
        };
        Ok(WatcherClient {
            http: http_client(tls)?,
            login_url: join("v1/watchers/login")?,
            alerts_url: join("v1/alerts")?,
            credentials,
            scenarios,
            token: None,
        })
    }

    async fn login(&mut self) -> crate::Result<String> {
        let request = WatcherAuthRequest {
            machine_id: &self.credentials.login,
            password: &self.credentials.password,
            scenarios: self.scenarios.clone(),
        };
        let response = self
            .http
            .post(self.login_url.clone())
            .json(&request)
            .send()
            .await
            .map_err(|e| lapi_error(format!("POST {}", self.login_url), Some(e)))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(lapi_error(
                format!(
                    "POST {}: {status}: {} (machine `{}`; see `cscli machines list`)",
                    self.login_url,
                    one_line(&body),
                    self.credentials.login
                ),
                None,
            ));
        }
        let auth: WatcherAuthResponse = response.json().await.map_err(|e| {
            lapi_error(
                format!("POST {}: unreadable answer", self.login_url),
                Some(e),
            )
        })?;
        self.token = Some(auth.token.clone());
        Ok(auth.token)
    }

    /// Posts alerts; logs in first, and again once if the token was refused (expired).
    pub async fn post_alerts(&mut self, alerts: &[Alert]) -> crate::Result<()> {
        for attempt in 0..2 {
            let token = match &self.token {
                Some(t) => t.clone(),
                None => self.login().await?,
            };
            let response = self
                .http
                .post(self.alerts_url.clone())
                .bearer_auth(&token)
                .json(alerts)
                .send()
                .await
                .map_err(|e| lapi_error(format!("POST {}", self.alerts_url), Some(e)))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.token = None;
                continue;
            }
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(lapi_error(
                    format!("POST {}: {status}: {}", self.alerts_url, one_line(&body)),
                    None,
                ));
            }
            return Ok(());
        }
        Err(lapi_error(
            format!("POST {}: the token was refused twice", self.alerts_url),
            None,
        ))
    }
}

/// An error body on one line, cut to a readable length.
fn one_line(body: &str) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("http://127.0.0.1:8080").unwrap().as_str(),
            "http://127.0.0.1:8080/"
        );
        let u = base_url("https://lapi.example.invalid/crowdsec").unwrap();
        assert_eq!(
            u.join("v1/decisions/stream").unwrap().as_str(),
            "https://lapi.example.invalid/crowdsec/v1/decisions/stream"
        );
        assert!(base_url("ftp://x/").is_err());
        assert!(base_url("not a url").is_err());
    }

    #[test]
    fn cscli_credentials() {
        let c = MachineCredentials::parse(
            "url: http://127.0.0.1:18080\nlogin: test\npassword: s3cr:et\n",
        )
        .unwrap();
        assert_eq!(c.url.as_deref(), Some("http://127.0.0.1:18080"));
        assert_eq!(c.login, "test");
        assert_eq!(c.password, "s3cr:et");
        assert!(MachineCredentials::parse("url: x\n").is_err());
        assert!(MachineCredentials::parse("login: a\npassword:\n").is_err());
    }
}
