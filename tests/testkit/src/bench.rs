//! The summary `cargo xtask bench` (no subcommand) prints after running every benchmark: each
//! benchmark records its headline figures with [`summary`], and the runner collects them.
use std::io::Write;

/// Set by `cargo xtask bench` to the file summary rows are appended to.
pub const SUMMARY_ENV: &str = "DETECTOR_BENCH_SUMMARY";

/// Records one figure: what it is, the figure, its same-run reference, and the target (issue
/// 14's, or `-`). A no-op unless [`SUMMARY_ENV`] is set; a failed write only warns, since the
/// benchmark's own output already shows the figure.
pub fn summary(what: &str, figure: &str, reference: &str, target: &str) {
    let Some(path) = std::env::var_os(SUMMARY_ENV) else {
        return;
    };
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    let line = format!(
        "{}\t{}\t{}\t{}\n",
        clean(what),
        clean(figure),
        clean(reference),
        clean(target)
    );
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("warning: bench summary {}: {e}", path.to_string_lossy());
    }
}

/// Reads the rows [`summary`] appended to `path`: (what, figure, reference, target).
pub fn read_summary(path: &std::path::Path) -> Vec<[String; 4]> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, '\t').map(str::to_string);
            Some([f.next()?, f.next()?, f.next()?, f.next()?])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_tabs_in_fields_do_not_split_them() {
        let dir = std::env::temp_dir().join(format!("dt-bench-summary-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        // SAFETY: this test alone in this process reads or writes the variable.
        unsafe { std::env::set_var(SUMMARY_ENV, &dir) };
        summary("a\tb", "1 ns", "2 ns", "-");
        summary("c", "3", "4", "<= 5");
        unsafe { std::env::remove_var(SUMMARY_ENV) };
        summary("not recorded", "", "", "");
        let rows = read_summary(&dir);
        let _ = std::fs::remove_file(&dir);
        assert_eq!(
            rows,
            vec![
                ["a b", "1 ns", "2 ns", "-"].map(String::from),
                ["c", "3", "4", "<= 5"].map(String::from),
            ]
        );
    }
}

/// The nearest-rank `p` quantile (0 < p <= 1) of `sorted` (ascending, not empty).
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// `LABEL: n=.. p50=.. ms p99=.. ms max=.. ms (min ..)` for a set of latencies, the line the
/// latency benchmarks print.
pub fn latency_line(label: &str, samples: &[std::time::Duration]) -> String {
    if samples.is_empty() {
        return format!("{label}: no samples");
    }
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    format!(
        "{label}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms (min {:.2})",
        ms.len(),
        nearest_rank(&ms, 0.50),
        nearest_rank(&ms, 0.99),
        ms[ms.len() - 1],
        ms[0]
    )
}

#[cfg(test)]
mod latency_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nearest_rank_picks_the_ranked_sample() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 0.50), 50);
        assert_eq!(nearest_rank(&v, 0.99), 99);
        assert_eq!(nearest_rank(&v, 1.0), 100);
        assert_eq!(nearest_rank(&[7], 0.99), 7);
        let line = latency_line("x", &[Duration::from_millis(3), Duration::from_millis(1)]);
        assert_eq!(
            line,
            "x: n=2 p50=1.00 ms p99=3.00 ms max=3.00 ms (min 1.00)"
        );
        assert_eq!(latency_line("x", &[]), "x: no samples");
    }
}
