//! The clock ban expiries are written in: CLOCK_MONOTONIC, the clock the XDP program reads with
//! `bpf_ktime_get_coarse_ns` (the coarse variant lags by at most one jiffy).
use std::time::{Duration, SystemTime};

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Kernel expiry (monotonic ns) for a ban lasting `ttl` from now; never 0 (0 = permanent).
pub fn expiry_ns(ttl: Duration) -> u64 {
    let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
    monotonic_ns().saturating_add(ttl_ns).max(1)
}

/// Prefix bans store whole seconds (their value must stay 4-byte aligned); round up so a ban
/// never ends early.
pub fn expiry_s(ttl: Duration) -> u32 {
    let ns = expiry_ns(ttl);
    u32::try_from(ns.div_ceil(1_000_000_000))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// Time left until a monotonic-ns expiry; `None` once it has passed.
pub fn remaining(expires_ns: u64, now_ns: u64) -> Option<Duration> {
    (expires_ns > now_ns).then(|| Duration::from_nanos(expires_ns - now_ns))
}

/// Wall-clock time of a remaining duration, for display.
pub fn wall_clock_in(left: Duration) -> SystemTime {
    SystemTime::now() + left
}
