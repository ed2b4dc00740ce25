//! `detector trace`: switch on per-packet verdict logging for one source address or prefix in
//! the running (pinned) XDP program, and read the lines it logs through aya-log.
//!
//! The switch is the program's TRACE array (detector_common::trace), reached through the pinned
//! program's map ids: it is not pinned itself, so it always belongs to the program that runs.
//! Its entry carries a deadline the program checks, so a trace lifts by itself even when the
//! `detector trace` process is killed.
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aya::maps::{Array, Map, MapData, MapInfo};
use aya::programs::Xdp;
use aya_log::EbpfLogger;
use aya_obj::programs::XdpAttachType;
use detector_common::trace::{MAP, MAP_BEFORE_GLOBALS, TraceTarget, ban_kind, verdict};
use ipnet::IpNet;

use super::pins::PinPaths;
use super::types::{Reason, display_target};
use super::{canonical, clock, sys, verify};
use crate::Error;

/// What the trace switch says now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceState {
    Off,
    /// Tracing `target` for `left` more.
    On {
        target: IpNet,
        left: Duration,
    },
    /// The deadline has passed; the program clears the entry at its next frame.
    Expired {
        target: IpNet,
    },
}

impl fmt::Display for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceState::Off => f.write_str("tracing is off"),
            TraceState::On { target, left } => write!(
                f,
                "tracing {} for {} more",
                display_target(target),
                humantime::format_duration(Duration::from_secs(left.as_secs()))
            ),
            TraceState::Expired { target } => write!(
                f,
                "the trace of {} has expired (the XDP program switches it off at its next packet)",
                display_target(target)
            ),
        }
    }
}

/// The TRACE map of the pinned program.
pub struct TraceSwitch {
    program_id: u32,
    map: Array<MapData, TraceTarget>,
}

impl TraceSwitch {
    /// Finds the pinned program under `pin_dir` and its TRACE map.
    pub fn open(pin_dir: &Path) -> crate::Result<Self> {
        sys::require_privileges()?;
        sys::require_bpffs(pin_dir)?;
        let pins = PinPaths::new(pin_dir);
        let pin = pins.program();
        if !pin.exists() {
            return Err(verify::not_attached(&pins));
        }
        let program = Xdp::from_pin(&pin, XdpAttachType::Interface)
            .map_err(|e| Error::bpf(format!("opening {}", pin.display()), e))?;
        let info = program
            .info()
            .map_err(|e| Error::bpf("reading the program's info", e))?;
        let map_ids = info
            .map_ids()
            .map_err(|e| Error::bpf("reading the program's map ids", e))?
            .unwrap_or_default();
        let trace = map_ids
            .iter()
            .filter_map(|id| MapInfo::from_id(*id).ok())
            .find(|m| matches!(m.name_as_str(), Some(MAP | MAP_BEFORE_GLOBALS)))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "the XDP program pinned at {} has no trace support (an older build); \
                     run `detector attach` with this build to upgrade it in place",
                    pin.display()
                ))
            })?;
        let data = MapData::from_id(trace.id()).map_err(|e| Error::bpf("opening TRACE", e))?;
        let map = Array::try_from(Map::Array(data)).map_err(|e| Error::bpf("TRACE", e))?;
        Ok(TraceSwitch {
            program_id: info.id(),
            map,
        })
    }

    /// The kernel id of the pinned program (to attach the aya-log reader to it).
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    fn read(&self) -> crate::Result<TraceTarget> {
        self.map
            .get(&0, 0)
            .map_err(|e| Error::bpf("reading TRACE", e))
    }

    fn write(&mut self, entry: TraceTarget) -> crate::Result<()> {
        self.map
            .set(0, entry, 0)
            .map_err(|e| Error::bpf("writing TRACE", e))
    }

    pub fn state(&self) -> crate::Result<TraceState> {
        Ok(state_of(&self.read()?, clock::monotonic_ns()))
    }

    /// Switches tracing on for `target` until `duration` from now. Refuses while another
    /// trace is on (one target at a time): stop it first.
    pub fn start(&mut self, target: IpNet, duration: Duration) -> crate::Result<TraceTarget> {
        if let TraceState::On {
            target: other,
            left,
        } = self.state()?
        {
            return Err(Error::Usage(format!(
                "another trace is on ({} for {} more); wait, or end it with `detector trace --stop`",
                display_target(&other),
                humantime::format_duration(Duration::from_secs(left.as_secs()))
            )));
        }
        let until = clock::expiry_ns(clock::monotonic_ns(), duration).ok_or_else(|| {
            Error::Usage("a trace must end within the kernel clock's range".into())
        })?;
        let entry = target_entry(target, until);
        self.write(entry)?;
        Ok(entry)
    }

    /// Switches tracing off if the entry is still `ours` (a later trace is left alone).
    /// Returns whether it was ours.
    pub fn stop_if_ours(&mut self, ours: &TraceTarget) -> crate::Result<bool> {
        let now = self.read()?;
        if now != *ours {
            return Ok(false);
        }
        self.write(TraceTarget::default())?;
        Ok(true)
    }

    /// Switches off whatever trace is on; returns what was there.
    pub fn stop(&mut self) -> crate::Result<TraceState> {
        let before = self.state()?;
        self.write(TraceTarget::default())?;
        Ok(before)
    }
}

/// The TRACE entry for `target` (canonical: an IPv4-mapped IPv6 prefix traces IPv4).
pub fn target_entry(target: IpNet, until_ns: u64) -> TraceTarget {
    let net = canonical(target);
    let mut entry = TraceTarget {
        until_ns: until_ns.max(1),
        ..TraceTarget::default()
    };
    match net {
        IpNet::V4(n) => {
            entry.family = 4;
            entry.addr[..4].copy_from_slice(&n.network().octets());
            entry.mask[..4].copy_from_slice(&n.netmask().octets());
        }
        IpNet::V6(n) => {
            entry.family = 6;
            entry.addr = n.network().octets();
            entry.mask = n.netmask().octets();
        }
    }
    entry
}

/// Reads a TRACE entry back (at monotonic time `now_ns`).
pub fn state_of(entry: &TraceTarget, now_ns: u64) -> TraceState {
    if entry.until_ns == 0 {
        return TraceState::Off;
    }
    let prefix = |mask: &[u8]| mask.iter().map(|b| b.count_ones()).sum::<u32>() as u8;
    let target = match entry.family {
        4 => {
            let a: [u8; 4] = entry.addr[..4].try_into().unwrap_or_default();
            ipnet::Ipv4Net::new(a.into(), prefix(&entry.mask[..4]).min(32)).map(IpNet::V4)
        }
        _ => ipnet::Ipv6Net::new(entry.addr.into(), prefix(&entry.mask).min(128)).map(IpNet::V6),
    };
    let Ok(target) = target else {
        return TraceState::Off;
    };
    match clock::remaining(entry.until_ns, now_ns) {
        Some(left) => TraceState::On { target, left },
        None => TraceState::Expired { target },
    }
}

/// One traced packet, as the XDP program logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceLine {
    pub src: IpAddr,
    pub verdict: Verdict,
    /// The entry that decided the verdict (or, for `Expired`, the expired one).
    pub ban: Option<BanSeen>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// Matched a live ban in observe mode: counted, passed.
    Observed,
    /// Matched only an expired ban: passed.
    Expired,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::Observed => "pass (observe mode)",
            Verdict::Expired => "pass",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanSeen {
    /// An exact (/32, /128) entry; otherwise a prefix ban.
    pub exact: bool,
    pub reason: Reason,
    /// Time left; `None` = permanent.
    pub left: Option<Duration>,
}

/// Parses the program's `trace src=… verdict=… ban=… reason=… left_s=…` message (see
/// detector-ebpf/src/trace.rs). Anything else is `None`: the caller prints it as it came.
pub fn parse_line(message: &str) -> Option<TraceLine> {
    let rest = message.strip_prefix("trace ")?;
    let (mut src, mut v, mut kind, mut reason, mut left) = (None, None, None, None, None);
    for field in rest.split_whitespace() {
        let (key, value) = field.split_once('=')?;
        match key {
            "src" => src = Some(value.parse::<Ipv6Addr>().ok()?),
            "verdict" => v = Some(value.parse::<u32>().ok()?),
            "ban" => kind = Some(value.parse::<u32>().ok()?),
            "reason" => reason = Some(value.parse::<u32>().ok()?),
            "left_s" => left = Some(value.parse::<i64>().ok()?),
            _ => {}
        }
    }
    let src = src?;
    let src = src.to_ipv4_mapped().map_or(IpAddr::V6(src), IpAddr::V4);
    let verdict = match v? {
        verdict::PASS => Verdict::Pass,
        verdict::DROP => Verdict::Drop,
        verdict::OBSERVED => Verdict::Observed,
        verdict::EXPIRED => Verdict::Expired,
        _ => return None,
    };
    let left = left?;
    let ban = match kind? {
        ban_kind::NONE => None,
        k @ (ban_kind::EXACT | ban_kind::PREFIX) => Some(BanSeen {
            exact: k == ban_kind::EXACT,
            reason: Reason::from_code(reason?),
            left: u64::try_from(left).ok().map(Duration::from_secs),
        }),
        _ => return None,
    };
    Some(TraceLine { src, verdict, ban })
}

impl fmt::Display for TraceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.src, self.verdict.as_str())?;
        let Some(ban) = &self.ban else {
            return f.write_str(": no ban");
        };
        let kind = if ban.exact { "exact" } else { "prefix" };
        let left = match ban.left {
            None => "permanent".to_string(),
            Some(d) if self.verdict == Verdict::Expired || d.is_zero() => "expired".to_string(),
            Some(d) => format!("{} left", humantime::format_duration(d)),
        };
        let what = if self.verdict == Verdict::Expired {
            "only an expired"
        } else {
            "matched"
        };
        write!(
            f,
            ": {what} {kind} ban, reason {}, {left}",
            ban.reason.as_str()
        )
    }
}

/// Receives aya-log records; drops them until armed (lines left in the ring buffer by an
/// earlier trace are not this trace's).
struct Sink {
    armed: Arc<AtomicBool>,
    deliver: Box<dyn Fn(Result<TraceLine, String>) + Send + Sync>,
}

impl log::Log for Sink {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        let text = record.args().to_string();
        (self.deliver)(parse_line(&text).ok_or(text));
    }

    fn flush(&self) {}
}

/// The aya-log reader of the pinned program. Poll its fd for readability, then [`flush`].
///
/// [`flush`]: TraceReader::flush
pub struct TraceReader {
    logger: EbpfLogger<Sink>,
    armed: Arc<AtomicBool>,
}

impl TraceReader {
    /// Attaches to the program's log ring buffer and discards what is already in it.
    pub fn open(
        program_id: u32,
        deliver: impl Fn(Result<TraceLine, String>) + Send + Sync + 'static,
    ) -> crate::Result<Self> {
        let armed = Arc::new(AtomicBool::new(false));
        let sink = Sink {
            armed: Arc::clone(&armed),
            deliver: Box::new(deliver),
        };
        let mut logger = EbpfLogger::init_from_id_with_logger(program_id, sink)
            .map_err(|e| Error::bpf("attaching to the XDP program's log (aya-log)", e))?;
        logger.flush();
        armed.store(true, Ordering::Relaxed);
        Ok(TraceReader { logger, armed })
    }

    /// Delivers every line waiting in the ring buffer.
    pub fn flush(&mut self) {
        self.logger.flush();
    }

    /// Stops delivering (lines still in flight after the switch-off are dropped).
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }
}

impl std::os::fd::AsRawFd for TraceReader {
    /// The ring buffer map's fd, owned by the logger for the reader's whole life.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.logger.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_mask_the_target_and_read_back() {
        let e = target_entry("198.18.10.0/30".parse().unwrap(), 1000);
        assert_eq!(e.family, 4);
        assert_eq!(&e.addr[..4], &[198, 18, 10, 0]);
        assert_eq!(&e.mask[..4], &[255, 255, 255, 252]);
        assert_eq!(
            state_of(&e, 400),
            TraceState::On {
                target: "198.18.10.0/30".parse().unwrap(),
                left: Duration::from_nanos(600)
            }
        );
        assert_eq!(
            state_of(&e, 1000),
            TraceState::Expired {
                target: "198.18.10.0/30".parse().unwrap()
            }
        );
        assert_eq!(state_of(&TraceTarget::default(), 5), TraceState::Off);
        // IPv4-mapped IPv6 traces the IPv4 address (that is what is on the wire).
        let mapped = target_entry("::ffff:198.18.0.7/128".parse().unwrap(), 9);
        assert_eq!(mapped.family, 4);
        assert_eq!(&mapped.addr[..4], &[198, 18, 0, 7]);
        let v6 = target_entry("2001:db8::/32".parse().unwrap(), 9);
        assert_eq!(v6.family, 6);
        assert_eq!(&v6.mask[..5], &[255, 255, 255, 255, 0]);
    }

    #[test]
    fn program_lines_are_rendered() {
        let drop = parse_line("trace src=::ffff:198.18.10.2 verdict=1 ban=1 reason=1 left_s=3599")
            .unwrap();
        assert_eq!(drop.src, "198.18.10.2".parse::<IpAddr>().unwrap());
        assert_eq!(drop.verdict, Verdict::Drop);
        assert_eq!(
            drop.to_string(),
            "198.18.10.2 drop: matched exact ban, reason probe-login, 59m 59s left"
        );
        let pass = parse_line("trace src=2001:db8::3 verdict=0 ban=0 reason=0 left_s=-1").unwrap();
        assert_eq!(pass.to_string(), "2001:db8::3 pass: no ban");
        let prefix =
            parse_line("trace src=2001:db8::3 verdict=1 ban=2 reason=0 left_s=-1").unwrap();
        assert_eq!(
            prefix.to_string(),
            "2001:db8::3 drop: matched prefix ban, reason manual, permanent"
        );
        let expired =
            parse_line("trace src=::ffff:198.18.10.2 verdict=3 ban=1 reason=4 left_s=0").unwrap();
        assert_eq!(
            expired.to_string(),
            "198.18.10.2 pass: only an expired exact ban, reason burst, expired"
        );
        // Not ours, or damaged: left to the caller to print raw; never a panic.
        for bad in [
            "hello",
            "trace src=nonsense verdict=1 ban=1 reason=1 left_s=1",
            "trace src=::1 verdict=9 ban=1 reason=1 left_s=1",
            "trace src=::1 verdict=1 ban=7 reason=1 left_s=1",
            "trace src=::1 verdict=1",
            "trace src=::1 verdict",
        ] {
            assert!(parse_line(bad).is_none(), "{bad}");
        }
    }
}
