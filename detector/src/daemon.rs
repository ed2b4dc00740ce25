//! `detector run`: sources -> parser -> engine -> enforcer, with persistence and metrics.
//!
//! Task structure (as in tokio's examples): one task per source feeds a bounded channel of
//! lines; one task — this module's `Daemon::run` — owns the parser, the engine, the enforcer
//! and the checkpoints, so no state is shared and nothing needs a lock. Decisions are applied
//! to the kernel maps inline, right after the line that caused them (a map update is one
//! syscall), which keeps "failure logged -> entry in the map" short. Timers in the same
//! `select!` sweep expired bans, copy kernel counters into the metrics and persist state.
//!
//! Crash safety: source positions are committed only after their line went through the engine
//! and any ban it caused is in the kernel map; positions and the engine snapshot are saved
//! together, so after a restart no entry is processed twice and none is lost.
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::enforce::{self, AttachOptions, Capacity, Enforcer, Reason};
use crate::engine::{Action, Decision, Engine, Rule, Snapshot};
use crate::event::Event;
use crate::metrics::{FamilyLabel, KindLabel, Metrics, RuleLabel, SourceLabel};
use crate::parse::{Format, LineParser, Outcome};
use crate::source::{self, Position, SourceLine, SourceStatus};
use crate::store::{Checkpoints, Loaded, StateDir};
use crate::{Error, Result};

/// File names in the state directory.
pub const ENGINE_STATE_FILE: &str = "engine.json";
pub const PID_FILE: &str = "detector.pid";

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
    engine: Engine,
    enforcer: Enforcer,
    parser: LineParser,
    state: StateDir,
    checkpoints: Checkpoints,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    /// Lines processed since start: the evidence numbers of live decisions.
    line_no: u64,
    /// Bans this daemon wrote and their wall-clock end. When one vanishes from the kernel before
    /// its end, an administrator ran `detector unban`: the engine is told, so that address can be
    /// banned again on its next offence instead of only after the old ban's end.
    written: HashMap<IpNet, DateTime<Utc>>,
    /// The engine or the positions changed since the last save. The snapshot can be tens of
    /// MB on a host under attack, so an idle daemon does not rewrite it every interval.
    unsaved: bool,
}

impl Daemon {
    /// Attaches (or adopts) the XDP program, restores state. Fails early and clearly.
    fn start(config: Config) -> Result<Daemon> {
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
        let mut engine = match state.read_json::<Snapshot>(ENGINE_STATE_FILE)? {
            Loaded::Found(snapshot) => {
                let engine = Engine::restore(engine_cfg.clone(), snapshot)?;
                let (ips, users, prefixes) = engine.tracked();
                tracing::info!(ips, users, prefixes, "engine state restored");
                engine
            }
            Loaded::Missing => Engine::new(engine_cfg.clone()),
            Loaded::Quarantined { bad_copy, reason } => {
                tracing::warn!(bad_copy = %bad_copy.display(), %reason, "engine state unreadable; starting fresh");
                Engine::new(engine_cfg.clone())
            }
        };
        let mut host_addrs: Vec<IpAddr> = enforce::local_addresses();
        host_addrs.extend(infrastructure.iter().map(|i| i.addr));
        engine.set_host_addrs(host_addrs);

        state.write_atomic(PID_FILE, format!("{}\n", std::process::id()).as_bytes())?;
        let mut daemon = Daemon {
            config,
            engine,
            enforcer,
            parser: LineParser::new(Format::Auto),
            state,
            checkpoints,
            metrics: Arc::new(Metrics::new()),
            cancel: CancellationToken::new(),
            line_no: 0,
            written: HashMap::new(),
            unsaved: false,
        };
        // A changed allowlist may now protect addresses banned before the restart.
        for decision in daemon.engine.reconcile() {
            daemon.apply(&decision);
            daemon.unsaved = true;
        }
        Ok(daemon)
    }

    async fn run(mut self) -> Result<ExitCode> {
        let (line_tx, mut lines) = mpsc::channel::<SourceLine>(LINE_CHANNEL);
        let (status_tx, mut statuses) = mpsc::unbounded_channel::<SourceStatus>();
        let handles = source::spawn(
            &self.config.sources,
            &self.checkpoints,
            line_tx,
            status_tx,
            self.cancel.clone(),
        )?;
        tracing::info!(sources = handles.len(), "following logs");

        let metrics_task = self.config.metrics.listen.map(|addr| {
            tokio::spawn(crate::metrics::serve(
                addr,
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
                line = lines.recv() => match line {
                    Some(line) => self.handle_line(line),
                    None => {
                        tracing::info!("every source has ended");
                        break;
                    }
                },
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
        self.persist();
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
        match self.parser.parse_line(&line.bytes, self.line_no) {
            Outcome::Event(event) => {
                if matches!(line.position, Position::Journal { .. }) {
                    let lag = (Utc::now() - event.time).num_milliseconds() as f64 / 1000.0;
                    self.metrics.journal_lag_seconds.set(lag.max(0.0));
                }
                self.handle_event(&event);
            }
            Outcome::Ignored => {}
            Outcome::Unparsed => {
                self.metrics.unparsed.get_or_create(&source).inc();
            }
        }
        // Only now is everything this line caused in the kernel map.
        self.checkpoints.commit(&line.origin, &line.position);
        self.unsaved = true;
    }

    fn handle_event(&mut self, event: &Event) {
        self.metrics
            .events
            .get_or_create(&KindLabel {
                kind: event.kind.name(),
            })
            .inc();
        for decision in self.engine.observe(event) {
            self.apply(&decision);
        }
    }

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
                match self
                    .enforcer
                    .ban(decision.prefix, Some(ttl), reason_of(decision.rule))
                {
                    Ok(outcome) => {
                        let end = Utc::now() + left;
                        let slot = self
                            .written
                            .entry(enforce::canonical(decision.prefix))
                            .or_insert(end);
                        *slot = (*slot).max(end);
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
                            "ban"
                        )
                    }
                    Err(e) => {
                        tracing::error!(prefix = %decision.prefix, rule, error = %e, "ban not written")
                    }
                }
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

    /// Removes expired bans and copies kernel counters into the metrics.
    fn sweep(&mut self) {
        match self.enforcer.sweep_expired() {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired bans removed"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired bans failed"),
        }
        if let Ok(stats) = self.enforcer.stats() {
            for (verdict, value) in [
                ("passed", stats.passed),
                ("dropped", stats.dropped),
                ("observed", stats.observed),
                ("expired_hit", stats.expired_hits),
                ("malformed", stats.malformed),
                ("non_ip", stats.non_ip),
                ("dropped_bytes", stats.dropped_bytes),
            ] {
                self.metrics.set_kernel_counter(verdict, value);
            }
        }
        let bans = self.enforcer.list();
        if let Err(e) = &bans {
            tracing::warn!(error = %e, "listing the bans failed");
        }
        if let Ok(bans) = bans {
            self.notice_admin_unbans(&bans);
            let v4 = bans.iter().filter(|b| b.net.addr().is_ipv4()).count();
            self.metrics
                .active_bans
                .get_or_create(&FamilyLabel {
                    family: "ipv4".into(),
                })
                .set(v4 as i64);
            self.metrics
                .active_bans
                .get_or_create(&FamilyLabel {
                    family: "ipv6".into(),
                })
                .set((bans.len() - v4) as i64);
            self.metrics
                .ban_hits
                .set(bans.iter().map(|b| b.hits).sum::<u64>() as i64);
        }
        self.metrics.tracked_ips.set(self.engine.tracked().0 as i64);
    }

    /// Tells the engine about bans that left the kernel before their end (`detector unban`).
    fn notice_admin_unbans(&mut self, bans: &[enforce::BanEntry]) {
        let now = Utc::now();
        // Bans at (or within a sweep of) their end leave the kernel on their own.
        let margin =
            chrono::Duration::from_std(self.config.daemon.sweep_interval).unwrap_or_default();
        self.written.retain(|_, end| *end > now + margin);
        let in_kernel: HashSet<IpNet> = bans.iter().map(|b| enforce::canonical(b.net)).collect();
        let gone: Vec<IpNet> = self
            .written
            .keys()
            .filter(|n| !in_kernel.contains(n))
            .copied()
            .collect();
        let engine_now = self.engine.now().unwrap_or(now);
        tracing::debug!(
            written = self.written.len(),
            gone = gone.len(),
            "admin unban check"
        );
        for prefix in gone {
            self.written.remove(&prefix);
            if self.engine.unban(prefix.network(), engine_now).is_some() {
                self.unsaved = true;
                tracing::info!(%prefix, "unbanned by the administrator; the engine forgets the ban (offences kept)");
            }
        }
    }

    /// Saves the engine snapshot, then the source positions.
    fn persist(&mut self) {
        if !self.unsaved {
            return;
        }
        let started = Instant::now();
        match serde_json::to_vec(&self.engine.snapshot()) {
            Ok(bytes) => {
                self.metrics.state_bytes.set(bytes.len() as i64);
                if let Err(e) = self.state.write_atomic(ENGINE_STATE_FILE, &bytes) {
                    tracing::error!(error = %e, "saving the engine state failed");
                    return; // keep the old positions too, so the two stay consistent
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "encoding the engine state failed");
                return;
            }
        }
        match self.checkpoints.save(&self.state) {
            Ok(()) => self.unsaved = false,
            Err(e) => tracing::error!(error = %e, "saving source positions failed"),
        }
        let took = started.elapsed();
        if took > Duration::from_millis(200) {
            tracing::info!(took = ?took, "state persisted (slow)");
        }
    }
}

fn reason_of(rule: Rule) -> Reason {
    match rule {
        Rule::ProbeLogin => Reason::ProbeLogin,
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

/// Reads the pid file; `Some(pid)` when that process is alive.
pub fn running_pid(state: &StateDir) -> Option<u32> {
    let text = std::fs::read_to_string(state.file(PID_FILE)).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}
