//! Prometheus metrics of the daemon, served on `/metrics` when `[metrics] listen` is set.
//!
//! The daemon's tasks update the counters as they work; kernel counters (per-CPU XDP stats,
//! per-ban hits) are copied in by the sweeper, which already walks the maps, so a scrape never
//! touches BPF.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;

use detector_common::{COUNTERS, CounterInfo, CounterKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    pub family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: String,
}

/// All metrics of one daemon.
pub struct Metrics {
    registry: Registry,
    pub lines: Family<SourceLabel, Counter>,
    pub unparsed: Family<SourceLabel, Counter>,
    /// Lines a source cut at `max_line_bytes` (also in `unparsed`).
    pub truncated: Family<SourceLabel, Counter>,
    pub events: Family<KindLabel, Counter>,
    pub decisions: Family<RuleLabel, Counter>,
    /// Engine alerts (possible compromise, shared address spared), per kind.
    pub alerts: Family<KindLabel, Counter>,
    pub active_bans: Family<FamilyLabel, Gauge>,
    pub xdp_packets: Family<VerdictLabel, Counter>,
    /// One counter per byte-counting XDP counter (`xdp_dropped_bytes`), in COUNTERS order.
    xdp_bytes: Vec<(&'static str, Counter)>,
    pub ban_hits: Gauge,
    pub journal_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub tracked_ips: Gauge,
    /// Addresses the engine evicted to stay within its cap, and those of them that carried
    /// evidence toward a ban (churn that costs detection).
    pub evicted_for_space: Counter,
    pub evicted_with_evidence: Counter,
    pub state_bytes: Gauge,
    /// Lines whose time ran too far ahead of the wall clock (dropped, not trusted).
    pub lines_ahead_of_clock: Counter,
    /// Journal entries that named a mail server but came from another process.
    pub journal_untrusted: Counter,
    /// `[cluster]`: messages sent to and taken from Redis, consumer lag, reconnects, link state,
    /// messages dropped from the full publish buffer.
    pub cluster_published: Counter,
    pub cluster_consumed: Counter,
    pub cluster_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub cluster_reconnects: Counter,
    pub cluster_connected: Gauge,
    pub cluster_dropped: Counter,
    /// Last kernel values copied, to turn absolute kernel counters into counter increments.
    kernel_last: Mutex<std::collections::HashMap<&'static str, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("detector");
        let m = Metrics {
            lines: Family::default(),
            unparsed: Family::default(),
            truncated: Family::default(),
            events: Family::default(),
            decisions: Family::default(),
            alerts: Family::default(),
            active_bans: Family::default(),
            xdp_packets: Family::default(),
            xdp_bytes: COUNTERS
                .iter()
                .filter(|c| c.kind == CounterKind::Bytes)
                .map(|c| (c.name, Counter::default()))
                .collect(),
            ban_hits: Gauge::default(),
            journal_lag_seconds: Gauge::default(),
            tracked_ips: Gauge::default(),
            evicted_for_space: Counter::default(),
            evicted_with_evidence: Counter::default(),
            state_bytes: Gauge::default(),
            lines_ahead_of_clock: Counter::default(),
            journal_untrusted: Counter::default(),
            cluster_published: Counter::default(),
            cluster_consumed: Counter::default(),
            cluster_lag_seconds: Gauge::default(),
            cluster_reconnects: Counter::default(),
            cluster_connected: Gauge::default(),
            cluster_dropped: Counter::default(),
            kernel_last: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register("lines_read", "Log lines read, per source", m.lines.clone());
        registry.register(
            "lines_unparsed",
            "Lines no parser understood, per source",
            m.unparsed.clone(),
        );
        registry.register(
            "lines_truncated",
            "Lines longer than max_line_bytes, cut by the source and not parsed, per source",
            m.truncated.clone(),
        );
        registry.register("events", "Typed events, per kind", m.events.clone());
        registry.register("decisions", "Ban decisions, per rule", m.decisions.clone());
        registry.register(
            "alerts",
            "Engine alerts, per kind: possible-compromise (a login that is most likely a guessed password), shared-address (a ban withheld from an address many users share)",
            m.alerts.clone(),
        );
        registry.register(
            "active_bans",
            "Bans in the kernel maps, per address family",
            m.active_bans.clone(),
        );
        registry.register(
            "xdp_packets",
            "Packets seen by the XDP program, per verdict (a counter of the XDP program's STATS)",
            m.xdp_packets.clone(),
        );
        for (name, counter) in &m.xdp_bytes {
            let help = COUNTERS
                .iter()
                .find(|c| c.name == *name)
                .map_or("", |c| c.help);
            registry.register(format!("xdp_{name}"), help, counter.clone());
        }
        registry.register(
            "ban_hits",
            "Sum of the per-ban drop counters of active bans",
            m.ban_hits.clone(),
        );
        registry.register(
            "journal_lag_seconds",
            "Age of the newest journal entry processed, at the time it was processed",
            m.journal_lag_seconds.clone(),
        );
        registry.register(
            "tracked_ips",
            "Addresses the engine keeps state for",
            m.tracked_ips.clone(),
        );
        registry.register(
            "engine_evicted_for_space",
            "Addresses the engine evicted to stay within max_tracked_ips (the least evidence first)",
            m.evicted_for_space.clone(),
        );
        registry.register(
            "engine_evicted_with_evidence",
            "Of the addresses evicted for space, those that carried evidence toward a ban or a customer's successful login",
            m.evicted_with_evidence.clone(),
        );
        registry.register(
            "state_bytes",
            "Size of the persisted engine snapshot",
            m.state_bytes.clone(),
        );
        registry.register(
            "lines_ahead_of_clock",
            "Lines stamped further ahead of the wall clock than daemon.max_clock_ahead; dropped",
            m.lines_ahead_of_clock.clone(),
        );
        registry.register(
            "journal_untrusted_entries",
            "Journal entries that named Postfix or Dovecot but came from another process; dropped",
            m.journal_untrusted.clone(),
        );
        registry.register(
            "cluster_published",
            "Messages (events, bans) this node published to the cluster's Redis streams",
            m.cluster_published.clone(),
        );
        registry.register(
            "cluster_consumed",
            "New messages taken from other nodes through Redis (duplicates not counted)",
            m.cluster_consumed.clone(),
        );
        registry.register(
            "cluster_lag_seconds",
            "How far behind the newest stream entry the cluster consumer is",
            m.cluster_lag_seconds.clone(),
        );
        registry.register(
            "cluster_reconnects",
            "Reconnections to the cluster's Redis after it was unreachable",
            m.cluster_reconnects.clone(),
        );
        registry.register(
            "cluster_connected",
            "1 while connected to the cluster's Redis, 0 during an outage (0 without a cluster)",
            m.cluster_connected.clone(),
        );
        registry.register(
            "cluster_dropped",
            "Messages dropped from the full publish buffer during a Redis outage",
            m.cluster_dropped.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Copies an absolute kernel counter (which only grows while the program stays loaded) into a
    /// Prometheus counter. A smaller value means the program was reloaded: count from zero again.
    pub fn set_kernel_counter(&self, counter: &CounterInfo, value: u64) {
        let mut last = self.kernel_last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last.insert(counter.name, value).unwrap_or(0);
        let delta = if value >= prev { value - prev } else { value };
        match counter.kind {
            CounterKind::Bytes => {
                if let Some((_, c)) = self.xdp_bytes.iter().find(|(n, _)| *n == counter.name) {
                    c.inc_by(delta);
                }
            }
            CounterKind::Packets => {
                self.xdp_packets
                    .get_or_create(&VerdictLabel {
                        verdict: counter.name.to_string(),
                    })
                    .inc_by(delta);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Binds the metrics address. Called before the daemon starts anything, so an address in
/// use (or not ours) is one clear error and a non-zero exit instead of a task dying unseen.
pub fn bind(addr: SocketAddr) -> crate::Result<TcpListener> {
    let cannot = |e: std::io::Error| {
        crate::Error::config("metrics.listen", format!("cannot listen on {addr}: {e}"))
    };
    let listener = std::net::TcpListener::bind(addr).map_err(cannot)?;
    listener.set_nonblocking(true).map_err(cannot)?;
    TcpListener::from_std(listener).map_err(cannot)
}

/// Serves `GET /metrics` on `listener` (from [`bind`]) until `cancel` fires. Anything else
/// gets 404. Requests are tiny and rare (one scrape every few seconds), so one task handles
/// them one at a time.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    let addr = listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(%addr, "serving metrics on /metrics");
    loop {
        let (mut stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => { tracing::warn!(error = %e, "metrics accept failed"); continue; }
            },
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read(&mut buf),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let response = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?")
            {
                let body = metrics.render();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric name the daemon exports: set each labelled family once so its samples
    /// appear (prometheus-client writes no HELP/TYPE lines for a family without samples),
    /// then take the sample names (`_total` included) from the text format.
    fn exported_names() -> std::collections::BTreeSet<String> {
        let m = Metrics::new();
        let source = SourceLabel {
            source: "journal".into(),
        };
        m.lines.get_or_create(&source).inc();
        m.unparsed.get_or_create(&source).inc();
        m.truncated.get_or_create(&source).inc();
        m.events
            .get_or_create(&KindLabel {
                kind: "auth_failure",
            })
            .inc();
        m.alerts
            .get_or_create(&KindLabel {
                kind: "shared-address",
            })
            .inc();
        m.decisions
            .get_or_create(&RuleLabel {
                rule: "burst".into(),
            })
            .inc();
        m.active_bans
            .get_or_create(&FamilyLabel {
                family: "ipv4".into(),
            })
            .set(1);
        for c in COUNTERS {
            m.set_kernel_counter(c, 1);
        }
        (m.render().lines())
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_string)
            .collect()
    }

    /// `detector_[a-z_]+` names in a PromQL expression.
    fn queried_names(expr: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = expr;
        while let Some(i) = rest.find("detector_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            out.push(tail[..end].to_string());
            rest = &tail[end..];
        }
        out
    }

    fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_metric_the_grafana_dashboard_queries_is_exported() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../packaging/grafana-dashboard.json"))
                .expect("packaging/grafana-dashboard.json is JSON");
        let mut all = Vec::new();
        exprs(&dashboard, &mut all);
        assert!(all.len() >= 8, "the dashboard queries the metrics: {all:?}");
        let exported = exported_names();
        let mut queried = std::collections::BTreeSet::new();
        for expr in &all {
            let names = queried_names(expr);
            assert!(!names.is_empty(), "`{expr}` queries no detector metric");
            for name in names {
                // Sample names, so a histogram's `_bucket`/`_sum`/`_count` series are in
                // `exported` as they are queried (there are no histograms yet).
                assert!(
                    exported.contains(&name),
                    "`{expr}` queries {name}, which /metrics does not export ({exported:?})"
                );
                queried.insert(name);
            }
        }
        // The dashboard shows every metric (a new metric needs a panel).
        let unshown: Vec<_> = exported.difference(&queried).collect();
        assert!(unshown.is_empty(), "no panel shows {unshown:?}");
    }

    #[test]
    fn kernel_counters_become_increments_and_survive_reloads() {
        let m = Metrics::new();
        let counter = |name: &str| COUNTERS.iter().find(|c| c.name == name).unwrap();
        m.set_kernel_counter(counter("dropped"), 10);
        m.set_kernel_counter(counter("dropped"), 25);
        m.set_kernel_counter(counter("dropped"), 5); // program reloaded: counters restarted at 0
        m.set_kernel_counter(counter("dropped_bytes"), 640);
        let text = m.render();
        assert!(
            text.contains("detector_xdp_packets_total{verdict=\"dropped\"} 30"),
            "{text}"
        );
        assert!(
            text.contains("detector_xdp_dropped_bytes_total 640"),
            "{text}"
        );
        assert!(!text.contains("verdict=\"dropped_bytes\""), "{text}");
    }

    #[test]
    fn every_xdp_counter_is_exported() {
        let m = Metrics::new();
        for (i, c) in COUNTERS.iter().enumerate() {
            m.set_kernel_counter(c, i as u64 + 1);
        }
        let text = m.render();
        for (i, c) in COUNTERS.iter().enumerate() {
            let line = match c.kind {
                CounterKind::Packets => {
                    format!(
                        "detector_xdp_packets_total{{verdict=\"{}\"}} {}",
                        c.name,
                        i + 1
                    )
                }
                CounterKind::Bytes => format!("detector_xdp_{}_total {}", c.name, i + 1),
            };
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
    }

    #[tokio::test]
    async fn an_address_in_use_is_an_error_at_bind_time() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind(taken.local_addr().unwrap()).unwrap_err().to_string();
        assert!(err.contains("metrics.listen"), "{err}");
        assert!(err.contains("cannot listen on 127.0.0.1:"), "{err}");
    }

    #[tokio::test]
    async fn serves_metrics_over_http_on_loopback() {
        let m = Arc::new(Metrics::new());
        m.events
            .get_or_create(&KindLabel {
                kind: "auth_failure",
            })
            .inc_by(3);
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::clone(&m), cancel.clone()));
        let mut body = String::new();
        for _ in 0..50 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                s.read_to_string(&mut body).await.unwrap();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        cancel.cancel();
        server.await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(
            body.contains("detector_events_total{kind=\"auth_failure\"} 3"),
            "{body}"
        );
    }
}
