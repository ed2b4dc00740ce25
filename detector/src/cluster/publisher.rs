//! The publisher task: drains the [`Outbox`] into the streams (XADD with `MINID ~` at the
//! engine's horizon), records bans in the active-bans hash, sends a heartbeat, and reconnects
//! with backoff when Redis goes away. The engine task never waits for it.
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::config::Keys;
use super::link::{self, Backoff};
use super::outbox::{Active, Outbox, StreamKind};
use super::status::Board;
use super::wire::{Body, Message, Stamp, VERSION};
use crate::metrics::Metrics;

/// Messages per round trip.
const BATCH: usize = 512;
/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

pub struct Task {
    pub client: redis::Client,
    pub keys: Keys,
    pub node: String,
    pub boot: u64,
    pub outbox: Arc<Outbox>,
    pub board: Arc<Board>,
    pub metrics: Arc<Metrics>,
    /// Entries older than this are trimmed.
    pub horizon: Duration,
    pub cancel: CancellationToken,
}

impl Task {
    pub async fn run(self) {
        let mut backoff = Backoff::default();
        let mut heartbeat_seq = 0u64;
        let mut first = true;
        while !self.cancel.is_cancelled() {
            let mut conn = match link::connect(&self.client).await {
                Ok(c) => c,
                Err(e) => {
                    self.down(&e, first);
                    first = false;
                    let wait = backoff.next_wait();
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            if !first {
                self.metrics.cluster_reconnects.inc();
                self.board.update(|s| s.reconnects += 1);
            }
            first = false;
            backoff.reset();
            self.up();
            let mut beat = tokio::time::interval(HEARTBEAT);
            loop {
                let batch = self.outbox.take(BATCH);
                let beating = batch.is_empty() && {
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = self.outbox.ready() => false,
                        _ = beat.tick() => true,
                    }
                };
                if batch.is_empty() && !beating {
                    continue;
                }
                let mut pipe = redis::pipe();
                let min_id = format!(
                    "{}-0",
                    (Utc::now().timestamp_millis() - self.horizon.as_millis() as i64).max(0)
                );
                if beating {
                    heartbeat_seq += 1;
                    // Stamped apart from the data (boot 0 sorts below any real stamp, so a
                    // peer's marks never skip data because of a heartbeat).
                    let hb = Message {
                        v: VERSION,
                        n: self.node.clone(),
                        o: Stamp(0, heartbeat_seq),
                        body: Body::Heartbeat {
                            t: Utc::now().timestamp_millis(),
                        },
                    };
                    self.xadd(&mut pipe, &self.keys.events, &min_id, &hb.encode());
                }
                for m in &batch {
                    let key = match m.stream {
                        StreamKind::Events => &self.keys.events,
                        StreamKind::Bans => &self.keys.bans,
                    };
                    self.xadd(&mut pipe, key, &min_id, &m.payload);
                    match &m.active {
                        Some(Active::Set(prefix)) => {
                            pipe.cmd("HSET")
                                .arg(&self.keys.active)
                                .arg(prefix)
                                .arg(&m.payload)
                                .ignore();
                        }
                        Some(Active::Remove(prefix)) => {
                            pipe.cmd("HDEL").arg(&self.keys.active).arg(prefix).ignore();
                        }
                        None => {}
                    }
                }
                match pipe.query_async::<()>(&mut conn).await {
                    Ok(()) => {
                        let n = batch.len() as u64;
                        self.metrics.cluster_published.inc_by(n);
                        self.board.update(|s| {
                            s.published += n;
                            s.buffered = self.outbox.len() as u64;
                            s.dropped = self.outbox.dropped();
                        });
                    }
                    Err(e) => {
                        // Sent again after the reconnect; a part Redis did take comes twice,
                        // which the consumers' marks absorb.
                        self.outbox.put_back(batch);
                        self.down(&e, false);
                        break;
                    }
                }
            }
        }
    }

    fn xadd(&self, pipe: &mut redis::Pipeline, key: &str, min_id: &str, payload: &str) {
        pipe.cmd("XADD")
            .arg(key)
            .arg("MINID")
            .arg("~")
            .arg(min_id)
            .arg("*")
            .arg("m")
            .arg(payload)
            .ignore();
    }

    fn up(&self) {
        if self.board.update(|s| s.set_link(true, true, None)) {
            self.metrics.cluster_connected.set(1);
            tracing::info!(node = %self.node, "cluster: connected to Redis");
        }
    }

    fn down(&self, e: &redis::RedisError, first: bool) {
        let changed = self
            .board
            .update(|s| s.set_link(true, false, Some(e.to_string())));
        self.metrics.cluster_connected.set(0);
        // After the first failure to connect, the consumer's side reports the outage alone
        // unless this one changes the link's state.
        let buffered = self.outbox.len();
        self.board.update(|s| s.buffered = buffered as u64);
        if changed || first {
            tracing::warn!(
                error = %e,
                buffered,
                "cluster: Redis unreachable; detecting and banning on local evidence, \
                 buffering what is to be published"
            );
        }
    }
}
