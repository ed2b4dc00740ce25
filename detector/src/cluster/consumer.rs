//! The consumer task: reads both streams with XREAD from this node's own position (every
//! node reads everything; see the module docs for why not consumer groups) and hands each
//! entry to the engine task, which applies it and only then moves the saved position.
//!
//! A new node (no saved position) and a node coming back from an outage first read the
//! active-bans hash, so bans whose stream entries it missed (or that were trimmed) still
//! reach its maps; a new node then reads the streams from their end, not from the beginning.
use std::sync::Arc;

use chrono::Utc;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::Keys;
use super::link::{self, Backoff};
use super::outbox::StreamKind;
use super::status::Board;
use super::wire::{DecodeError, Message};
use crate::metrics::Metrics;

/// Entries per XREAD and stream.
const COUNT: usize = 500;

/// What the consumer hands to the engine task.
#[derive(Debug)]
pub enum Incoming {
    /// One stream entry; `message` is `Err` when it could not be decoded (skipped, counted).
    Entry {
        stream: StreamKind,
        id: String,
        message: Result<Message, DecodeError>,
    },
    /// The active-bans hash, read at (re)connect.
    ActiveBans(Vec<Message>),
    /// A new node's starting point (the streams' ends), to be saved before any entry comes.
    Start { events_id: String, bans_id: String },
}

pub struct Task {
    pub client: redis::Client,
    pub keys: Keys,
    pub node: String,
    /// Where to start: the saved position; empty = a new node (start at the end).
    pub events_id: String,
    pub bans_id: String,
    pub tx: mpsc::Sender<Incoming>,
    pub board: Arc<Board>,
    pub metrics: Arc<Metrics>,
    pub cancel: CancellationToken,
}

impl Task {
    pub async fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut first = true;
        while !self.cancel.is_cancelled() {
            let result = match link::connect(&self.client).await {
                Ok(mut conn) => {
                    if !first {
                        self.board.update(|s| s.reconnects += 1);
                        self.metrics.cluster_reconnects.inc();
                    }
                    backoff.reset();
                    self.session(&mut conn).await
                }
                Err(e) => Err(e),
            };
            first = false;
            match result {
                Ok(()) => return, // cancelled, or the engine task is gone
                Err(e) => {
                    if self
                        .board
                        .update(|s| s.set_link(false, false, Some(e.to_string())))
                    {
                        self.metrics.cluster_connected.set(0);
                        tracing::warn!(
                            error = %e,
                            "cluster: Redis unreachable; detecting and banning on local \
                             evidence, buffering what is to be published"
                        );
                    }
                    tracing::debug!(error = %e, "cluster consumer: Redis unreachable");
                }
            }
            let wait = backoff.next_wait();
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Reads until an error (returned), a cancel or a closed channel (`Ok`).
    async fn session(&mut self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        if self.events_id.is_empty() && self.bans_id.is_empty() {
            // A new node: the ends of the streams first, then the active bans, so nothing
            // published in between is missed (it is in both: applying it twice is harmless).
            self.events_id = last_id(conn, &self.keys.events).await?;
            self.bans_id = last_id(conn, &self.keys.bans).await?;
            tracing::info!(
                events = %self.events_id,
                bans = %self.bans_id,
                "cluster: a new node starts at the streams' ends, from the active bans"
            );
            let start = Incoming::Start {
                events_id: self.events_id.clone(),
                bans_id: self.bans_id.clone(),
            };
            if self.tx.send(start).await.is_err() {
                return Ok(());
            }
        }
        // A stream this node has a position in and one it never read: the latter from its
        // (horizon-bounded) beginning.
        for id in [&mut self.events_id, &mut self.bans_id] {
            if id.is_empty() {
                *id = "0-0".to_string();
            }
        }
        let active: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&self.keys.active)
            .query_async(conn)
            .await?;
        let now = Utc::now().timestamp_millis();
        let mut bans = Vec::new();
        let mut expired = Vec::new();
        for (prefix, payload) in active {
            match Message::decode(payload.as_bytes()) {
                Ok(m) => match &m.body {
                    super::wire::Body::Ban { b } if b.until > now => bans.push(m),
                    _ => expired.push(prefix),
                },
                Err(_) => expired.push(prefix),
            }
        }
        if !expired.is_empty() {
            // Any node may tidy the hash: an entry is only removed once its ban is over.
            redis::cmd("HDEL")
                .arg(&self.keys.active)
                .arg(&expired)
                .query_async::<()>(conn)
                .await?;
        }
        if self.tx.send(Incoming::ActiveBans(bans)).await.is_err() {
            return Ok(());
        }
        if self.board.update(|s| s.set_link(false, true, None)) {
            self.metrics.cluster_connected.set(1);
            tracing::info!(node = %self.node, "cluster: connected to Redis");
        }
        loop {
            let mut xread = redis::cmd("XREAD");
            xread
                .arg("COUNT")
                .arg(COUNT)
                .arg("BLOCK")
                .arg(link::BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.keys.events)
                .arg(&self.keys.bans)
                .arg(&self.events_id)
                .arg(&self.bans_id);
            let read = xread.query_async::<Option<StreamReadReply>>(conn);
            let reply = tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                reply = read => reply?,
            };
            let Some(reply) = reply else {
                self.set_lag(0.0);
                continue;
            };
            let mut lag = 0.0f64;
            for key in reply.keys {
                let stream = if key.key == self.keys.events {
                    StreamKind::Events
                } else {
                    StreamKind::Bans
                };
                let full = key.ids.len() >= COUNT;
                for entry in key.ids {
                    let message = match entry.map.get("m") {
                        Some(redis::Value::BulkString(bytes)) => Message::decode(bytes),
                        _ => Err(DecodeError::Malformed("no field m".into())),
                    };
                    match stream {
                        StreamKind::Events => self.events_id = entry.id.clone(),
                        StreamKind::Bans => self.bans_id = entry.id.clone(),
                    }
                    if full && let Some(ms) = link::id_ms(&entry.id) {
                        lag = lag.max((Utc::now().timestamp_millis() - ms) as f64 / 1000.0);
                    }
                    let item = Incoming::Entry {
                        stream,
                        id: entry.id,
                        message,
                    };
                    if self.tx.send(item).await.is_err() {
                        return Ok(());
                    }
                }
            }
            self.set_lag(lag.max(0.0));
        }
    }

    fn set_lag(&self, lag: f64) {
        self.metrics.cluster_lag_seconds.set(lag);
        self.board.update(|s| s.lag_s = lag);
    }
}

/// The id of a stream's newest entry, `0-0` when it is empty or missing.
async fn last_id(conn: &mut MultiplexedConnection, key: &str) -> redis::RedisResult<String> {
    let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(newest
        .ids
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_string(), |e| e.id))
}
