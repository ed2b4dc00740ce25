//! CLOCK_MONOTONIC_COARSE for expiry checks, without a helper call on most frames.
//!
//! `bpf_ktime_get_coarse_ns()` is a real call into the kernel (two nested calls, each with a
//! return thunk where the CPU needs one), the largest part of what a hit on a timed ban costs.
//! The coarse clock only moves when the timekeeper is updated, which the kernel does together
//! with jiffies, once per tick. `bpf_jiffies64()` is a single load (the verifier inlines it on
//! 64-bit JITs), so each CPU keeps its last coarse reading with the jiffies value it was taken
//! at, and reads the clock again only when jiffies have moved. The value used is at most a tick
//! or two older than a fresh read would give (<= 8 ms at HZ=250): the coarse clock's own
//! resolution, and nothing for expiries in seconds.
use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use core::ptr::{read_volatile, write_volatile};

use crate::maps::clock_cache;

/// One CPU's cached reading (the CLOCK per-CPU array; program-owned, never pinned).
#[repr(C)]
pub struct ClockCache {
    /// jiffies when `now_ns` was read. 0 = never: jiffies64 starts at 2^32 - 300 s * HZ
    /// (INITIAL_JIFFIES) and only grows, so it is never 0.
    jiffies: u64,
    /// CLOCK_MONOTONIC_COARSE ns read at `jiffies`.
    now_ns: u64,
}

/// CLOCK_MONOTONIC_COARSE in ns, from this CPU's cache while jiffies have not moved.
#[inline(always)]
pub fn coarse_ns() -> u64 {
    // SAFETY: helpers without arguments or side effects.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(c) = clock_cache() else {
        // SAFETY: as above.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: `c` is this CPU's slot of a live per-CPU array element. Another program run
    // that preempts this one on the same CPU (PREEMPT_RT) can interleave with the two stores
    // below; `now_ns` is written before `jiffies`, so a matching `jiffies` is never read with
    // a `now_ns` older than the reading that stored it.
    unsafe {
        if read_volatile(&raw const (*c).jiffies) == jiffies {
            return read_volatile(&raw const (*c).now_ns);
        }
        let now = bpf_ktime_get_coarse_ns();
        write_volatile(&raw mut (*c).now_ns, now);
        write_volatile(&raw mut (*c).jiffies, jiffies);
        now
    }
}
