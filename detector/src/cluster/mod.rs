//! Several hosts, one defence: `detector` nodes share parsed events and ban decisions through
//! Redis Streams.
//!
//! # Starting a node
//!
//! ```toml
//! [cluster]
//! redis = "rediss://detector@redis.example.net:6380/0"   # absent = no cluster
//! node = "mx1"                                            # default: the host name
//! password_file = "/etc/detector/redis.pass"              # optional; or in the URL
//! ca_file = "/etc/detector/redis-ca.pem"                  # optional, for rediss://
//! prefix = "detector"                                     # key names, see below
//! ```
//!
//! or `detector run --cluster URL --node NAME`. A node needs no log source of its own: with a
//! cluster configured, `detector run` alone is an enforcement-only node.
//!
//! # What the streams hold
//!
//! - `<prefix>:events`: every event this node's parsers produced from its own logs (not the
//!   `other` kind), and a heartbeat every 5 s; see [`wire`] for the format.
//! - `<prefix>:bans`: every ban this node decided with evidence of its own, and every
//!   `detector unban` an administrator ran on it (which every node then applies: a false ban
//!   of a customer is lifted fleet-wide).
//! - `<prefix>:active-bans`: a hash prefix -> its latest ban message; what a new node, or one
//!   back from an outage, applies first.
//!
//! Both streams are trimmed with `XADD ... MINID ~ <now - engine.horizon>`: an entry older
//! than the engine's horizon can no longer change a decision. Redis must not evict them
//! (`maxmemory-policy noeviction`, or memory to spare).
//!
//! # Data flow
//!
//! ```text
//!  own logs -> parse -> Event --+--> Engine -> Decision -> kernel maps
//!                               |                  |
//!                     (publish) v                  v (publish, if own evidence)
//!                      Outbox -> publisher --> Redis streams --> consumer
//!                                                                  |
//!   peers' events -> Pipeline::feed_event (same engine) <----------+
//!   peers' bans   -> kernel maps (this node's allowlist and own addresses apply) <-+
//! ```
//!
//! Every node runs the same engine over the merged events, so a probe in the MX's log and a
//! login in the IMAP host's log meet in every node's engine, and each bans by itself. Ban
//! decisions are shared too, so a node that missed the events (new, or back after trimming)
//! still enforces them; a ban applied twice is one ban (the kernel entry only ever extends).
//!
//! # Delivery
//!
//! At least once. Each message carries its node and an origin stamp `[boot, seq]` that only
//! grows per node; a consumer keeps the highest stamp per node and stream and counts nothing
//! twice. A node reads its own messages back and skips them (its own logs are its own source).
//! Every node reads every entry with XREAD from its own position, saved in its state
//! directory with the engine snapshot (like the journal cursor), not with a consumer group:
//! groups exist to share work among consumers, while here every node needs everything, and
//! a group's acknowledged position lives in Redis, apart from the engine snapshot it must
//! match after a crash. A node that was down catches up from its saved position.
//!
//! # Trust
//!
//! Whoever can write to the streams can make every node ban (never an address a node's own
//! allowlist or interfaces protect: each node checks bans against its own before writing
//! them). Give the nodes their own Redis ACL user limited to the `<prefix>:*` keys, and use
//! TLS across hosts.
//!
//! # Redis down
//!
//! Sources, the engine and the kernel maps never wait for Redis: what is to be published goes
//! into a bounded buffer (`cluster.buffer`, the oldest events dropped first when full) that is
//! flushed on reconnect. The outage shows in `detector status`, in
//! `detector_cluster_connected`, and in the log.
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::Decision;
use crate::event::{Event, EventKind};
use crate::metrics::Metrics;
use crate::store::StateDir;

pub mod config;
pub mod consumer;
pub mod link;
pub mod outbox;
pub mod position;
pub mod publisher;
pub mod status;
pub mod wire;

pub use config::{ClusterConfig, DEFAULT_PREFIX, Keys};
pub use consumer::Incoming;
pub use outbox::{Active, Outbox, Outgoing, StreamKind};
pub use position::{BanOrigin, ClusterState};
pub use status::{Board, ClusterStatus};
pub use wire::{Body, Message, Stamp, WireBan, WireEvent};

/// Capacity of the channel from the consumer to the engine task (Redis keeps the rest).
const INCOMING: usize = 4096;
/// How many runs of event origins are remembered for ban attribution.
const ORIGIN_RUNS: usize = 1 << 20;

/// The engine task's end of the cluster: incoming entries, positions and marks.
pub struct Cluster {
    node: Arc<str>,
    state: ClusterState,
    incoming: mpsc::Receiver<Incoming>,
    board: Arc<Board>,
    metrics: Arc<Metrics>,
    outbox: Arc<Outbox>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    decode_errors: u64,
}

/// What an incoming entry amounts to, for the engine task.
#[derive(Debug)]
pub enum Accepted {
    /// A peer's event, new: feed it to the pipeline.
    Event { node: Arc<str>, event: Event },
    /// A peer's ban, new (or from the active-bans hash): write it into the maps.
    Ban { node: Arc<str>, ban: WireBan },
    /// An administrator lifted this ban on a peer: lift it here too.
    Unban { node: Arc<str>, prefix: IpNet },
}

/// Starts the publisher, consumer and status tasks (inside a tokio runtime). `None` when no
/// cluster is configured.
pub fn start(
    cfg: &ClusterConfig,
    state: &StateDir,
    horizon: std::time::Duration,
    metrics: Arc<Metrics>,
) -> crate::Result<Option<(Cluster, Publisher)>> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let client = link::client(cfg)?;
    let keys = cfg.keys();
    let node: Arc<str> = cfg.node_name().into();
    let mut saved = ClusterState::load(state)?;
    let boot = saved.next_boot(Utc::now().timestamp_millis().max(1) as u64);
    let redis = status::redact(cfg.redis.as_deref().unwrap_or_default());
    let board = Arc::new(Board::new(node.to_string(), redis.clone()));
    let outbox = Arc::new(Outbox::new(cfg.buffer));
    let cancel = CancellationToken::new();
    let (tx, incoming) = mpsc::channel(INCOMING);
    tracing::info!(node = %node, redis = %redis, events = %keys.events, bans = %keys.bans,
        new = saved.is_new(), "cluster: joining");
    let publisher_task = publisher::Task {
        client: client.clone(),
        keys: keys.clone(),
        node: node.to_string(),
        boot,
        outbox: Arc::clone(&outbox),
        board: Arc::clone(&board),
        metrics: Arc::clone(&metrics),
        horizon,
        cancel: cancel.clone(),
    };
    let consumer_task = consumer::Task {
        client,
        keys,
        node: node.to_string(),
        events_id: saved.events_id.clone(),
        bans_id: saved.bans_id.clone(),
        tx,
        board: Arc::clone(&board),
        metrics: Arc::clone(&metrics),
        cancel: cancel.clone(),
    };
    let tasks = vec![
        tokio::spawn(publisher_task.run()),
        tokio::spawn(consumer_task.run()),
        tokio::spawn(write_status(
            state.clone(),
            Arc::clone(&board),
            Arc::clone(&outbox),
            Arc::clone(&metrics),
            cancel.clone(),
        )),
    ];
    let bans = std::mem::take(&mut saved.bans);
    let publisher = Publisher {
        node: Arc::clone(&node),
        boot,
        seq: 0,
        outbox: Arc::clone(&outbox),
        origins: BTreeMap::new(),
        bans,
    };
    let cluster = Cluster {
        node,
        state: saved,
        incoming,
        board,
        metrics,
        outbox,
        cancel,
        tasks,
        decode_errors: 0,
    };
    Ok(Some((cluster, publisher)))
}

/// Writes the status file every 2 s (and counts the messages the full buffer dropped).
async fn write_status(
    state: StateDir,
    board: Arc<Board>,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    let mut dropped_counted = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut snapshot = board.snapshot();
        snapshot.buffered = outbox.len() as u64;
        snapshot.dropped = outbox.dropped();
        metrics
            .cluster_dropped
            .inc_by(snapshot.dropped.saturating_sub(dropped_counted));
        dropped_counted = snapshot.dropped;
        snapshot.written_at = Some(Utc::now());
        let state = state.clone();
        let written =
            tokio::task::spawn_blocking(move || state.write_json(status::FILE_NAME, &snapshot))
                .await;
        if let Ok(Err(e)) = written {
            tracing::warn!(error = %e, "cluster: writing the status file failed");
        }
    }
}

impl Cluster {
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The next incoming entry (cancel-safe).
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// Checks an entry against this node's marks and moves the position past it.
    pub fn accept(&mut self, incoming: Incoming) -> Vec<Accepted> {
        match incoming {
            Incoming::Start { events_id, bans_id } => {
                for (saved, start) in [
                    (&mut self.state.events_id, events_id),
                    (&mut self.state.bans_id, bans_id),
                ] {
                    if saved.is_empty() {
                        *saved = start;
                    }
                }
                Vec::new()
            }
            Incoming::ActiveBans(messages) => messages
                .into_iter()
                .filter(|m| *m.n != *self.node)
                .filter_map(|m| match m.body {
                    Body::Ban { b } => Some(Accepted::Ban {
                        node: m.n.into(),
                        ban: b,
                    }),
                    _ => None,
                })
                .collect(),
            Incoming::Entry {
                stream,
                id,
                message,
            } => {
                let events = stream == StreamKind::Events;
                if events {
                    self.state.events_id = id;
                } else {
                    self.state.bans_id = id;
                }
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        self.decode_errors += 1;
                        if self.decode_errors == 1 || self.decode_errors.is_multiple_of(1000) {
                            tracing::warn!(error = ?e, skipped = self.decode_errors, "cluster: stream entry not understood; skipped (a newer detector's format?)");
                        }
                        return Vec::new();
                    }
                };
                if *message.n == *self.node {
                    return Vec::new(); // our own, read back
                }
                let now = Utc::now();
                let heartbeat = matches!(message.body, Body::Heartbeat { .. });
                let fresh = heartbeat || self.state.accept(&message.n, events, message.o);
                self.board.update(|s| {
                    let peer = s.peers.entry(message.n.clone()).or_default();
                    peer.last_seen = Some(now);
                    if !fresh {
                        return;
                    }
                    match &message.body {
                        Body::Event { e } => {
                            peer.events += 1;
                            peer.last_event = chrono::DateTime::from_timestamp_micros(e.t);
                        }
                        Body::Ban { .. } => peer.bans += 1,
                        Body::Heartbeat { .. } | Body::Unban { .. } => {}
                    }
                    if !heartbeat {
                        s.consumed += 1;
                    }
                });
                if !fresh || heartbeat {
                    return Vec::new();
                }
                self.metrics.cluster_consumed.inc();
                let node: Arc<str> = message.n.into();
                match message.body {
                    Body::Event { e } => match e.to_event() {
                        Some(mut event) => {
                            // A session (Postfix `pid:<n>`, Dovecot's id) is one host's: the
                            // same pid on two MX hosts is two connections.
                            event.session = event.session.map(|s| format!("{node}/{s}"));
                            vec![Accepted::Event { node, event }]
                        }
                        None => Vec::new(),
                    },
                    Body::Ban { b } => vec![Accepted::Ban { node, ban: b }],
                    Body::Unban { u } => vec![Accepted::Unban { node, prefix: u }],
                    Body::Heartbeat { .. } => Vec::new(),
                }
            }
        }
    }

    /// What to save with the engine snapshot.
    pub fn saved_state(&self, publisher: &Publisher) -> ClusterState {
        let mut s = self.state.clone();
        s.own_boot = publisher.boot;
        s.bans = publisher.bans.clone();
        s
    }

    /// Gives the publisher up to `patience` to send what is buffered, then stops the tasks.
    pub async fn stop(self, patience: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        while !self.outbox.is_empty()
            && self.board.update(|s| s.publisher_connected)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The decision side's end: publishes local events and bans, and remembers which node's
/// events each ban rests on.
pub struct Publisher {
    node: Arc<str>,
    boot: u64,
    seq: u64,
    outbox: Arc<Outbox>,
    /// Pipeline sequence number where a run of events from one node begins -> that node.
    origins: BTreeMap<u64, Arc<str>>,
    bans: BTreeMap<IpNet, BanOrigin>,
}

impl Publisher {
    pub fn node(&self) -> &str {
        &self.node
    }

    fn stamp(&mut self) -> Stamp {
        self.seq += 1;
        Stamp(self.boot, self.seq)
    }

    fn note_origin(&mut self, line: u64, node: &Arc<str>) {
        let same = (self.origins.range(..=line).next_back()).is_some_and(|(_, n)| n == node);
        if !same {
            self.origins.insert(line, Arc::clone(node));
            if self.origins.len() > ORIGIN_RUNS {
                self.origins.pop_first();
            }
        }
    }

    /// An event from this node's own logs (`line`: its pipeline number): published.
    pub fn local_event(&mut self, event: &Event) {
        let node = Arc::clone(&self.node);
        self.note_origin(event.line, &node);
        if event.kind == EventKind::Other {
            return;
        }
        let message = Message {
            v: wire::VERSION,
            n: self.node.to_string(),
            o: self.stamp(),
            body: Body::Event {
                e: WireEvent::from(event),
            },
        };
        self.outbox.push(Outgoing {
            stream: StreamKind::Events,
            payload: message.encode(),
            active: None,
        });
    }

    /// A peer's event fed to the pipeline as number `line`.
    pub fn remote_event(&mut self, line: u64, node: &Arc<str>) {
        self.note_origin(line, node);
    }

    /// The nodes whose events a decision cites, sorted.
    pub fn contributors(&self, decision: &Decision) -> Vec<String> {
        let mut nodes: Vec<String> = (decision.evidence.iter())
            .filter_map(|e| self.origins.range(..=e.line).next_back())
            .map(|(_, n)| n.to_string())
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// A ban this node wrote: remembered for `explain`; published when it rests on evidence of
    /// this node's own (peers that saw the same events reach it themselves, and the others
    /// get it from whoever had evidence).
    pub fn own_ban(&mut self, decision: &Decision, until_ms: i64, nodes: &[String]) {
        self.remember(
            decision.prefix,
            BanOrigin {
                nodes: nodes.to_vec(),
                decided_by: self.node.to_string(),
                until_ms,
            },
        );
        if !nodes.iter().any(|n| **n == *self.node) {
            return;
        }
        let message = Message {
            v: wire::VERSION,
            n: self.node.to_string(),
            o: self.stamp(),
            body: Body::Ban {
                b: WireBan {
                    p: decision.prefix,
                    ip: decision.ip,
                    r: decision.rule,
                    until: until_ms,
                    o: decision.offence,
                    c: nodes.to_vec(),
                    dry: decision.dry_run,
                },
            },
        };
        self.outbox.push(Outgoing {
            stream: StreamKind::Bans,
            payload: message.encode(),
            active: Some(Active::Set(decision.prefix.to_string())),
        });
    }

    /// An administrator removed `prefix` from this node's maps: every node lifts it.
    pub fn admin_unban(&mut self, prefix: IpNet) {
        let prefix = crate::enforce::canonical(prefix);
        self.bans.remove(&prefix);
        let message = Message {
            v: wire::VERSION,
            n: self.node.to_string(),
            o: self.stamp(),
            body: Body::Unban { u: prefix },
        };
        self.outbox.push(Outgoing {
            stream: StreamKind::Bans,
            payload: message.encode(),
            active: Some(Active::Remove(prefix.to_string())),
        });
    }

    /// A peer's unban applied here.
    pub fn peer_unban(&mut self, prefix: IpNet) {
        self.bans.remove(&crate::enforce::canonical(prefix));
    }

    /// A peer's ban this node applied.
    pub fn peer_ban(&mut self, node: &str, ban: &WireBan) {
        self.remember(
            ban.p,
            BanOrigin {
                nodes: ban.c.clone(),
                decided_by: node.to_string(),
                until_ms: ban.until,
            },
        );
    }

    fn remember(&mut self, prefix: IpNet, origin: BanOrigin) {
        let mut state = ClusterState {
            bans: std::mem::take(&mut self.bans),
            ..ClusterState::default()
        };
        state.record_ban(crate::enforce::canonical(prefix), origin);
        self.bans = state.bans;
    }

    /// The recorded origins of the bans covering `ip` (for logs and tests).
    pub fn origins_of(&self, ip: std::net::IpAddr) -> Vec<(IpNet, BanOrigin)> {
        let now = Utc::now().timestamp_millis();
        (self.bans.iter())
            .filter(|(p, b)| p.contains(&ip) && b.until_ms > now)
            .map(|(p, b)| (*p, b.clone()))
            .collect()
    }
}

/// Reads a state directory's cluster files for `status` and `explain` (read-only).
pub fn read_saved(state: &StateDir) -> (Option<ClusterState>, Option<ClusterStatus>) {
    let read = |name: &str| state.read(name).ok().flatten();
    (
        read(position::FILE_NAME).and_then(|b| serde_json::from_slice(&b).ok()),
        read(status::FILE_NAME).and_then(|b| serde_json::from_slice(&b).ok()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Action, Evidence, Rule};

    fn cluster(node: &str) -> Cluster {
        let (_tx, incoming) = mpsc::channel(1);
        Cluster {
            node: node.into(),
            state: ClusterState::default(),
            incoming,
            board: Arc::new(Board::new(node.into(), String::new())),
            metrics: Arc::new(Metrics::new()),
            outbox: Arc::new(Outbox::new(10)),
            cancel: CancellationToken::new(),
            tasks: Vec::new(),
            decode_errors: 0,
        }
    }

    fn publisher(node: &str, outbox: Arc<Outbox>) -> Publisher {
        Publisher {
            node: node.into(),
            boot: 7,
            seq: 0,
            outbox,
            origins: BTreeMap::new(),
            bans: BTreeMap::new(),
        }
    }

    fn event(line: u64) -> Event {
        Event {
            time: chrono::DateTime::from_timestamp(1_764_612_000, 0).unwrap(),
            service: crate::event::Service::Dovecot,
            kind: EventKind::AuthFailure,
            ip: "198.18.0.9".parse().unwrap(),
            user: Some("a@example.test".into()),
            recipient: None,
            protocol: None,
            line,
            session: None,
            failures: 1,
            smtp: None,
            peer: None,
        }
    }

    fn entry(id: &str, node: &str, stamp: Stamp, body: Body) -> Incoming {
        Incoming::Entry {
            stream: match body {
                Body::Ban { .. } => StreamKind::Bans,
                _ => StreamKind::Events,
            },
            id: id.into(),
            message: Ok(Message {
                v: wire::VERSION,
                n: node.into(),
                o: stamp,
                body,
            }),
        }
    }

    fn ev_body() -> Body {
        Body::Event {
            e: WireEvent::from(&event(1)),
        }
    }

    /// A new node saves where it started at once: killed before it took a ban message, it
    /// must not start at the streams' ends again (and miss the events in between).
    #[test]
    fn a_new_nodes_start_is_kept_and_never_moves_a_position_back() {
        let mut c = cluster("edge");
        let start = |e: &str, b: &str| Incoming::Start {
            events_id: e.into(),
            bans_id: b.into(),
        };
        assert!(c.accept(start("5-0", "3-0")).is_empty());
        assert_eq!(
            (c.state.events_id.as_str(), c.state.bans_id.as_str()),
            ("5-0", "3-0")
        );
        c.accept(entry("6-0", "mx", Stamp(1, 1), ev_body()));
        c.accept(start("9-0", "9-0"));
        assert_eq!(
            (c.state.events_id.as_str(), c.state.bans_id.as_str()),
            ("6-0", "3-0")
        );
    }

    #[test]
    fn a_peers_sessions_are_its_own() {
        let mut c = cluster("edge");
        let mut e = event(1);
        e.session = Some("pid:17".into());
        let body = Body::Event {
            e: WireEvent::from(&e),
        };
        let got = c.accept(entry("1-0", "mx1", Stamp(1, 1), body));
        let [Accepted::Event { event, .. }] = &got[..] else {
            panic!("{got:?}")
        };
        assert_eq!(event.session.as_deref(), Some("mx1/pid:17"));
    }

    #[test]
    fn an_event_delivered_twice_is_fed_once_and_our_own_never() {
        let mut c = cluster("edge");
        assert_eq!(
            c.accept(entry("1-0", "mx", Stamp(1, 1), ev_body())).len(),
            1
        );
        assert!(
            c.accept(entry("2-0", "mx", Stamp(1, 1), ev_body()))
                .is_empty()
        );
        assert!(
            c.accept(entry("3-0", "edge", Stamp(9, 9), ev_body()))
                .is_empty()
        );
        // A heartbeat marks the peer as seen and is not fed.
        let hb = Body::Heartbeat { t: 1 };
        assert!(c.accept(entry("4-0", "imap", Stamp(0, 1), hb)).is_empty());
        // Every entry moves the position, taken or not.
        assert_eq!(c.state.events_id, "4-0");
        let status = c.board.snapshot();
        assert_eq!(status.consumed, 1);
        assert_eq!(status.peers["mx"].events, 1);
        assert!(status.peers["imap"].last_seen.is_some());
        assert!(!status.peers.contains_key("edge"));
        // Undecodable: skipped, position still moves.
        let bad = Incoming::Entry {
            stream: StreamKind::Events,
            id: "5-0".into(),
            message: Err(wire::DecodeError::Version(9)),
        };
        assert!(c.accept(bad).is_empty());
        assert_eq!(c.state.events_id, "5-0");
    }

    #[test]
    fn a_ban_names_its_nodes_and_is_published_only_with_own_evidence() {
        let outbox = Arc::new(Outbox::new(100));
        let mut p = publisher("imap", Arc::clone(&outbox));
        let mx: Arc<str> = "mx".into();
        p.remote_event(1, &mx);
        p.remote_event(2, &mx);
        p.local_event(&event(3));
        assert_eq!(outbox.take(10).len(), 1, "the local event is published");
        let evidence = |lines: &[u64]| {
            lines
                .iter()
                .map(|&line| Evidence {
                    line,
                    time: event(line).time,
                    what: String::new(),
                })
                .collect::<Vec<_>>()
        };
        let mut decision = Decision {
            action: Action::Ban,
            ip: "198.18.0.9".parse().unwrap(),
            prefix: "198.18.0.9/32".parse().unwrap(),
            time: event(1).time,
            rule: Rule::ProbeLogin,
            duration: std::time::Duration::from_secs(3600),
            offence: 1,
            dry_run: false,
            evidence: evidence(&[1, 3]),
            note: String::new(),
            kind: None,
            user: None,
        };
        let nodes = p.contributors(&decision);
        assert_eq!(nodes, ["imap", "mx"]);
        let until = Utc::now().timestamp_millis() + 60_000;
        p.own_ban(&decision, until, &nodes);
        let sent = outbox.take(10);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].stream, StreamKind::Bans);
        assert_eq!(sent[0].active, Some(Active::Set("198.18.0.9/32".into())));
        let Body::Ban { b } = Message::decode(sent[0].payload.as_bytes()).unwrap().body else {
            panic!("not a ban")
        };
        assert_eq!(b.c, ["imap", "mx"]);
        assert_eq!(p.origins_of(decision.ip)[0].1.nodes, ["imap", "mx"]);
        // Resting on the peer's events alone: the peer publishes it, not us.
        decision.evidence = evidence(&[1, 2]);
        let nodes = p.contributors(&decision);
        assert_eq!(nodes, ["mx"]);
        p.own_ban(&decision, until, &nodes);
        assert!(outbox.is_empty());
    }
}
