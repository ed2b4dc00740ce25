//! Installs the lab's Debian packages when they are missing, without starting any daemon in
//! the root namespace. `cargo xtask setup` does the same from the same lists (tests/lab/).
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use super::sys::run;

/// Debian packages of the lab (`tests/lab/packages.txt`).
pub const PACKAGES_TXT: &str = include_str!("../../lab/packages.txt");
/// debconf answers that keep the postfix package from writing a config (`tests/lab/debconf.txt`).
pub const DEBCONF_TXT: &str = include_str!("../../lab/debconf.txt");

/// Files the lab runs; if one is missing the packages are (re)installed.
const REQUIRED_FILES: &[&str] = &[
    "/usr/sbin/postfix",
    "/usr/lib/postfix/sbin/master",
    "/usr/lib/postfix/postfix-pcre.so",
    "/usr/sbin/dovecot",
    "/usr/lib/dovecot/imap",
    "/usr/lib/dovecot/pop3",
    "/lib/systemd/systemd-journald",
    "/usr/bin/journalctl",
    "/usr/bin/unshare",
    "/usr/bin/nsenter",
    "/usr/sbin/ip",
];

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn packages() -> Vec<&'static str> {
    PACKAGES_TXT
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

pub fn missing_files() -> Vec<&'static str> {
    REQUIRED_FILES
        .iter()
        .copied()
        .filter(|f| !Path::new(f).exists())
        .collect()
}

/// Installs the packages if any required file is missing. Serialised by a lock file so that
/// parallel tests do not race apt.
pub fn ensure_installed() -> Result<()> {
    if missing_files().is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(super::STATE_ROOT)?;
    let _lock = super::FileLock::exclusive(&Path::new(super::STATE_ROOT).join("install.lock"))?;
    if missing_files().is_empty() {
        return Ok(());
    }
    eprintln!(
        "lab: installing {} (missing: {})",
        packages().join(" "),
        missing_files().join(" ")
    );
    install(&packages())
}

/// debconf preseed + policy-rc.d guard + apt-get install. The guard (`exit 101`) makes
/// invoke-rc.d refuse to start postfix/dovecot in the root namespace during the install; it is
/// created only if absent and removed again afterwards.
pub fn install(packages: &[&str]) -> Result<()> {
    let mut debconf = Command::new("debconf-set-selections")
        .stdin(Stdio::piped())
        .spawn()
        .context("starting debconf-set-selections")?;
    std::io::Write::write_all(
        debconf.stdin.as_mut().expect("piped stdin"),
        DEBCONF_TXT.as_bytes(),
    )?;
    drop(debconf.stdin.take());
    let status = debconf.wait()?;
    anyhow::ensure!(
        status.success(),
        "debconf-set-selections failed with {status}"
    );

    let guard = PolicyGuard::install()?;
    let result =
        run(Command::new("apt-get").args(["-o", "DPkg::Lock::Timeout=300", "update", "-qq"]))
            .and_then(|_| {
                run(Command::new("apt-get")
                    .args([
                        "-o",
                        "DPkg::Lock::Timeout=300",
                        "install",
                        "-y",
                        "-qq",
                        "--no-install-recommends",
                    ])
                    .args(packages)
                    .env("DEBIAN_FRONTEND", "noninteractive"))
            });
    drop(guard);
    result.map(|_| ())
}

struct PolicyGuard {
    created: bool,
}

impl PolicyGuard {
    fn install() -> Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(PolicyGuard { created: false });
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(POLICY_RC_D, "#!/bin/sh\n# temporary, by the detector lab: start no service while installing\nexit 101\n")
            .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
        Ok(PolicyGuard { created: true })
    }
}

impl Drop for PolicyGuard {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}
