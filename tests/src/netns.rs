//! Network namespaces and veth pairs (via `ip`), entering a namespace with `setns` on a
//! dedicated thread (only the network namespace: `ip netns exec` would also hide bpffs), and
//! a TCP connect probe with a chosen source address.
use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A named network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str) -> Result<Self> {
        // A leftover from a crashed run of the same pid is unlikely, but harmless to clear.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs `f` on a fresh thread that has joined this network namespace (and only that one).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        let handle = std::thread::spawn(move || -> Result<T> {
            // SAFETY: setns on a valid namespace fd; affects this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        });
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Client and server namespaces joined by a veth pair:
/// client `veth-c` (198.18.<net>.2, .3, .40 and 2001:db8:10:<net>::2, ::3, ::100) and
/// server `veth-s` (198.18.<net>.1, 2001:db8:10:<net>::1), where XDP is attached.
pub struct Topology {
    pub client: NetNs,
    pub server: NetNs,
    pub net: u8,
}

pub const SERVER_IFACE: &str = "veth-s";

/// Locally administered MAC for host `host` of test net `net`.
fn mac(net: u8, host: u8) -> String {
    format!("02:44:54:4b:{net:02x}:{host:02x}")
}
pub const CLIENT_IFACE: &str = "veth-c";

impl Topology {
    /// `tag` names the namespaces (unique per test); `net` in 10..=19 picks the subnets
    /// 198.18.<net>.0/24 and 2001:db8:10:<net>::/64.
    pub fn new(tag: &str, net: u8) -> Result<Self> {
        assert!(
            (10..=19).contains(&net),
            "tests use 198.18.10.0/24 .. 198.18.19.0/24"
        );
        let pid = std::process::id();
        let client = NetNs::new(&format!("dtk-{tag}-c-{pid}"))?;
        let server = NetNs::new(&format!("dtk-{tag}-s-{pid}"))?;
        let t = Topology {
            client,
            server,
            net,
        };
        t.wire()?;
        Ok(t)
    }

    /// Creates the veth pair with its addresses and neighbours (again, after
    /// [`Topology::unplug`]: a re-created interface, as after a hotplug).
    pub fn wire(&self) -> Result<()> {
        let (net, t) = (self.net, self);
        ip(&[
            "link",
            "add",
            CLIENT_IFACE,
            "address",
            &mac(net, 2),
            "netns",
            &t.client.name,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_IFACE,
            "address",
            &mac(net, 1),
            "netns",
            &t.server.name,
        ])?;
        t.server.ip(&[
            "addr",
            "add",
            &format!("{}/24", t.v4(1)),
            "dev",
            SERVER_IFACE,
        ])?;
        t.server.ip(&[
            "addr",
            "add",
            &format!("{}/64", t.v6(1)),
            "dev",
            SERVER_IFACE,
            "nodad",
        ])?;
        for host in [2u16, 3, 40] {
            t.client.ip(&[
                "addr",
                "add",
                &format!("{}/24", t.v4(host as u8)),
                "dev",
                CLIENT_IFACE,
            ])?;
        }
        for host in [2u16, 3, 0x100] {
            t.client.ip(&[
                "addr",
                "add",
                &format!("{}/64", t.v6(host)),
                "dev",
                CLIENT_IFACE,
                "nodad",
            ])?;
        }
        // Static neighbours: no ARP/ND round trips (or their retransmit timers) in the
        // connection checks, which must be decided by XDP alone.
        for host in [t.v4(2), t.v4(3), t.v4(40), t.v6(2), t.v6(3), t.v6(0x100)] {
            t.server.ip(&[
                "neigh",
                "replace",
                &host.to_string(),
                "lladdr",
                &mac(net, 2),
                "dev",
                SERVER_IFACE,
                "nud",
                "permanent",
            ])?;
        }
        for host in [t.v4(1), t.v6(1)] {
            t.client.ip(&[
                "neigh",
                "replace",
                &host.to_string(),
                "lladdr",
                &mac(net, 1),
                "dev",
                CLIENT_IFACE,
                "nud",
                "permanent",
            ])?;
        }
        t.server.ip(&["link", "set", SERVER_IFACE, "up"])?;
        t.client.ip(&["link", "set", CLIENT_IFACE, "up"])?;
        Ok(())
    }

    /// Deletes the veth pair (both ends).
    pub fn unplug(&self) -> Result<()> {
        self.server.ip(&["link", "del", SERVER_IFACE])
    }

    pub fn v4(&self, host: u8) -> IpAddr {
        format!("198.18.{}.{host}", self.net).parse().unwrap()
    }

    pub fn v6(&self, host: u16) -> IpAddr {
        format!("2001:db8:10:{}::{host:x}", self.net)
            .parse()
            .unwrap()
    }

    /// TCP listeners on the server's IPv4 and IPv6 addresses (the kernel completes handshakes
    /// from the backlog, so nobody needs to accept). Closed when dropped.
    pub fn listen(&self, port: u16) -> Result<Listeners> {
        let (v4, v6) = (
            SocketAddr::new(self.v4(1), port),
            SocketAddr::new(self.v6(1), port),
        );
        let (l4, l6) = self
            .server
            .run(move || (TcpListener::bind(v4), TcpListener::bind(v6)))?;
        Ok(Listeners {
            _v4: l4.context("listen v4")?,
            _v6: l6.context("listen v6")?,
        })
    }

    /// Whether a TCP connection from `src` (a client address) to the server's `port` opens.
    /// A connection that should open: up to three attempts, so one SYN lost for reasons
    /// other than XDP (a loaded machine) does not fail a test.
    pub fn connects(&self, src: IpAddr, port: u16) -> Result<bool> {
        for _ in 0..3 {
            if self.can_connect(src, port)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One attempt (one SYN: the retransmit comes after 1 s, past the 700 ms timeout).
    pub fn can_connect(&self, src: IpAddr, port: u16) -> Result<bool> {
        let dst = match src {
            IpAddr::V4(_) => SocketAddr::new(self.v4(1), port),
            IpAddr::V6(_) => SocketAddr::new(self.v6(1), port),
        };
        self.client
            .run(move || connect_from(src, dst, Duration::from_millis(700)))?
    }
}

pub struct Listeners {
    _v4: TcpListener,
    _v6: TcpListener,
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large enough for sockaddr_in.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is large enough for sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Non-blocking connect from a bound source address, waiting at most `timeout` for the
/// handshake. `Ok(false)` = no connection (dropped SYN/SYN-ACK, refused, timeout).
pub fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<bool> {
    let family = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscalls on a descriptor we own and close below.
    unsafe {
        let fd = libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let result = (|| {
            let (s, slen) = sockaddr(SocketAddr::new(src, 0));
            if libc::bind(fd, &s as *const _ as *const libc::sockaddr, slen) != 0 {
                bail!("bind {src}: {}", std::io::Error::last_os_error());
            }
            let (d, dlen) = sockaddr(dst);
            if libc::connect(fd, &d as *const _ as *const libc::sockaddr, dlen) == 0 {
                return Ok(true);
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINPROGRESS) {
                return Ok(false);
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            let n = libc::poll(&mut pfd, 1, timeout.as_millis() as i32);
            if n <= 0 {
                return Ok(false);
            }
            let mut so_err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut so_err as *mut _ as *mut libc::c_void,
                &mut len,
            );
            Ok(so_err == 0)
        })();
        libc::close(fd);
        result
    }
}
