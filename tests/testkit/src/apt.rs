//! Installing Debian packages without starting their daemons: one installer for
//! `cargo xtask setup` and the mail lab.
//!
//! While apt runs, `/usr/sbin/policy-rc.d` (`exit 101`) makes invoke-rc.d start no service,
//! so Postfix and Dovecot never run in the root namespace. The guard file carries a marker
//! line, so that one left behind by an interrupted run is recognised as ours and removed
//! (otherwise no service on the host would ever start again), while a policy-rc.d that the
//! admin or the image wrote is never touched.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cmd::{output, run_shown};
use crate::lock::FileLock;

/// The mail lab's Debian packages (`tests/lab/packages.txt`), shared by `cargo xtask setup`
/// and the lab harness.
pub const LAB_PACKAGES_TXT: &str = include_str!("../../lab/packages.txt");
/// debconf answers so that the postfix package writes no configuration of its own
/// (`tests/lab/debconf.txt`).
pub const LAB_DEBCONF_TXT: &str = include_str!("../../lab/debconf.txt");

/// The file invoke-rc.d consults before starting a service.
pub const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
/// Serialises our installers (setup, parallel lab tests) around the guard and apt.
pub const APT_LOCK: &str = "/run/detector-apt.lock";

/// The line that makes a policy-rc.d ours.
const MARKER: &str = "# detector-testkit: temporary policy-rc.d guard";
/// What earlier versions (before the marker) wrote, byte for byte: also ours.
const UNMARKED_GUARDS: &[&str] = &[
    "#!/bin/sh\n# temporary, by the detector lab: start no service while installing\nexit 101\n",
    "#!/bin/sh\n# temporary, by cargo xtask setup: start no service\nexit 101\n",
];

/// Non-comment lines of a package list.
pub fn package_list(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

pub fn lab_packages() -> Vec<&'static str> {
    package_list(LAB_PACKAGES_TXT)
}

pub fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// How apt's own output is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Echo {
    /// Echo the commands and let apt print to the terminal (setup).
    Shown,
    /// Capture it; an error carries apt's stderr (tests).
    Captured,
}

/// Preseeds debconf with `debconf_answers`, then `apt-get update` and `apt-get install` the
/// packages with the policy-rc.d guard in place. Removes a stale guard of ours first.
pub fn install(packages: &[&str], debconf_answers: &str, echo: Echo) -> Result<()> {
    let _lock = FileLock::exclusive(Path::new(APT_LOCK))?;
    preseed_debconf(debconf_answers)?;
    let guard = PolicyRcGuard::install_at(Path::new(POLICY_RC_D))?;
    let run = |cmd: &mut Command| match echo {
        Echo::Shown => run_shown(cmd),
        Echo::Captured => output(cmd).map(drop),
    };
    let result =
        run(Command::new("apt-get").args(["-o", "DPkg::Lock::Timeout=300", "update", "-qq"]))
            .and_then(|()| {
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
    result
}

fn preseed_debconf(answers: &str) -> Result<()> {
    let mut child = Command::new("debconf-set-selections")
        .stdin(Stdio::piped())
        .spawn()
        .context("starting debconf-set-selections")?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(answers.as_bytes())
        .context("writing to debconf-set-selections")?;
    let status = child.wait()?;
    if !status.success() {
        bail!("debconf-set-selections failed with {status}");
    }
    Ok(())
}

/// Who wrote the policy-rc.d at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardFile {
    Absent,
    /// Written by us (marker line, or an unmarked guard of an earlier version).
    Ours,
    /// Anything else: the admin's or the image's policy, never touched.
    Foreign,
}

pub fn guard_file(path: &Path) -> Result<GuardFile> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let ours = text.lines().any(|l| l.starts_with(MARKER))
                || UNMARKED_GUARDS.iter().any(|g| *g == text);
            Ok(if ours {
                GuardFile::Ours
            } else {
                GuardFile::Foreign
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(GuardFile::Absent),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Removes a guard of ours that an interrupted run left behind, unless one of our installers
/// holds `lock` right now (its guard is live). Returns whether a file was removed.
pub fn remove_stale_guard_at(path: &Path, lock: &Path) -> Result<bool> {
    // A lock held for a moment is not an install: a child forked anywhere in this process
    // shares our lock's open file until it execs, so one failed try proves nothing. An
    // installer holds the lock for seconds; a few tries over 100 ms tell the two apart.
    let mut tries = 0;
    let _lock = loop {
        match FileLock::try_exclusive(lock) {
            Ok(held) => break held,
            Err(_) if tries < 5 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(_) => return Ok(false),
        }
    };
    if guard_file(path)? != GuardFile::Ours {
        return Ok(false);
    }
    std::fs::remove_file(path).with_context(|| format!("removing the stale {}", path.display()))?;
    eprintln!(
        "removed {} left behind by an interrupted install (services could not start while it was there)",
        path.display()
    );
    Ok(true)
}

/// [`remove_stale_guard_at`] for the system's policy-rc.d.
pub fn remove_stale_guard() -> Result<bool> {
    remove_stale_guard_at(Path::new(POLICY_RC_D), Path::new(APT_LOCK))
}

/// A policy-rc.d that refuses every service start while it lives. The caller holds the apt
/// lock, so a guard of ours found in place is a stale one and is taken over.
pub struct PolicyRcGuard {
    path: PathBuf,
    created: bool,
}

impl PolicyRcGuard {
    pub fn install_at(path: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let created = match guard_file(path)? {
            // The admin's own policy already decides; leave it alone.
            GuardFile::Foreign => false,
            GuardFile::Absent | GuardFile::Ours => {
                let script = format!(
                    "#!/bin/sh\n{MARKER} (pid {}): start no service while packages install.\n\
                     # Safe to delete when no `cargo xtask setup` or lab install is running.\n\
                     exit 101\n",
                    std::process::id()
                );
                // Written beside and renamed: never a half-written policy, and a foreign
                // file is never opened for writing.
                let tmp = path.with_extension("detector-tmp");
                std::fs::write(&tmp, script)
                    .with_context(|| format!("writing {}", tmp.display()))?;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
                std::fs::rename(&tmp, path)
                    .with_context(|| format!("installing {}", path.display()))?;
                true
            }
        };
        Ok(PolicyRcGuard {
            path: path.to_path_buf(),
            created,
        })
    }

    /// Whether this guard wrote the file (and so removes it).
    pub fn created(&self) -> bool {
        self.created
    }
}

impl Drop for PolicyRcGuard {
    fn drop(&mut self) {
        // Only our own file goes: if someone replaced it meanwhile, theirs stays.
        if self.created && guard_file(&self.path).is_ok_and(|g| g == GuardFile::Ours) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "testkit-apt-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const FOREIGN: &str = "#!/bin/sh\n# the admin's policy\nexit 0\n";

    #[test]
    fn an_absent_guard_is_created_marked_and_removed_again() {
        let dir = TempDir::new();
        let path = dir.0.join("policy-rc.d");
        let guard = PolicyRcGuard::install_at(&path).unwrap();
        assert!(guard.created());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(MARKER) && text.ends_with("exit 101\n"),
            "{text}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(guard_file(&path).unwrap(), GuardFile::Ours);
        drop(guard);
        assert!(!path.exists());
    }

    #[test]
    fn a_foreign_policy_is_never_touched() {
        let dir = TempDir::new();
        let path = dir.0.join("policy-rc.d");
        std::fs::write(&path, FOREIGN).unwrap();
        let guard = PolicyRcGuard::install_at(&path).unwrap();
        assert!(!guard.created());
        drop(guard);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), FOREIGN);
        let lock = dir.0.join("apt.lock");
        assert!(!remove_stale_guard_at(&path, &lock).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), FOREIGN);
    }

    #[test]
    fn a_stale_guard_of_ours_is_taken_over_and_removed() {
        let dir = TempDir::new();
        let path = dir.0.join("policy-rc.d");
        // What an interrupted run leaves: our guard, its process gone.
        std::mem::forget(PolicyRcGuard::install_at(&path).unwrap());
        let guard = PolicyRcGuard::install_at(&path).unwrap();
        assert!(
            guard.created(),
            "a stale guard of ours must not count as foreign"
        );
        drop(guard);
        assert!(!path.exists());
    }

    #[test]
    fn remove_stale_guard_removes_ours_unless_an_install_holds_the_lock() {
        let dir = TempDir::new();
        let path = dir.0.join("policy-rc.d");
        let lock = dir.0.join("apt.lock");
        for unmarked in UNMARKED_GUARDS {
            std::fs::write(&path, unmarked).unwrap();
            assert!(remove_stale_guard_at(&path, &lock).unwrap());
            assert!(!path.exists());
        }
        std::mem::forget(PolicyRcGuard::install_at(&path).unwrap());
        {
            let _installing = FileLock::exclusive(&lock).unwrap();
            assert!(!remove_stale_guard_at(&path, &lock).unwrap());
            assert!(path.exists(), "a live install's guard must stay");
        }
        assert!(remove_stale_guard_at(&path, &lock).unwrap());
        assert!(!path.exists());
        assert!(!remove_stale_guard_at(&path, &lock).unwrap());
    }

    #[test]
    fn a_guard_replaced_by_someone_else_is_left_on_drop() {
        let dir = TempDir::new();
        let path = dir.0.join("policy-rc.d");
        let guard = PolicyRcGuard::install_at(&path).unwrap();
        std::fs::write(&path, FOREIGN).unwrap();
        drop(guard);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), FOREIGN);
    }

    #[test]
    fn package_lists_skip_comments_and_blank_lines() {
        assert_eq!(
            package_list("# c\npostfix\n\n  dovecot-core \n"),
            ["postfix", "dovecot-core"]
        );
        assert!(lab_packages().contains(&"postfix"));
    }
}
