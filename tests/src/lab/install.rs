//! Installs the lab's Debian packages when they are missing, without starting any daemon in
//! the root namespace, through the installer `cargo xtask setup` uses (detector-testkit).
use std::path::Path;

use anyhow::Result;
use detector_testkit::apt;

/// Debian packages of the lab (`tests/lab/packages.txt`).
pub const PACKAGES_TXT: &str = apt::LAB_PACKAGES_TXT;
/// debconf answers that keep the postfix package from writing a config (`tests/lab/debconf.txt`).
pub const DEBCONF_TXT: &str = apt::LAB_DEBCONF_TXT;

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

pub fn packages() -> Vec<&'static str> {
    apt::lab_packages()
}

pub fn missing_files() -> Vec<&'static str> {
    REQUIRED_FILES
        .iter()
        .copied()
        .filter(|f| !Path::new(f).exists())
        .collect()
}

/// Installs the packages if any required file is missing. Serialised by a lock file so that
/// parallel tests do not race apt. A policy-rc.d guard an interrupted install left behind is
/// removed first, installed or not (while it stays, no service on the host can start).
pub fn ensure_installed() -> Result<()> {
    apt::remove_stale_guard()?;
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
    apt::install(&packages(), DEBCONF_TXT, apt::Echo::Captured)
}
