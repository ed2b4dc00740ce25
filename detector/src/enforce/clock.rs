//! The clock ban expiries are written in: CLOCK_MONOTONIC, the clock the XDP program reads with
//! `bpf_ktime_get_coarse_ns` (the coarse variant lags by at most one jiffy).
//!
//! Exact bans store the end in u64 nanoseconds (about 584 years of uptime), prefix bans in u32
//! seconds (about 136 years). An end the field cannot hold is not clamped to a date nobody
//! asked for: the callers store it as permanent, and report what they stored.
use std::time::{Duration, SystemTime};

pub const NS_PER_S: u64 = 1_000_000_000;

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(NS_PER_S)
        .saturating_add(ts.tv_nsec as u64)
}

/// Kernel expiry (monotonic ns) of a ban lasting `ttl` from `now_ns`; never 0 (0 = permanent).
/// `None` when the end does not fit in u64 ns.
pub fn expiry_ns(now_ns: u64, ttl: Duration) -> Option<u64> {
    let ttl_ns = u64::try_from(ttl.as_nanos()).ok()?;
    Some(now_ns.checked_add(ttl_ns)?.max(1))
}

/// Prefix bans store whole seconds (their value must stay 4-byte aligned); rounded up so a ban
/// never ends early. `None` when the end does not fit in u32 seconds.
pub fn expiry_s(now_ns: u64, ttl: Duration) -> Option<u32> {
    let end_ns = u128::from(now_ns) + ttl.as_nanos();
    let end_s = end_ns.div_ceil(u128::from(NS_PER_S));
    u32::try_from(end_s).ok().map(|s| s.max(1))
}

/// Time left until a monotonic-ns expiry; `None` once it has passed.
pub fn remaining(expires_ns: u64, now_ns: u64) -> Option<Duration> {
    (expires_ns > now_ns).then(|| Duration::from_nanos(expires_ns - now_ns))
}

/// Wall-clock time of a remaining duration, for display; `None` if the calendar cannot hold it.
pub fn wall_clock_in(left: Duration) -> Option<SystemTime> {
    SystemTime::now().checked_add(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_that_do_not_fit_are_none_not_clamped() {
        let now = 5 * NS_PER_S;
        assert_eq!(expiry_ns(now, Duration::from_secs(10)), Some(15 * NS_PER_S));
        assert_eq!(expiry_ns(now, Duration::from_secs(u64::MAX)), None);
        assert_eq!(expiry_ns(u64::MAX - 10, Duration::from_nanos(11)), None);
        assert_eq!(expiry_s(now, Duration::from_millis(1500)), Some(7));
        assert_eq!(
            expiry_s(now, Duration::from_secs(u64::from(u32::MAX))),
            None
        );
        assert_eq!(
            expiry_s(0, Duration::from_secs(u64::from(u32::MAX))),
            Some(u32::MAX)
        );
        assert!(wall_clock_in(Duration::from_secs(u64::MAX)).is_none());
    }
}
