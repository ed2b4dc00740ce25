//! Where a policy service listens: a TCP socket address (`127.0.0.1:9479`, `[::1]:9479`) or a
//! unix socket path (`/var/spool/postfix/private/detector-policy`, or `unix:` before it).
//!
//! A unix socket is created with the mode (and optionally group) of [`UnixSocketOptions`] so
//! the mail server's unprivileged user can connect: Postfix's `smtpd` runs as `postfix` and
//! needs write permission on the socket, so the default is mode `0660` and the admin sets the
//! group to `postfix` (or puts the socket in a directory only Postfix reaches and uses `0666`).
//! A socket file left by a crashed run is removed only when nothing answers on it; a live one
//! or a file that is not a socket is an error, never deleted. The listener removes its socket
//! when dropped, if the file is still the one it created.
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::either::Either;

use crate::{Error, Result};

/// A TCP socket address or a unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// One accepted connection, TCP or unix; reads and writes like either.
pub type Stream = Either<TcpStream, UnixStream>;

/// How a unix socket is created. Ignored for TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocketOptions {
    /// Permission bits of the socket file (connecting needs write permission).
    pub mode: u32,
    /// Group to give the socket file (numeric gid), so that group's members may connect.
    pub gid: Option<u32>,
}

impl Default for UnixSocketOptions {
    fn default() -> Self {
        Self {
            mode: 0o660,
            gid: None,
        }
    }
}

impl UnixSocketOptions {
    /// Options from configuration: `mode` bits and a group given as a name from /etc/group
    /// or a numeric gid; `key` names the group setting in errors.
    pub fn new(key: &str, mode: u32, group: Option<&str>) -> Result<Self> {
        let gid = match group {
            None => None,
            Some(g) => Some(match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => gid_of(g).map_err(|m| Error::config(key, m))?,
            }),
        };
        Ok(Self { mode, gid })
    }
}

/// The gid of group `name` in /etc/group (the groups a mail host's packages create live
/// there; NSS sources are not consulted).
fn gid_of(name: &str) -> std::result::Result<u32, String> {
    let text = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("cannot read /etc/group to look up {name:?}: {e}"))?;
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let group = f.next()?;
            let gid = f.nth(1)?.parse().ok()?;
            (group == name).then_some(gid)
        })
        .next()
        .ok_or_else(|| format!("no group {name:?} in /etc/group"))
}

impl ListenAddr {
    /// Reads `text` as the value of `key` (a config key or flag, named in the error).
    pub fn parse(key: &str, text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::config(
                key,
                "empty; give IP:PORT or a unix socket path",
            ));
        }
        if let Some(path) = text.strip_prefix("unix:") {
            return Self::unix_path(key, path);
        }
        if text.starts_with('/') {
            return Self::unix_path(key, text);
        }
        let text = text.strip_prefix("inet:").unwrap_or(text);
        text.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| {
                let hint = if text.contains('/') {
                    "a unix socket path must be absolute"
                } else if !text.contains(':') {
                    "no port; give IP:PORT such as 127.0.0.1:9479"
                } else {
                    "not IP:PORT (an IPv6 address goes in brackets, [::1]:9479; host names are not \
                 resolved)"
                };
                Error::config(key, format!("{text:?}: {hint}"))
            })
    }

    fn unix_path(key: &str, path: &str) -> Result<Self> {
        let path = Path::new(path);
        if !path.is_absolute() {
            return Err(Error::config(
                key,
                format!("{}: a unix socket path must be absolute", path.display()),
            ));
        }
        if path.file_name().is_none() {
            return Err(Error::config(
                key,
                format!("{}: names a directory, not a socket", path.display()),
            ));
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if path.as_os_str().len() > 107 {
            return Err(Error::config(
                key,
                format!(
                    "{}: longer than a unix socket path may be (107 bytes)",
                    path.display()
                ),
            ));
        }
        Ok(ListenAddr::Unix(path.to_path_buf()))
    }

    /// Binds the address. A unix socket gets `unix`'s mode and group.
    pub async fn bind(&self, unix: &UnixSocketOptions) -> Result<Listener> {
        self.bind_now(unix)
    }

    /// [`ListenAddr::bind`] for synchronous start-up code; must run inside a tokio runtime
    /// (the listener registers with its reactor).
    pub fn bind_now(&self, unix: &UnixSocketOptions) -> Result<Listener> {
        match self {
            ListenAddr::Tcp(addr) => {
                let bind = || {
                    let l = std::net::TcpListener::bind(addr)?;
                    l.set_nonblocking(true)?;
                    TcpListener::from_std(l)
                };
                let listener = bind().map_err(|e| listen_error(self, "binding", e))?;
                Ok(Listener::Tcp(listener))
            }
            ListenAddr::Unix(path) => bind_unix(self, path, unix),
        }
    }
}

fn listen_error(addr: &ListenAddr, what: &str, source: io::Error) -> Error {
    Error::source_failed(format!("policy listener {addr}: {what}"), source)
}

fn bind_unix(addr: &ListenAddr, path: &Path, opts: &UnixSocketOptions) -> Result<Listener> {
    remove_stale_socket(addr, path)?;
    let listener = UnixListener::bind(path).map_err(|e| listen_error(addr, "binding", e))?;
    // From here on the guard removes the file again if setting it up fails.
    let meta = std::fs::symlink_metadata(path).map_err(|e| listen_error(addr, "stat", e))?;
    let socket = UnixSocket {
        listener,
        path: path.to_path_buf(),
        dev_ino: (meta.dev(), meta.ino()),
    };
    if let Some(gid) = opts.gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| listen_error(addr, &format!("setting group {gid}"), e))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(opts.mode))
        .map_err(|e| listen_error(addr, &format!("setting mode {:o}", opts.mode), e))?;
    Ok(Listener::Unix(socket))
}

/// Removes `path` if it is a socket nobody listens on (left by a run that crashed).
fn remove_stale_socket(addr: &ListenAddr, path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(listen_error(addr, "stat", e)),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::Source(format!(
            "policy listener {addr}: the path exists and is not a socket; not removing it"
        )));
    }
    // A listener answers a connect (the other run sees one connection that closes at once).
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(Error::Source(format!(
            "policy listener {addr}: something already listens there (another detector?)"
        ))),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|e| listen_error(addr, "removing stale socket", e))
        }
        Err(e) => Err(listen_error(addr, "probing existing socket", e)),
    }
}

impl FromStr for ListenAddr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse("listen address", s)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ListenAddr::parse("listen", &text).map_err(|e| match e {
            Error::Config { message, .. } => serde::de::Error::custom(message),
            other => serde::de::Error::custom(other),
        })
    }
}

impl serde::Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A bound policy socket. Accepts TCP or unix connections alike.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixSocket),
}

/// A bound unix socket; removes its file when dropped if the file is still ours.
#[derive(Debug)]
pub struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
    dev_ino: (u64, u64),
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        // Only our own file: a newer run may have replaced it after we stopped listening.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.dev_ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Listener {
    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
                // Replies are one small write each; do not hold them back for more.
                let _ = s.set_nodelay(true);
                Either::Left(s)
            }),
            Listener::Unix(u) => u.listener.accept().await.map(|(s, _)| Either::Right(s)),
        }
    }

    /// Where it listens, with the port the OS chose when the address had port 0.
    pub fn local_addr(&self) -> ListenAddr {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(addr) => ListenAddr::Tcp(addr),
                Err(_) => ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], 0))),
            },
            Listener::Unix(u) => ListenAddr::Unix(u.path.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn parse(s: &str) -> Result<ListenAddr> {
        ListenAddr::parse("postfix_policy.listen", s)
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn tcp_and_unix_addresses_parse() {
        assert_eq!(
            parse("127.0.0.1:9479").unwrap(),
            ListenAddr::Tcp("127.0.0.1:9479".parse().unwrap())
        );
        assert_eq!(
            parse(" [::1]:9479 ").unwrap(),
            ListenAddr::Tcp("[::1]:9479".parse().unwrap())
        );
        assert_eq!(
            parse("inet:127.0.0.1:1").unwrap(),
            ListenAddr::Tcp("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(
            parse("/run/detector/policy.sock").unwrap(),
            ListenAddr::Unix("/run/detector/policy.sock".into())
        );
        assert_eq!(
            parse("unix:/run/p.sock").unwrap(),
            ListenAddr::Unix("/run/p.sock".into())
        );
        let shown = parse("unix:/run/p.sock").unwrap().to_string();
        assert_eq!(
            parse(&shown).unwrap(),
            ListenAddr::Unix("/run/p.sock".into())
        );
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        assert!(err("").contains("empty"), "{}", err(""));
        assert!(err("127.0.0.1").contains("no port"), "{}", err("127.0.0.1"));
        assert!(err("localhost:9479").contains("not resolved"));
        assert!(err("::1:9479").contains("brackets"));
        assert!(err("run/p.sock").contains("must be absolute"));
        assert!(err("unix:p.sock").contains("must be absolute"));
        assert!(err("/").contains("directory"));
        let long = format!("/{}", "x".repeat(120));
        assert!(err(&long).contains("longer"));
        assert!(err("127.0.0.1").starts_with("invalid postfix_policy.listen: "));
    }

    #[test]
    fn a_socket_group_is_a_gid_or_a_name_from_etc_group() {
        let o = UnixSocketOptions::new("k", 0o660, Some("0")).unwrap();
        assert_eq!(o.gid, Some(0));
        let o = UnixSocketOptions::new("k", 0o660, Some("root")).unwrap();
        assert_eq!(o.gid, Some(0));
        let e = UnixSocketOptions::new("k", 0o660, Some("no-such-group-here"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("invalid k: no group"), "{e}");
        assert_eq!(UnixSocketOptions::new("k", 0o600, None).unwrap().gid, None);
    }

    #[test]
    fn deserializes_from_a_config_string() {
        #[derive(Deserialize)]
        struct Section {
            listen: ListenAddr,
        }
        let s: Section = toml::from_str(r#"listen = "127.0.0.1:9479""#).unwrap();
        assert_eq!(s.listen, ListenAddr::Tcp("127.0.0.1:9479".parse().unwrap()));
        let e = toml::from_str::<Section>(r#"listen = "nowhere""#)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no port"), "{e}");
    }

    async fn echo_once(listener: &Listener, addr: &ListenAddr) {
        let client = async {
            let mut s: Stream = match addr {
                ListenAddr::Tcp(a) => Either::Left(TcpStream::connect(a).await.unwrap()),
                ListenAddr::Unix(p) => Either::Right(UnixStream::connect(p).await.unwrap()),
            };
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            buf
        };
        let server = async {
            let mut s = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        };
        let (got, ()) = tokio::join!(client, server);
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn a_tcp_listener_accepts() {
        let listener = parse("127.0.0.1:0")
            .unwrap()
            .bind(&UnixSocketOptions::default())
            .await
            .unwrap();
        let addr = listener.local_addr();
        assert!(matches!(addr, ListenAddr::Tcp(a) if a.port() != 0));
        echo_once(&listener, &addr).await;
    }

    #[tokio::test]
    async fn a_unix_listener_accepts_with_its_mode_and_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.sock");
        let addr = ListenAddr::Unix(path.clone());
        let opts = UnixSocketOptions {
            mode: 0o666,
            gid: Some(0),
        };
        let listener = addr.bind(&opts).await.unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o666);
        assert_eq!(meta.gid(), 0);
        echo_once(&listener, &addr).await;
        assert_eq!(listener.local_addr(), addr);
        drop(listener);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_but_a_live_one_or_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.sock");
        let addr = ListenAddr::Unix(path.clone());
        let opts = UnixSocketOptions::default();

        // A socket file nobody listens on: what a killed run leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = addr.bind(&opts).await.unwrap();

        let e = addr.bind(&opts).await.unwrap_err().to_string();
        assert!(e.contains("already listens"), "{e}");
        assert!(path.exists(), "the live socket must stay");
        // The probe that found it live is a connection the live listener sees, then EOF.
        let mut probe = live.accept().await.unwrap();
        assert_eq!(probe.read(&mut [0u8; 1]).await.unwrap(), 0);
        echo_once(&live, &addr).await;
        drop(live);

        std::fs::write(&path, "not a socket").unwrap();
        let e = addr.bind(&opts).await.unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    }

    #[tokio::test]
    async fn a_busy_tcp_port_is_an_error_naming_the_address() {
        let first = parse("127.0.0.1:0")
            .unwrap()
            .bind(&UnixSocketOptions::default())
            .await
            .unwrap();
        let addr = first.local_addr();
        let e = addr
            .bind(&UnixSocketOptions::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&addr.to_string()) && e.contains("binding"),
            "{e}"
        );
    }
}
