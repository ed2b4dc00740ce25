//! Connecting to Redis: the URL, a password from a file, a private CA for `rediss://`.
use std::time::Duration;

use redis::IntoConnectionInfo;
use redis::aio::MultiplexedConnection;

use super::config::ClusterConfig;
use crate::Error;

/// A consumer blocks in XREAD this long at most, so it notices a cancel or a dead link soon.
pub const BLOCK: Duration = Duration::from_millis(1000);

/// Builds the client once (reads the password and CA files: errors here stop the start).
pub fn client(cfg: &ClusterConfig) -> crate::Result<redis::Client> {
    let url = cfg.redis.as_deref().unwrap_or_default();
    let bad = |context: &str, e: redis::RedisError| Error::Cluster {
        context: format!("{context} {}", super::status::redact(url)),
        source: Some(e),
    };
    let mut info = url
        .into_connection_info()
        .map_err(|e| bad("cannot use cluster.redis", e))?;
    if let Some(path) = &cfg.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let password = text.lines().next().unwrap_or("").trim_end();
        if password.is_empty() {
            return Err(Error::config(
                "cluster.password_file",
                format!("{} is empty", path.display()),
            ));
        }
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    match &cfg.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| bad("cannot use cluster.ca_file with", e))
        }
        None => redis::Client::open(info).map_err(|e| bad("cannot use cluster.redis", e)),
    }
}

/// One connection, answering within a bound that leaves room for a blocking XREAD.
pub async fn connect(client: &redis::Client) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(4)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("PING").query_async::<()>(&mut conn).await?;
    Ok(conn)
}

/// Waits between reconnects: 100 ms doubling to 5 s.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    pub fn next_wait(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        now
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// The millisecond part of a stream entry id (`1764612000000-3`).
pub fn id_ms(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}
