//! A real CrowdSec Local API per test: `crowdsec -c CONFIG -no-cs` (the API alone, no log
//! processing) from a private configuration and sqlite database on a free loopback port, with
//! `cscli` pointed at it. Binaries come from Debian's package, unpacked by
//! [`detector_testkit::crowdsec::ensure`] (also run by `cargo xtask setup`). Dropping the
//! guard stops the process and removes its directory.
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use detector_testkit::crowdsec::{self as fetch, Binaries};

pub const BOUNCER: &str = "detector-test";
pub const MACHINE: &str = "detector-test";

pub struct Lapi {
    bins: Binaries,
    pub dir: PathBuf,
    pub port: u16,
    /// The bouncer API key (`cscli bouncers add -o raw`).
    pub key: String,
    /// Serving `https://` with certificates of a private CA.
    pub tls: Option<TlsFiles>,
    child: Option<Child>,
}

/// A private CA, the Local API's certificate for 127.0.0.1, and a bouncer client certificate
/// (OU `bouncer-ou`, what the Local API's TLS authentication accepts as a bouncer).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Makes them with `openssl` (P-256 keys, valid for two days).
    pub fn generate(dir: &Path) -> Result<TlsFiles> {
        std::fs::create_dir_all(dir)?;
        let openssl = |args: &[&str]| -> Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .context("running openssl")?;
            anyhow::ensure!(
                out.status.success(),
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]);
        ca.extend(["-subj", "/CN=detector test CA"]);
        openssl(&ca)?;
        for (name, subject, ext) in [
            (
                "server",
                "/CN=127.0.0.1",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            (
                "bouncer",
                "/OU=bouncer-ou/CN=detector-bouncer",
                "extendedKeyUsage=clientAuth\n",
            ),
        ] {
            let (key, csr, pem, extfile) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            std::fs::write(dir.join(&extfile), ext)?;
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
            openssl(&req)?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ])?;
        }
        Ok(TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("bouncer.pem"),
            client_key: dir.join("bouncer.key"),
        })
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Lapi {
    /// Writes a private configuration, registers a machine and a bouncer, starts the API.
    pub fn start(tag: &str) -> Result<Lapi> {
        Self::start_with(tag, false)
    }

    /// [`Lapi::start`] serving `https://` (see [`TlsFiles`]); bouncers may authenticate with
    /// the client certificate instead of a key.
    pub fn start_tls(tag: &str) -> Result<Lapi> {
        Self::start_with(tag, true)
    }

    fn start_with(tag: &str, tls: bool) -> Result<Lapi> {
        let bins = fetch::ensure(&fetch::default_dir())?;
        let dir =
            std::env::temp_dir().join(format!("detector-crowdsec-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["data", "hub", "cfg"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut lapi = Lapi {
            bins,
            dir,
            port: free_port()?,
            key: String::new(),
            tls: None,
            child: None,
        };
        if tls {
            lapi.tls = Some(TlsFiles::generate(&lapi.dir.join("tls"))?);
        }
        lapi.write_config()?;
        lapi.register(None)?;
        lapi.spawn()?;
        Ok(lapi)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("cfg/config.yaml")
    }

    /// The machine credentials cscli wrote (url, login, password), for `push`.
    pub fn credentials(&self) -> PathBuf {
        self.dir.join("cfg/local_api_credentials.yaml")
    }

    /// Writes the bouncer key into a file and returns its path.
    pub fn key_file(&self) -> Result<PathBuf> {
        let path = self.dir.join("bouncer.key");
        std::fs::write(&path, format!("{}\n", self.key))?;
        Ok(path)
    }

    fn write_config(&self) -> Result<()> {
        let d = self.dir.display();
        // cscli talks to the API too (`decisions add`): it skips verifying the private CA.
        let (skip_verify, tls) = match &self.tls {
            None => (false, String::new()),
            Some(t) => (
                true,
                format!(
                    "    tls:
      cert_file: {}
      key_file: {}
      ca_cert_path: {}
      client_verification: VerifyClientCertIfGiven
      bouncers_allowed_ou:
        - bouncer-ou
      agents_allowed_ou:
        - agent-ou
",
                    t.server_cert.display(),
                    t.server_key.display(),
                    t.ca.display()
                ),
            ),
        };
        let config = format!(
            "common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: .
config_paths:
  config_dir: {d}/cfg/
  data_dir: {d}/data/
  simulation_path: {d}/cfg/simulation.yaml
  hub_dir: {d}/hub/
  index_path: {d}/hub/.index.json
  notification_dir: {d}/cfg/notifications/
  plugin_dir: {d}/plugins/
crowdsec_service:
  acquisition_path: {d}/cfg/acquis.yaml
cscli:
  output: human
db_config:
  log_level: info
  type: sqlite
  db_path: {d}/data/crowdsec.db
  use_wal: false
api:
  client:
    insecure_skip_verify: {skip_verify}
    credentials_path: {d}/cfg/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:{port}
    profiles_path: {d}/cfg/profiles.yaml
    trusted_ips:
      - 127.0.0.1
{tls}prometheus:
  enabled: false
",
            port = self.port
        );
        std::fs::write(self.config(), config)?;
        std::fs::write(self.dir.join("cfg/simulation.yaml"), "simulation: false\n")?;
        std::fs::write(
            self.dir.join("cfg/profiles.yaml"),
            "name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == \"Ip\"
decisions:
 - type: ban
   duration: 4h
on_success: break
",
        )?;
        Ok(())
    }

    /// Machine credentials and a bouncer key (`key`: reuse that key, as after a reinstall).
    fn register(&mut self, key: Option<&str>) -> Result<()> {
        let creds = self.credentials();
        self.cscli(&[
            "machines",
            "add",
            MACHINE,
            "--auto",
            "--force",
            "-u",
            &self.url(),
            "-f",
            creds.to_str().unwrap(),
        ])?;
        let mut args = vec!["bouncers", "add", BOUNCER, "-o", "raw"];
        if let Some(k) = key {
            args.extend(["-k", k]);
        }
        let out = self.cscli(&args)?;
        let printed = out.lines().map(str::trim).rfind(|l| !l.is_empty());
        self.key = match (key, printed) {
            (Some(k), _) => k.to_string(),
            (None, Some(k)) => k.to_string(),
            (None, None) => bail!("cscli bouncers add printed no key"),
        };
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("lapi.log"))?;
        let child = Command::new(&self.bins.crowdsec)
            .arg("-c")
            .arg(self.config())
            .arg("-no-cs")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bins.crowdsec.display()))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!("crowdsec exited ({status}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the Local API did not listen on {addr}: {}", self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lapi.log")).unwrap_or_default()
    }

    /// `cscli -c CONFIG ARGS`; fails unless it succeeded. Returns stdout.
    pub fn cscli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bins.cscli)
            .arg("-c")
            .arg(self.config())
            .args(args)
            .current_dir(&self.dir)
            .output()
            .context("running cscli")?;
        if !out.status.success() {
            bail!(
                "cscli {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `cscli ... -o json`, parsed.
    pub fn cscli_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cscli(&all)?;
        if out.trim().is_empty() || out.trim() == "null" {
            return Ok(serde_json::Value::Array(Vec::new()));
        }
        serde_json::from_str(&out).with_context(|| format!("cscli printed {out}"))
    }

    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SIGTERM lets it close the database cleanly.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Stops the API, throws its database away and starts it again with an empty one, the
    /// same port and the same bouncer key: what detector sees when the Local API was
    /// reinstalled or restored while detector kept running.
    pub fn restart_with_empty_database(&mut self) -> Result<()> {
        self.stop()?;
        // Down for longer than detector's poll interval (1 s in the tests), so that it sees
        // the outage, as it would a real restart.
        std::thread::sleep(Duration::from_secs(3));
        for entry in std::fs::read_dir(self.dir.join("data"))? {
            std::fs::remove_file(entry?.path())?;
        }
        let key = self.key.clone();
        self.register(Some(&key))?;
        self.spawn()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `detector run` (stderr and stdout in `log`); SIGTERM, then SIGKILL, on drop.
pub struct DetectorRun {
    child: Option<Child>,
    pub log: PathBuf,
}

impl DetectorRun {
    /// `detector run ARGS` in the current network namespace.
    pub fn start(args: &[&std::ffi::OsStr], log: PathBuf) -> Result<DetectorRun> {
        let file = std::fs::File::create(&log)?;
        let child = Command::new(crate::bin::detector_bin())
            .arg("run")
            .args(args)
            .env_remove("DETECTOR_PIN_DIR")
            .env("DETECTOR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting detector run")?;
        Ok(DetectorRun {
            child: Some(child),
            log,
        })
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits (bounded) until the log has `count` lines containing `needle`.
    pub fn wait_log(&mut self, needle: &str, count: usize, timeout: Duration) -> Result<()> {
        wait_until(timeout, || {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!("detector run exited ({status}):\n{}", self.log_text());
            }
            Ok(self.log_text().matches(needle).count() >= count)
        })
        .with_context(|| format!("waiting for {needle:?} in:\n{}", self.log_text()))
    }

    /// SIGTERM and wait; the exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("detector run ignored SIGTERM:\n{}", self.log_text())
    }
}

impl Drop for DetectorRun {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// Polls `cond` every 100 ms until it holds; an error after `timeout` (a bound on waiting,
/// not a measured speed).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("still not true after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
