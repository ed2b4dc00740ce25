//! `detector run`: sources -> pipeline (parser + engine) -> enforcer, with persistence and
//! metrics.
//!
//! Task structure (as in tokio's examples): one task per source feeds a bounded channel of
//! lines; one task — this module's `Daemon::run` — owns the [`Pipeline`] (the same parser and
//! engine `detector replay` runs), the enforcer and the checkpoints, so no state is shared and
//! nothing needs a lock. Decisions are applied to the kernel maps inline, right after the line
//! that caused them (a map update is one syscall), which keeps "failure logged -> entry in the
//! map" short. Timers in the same `select!` sweep expired bans, copy kernel counters into the
//! metrics and persist state.
//!
//! Crash safety: source positions are committed only after their line went through the engine
//! and any ban it caused is in the kernel map. A save takes a copy of the engine snapshot and
//! of the positions at one instant and writes them on a blocking thread (encoding and fsyncing
//! a large snapshot must not hold up bans): the snapshot first, then the positions, so after a
//! crash no entry is lost (at worst a few are read again). SIGTERM/SIGINT finish the lines
//! already read, wait for a running save, save once more and exit 0.
use std::collections::HashMap;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::enforce::{self, AttachOptions, Capacity, Enforcer, Reason};
use crate::engine::StateCopy;
use crate::engine::{Action, Decision, Rule};
use crate::metrics::{FamilyLabel, KindLabel, Metrics, RuleLabel, SourceLabel};
use crate::parse::{Format, LineParser};
use crate::pipeline::{ClockGuard, DecisionRecord, Fed, Pipeline, Sink};
use crate::source::{self, Position, SourceCounters, SourceLine, SourceStatus};
use crate::store::{
    self, Checkpoints, DaemonCounters, ENGINE_STATE_FILE, EngineLoad, PID_FILE, StateDir,
};
use crate::{Error, Result};

/// Capacity of the line channel between the sources and the engine task.
const LINE_CHANNEL: usize = 4096;

/// Runs the daemon until SIGTERM/SIGINT (or until every source has ended, e.g. stdin).
pub fn run(config: Config) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("detector")
        .build()
        .map_err(|e| Error::Source(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(async move {
        let daemon = Daemon::start(config)?;
        daemon.run().await
    });
    // tokio's stdin reader sits in a blocking thread that never returns; state is already
    // saved, so do not wait for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

struct Daemon {
    config: Config,
    /// Parser and engine: the same code `detector replay` runs, with the kernel as its sink.
    pipeline: Pipeline,
    kernel: KernelSink,
    state: StateDir,
    checkpoints: Checkpoints,
    metrics: Arc<Metrics>,
    /// Bound at start, so that a metrics address in use fails the start.
    metrics_listener: Option<tokio::net::TcpListener>,
    cancel: CancellationToken,
    /// Lines processed since start: the evidence numbers of live decisions.
    line_no: u64,
    /// The engine or the positions changed since the last save. The snapshot can be tens of
    /// MB on a host under attack, so an idle daemon does not rewrite it every interval.
    unsaved: bool,
    /// A save runs on a blocking thread (its result comes on `saved`): at most one at a time.
    saving: bool,
    saved_tx: mpsc::UnboundedSender<SaveOutcome>,
    saved: mpsc::UnboundedReceiver<SaveOutcome>,
    counters: DaemonCounters,
    /// The running sources' counters (untrusted journal entries).
    sources: Vec<Arc<SourceCounters>>,
    /// CrowdSec bouncer state (`[crowdsec] lapi_url` set).
    crowdsec: Option<crate::crowdsec::Bouncer>,
    /// `[cluster]`: peers' events and bans from Redis (the publisher sits in the sink).
    cluster: Option<crate::cluster::Cluster>,
}

impl Daemon {
    /// Attaches (or adopts) the XDP program, restores state. Fails early and clearly.
    fn start(config: Config) -> Result<Daemon> {
        // First, before anything is attached or written: a metrics address in use is a
        // configuration error that must stop the start.
        let metrics_listener = config
            .metrics
            .listen
            .map(crate::metrics::bind)
            .transpose()?;
        let xdp = &config.xdp;
        // With no interface configured this adopts what `detector attach` pinned, or loads
        // and pins the maps so bans are recorded until an interface is attached.
        let report = enforce::attach(&AttachOptions {
            pin_dir: xdp.pin_dir.clone(),
            ifaces: xdp.interfaces.clone(),
            mode: xdp.mode,
            capacity: Some(Capacity {
                exact: xdp.max_exact_bans,
                prefix: xdp.max_prefix_bans,
            }),
        })?;
        // enforce::attach logs each interface and mode itself.
        if report.adopted {
            tracing::info!(pin_dir = %xdp.pin_dir.display(), "adopted pinned maps; existing bans kept");
        }
        let mut enforcer = Enforcer::open(&xdp.pin_dir)?;
        if enforcer.attached_interfaces().is_empty() {
            tracing::warn!(
                "XDP is attached to no interface: bans are recorded but nothing is dropped; \
                 set xdp.interfaces, pass --iface IF, or run `detector attach --iface IF`"
            );
        }
        let engine_cfg = &config.engine;
        // Nameservers, gateways and the relayhost: read once, logged, never banned.
        let infrastructure = enforce::host_infrastructure();
        enforcer.set_allowlist(
            enforce::Allowlist::new(engine_cfg.allowlist.clone())
                .with_infrastructure(infrastructure.clone()),
        );
        enforcer.set_observe(engine_cfg.dry_run)?;
        if engine_cfg.dry_run {
            tracing::warn!(
                "dry run: bans are written but the XDP program only counts matches (observed)"
            );
        }

        let state = StateDir::open(&config.daemon.state_dir)?;
        let checkpoints = Checkpoints::load(&state)?;
        let max_ahead = config.daemon.max_clock_ahead;
        let mut engine = match store::load_engine(Some(&state), engine_cfg, Utc::now(), max_ahead)?
        {
            EngineLoad::Restored {
                engine,
                clock_reset_by,
            } => {
                let (ips, users, prefixes) = engine.tracked();
                tracing::info!(ips, users, prefixes, "engine state restored");
                if let Some(ahead) = clock_reset_by {
                    tracing::warn!(
                        ahead = %humantime::format_duration(Duration::from_secs(ahead.as_secs())),
                        "the saved engine clock was ahead of the wall clock; set back to now"
                    );
                }
                engine
            }
            EngineLoad::Fresh(engine) => engine,
            EngineLoad::Damaged {
                engine,
                reason,
                bad_copy,
            } => {
                let bad_copy = bad_copy.map(|p| p.display().to_string());
                tracing::warn!(?bad_copy, %reason, "engine state unreadable; starting fresh");
                engine
            }
        };
        let mut host_addrs: Vec<IpAddr> = enforce::local_addresses();
        host_addrs.extend(infrastructure.iter().map(|i| i.addr));
        engine.set_host_addrs(host_addrs);

        state.write_atomic(PID_FILE, format!("{}\n", std::process::id()).as_bytes())?;
        let pusher = crate::crowdsec::push::spawn(&config.crowdsec, CancellationToken::new())?;
        let crowdsec = (config.crowdsec.enabled())
            .then(|| crate::crowdsec::Bouncer::new(config.crowdsec.filter()));
        let metrics = Arc::new(Metrics::new());
        let (cluster, cluster_publisher) = match crate::cluster::start(
            &config.cluster,
            &state,
            engine_cfg.horizon,
            Arc::clone(&metrics),
        )? {
            Some((c, p)) => (Some(c), Some(p)),
            None => (None, None),
        };
        let pipeline = Pipeline::new(LineParser::new(Format::Auto), engine)
            .with_clock_guard(ClockGuard::wall(config.daemon.max_clock_ahead));
        let (saved_tx, saved) = mpsc::unbounded_channel();
        let mut daemon = Daemon {
            crowdsec,
            config,
            pipeline,
            kernel: KernelSink {
                enforcer,
                metrics: Arc::clone(&metrics),
                written: HashMap::new(),
                pusher,
                cluster: cluster_publisher,
            },
            state,
            checkpoints,
            metrics,
            metrics_listener,
            cancel: CancellationToken::new(),
            line_no: 0,
            unsaved: false,
            saving: false,
            saved_tx,
            saved,
            counters: DaemonCounters {
                started_at: Some(Utc::now()),
                ..DaemonCounters::default()
            },
            sources: Vec::new(),
            cluster,
        };
        // A changed allowlist may now protect addresses banned before the restart.
        let decisions = daemon.pipeline.engine_mut().reconcile();
        daemon.unsaved |= !decisions.is_empty();
        daemon.pipeline.deliver(decisions, &mut daemon.kernel);
        daemon.reconcile_kernel()?;
        Ok(daemon)
    }

    /// After a reboot or `detector detach` the maps are empty while the engine still holds its
    /// bans: write those again, with their time left. Bans an administrator removed while the
    /// daemon was stopped are forgotten by the engine instead (see [`Enforcer::reconcile`]).
    fn reconcile_kernel(&mut self) -> Result<()> {
        let now = Utc::now();
        let mut ends = HashMap::new();
        let mut bans = Vec::new();
        for (prefix, until, rule) in self.pipeline.engine().active_bans() {
            // Over in wall-clock time (an old backlog): nothing to write.
            let Ok(left) = (until - now).to_std() else {
                continue;
            };
            ends.insert(enforce::canonical(prefix), until);
            bans.push(enforce::ActiveBan {
                net: prefix,
                remaining: Some(left),
                reason: reason_of(rule),
            });
        }
        let done = self.kernel.enforcer.reconcile(&bans)?;
        for net in done.restored.iter().chain(&done.present) {
            if let Some(end) = ends.get(net) {
                self.kernel.written.insert(*net, *end);
            }
        }
        let engine = self.pipeline.engine_mut();
        let engine_now = engine.now().unwrap_or(now);
        for net in &done.removed_by_admin {
            if engine.unban(net.network(), engine_now).is_some() {
                self.unsaved = true;
                tracing::info!(prefix = %net, "removed from the kernel while the daemon was stopped; the engine forgets the ban (offences kept)");
            }
        }
        for (net, e) in &done.failed {
            tracing::error!(prefix = %net, error = %e, "ban not restored");
        }
        tracing::info!(
            restored = done.restored.len(),
            present = done.present.len(),
            forgotten = done.removed_by_admin.len(),
            failed = done.failed.len(),
            "engine bans reconciled with the kernel maps"
        );
        Ok(())
    }

    async fn run(mut self) -> Result<ExitCode> {
        let (line_tx, mut lines) = mpsc::channel::<SourceLine>(LINE_CHANNEL);
        let (status_tx, mut statuses) = mpsc::unbounded_channel::<SourceStatus>();
        // A CrowdSec bouncer may run with no log source at all.
        let handles = if self.config.sources.is_empty()
            && (self.crowdsec.is_some() || self.cluster.is_some())
        {
            drop(line_tx); // no line will come: the shutdown drain must not wait for one
            Vec::new()
        } else {
            source::spawn(
                &self.config.sources,
                self.checkpoints.resume(),
                line_tx,
                status_tx,
                self.cancel.clone(),
            )?
        };
        tracing::info!(sources = handles.len(), "following logs");
        self.sources = handles.iter().map(|h| Arc::clone(&h.counters)).collect();
        let mut pulls = crate::crowdsec::spawn_poller(&self.config.crowdsec, self.cancel.clone())?;
        let mut lines_open = true;

        let metrics_task = self.metrics_listener.take().map(|listener| {
            tokio::spawn(crate::metrics::serve(
                listener,
                Arc::clone(&self.metrics),
                self.cancel.clone(),
            ))
        });

        let mut sweep = tokio::time::interval(self.config.daemon.sweep_interval);
        let mut persist = tokio::time::interval(self.config.daemon.persist_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = Box::pin(shutdown_signal());

        loop {
            tokio::select! {
                // Lines first: under load, timers wait rather than the other way round.
                biased;
                line = lines.recv(), if lines_open => match line {
                    Some(line) => self.handle_line(line),
                    None if pulls.is_some() || self.cluster.is_some() => lines_open = false,
                    None => {
                        tracing::info!("every source has ended");
                        break;
                    }
                },
                Some(pull) = crate::crowdsec::next_pull(&mut pulls) => {
                    if let Some(bouncer) = &mut self.crowdsec {
                        crate::crowdsec::status::apply_pull(bouncer, pull, &mut self.kernel.enforcer, &self.state);
                    }
                }
                // Sources log their own status through tracing; the channel only has to be
                // drained so it does not grow.
                _ = statuses.recv() => {}
                _ = &mut shutdown => {
                    tracing::info!("stopping: finishing the lines already read");
                    self.cancel.cancel();
                    // Sources stop promptly; drain what they already handed over so that
                    // its positions can be committed.
                    while let Some(line) = lines.recv().await {
                        self.handle_line(line);
                    }
                    break;
                }
                Some(incoming) = next_incoming(&mut self.cluster) => self.handle_cluster(incoming),
                Some(outcome) = self.saved.recv() => self.saved(outcome),
                _ = sweep.tick() => self.sweep(),
                _ = persist.tick() => self.persist(),
            }
        }
        self.cancel.cancel();
        for handle in handles {
            let _ = handle.task.await;
        }
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        // The last save: after any save still running, and with everything handled above.
        if self.saving
            && let Some(outcome) = self.saved.recv().await
        {
            self.saved(outcome);
        }
        if let Some(job) = self.take_save_job() {
            let outcome = job.write();
            self.saved(outcome);
        }
        if let Some(cluster) = self.cluster.take() {
            // What is still buffered gets a moment to reach Redis.
            cluster.stop(Duration::from_secs(2)).await;
        }
        let _ = std::fs::remove_file(self.state.file(PID_FILE));
        tracing::info!("stopped; state saved");
        Ok(ExitCode::SUCCESS)
    }

    fn handle_line(&mut self, line: SourceLine) {
        self.line_no += 1;
        let source = SourceLabel {
            source: line.origin.to_string(),
        };
        self.metrics.lines.get_or_create(&source).inc();
        let fed = if line.truncated {
            // What is left of a cut line could name another address: count it, do not parse.
            self.metrics.truncated.get_or_create(&source).inc();
            self.pipeline.skip_truncated()
        } else {
            self.pipeline.feed_line(
                line.origin.as_str(),
                self.line_no,
                &line.bytes,
                &mut self.kernel,
            )
        };
        match fed {
            Fed::Event { kind, time } => {
                self.metrics
                    .events
                    .get_or_create(&KindLabel { kind: kind.name() })
                    .inc();
                if let Position::Journal { .. } = line.position {
                    let lag = (Utc::now() - time).num_milliseconds() as f64 / 1000.0;
                    self.metrics.journal_lag_seconds.set(lag.max(0.0));
                }
            }
            Fed::Ignored => {}
            Fed::Unparsed => {
                self.metrics.unparsed.get_or_create(&source).inc();
            }
            Fed::AheadOfClock { ahead } => {
                self.metrics.lines_ahead_of_clock.inc();
                let n = self.pipeline.stats().ahead_of_clock;
                // Anyone who can write a log line can send these: log the first and then
                // every 1000th.
                if n == 1 || n.is_multiple_of(1000) {
                    tracing::warn!(
                        source = %line.origin,
                        ahead = %humantime::format_duration(Duration::from_secs(ahead.as_secs())),
                        dropped = n,
                        "line stamped ahead of the wall clock; not trusted (a forged timestamp, \
                         a wrong time zone or a log writer with a bad clock)"
                    );
                }
            }
        }
        // Only now is everything this line caused in the kernel map.
        self.checkpoints.commit(&line.origin, &line.position);
        self.unsaved = true;
    }

    /// A peer's event goes through the same pipeline as a local line; a peer's ban into the
    /// maps (this node's allowlist and own addresses apply, in the enforcer).
    fn handle_cluster(&mut self, incoming: crate::cluster::Incoming) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        for accepted in cluster.accept(incoming) {
            match accepted {
                crate::cluster::Accepted::Event { node, event } => {
                    self.line_no += 1;
                    let raw = crate::pipeline::RawLine {
                        file: format!("cluster:{node}"),
                        line: self.line_no,
                        text: String::new(),
                    };
                    let mut sink = RemoteSink {
                        kernel: &mut self.kernel,
                        node,
                    };
                    if let Fed::Event { kind, .. } = self.pipeline.feed_event(event, raw, &mut sink)
                    {
                        self.metrics
                            .events
                            .get_or_create(&KindLabel { kind: kind.name() })
                            .inc();
                    }
                }
                crate::cluster::Accepted::Ban { node, ban } => {
                    self.kernel.apply_peer_ban(&node, &ban)
                }
                crate::cluster::Accepted::Unban { node, prefix } => {
                    self.kernel.apply_peer_unban(&node, prefix);
                    let engine = self.pipeline.engine_mut();
                    let now = engine.now().unwrap_or_else(Utc::now);
                    // As after a local `detector unban`: the ban is forgotten, offences kept.
                    engine.unban(prefix.network(), now);
                }
            }
        }
        // The stream position moved (saved with the engine snapshot).
        self.unsaved = true;
    }

    /// Removes expired bans and copies kernel counters into the metrics.
    fn sweep(&mut self) {
        self.count_untrusted();
        // Walks the maps only when a ban is due to end (or every few minutes, for bans other
        // processes wrote); the gauges below are as fresh as the last walk.
        match self.kernel.enforcer.sweep_due() {
            Ok(None) => {}
            Ok(Some(report)) => {
                if report.removed > 0 {
                    tracing::info!(removed = report.removed, "expired bans removed");
                }
                for (family, live) in [("ipv4", report.live_v4), ("ipv6", report.live_v6)] {
                    self.metrics
                        .active_bans
                        .get_or_create(&FamilyLabel {
                            family: family.into(),
                        })
                        .set(live as i64);
                }
                self.metrics.ban_hits.set(report.hits as i64);
            }
            Err(e) => tracing::warn!(error = %e, "sweeping expired bans failed"),
        }
        if let Ok(stats) = self.kernel.enforcer.stats() {
            for (counter, value) in stats.iter() {
                self.metrics.set_kernel_counter(counter, value);
            }
        }
        self.notice_admin_unbans();
        self.count_engine_churn();
    }

    /// Tells the engine about bans that left the kernel before their end (`detector unban`).
    fn notice_admin_unbans(&mut self) {
        let now = Utc::now();
        // Bans at (or within a sweep of) their end leave the kernel on their own.
        let margin =
            chrono::Duration::from_std(self.config.daemon.sweep_interval).unwrap_or_default();
        self.kernel.written.retain(|_, end| *end > now + margin);
        // Only this daemon's own bans, one lookup each: no walk of maps that may hold a
        // million bulk-imported entries.
        let written: Vec<IpNet> = self.kernel.written.keys().copied().collect();
        let gone = match self.kernel.enforcer.missing(written) {
            Ok(gone) => gone,
            Err(e) => {
                tracing::warn!(error = %e, "checking the daemon's bans failed");
                return;
            }
        };
        let engine_now = self.pipeline.engine().now().unwrap_or(now);
        tracing::debug!(
            written = self.kernel.written.len(),
            gone = gone.len(),
            "admin unban check"
        );
        for prefix in gone {
            self.kernel.written.remove(&prefix);
            if let Some(publisher) = &mut self.kernel.cluster {
                // The administrator's word goes for every node.
                publisher.admin_unban(prefix);
            }
            if self
                .pipeline
                .engine_mut()
                .unban(prefix.network(), engine_now)
                .is_some()
            {
                self.unsaved = true;
                tracing::info!(%prefix, "unbanned by the administrator; the engine forgets the ban (offences kept)");
            }
        }
    }

    /// Starts saving the engine snapshot and the source positions on a blocking thread.
    /// Serialising and fsyncing a snapshot of tens of MB takes long; the engine task only takes
    /// a copy, so bans do not wait behind the disk.
    fn persist(&mut self) {
        if self.saving {
            return; // the running save finishes first; the next tick saves what came since
        }
        let Some(job) = self.take_save_job() else {
            return;
        };
        self.saving = true;
        let done = self.saved_tx.clone();
        tokio::task::spawn_blocking(move || {
            let _ = done.send(job.write());
        });
    }

    /// A copy of what is to be saved, taken at one instant: the engine snapshot and the
    /// positions of exactly the lines it has seen. `None` when nothing changed.
    fn take_save_job(&mut self) -> Option<SaveJob> {
        self.count_untrusted();
        self.count_engine_churn();
        if !self.unsaved {
            return None;
        }
        self.unsaved = false;
        let stats = self.pipeline.stats();
        self.counters.lines_ahead_of_clock = stats.ahead_of_clock;
        self.counters.max_ahead_s = stats.max_ahead_s;
        self.counters.truncated_lines = self.pipeline.parser().stats().truncated;
        self.counters.saved_at = Some(Utc::now());
        Some(SaveJob {
            state: self.state.clone(),
            // Only a shallow copy is made here (copy-on-write states); the snapshot is made,
            // sorted and encoded on the writer's thread.
            snapshot: self.pipeline.engine().state_copy(),
            checkpoints: self.checkpoints.clone(),
            counters: self.counters.clone(),
            cluster: (self.cluster.as_ref())
                .zip(self.kernel.cluster.as_ref())
                .map(|(c, p)| c.saved_state(p)),
        })
    }

    /// Copies the engine's size and eviction counts into the metrics and the counters file.
    fn count_engine_churn(&mut self) {
        let engine = self.pipeline.engine();
        let stats = engine.stats();
        let c = &mut self.counters;
        self.metrics.tracked_ips.set(engine.tracked().0 as i64);
        (self.metrics.evicted_for_space)
            .inc_by(stats.evicted_for_space.saturating_sub(c.evicted_for_space));
        (self.metrics.evicted_with_evidence).inc_by(
            stats
                .evicted_with_evidence
                .saturating_sub(c.evicted_with_evidence),
        );
        c.tracked_ips = engine.tracked().0 as u64;
        c.max_tracked_ips = engine.config().max_tracked_ips as u64;
        c.evicted_for_space = stats.evicted_for_space;
        c.evicted_with_evidence = stats.evicted_with_evidence;
    }

    /// Copies the sources' untrusted-entry counts into the metric and the counters file.
    fn count_untrusted(&mut self) {
        let total: u64 = (self.sources.iter())
            .map(|c| c.untrusted.load(Ordering::Relaxed))
            .sum();
        let new = total.saturating_sub(self.counters.journal_untrusted);
        if new > 0 {
            self.metrics.journal_untrusted.inc_by(new);
            self.counters.journal_untrusted = total;
            self.counters.journal_untrusted_last =
                self.sources.iter().find_map(|c| c.last_untrusted());
            // The counters file should show it even when no line was accepted since.
            self.unsaved = true;
        }
    }

    fn saved(&mut self, outcome: SaveOutcome) {
        self.saving = false;
        match outcome.result {
            Ok(bytes) => {
                self.metrics.state_bytes.set(bytes as i64);
            }
            Err(e) => {
                tracing::error!(error = %e, "saving the state failed; retrying at the next interval");
                self.unsaved = true;
            }
        }
        if outcome.took > Duration::from_millis(200) {
            tracing::info!(took = ?outcome.took, "state persisted (slow)");
        }
    }
}

/// Everything one save writes, owned, so it can run away from the engine task.
struct SaveJob {
    state: StateDir,
    snapshot: StateCopy,
    checkpoints: Checkpoints,
    counters: DaemonCounters,
    /// Stream positions and marks, saved like the source positions (after the snapshot).
    cluster: Option<crate::cluster::ClusterState>,
}

struct SaveOutcome {
    /// The snapshot's size in bytes.
    result: Result<usize>,
    took: Duration,
}

impl SaveJob {
    /// Writes the engine snapshot, then the positions (blocking: encodes and fsyncs). The
    /// positions are written only once the snapshot is: after a crash between the two, the
    /// old positions replay a few lines into the new snapshot (at least once), never skip any.
    /// The cluster's position is the exception (see below).
    fn write(mut self) -> SaveOutcome {
        let started = Instant::now();
        let result = (|| {
            let snapshot = self.snapshot.into_snapshot();
            let bytes = serde_json::to_vec(&snapshot)
                .map_err(|e| Error::Store(format!("encoding the engine state: {e}")))?;
            // The cluster's position and marks go first, unlike the log positions: after a
            // crash between the two writes, peers' events fed again would be counted twice
            // (their marks older than the snapshot) and could ban early; this way a few are
            // missed instead, the safer error for a node that bans.
            if let Some(cluster) = &self.cluster {
                cluster.save(&self.state)?;
            }
            self.state.write_atomic(ENGINE_STATE_FILE, &bytes)?;
            self.checkpoints.save(&self.state)?;
            self.counters.save(&self.state)?;
            Ok(bytes.len())
        })();
        SaveOutcome {
            result,
            took: started.elapsed(),
        }
    }
}

/// The daemon's sink: decisions go into the kernel maps.
struct KernelSink {
    enforcer: Enforcer,
    metrics: Arc<Metrics>,
    /// Bans this daemon wrote and their wall-clock end. When one vanishes from the kernel before
    /// its end, an administrator ran `detector unban`: the engine is told, so that address can be
    /// banned again on its next offence instead of only after the old ban's end.
    written: HashMap<IpNet, DateTime<Utc>>,
    /// `[crowdsec] push = true`: our bans go to the Local API as alerts.
    pusher: Option<crate::crowdsec::push::Pusher>,
    /// `[cluster]`: shares local events and bans, knows which node's events a ban rests on.
    cluster: Option<crate::cluster::Publisher>,
}

impl Sink for KernelSink {
    fn decision(&mut self, record: &DecisionRecord) {
        self.apply(&record.decision);
    }

    fn event(&mut self, event: &crate::event::Event) {
        if let Some(publisher) = &mut self.cluster {
            publisher.local_event(event);
        }
    }
}

/// The sink for a peer's event: its decisions are this node's own, but the event is not
/// published again, and its evidence is the peer's.
struct RemoteSink<'a> {
    kernel: &'a mut KernelSink,
    node: Arc<str>,
}

impl Sink for RemoteSink<'_> {
    fn decision(&mut self, record: &DecisionRecord) {
        self.kernel.apply(&record.decision);
    }

    fn event(&mut self, event: &crate::event::Event) {
        if let Some(publisher) = &mut self.kernel.cluster {
            publisher.remote_event(event.line, &self.node);
        }
    }
}

/// The next entry from the cluster's consumer; never, without a cluster.
async fn next_incoming(
    cluster: &mut Option<crate::cluster::Cluster>,
) -> Option<crate::cluster::Incoming> {
    match cluster {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

impl KernelSink {
    /// Writes one decision into the kernel maps and logs it (one line per ban).
    fn apply(&mut self, decision: &Decision) {
        let rule = decision.rule.name();
        match decision.action {
            Action::Ban => {
                self.metrics
                    .decisions
                    .get_or_create(&RuleLabel {
                        rule: rule.to_string(),
                    })
                    .inc();
                // The engine works in log time; the kernel in "from now". A ban decided from
                // old log lines (a backlog after a restart) only gets what is left of it.
                let left = decision.expires() - Utc::now();
                let Ok(ttl) = left.to_std() else {
                    tracing::info!(prefix = %decision.prefix, rule, "ban already over in wall-clock time; not written");
                    return;
                };
                let evidence: Vec<&str> =
                    decision.evidence.iter().map(|e| e.what.as_str()).collect();
                // The nodes whose events this ban rests on (this node alone without a cluster).
                let nodes = match &self.cluster {
                    Some(p) => p.contributors(decision),
                    None => Vec::new(),
                };
                match self
                    .enforcer
                    .ban(decision.prefix, Some(ttl), reason_of(decision.rule))
                {
                    Ok(outcome) => {
                        // Checked: an end saturated at chrono's maximum must not panic.
                        let end = Utc::now()
                            .checked_add_signed(left)
                            .unwrap_or(DateTime::<Utc>::MAX_UTC);
                        let slot = self
                            .written
                            .entry(enforce::canonical(decision.prefix))
                            .or_insert(end);
                        *slot = (*slot).max(end);
                        if let Some(pusher) = &self.pusher
                            && outcome != enforce::BanOutcome::Unchanged
                        {
                            pusher.push(&own_ban(decision, ttl));
                        }
                        if let Some(publisher) = &mut self.cluster {
                            publisher.own_ban(decision, end.timestamp_millis(), &nodes);
                        }
                        tracing::warn!(
                            target: "detector::ban",
                            prefix = %decision.prefix,
                            ip = %decision.ip,
                            rule,
                            duration = %humantime::format_duration(decision.duration),
                            offence = decision.offence,
                            dry_run = decision.dry_run,
                            outcome = ?outcome,
                            note = %decision.note,
                            evidence = ?evidence,
                            nodes = ?nodes,
                            "ban"
                        )
                    }
                    Err(e) => {
                        tracing::error!(prefix = %decision.prefix, rule, error = %e, "ban not written")
                    }
                }
            }
            Action::Alert => {
                let kind = decision.kind.map_or("alert", |k| k.name());
                self.metrics.alerts.get_or_create(&KindLabel { kind }).inc();
                let evidence: Vec<&str> =
                    decision.evidence.iter().map(|e| e.what.as_str()).collect();
                tracing::warn!(
                    target: "detector::alert",
                    kind,
                    ip = %decision.ip,
                    user = decision.user.as_deref().unwrap_or(""),
                    note = %decision.note,
                    evidence = ?evidence,
                    "alert"
                );
            }
            Action::Unban => {
                self.written.remove(&enforce::canonical(decision.prefix));
                match self.enforcer.unban(decision.prefix) {
                    Ok(_) => {
                        tracing::info!(prefix = %decision.prefix, note = %decision.note, "unban")
                    }
                    Err(e) => {
                        tracing::error!(prefix = %decision.prefix, error = %e, "unban failed")
                    }
                }
            }
        }
    }
}

impl KernelSink {
    /// A peer's ban: written for its time left, unless this node's allowlist or own
    /// addresses forbid it (the enforcer refuses those). A repeat is one ban.
    fn apply_peer_ban(&mut self, node: &str, ban: &crate::cluster::WireBan) {
        let left_ms = ban.until - Utc::now().timestamp_millis();
        let Ok(left_ms) = u64::try_from(left_ms) else {
            return; // over already
        };
        let ttl = Duration::from_millis(left_ms);
        match self.enforcer.ban(ban.p, Some(ttl), reason_of(ban.r)) {
            Ok(outcome) => {
                if let Some(publisher) = &mut self.cluster {
                    publisher.peer_ban(node, ban);
                }
                // Watched like our own, so that an administrator's unban here is noticed and
                // shared.
                let end = DateTime::<Utc>::from_timestamp_millis(ban.until)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                let slot = self.written.entry(enforce::canonical(ban.p)).or_insert(end);
                *slot = (*slot).max(end);
                if outcome != enforce::BanOutcome::Unchanged {
                    self.metrics
                        .decisions
                        .get_or_create(&RuleLabel {
                            rule: ban.r.name().to_string(),
                        })
                        .inc();
                    tracing::warn!(
                        target: "detector::ban",
                        prefix = %ban.p,
                        ip = %ban.ip,
                        rule = ban.r.name(),
                        duration = %humantime::format_duration(Duration::from_secs(ttl.as_secs())),
                        offence = ban.o,
                        outcome = ?outcome,
                        from = node,
                        nodes = ?ban.c,
                        "ban from the cluster"
                    );
                }
            }
            Err(e) => {
                tracing::info!(prefix = %ban.p, from = node, error = %e, "cluster ban not applied here")
            }
        }
    }
}

impl KernelSink {
    /// An administrator's unban on a peer. Forgotten as ours first, so that this node's own
    /// check does not take the missing entry for a local unban and announce it again.
    fn apply_peer_unban(&mut self, node: &str, prefix: IpNet) {
        self.written.remove(&enforce::canonical(prefix));
        if let Some(publisher) = &mut self.cluster {
            publisher.peer_unban(prefix);
        }
        match self.enforcer.unban(prefix) {
            Ok(_) => {
                tracing::info!(%prefix, from = node, "unban from the cluster (an administrator's)")
            }
            Err(e) => tracing::warn!(%prefix, from = node, error = %e, "cluster unban failed"),
        }
    }
}

/// A ban as the CrowdSec alert describes it.
fn own_ban(d: &Decision, ttl: Duration) -> crate::crowdsec::push::OwnBan {
    let times = d.evidence.iter().map(|e| e.time);
    crate::crowdsec::push::OwnBan {
        prefix: d.prefix,
        ip: d.ip,
        rule: d.rule,
        ttl,
        evidence: d.evidence.len().max(1),
        first: times.clone().min().unwrap_or(d.time),
        last: times.max().unwrap_or(d.time),
        note: d.note.clone(),
        dry_run: d.dry_run,
    }
}

fn reason_of(rule: Rule) -> Reason {
    match rule {
        Rule::ProbeLogin | Rule::SplitRole => Reason::ProbeLogin,
        Rule::CampaignProbe => Reason::TargetCampaign,
        Rule::PossibleCompromise => Reason::Other,
        Rule::SlowRepeat => Reason::SlowRepeat,
        Rule::TargetCampaign => Reason::TargetCampaign,
        Rule::Burst | Rule::LenientBurst => Reason::Burst,
        Rule::Manual => Reason::Manual,
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon can still be killed; it just cannot save state.
        tracing::warn!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineConfig};
    use crate::source::SourceId;

    fn job(state: &StateDir) -> SaveJob {
        let mut checkpoints = Checkpoints::default();
        checkpoints.commit(&SourceId::stdin(), &Position::Stdin { line: 7 });
        SaveJob {
            state: state.clone(),
            snapshot: Engine::new(EngineConfig::default()).state_copy(),
            checkpoints,
            counters: DaemonCounters::default(),
            cluster: None,
        }
    }

    #[test]
    fn a_save_writes_snapshot_positions_and_counters() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let outcome = job(&state).write();
        assert!(outcome.result.unwrap() > 0);
        let again = Checkpoints::load(&state).unwrap();
        assert_eq!(
            again.get(&SourceId::stdin()),
            Some(&Position::Stdin { line: 7 })
        );
        assert!(state.file(ENGINE_STATE_FILE).exists());
        assert!(state.file(DaemonCounters::FILE_NAME).exists());
    }

    /// Positions are only written after the snapshot: were they saved alone, a restart would
    /// skip lines whose effect the (old) snapshot does not hold.
    #[test]
    fn positions_are_not_saved_when_the_snapshot_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        // A directory in the snapshot's place makes its rename fail.
        std::fs::create_dir(state.file(ENGINE_STATE_FILE)).unwrap();
        let outcome = job(&state).write();
        assert!(outcome.result.is_err());
        assert!(!state.file(Checkpoints::FILE_NAME).exists());
    }
}
