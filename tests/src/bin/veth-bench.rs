//! `cargo xtask bench veth`: receiver CPU per packet on a veth pair under a UDP flood, for
//! detector's XDP program, an nftables set and no filter (method: docs/xdp-costs.md §2).
//!
//! Per configuration, fresh namespaces `dtb-s-<pid>` (sender, `dtb-s` 198.18.30.1) and
//! `dtb-r-<pid>` (receiver, `dtb-r` 198.18.30.2). The receiver has GRO on and threaded NAPI,
//! its napi kthread pinned to CPU 1; the sender has TSO/GSO off, so every frame goes through
//! veth's NAPI ring (pitfall P13) and the receive work is isolated on CPU 1. A flooder thread
//! in the sender namespace, pinned to CPU 0, sends identical 60-byte UDP frames
//! 198.18.30.1:4000 -> 198.18.30.2:9 with AF_PACKET `sendmmsg` (PACKET_QDISC_BYPASS,
//! SO_SNDBUFFORCE), paced by busy-wait or flat out.
//!
//! Configurations: `xdp` (`detector attach --mode native` on the receiver veth, the sender
//! banned among 10,000 filler bans in 198.19.0.0/16), `nft` (a `table netdev` ingress chain
//! with a set of the same 10,001 addresses and a counter + drop rule), `none` (no filter; the
//! frames climb to UDP and find no socket).
//!
//! Receiver cost per packet = on-CPU ns of the napi kthread (/proc/<pid>/schedstat) / packets
//! veth received (rx_packets, which counts XDP drops too). CPU 1 busy % comes from /proc/stat
//! and includes anything else that ran on CPU 1 in the window.
//!
//! usage: veth-bench [--configs xdp,nft,none] [--rate 1000000] [--seconds 5] [--rounds 1]
//!        [--fillers 10000]
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use detector::enforce::{Enforcer, Reason};
use detector_tests::bin::{PinDir, detector_ok, ensure_bpffs};
use detector_tests::netns::{NetNs, ip};

const SENDER_IF: &str = "dtb-s";
const RECEIVER_IF: &str = "dtb-r";
const SENDER_MAC: [u8; 6] = [0x02, 0x44, 0x54, 0x42, 0x1e, 0x01];
const RECEIVER_MAC: [u8; 6] = [0x02, 0x44, 0x54, 0x42, 0x1e, 0x02];
const SENDER_IP: [u8; 4] = [198, 18, 30, 1];
const RECEIVER_IP: [u8; 4] = [198, 18, 30, 2];
const SENDER_CPU: usize = 0;
const RECEIVER_CPU: usize = 1;
const BATCH: usize = 64;

/// Set by SIGINT/SIGTERM: the flood stops and the run ends after tearing everything down.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

struct Opts {
    configs: Vec<String>,
    rate: u64,
    seconds: f64,
    rounds: u32,
    fillers: u32,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        configs: vec!["xdp".into(), "nft".into(), "none".into()],
        rate: 1_000_000,
        seconds: 5.0,
        rounds: 1,
        fillers: 10_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--configs" => o.configs = v.split(',').map(|s| s.trim().to_string()).collect(),
            "--rate" => o.rate = v.parse().context("--rate")?,
            "--seconds" => o.seconds = v.parse().context("--seconds")?,
            "--rounds" => o.rounds = v.parse().context("--rounds")?,
            "--fillers" => o.fillers = v.parse().context("--fillers")?,
            _ => bail!("unknown option {a}"),
        }
    }
    for c in &o.configs {
        ensure!(
            ["xdp", "nft", "none"].contains(&c.as_str()),
            "unknown config `{c}` (xdp, nft, none)"
        );
    }
    ensure!(
        o.fillers <= 65_536,
        "--fillers: at most 65536 (198.19.0.0/16)"
    );
    ensure!(o.rate > 0, "--rate: packets/s, more than 0");
    ensure!(
        o.seconds > 0.0 && o.seconds <= 60.0,
        "--seconds: 0 < s <= 60"
    );
    Ok(o)
}

fn filler(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8)
}

fn mac_str(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// Runs a command and fails with its stderr.
fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec NS ARGS` (its own /sys: needed for sysfs writes and ethtool; never for
/// anything touching bpffs, pitfall P6).
fn exec_in(ns: &NetNs, args: &[&str]) -> Result<String> {
    sh(Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args))
}

/// The two namespaces and their veth pair (deleted on drop, with the namespaces).
struct Pair {
    sender: NetNs,
    receiver: NetNs,
}

impl Pair {
    fn new() -> Result<Self> {
        let pid = std::process::id();
        let sender = NetNs::new(&format!("dtb-s-{pid}"))?;
        let receiver = NetNs::new(&format!("dtb-r-{pid}"))?;
        let p = Pair { sender, receiver };
        ip(&[
            "link",
            "add",
            SENDER_IF,
            "address",
            &mac_str(SENDER_MAC),
            "netns",
            &p.sender.name,
            "type",
            "veth",
            "peer",
            "name",
            RECEIVER_IF,
            "address",
            &mac_str(RECEIVER_MAC),
            "netns",
            &p.receiver.name,
        ])?;
        let (s, r) = (Ipv4Addr::from(SENDER_IP), Ipv4Addr::from(RECEIVER_IP));
        p.sender
            .ip(&["addr", "add", &format!("{s}/24"), "dev", SENDER_IF])?;
        p.receiver
            .ip(&["addr", "add", &format!("{r}/24"), "dev", RECEIVER_IF])?;
        // Static neighbours: the ICMP errors of the "none" config need no ARP.
        p.receiver.ip(&[
            "neigh",
            "replace",
            &s.to_string(),
            "lladdr",
            &mac_str(SENDER_MAC),
            "dev",
            RECEIVER_IF,
            "nud",
            "permanent",
        ])?;
        // GRO-eligible skbs (no TSO/GSO) + GRO on the receiver: veth takes its NAPI path.
        exec_in(
            &p.sender,
            &["ethtool", "-K", SENDER_IF, "tso", "off", "gso", "off"],
        )?;
        exec_in(&p.receiver, &["ethtool", "-K", RECEIVER_IF, "gro", "on"])?;
        p.receiver.ip(&["link", "set", RECEIVER_IF, "up"])?;
        p.sender.ip(&["link", "set", SENDER_IF, "up"])?;
        // Once the NAPI instances exist (link up, GRO on): a kthread per NAPI.
        exec_in(
            &p.receiver,
            &[
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{RECEIVER_IF}/threaded"),
            ],
        )?;
        Ok(p)
    }

    /// rx_packets of the receiver veth (counts XDP drops too).
    fn rx_packets(&self) -> Result<u64> {
        let out = sh(Command::new("ip").args([
            "-n",
            &self.receiver.name,
            "-s",
            "-j",
            "link",
            "show",
            RECEIVER_IF,
        ]))?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j output")?;
        v[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .context("no stats64.rx.packets in `ip -s -j link`")
    }
}

/// The napi kthread of the receiver veth: `napi/dtb-r-<id>`, created by `threaded` once the
/// link is up. Pinned to the receiver CPU.
fn napi_thread() -> Result<i32> {
    let prefix = format!("napi/{RECEIVER_IF}-");
    for _ in 0..50 {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(e.path().join("comm"))
                && comm.starts_with(&prefix)
            {
                found.push(pid);
            }
        }
        match found.as_slice() {
            [pid] => {
                pin(*pid, RECEIVER_CPU)?;
                return Ok(*pid);
            }
            [] => std::thread::sleep(Duration::from_millis(100)),
            _ => bail!("several {prefix}* threads: another veth-bench running?"),
        }
    }
    bail!("no {prefix}* kthread (threaded NAPI did not start)")
}

fn pin(pid: i32, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    ensure!(
        rc == 0,
        "pinning pid {pid} to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// On-CPU ns of a thread (first field of /proc/<pid>/schedstat).
fn schedstat_ns(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("parsing schedstat")
}

/// (busy, total) jiffies of one CPU from /proc/stat; idle and iowait are not busy.
fn cpu_jiffies(cpu: usize) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// One 60-byte UDP frame sender -> receiver:9.
fn flood_frame() -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&RECEIVER_MAC);
    f.extend_from_slice(&SENDER_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&28u16.to_be_bytes()); // 20 IP + 8 UDP, no payload
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&SENDER_IP);
    ip[16..20].copy_from_slice(&RECEIVER_IP);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&8u16.to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes()); // no UDP checksum
    f.resize(60, 0);
    f
}

/// Sends for `dur` at `rate` pps (0 = flat out) from the current thread, which must be in
/// the sender namespace. Returns frames the kernel accepted.
fn flood(rate: u64, dur: Duration) -> Result<u64> {
    pin(0, SENDER_CPU)?;
    let ifindex = {
        let c = std::ffi::CString::new(SENDER_IF)?;
        // SAFETY: c is NUL-terminated.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    };
    ensure!(ifindex != 0, "no {SENDER_IF} in the sender namespace");
    // SAFETY: a raw packet socket; owned by `sock`, closed on drop. Protocol 0: send only.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    ensure!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let sock: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    let setopt = |level, name, val: libc::c_int| -> Result<()> {
        // SAFETY: setsockopt with a c_int option on our socket.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                level,
                name,
                &val as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ensure!(
            rc == 0,
            "setsockopt {name}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    };
    setopt(libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)?;
    // Not limited by net.core.wmem_max (which cannot be raised in a child netns, P11).
    setopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 64 << 20)?;
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind with a correctly sized sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "bind: {}", std::io::Error::last_os_error());

    let frame = flood_frame();
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    // SAFETY: mmsghdr is plain data; all-zero is valid (no name, no control).
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= dur || STOP.load(Ordering::Relaxed) {
            break;
        }
        if rate > 0 && sent as f64 >= rate as f64 * elapsed.as_secs_f64() {
            std::hint::spin_loop();
            continue;
        }
        // SAFETY: msgs/iov/frame outlive the call; BATCH entries are initialised.
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                0,
            )
        };
        if n > 0 {
            sent += n as u64;
        } else {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => {}
                _ => bail!("sendmmsg: {err}"),
            }
        }
    }
    Ok(sent)
}

/// A filter installed in the receiver namespace.
enum Filter {
    None,
    Xdp { pins: PinDir },
    Nft,
}

const NFT_TABLE: &str = "dtb";

impl Filter {
    fn install(config: &str, pair: &Pair, fillers: u32) -> Result<Filter> {
        let banned: Vec<Ipv4Addr> = (0..fillers)
            .map(filler)
            .chain([Ipv4Addr::from(SENDER_IP)])
            .collect();
        match config {
            "none" => Ok(Filter::None),
            "xdp" => {
                ensure_bpffs()?;
                let path = PathBuf::from(format!(
                    "/sys/fs/bpf/detector-bench-veth-{}",
                    std::process::id()
                ));
                // PinDir removes every pin on drop: removing the link pin detaches XDP.
                let pins = PinDir { path };
                detector_ok(
                    &pins,
                    Some(&pair.receiver),
                    &["attach", "--mode", "native", "--iface", RECEIVER_IF],
                )?;
                let mut enforcer = Enforcer::open(&pins.path)?;
                for a in &banned {
                    // Timed bans, as the daemon writes them (the program reads the clock on a hit).
                    enforcer.ban(
                        format!("{a}/32").parse()?,
                        Some(Duration::from_secs(3600)),
                        Reason::Manual,
                    )?;
                }
                Ok(Filter::Xdp { pins })
            }
            "nft" => {
                let mut rules = format!(
                    "table netdev {NFT_TABLE} {{\n set banned {{ type ipv4_addr; elements = {{ "
                );
                let list: Vec<String> = banned.iter().map(|a| a.to_string()).collect();
                rules.push_str(&list.join(", "));
                rules.push_str(&format!(
                    " }} }}\n chain c {{ type filter hook ingress device {RECEIVER_IF} priority 0; ip saddr @banned counter drop; }}\n}}\n"
                ));
                let file = std::env::temp_dir().join(format!("dtb-nft-{}.nft", std::process::id()));
                File::create(&file)?.write_all(rules.as_bytes())?;
                let r = exec_in(&pair.receiver, &["nft", "-f", &file.to_string_lossy()]);
                let _ = std::fs::remove_file(&file);
                r?;
                Ok(Filter::Nft)
            }
            _ => bail!("unknown config {config}"),
        }
    }

    /// Packets the filter dropped so far.
    fn drops(&self, pair: &Pair) -> Result<Option<u64>> {
        match self {
            Filter::None => Ok(None),
            Filter::Xdp { pins } => Ok(Some(Enforcer::open(&pins.path)?.stats()?.counters.dropped)),
            Filter::Nft => {
                let out = exec_in(
                    &pair.receiver,
                    &["nft", "list", "chain", "netdev", NFT_TABLE, "c"],
                )?;
                let n = out
                    .split_whitespace()
                    .skip_while(|w| *w != "packets")
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .context("no counter in `nft list chain`")?;
                Ok(Some(n))
            }
        }
    }

    fn describe(&self, fillers: u32) -> String {
        match self {
            Filter::None => "no filter (UDP to a closed port)".into(),
            Filter::Xdp { .. } => {
                format!("detector XDP, native mode, sender banned among {fillers} filler bans")
            }
            Filter::Nft => format!(
                "nft netdev ingress, set of {} addresses, counter drop",
                fillers + 1
            ),
        }
    }
}

struct Sample {
    config: String,
    mode: String,
    sent_kpps: f64,
    rx_kpps: f64,
    ns_per_pkt: f64,
    cpu1_busy: f64,
    /// CPU 1 busy time not spent in the napi kthread (other work on a shared machine).
    cpu1_other: f64,
    drops: Option<u64>,
    rx: u64,
}

fn measure(config: &str, rate: u64, o: &Opts) -> Result<(Sample, String)> {
    // Fresh namespaces per measurement: no state (tables, conntrack, rings) carried over.
    let pair = Pair::new()?;
    let filter = Filter::install(config, &pair, o.fillers)?;
    let result = (|| {
        let napi = napi_thread()?;
        let dur = Duration::from_secs_f64(o.seconds);
        let (rx0, ns0, cpu0, drop0) = (
            pair.rx_packets()?,
            schedstat_ns(napi)?,
            cpu_jiffies(RECEIVER_CPU)?,
            filter.drops(&pair)?,
        );
        let t0 = Instant::now();
        let sent = pair.sender.run(move || flood(rate, dur))??;
        // Let the ring drain before reading the counters.
        std::thread::sleep(Duration::from_millis(100));
        let wall = t0.elapsed().as_secs_f64();
        let (rx1, ns1, cpu1, drop1) = (
            pair.rx_packets()?,
            schedstat_ns(napi)?,
            cpu_jiffies(RECEIVER_CPU)?,
            filter.drops(&pair)?,
        );
        let rx = rx1 - rx0;
        ensure!(rx > 0, "the receiver saw no packets");
        if let (Some(a), Some(b)) = (drop0, drop1) {
            // Every flood frame must be dropped; only a few link-setup frames (IPv6 ND) pass.
            ensure!(
                b - a + 100 >= rx,
                "{config}: the filter dropped {} of {rx} received packets",
                b - a
            );
        }
        let busy = (cpu1.0 - cpu0.0) as f64 / ((cpu1.1 - cpu0.1).max(1)) as f64 * 100.0;
        Ok(Sample {
            config: config.to_string(),
            mode: if rate > 0 {
                format!("{} kpps", rate / 1000)
            } else {
                "flat-out".into()
            },
            sent_kpps: sent as f64 / o.seconds / 1e3,
            rx_kpps: rx as f64 / o.seconds / 1e3,
            ns_per_pkt: (ns1 - ns0) as f64 / rx as f64,
            // The window includes the 100 ms drain: scale back to the flood duration.
            cpu1_busy: busy * wall / o.seconds,
            cpu1_other: busy * wall / o.seconds - (ns1 - ns0) as f64 / (o.seconds * 1e7),
            drops: match (drop0, drop1) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
            rx,
        })
    })();
    let desc = filter.describe(o.fillers);
    if let Filter::Xdp { pins } = &filter {
        let _ = detector_tests::bin::detector(pins, Some(&pair.receiver), &["detach"]);
    }
    drop(filter);
    drop(pair);
    Ok((result?, desc))
}

fn main() -> Result<()> {
    let o = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "veth-bench needs root");
    for tool in ["nft", "ethtool"] {
        ensure!(
            Command::new(tool).arg("--version").output().is_ok(),
            "`{tool}` not found: run `cargo xtask setup` (Debian packages nftables, ethtool)"
        );
    }
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut samples = Vec::new();
    let mut descs = Vec::new();
    for round in 1..=o.rounds {
        for config in &o.configs {
            for rate in [o.rate, 0] {
                eprintln!(
                    "# round {round}: {config} {}",
                    if rate > 0 { "paced" } else { "flat-out" }
                );
                let (s, d) = measure(config, rate, &o)?;
                ensure!(
                    !STOP.load(Ordering::Relaxed),
                    "interrupted (namespaces and pins removed)"
                );
                if !descs.iter().any(|(c, _): &(String, String)| c == config) {
                    descs.push((config.clone(), d));
                }
                samples.push(s);
            }
        }
    }
    println!(
        "# veth pair, {} s per measurement, fresh namespaces each; sender pinned to CPU {SENDER_CPU}, receiver napi kthread to CPU {RECEIVER_CPU}",
        o.seconds
    );
    println!(
        "# load average before: {}; after: {}",
        load_before.trim(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for (c, d) in &descs {
        println!("# {c}: {d}");
    }
    println!(
        "# ns/pkt = napi kthread on-CPU ns (schedstat) / rx packets; CPU1 busy % includes any other work on CPU 1 (CPU1 other = busy minus the napi kthread)"
    );
    println!(
        "{:<6} {:<10} {:>10} {:>10} {:>8} {:>10} {:>11} {:>12} {:>12}",
        "config",
        "mode",
        "sent kpps",
        "rx kpps",
        "ns/pkt",
        "CPU1 busy",
        "CPU1 other",
        "rx packets",
        "filter drops"
    );
    for s in &samples {
        println!(
            "{:<6} {:<10} {:>10.0} {:>10.0} {:>8.0} {:>9.0}% {:>10.0}% {:>12} {:>12}",
            s.config,
            s.mode,
            s.sent_kpps,
            s.rx_kpps,
            s.ns_per_pkt,
            s.cpu1_busy,
            s.cpu1_other.max(0.0),
            s.rx,
            s.drops.map_or("-".to_string(), |d| d.to_string())
        );
    }
    println!(
        "# On veth most of the receiver's cost is veth's own: the skb the sender allocated, its free and\n\
         # socket accounting, and for native XDP a copy of every frame into a page_pool buffer for\n\
         # headroom. The filters differ by tens of ns inside a few hundred; on a real NIC, XDP runs\n\
         # before any skb exists. See the BPF_PROG_TEST_RUN numbers (`cargo xtask bench xdp`) for the\n\
         # program's own cost."
    );
    Ok(())
}
