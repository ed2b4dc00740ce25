//! Measures the file source: latency from `write(2)` of a line to its `SourceLine` arriving on
//! the channel (inotify path), and bulk throughput.
//!
//! `cargo run --release -p detector --example source_latency [samples]`
use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use detector::source::{self, SourceConfig, StartAt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let samples: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mail.log");
    std::fs::write(&path, "").unwrap();
    let config = SourceConfig {
        files: vec![path.clone()],
        file_start: StartAt::End,
        ..SourceConfig::none()
    };
    let (tx, mut rx) = mpsc::channel(4096);
    let (stx, _srx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let handles = source::spawn(&config, |_| None, tx, stx, cancel.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut writer = OpenOptions::new().append(true).open(&path).unwrap();
    let line = "Nov 27 05:31:04 mail postfix/submission/smtpd[21963]: warning: unknown[198.18.0.2]: \
                SASL PLAIN authentication failed: (reason unavailable), sasl_username=x@example.test\n";

    // Latency: one line at a time, 1 ms apart (so each is a separate wake-up).
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        writer.write_all(line.as_bytes()).unwrap();
        rx.recv().await.expect("line");
        lat.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "file source latency (write -> SourceLine), {samples} samples: p50 {:?} p99 {:?} p99.9 {:?} max {:?}",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        lat[lat.len() - 1]
    );

    // Throughput: 500k lines written in bulk, drained as fast as the source delivers them.
    let n = 500_000;
    let block = line.repeat(1000);
    let t = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            rx.recv().await.expect("line");
        }
    });
    for _ in 0..n / 1000 {
        writer.write_all(block.as_bytes()).unwrap();
    }
    reader.await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "file source throughput: {n} lines of {} bytes in {secs:.2} s = {:.0} lines/s",
        line.len(),
        n as f64 / secs
    );
    cancel.cancel();
    for h in handles {
        let _ = h.task.await;
    }
}
