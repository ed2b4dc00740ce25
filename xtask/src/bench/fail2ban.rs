//! fail2ban-regex, the reference `cargo xtask bench parse` compares the parser with.
//!
//! Method: Debian's `fail2ban` package, its stock `postfix` and `dovecot` filters
//! (`/etc/fail2ban/filter.d/{postfix,dovecot}.conf`), one `fail2ban-regex` run per filter over
//! the same first N lines of the generated log. The time is fail2ban-regex's own
//! `[processed in S sec]`, so the Python start-up and the filter compilation are not counted
//! against it. Its rate is N / (S_postfix + S_dovecot): the lines per second a fail2ban with
//! both jails gets through, since every line goes through both filters.
//!
//! On a busy machine wall times grow with the load, so the CPU time is measured too: the
//! user+system time of fail2ban-regex over the N lines minus its time over a one-line file
//! with the same filter (start-up and filter compilation), against the detector's CPU time.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const FILTERS: [&str; 2] = ["postfix", "dovecot"];

/// One filter's run.
pub struct FilterRun {
    /// fail2ban-regex's own processing time.
    pub processed: Duration,
    /// The whole command, start-up included (for the record).
    pub wall: Duration,
    /// User+system CPU time of the whole command.
    pub cpu: Duration,
    /// Its `Lines: ...` summary.
    pub summary: String,
}

/// Why the comparison cannot run here (printed, the bench goes on).
pub fn unavailable() -> Option<String> {
    if !super::parse::which("fail2ban-regex") {
        return Some(
            "fail2ban-regex not installed (Debian: apt-get install --no-install-recommends fail2ban); ratio skipped"
                .into(),
        );
    }
    FILTERS
        .iter()
        .map(|f| format!("/etc/fail2ban/filter.d/{f}.conf"))
        .find(|conf| !Path::new(conf).exists())
        .map(|conf| format!("{conf} missing; ratio skipped"))
}

/// `fail2ban-regex --version`'s first line (`fail2ban-regex 1.0.2`), for the method.
pub fn version() -> String {
    Command::new("fail2ban-regex")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "fail2ban-regex (version unknown)".into())
}

/// Runs `fail2ban-regex LOG /etc/fail2ban/filter.d/FILTER.conf` (on CPU 0 with `one_core`, as
/// the detector runs).
pub fn run_filter(log: &Path, filter: &str, one_core: bool) -> Result<FilterRun> {
    let conf = format!("/etc/fail2ban/filter.d/{filter}.conf");
    let mut cmd = if one_core {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", "fail2ban-regex"]);
        c
    } else {
        Command::new("fail2ban-regex")
    };
    let cpu0 = super::parse::children_cpu();
    let t = Instant::now();
    let out = cmd
        .args(["--print-no-missed", "--print-no-ignored"])
        .arg(log)
        .arg(&conf)
        .stdin(Stdio::null())
        .output()
        .context("running fail2ban-regex")?;
    let wall = t.elapsed();
    let cpu = super::parse::children_cpu().saturating_sub(cpu0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "fail2ban-regex {filter} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let processed = processed_time(&stdout).with_context(|| {
        format!("fail2ban-regex {filter}: no `[processed in S sec]` in its output:\n{stdout}")
    })?;
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("Lines:"))
        .unwrap_or("")
        .trim()
        .to_string();
    Ok(FilterRun {
        processed,
        wall,
        cpu,
        summary,
    })
}

/// fail2ban-regex's own time, from `[processed in 1.23 sec]`.
pub fn processed_time(stdout: &str) -> Option<Duration> {
    let rest = &stdout[stdout.find("[processed in ")? + "[processed in ".len()..];
    let secs: f64 = rest.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Lines per second with both filters.
pub fn rate(lines: usize, runs: &[FilterRun]) -> Result<f64> {
    let total: Duration = runs.iter().map(|r| r.processed).sum();
    if total.is_zero() {
        bail!("fail2ban-regex processed {lines} lines in 0 s: give it more lines");
    }
    Ok(lines as f64 / total.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processed_time_is_read_from_the_summary() {
        let out = "Running tests\n=============\n\nResults\n=======\n\nFailregex: 5958 total\n\
                   Lines: 50000 lines, 0 ignored, 5958 matched, 44042 missed\n\
                   [processed in 0.61 sec]\n";
        assert_eq!(processed_time(out), Some(Duration::from_millis(610)));
        assert_eq!(processed_time("Lines: 3 lines\n"), None);
        assert_eq!(
            processed_time("[processed in 0.00 sec]"),
            Some(Duration::ZERO)
        );
        assert_eq!(processed_time("[processed in -1 sec]"), None);
    }

    #[test]
    fn the_rate_counts_each_line_once_through_both_filters() {
        let run = |ms| FilterRun {
            processed: Duration::from_millis(ms),
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            summary: String::new(),
        };
        let r = rate(50_000, &[run(700), run(500)]).unwrap();
        assert!((r - 41_666.7).abs() < 1.0, "{r}");
    }
}
