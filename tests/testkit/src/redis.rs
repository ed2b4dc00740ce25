//! A private `redis-server` for one test: on a free 127.0.0.1 port, no persistence, optional
//! password and TLS; waits for PING; killed and reaped on drop. [`Redis::kill`] and
//! [`Redis::restart`] take it away and bring it back on the same port (an outage).
//!
//! The Debian package is installed if missing (with the policy-rc.d guard, so the packaged
//! service is not started); `cargo xtask setup` installs it up front.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::apt;

/// The Debian package.
pub const PACKAGE: &str = "redis-server";
const BINARY: &str = "/usr/bin/redis-server";

/// TLS material for `--tls-port`: PEM files.
#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Tls {
    /// A private CA and a server certificate for 127.0.0.1 signed by it, made with the
    /// `openssl` command in `dir`.
    pub fn generate(dir: &Path) -> Result<Tls> {
        std::fs::create_dir_all(dir)?;
        let tls = Tls {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            ca: dir.join("ca.crt"),
        };
        let ca_key = dir.join("ca.key");
        let csr = dir.join("server.csr");
        let ext = dir.join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )?;
        let p = |p: &Path| p.to_string_lossy().into_owned();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=detector test CA",
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&tls.ca),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p(&tls.key),
            "-out",
            &p(&csr),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&tls.ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p(&ext),
            "-out",
            &p(&tls.cert),
        ])?;
        Ok(tls)
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `requirepass`.
    pub password: Option<String>,
    /// Serve TLS only (no plain port).
    pub tls: Option<Tls>,
}

/// A running (or deliberately stopped) private redis-server.
pub struct Redis {
    pub port: u16,
    opts: Options,
    dir: PathBuf,
    child: Option<Child>,
}

/// Installs redis-server when it is missing.
pub fn ensure_installed() -> Result<()> {
    if Path::new(BINARY).exists() {
        return Ok(());
    }
    apt::install(&[PACKAGE], apt::LAB_DEBCONF_TXT, apt::Echo::Captured)
        .context("installing redis-server (cargo xtask setup does it too)")?;
    if !Path::new(BINARY).exists() {
        bail!("{PACKAGE} installed, but {BINARY} is missing");
    }
    Ok(())
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Redis {
    /// Starts a server (plain, no password).
    pub fn start() -> Result<Redis> {
        Redis::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Result<Redis> {
        ensure_installed()?;
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("detector-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut r = Redis {
            port,
            opts,
            dir,
            child: None,
        };
        r.spawn()?;
        Ok(r)
    }

    /// `redis://127.0.0.1:PORT/0` (or `rediss://` with TLS); no password in it.
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(BINARY);
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        match &self.opts.tls {
            Some(tls) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args(["--tls-auth-clients", "no"]);
            }
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
        }
        if let Some(pw) = &self.opts.password {
            cmd.args(["--requirepass", pw]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Until the port answers (PING, or for TLS a TCP connect plus the log line).
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("redis-server exited ({st}):\n{}", self.log());
            }
            let ready = match &self.opts.tls {
                Some(_) => {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                        && self.log().contains("Ready to accept connections")
                }
                None => ping(addr, self.opts.password.as_deref()),
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server on port {} not ready after 20 s:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// SIGKILL and reap: an outage (nothing persisted, so a restart comes back empty, as a
    /// Redis without persistence after a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Runs one command through `redis-cli` (plain servers) and returns its output.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(pw) = &self.opts.password {
            cmd.args(["--no-auth-warning", "-a", pw]);
        }
        let out = cmd.args(args).output().context("running redis-cli")?;
        if !out.status.success() {
            bail!(
                "redis-cli {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `PING` (after `AUTH` with a password) answered with `+PONG`.
fn ping(addr: SocketAddr, password: Option<&str>) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut request = String::new();
    if let Some(pw) = password {
        request.push_str(&format!("AUTH {pw}\r\n"));
    }
    request.push_str("PING\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("PONG") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    true
}
