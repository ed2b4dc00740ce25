//! The pinned nightly that builds the eBPF program, and finding it among the installed
//! toolchains. Shared (by `#[path]`) between `detector/build.rs` (the eBPF build) and
//! `cargo xtask setup`, so both resolve the same toolchain from the one pin in the workspace
//! `Cargo.toml`:
//!
//! ```toml
//! [workspace.metadata.detector]
//! nightly = "nightly-2026-05-20"         # what rustup installs
//! nightly-commit-date = "2026-05-19"     # what that toolchain's `rustc -vV` reports
//! ```
//!
//! A nightly of date D is built from the last commit of D-1, so the two dates differ; both are
//! pinned so that neither has to be guessed. Any installed nightly whose `rustc -vV` reports
//! the pinned commit date is the pinned one, whatever its name (e.g. a plain `nightly`
//! installed on that day); only when none matches is rustup asked for the dated release.
//! It uses std, anyhow and toml only, which both includers depend on.
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The pin, as written in the workspace manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The rustup toolchain to install, e.g. `nightly-2026-05-20`.
    pub release: String,
    /// `commit-date:` of that toolchain's `rustc -vV`, e.g. `2026-05-19`.
    pub commit_date: String,
}

impl Pin {
    /// Reads `[workspace.metadata.detector]` from the text of the workspace `Cargo.toml`.
    pub fn from_manifest(text: &str) -> Result<Pin> {
        let manifest: toml::Table = text.parse().context("parsing the workspace Cargo.toml")?;
        let table = manifest
            .get("workspace")
            .and_then(|w| w.get("metadata"))
            .and_then(|m| m.get("detector"));
        let field = |key: &str| {
            table
                .and_then(|t| t.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .with_context(|| {
                    format!("the workspace Cargo.toml has no `{key} = \"...\"` in [workspace.metadata.detector]")
                })
        };
        let pin = Pin {
            release: field("nightly")?,
            commit_date: field("nightly-commit-date")?,
        };
        let date_ok = |d: &str| {
            d.len() == 10
                && d.bytes().enumerate().all(|(i, b)| match i {
                    4 | 7 => b == b'-',
                    _ => b.is_ascii_digit(),
                })
        };
        let release_date = pin.release.strip_prefix("nightly-").unwrap_or("");
        if !date_ok(release_date) || !date_ok(&pin.commit_date) {
            bail!(
                "[workspace.metadata.detector]: nightly must be `nightly-YYYY-MM-DD` and nightly-commit-date `YYYY-MM-DD`, got {:?} and {:?}",
                pin.release,
                pin.commit_date
            );
        }
        Ok(pin)
    }

    pub fn from_workspace(root: &Path) -> Result<Pin> {
        let path = root.join("Cargo.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Pin::from_manifest(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The one command that installs the pinned toolchain with what the eBPF build needs.
    pub fn install_command(&self) -> String {
        format!(
            "rustup toolchain install {} --profile minimal --component rust-src",
            self.release
        )
    }

    /// What to tell a user who has no matching toolchain.
    pub fn install_hint(&self) -> String {
        format!(
            "the eBPF program is built with the pinned nightly {} (rustc commit-date {}), which is not installed; \
             run `cargo xtask setup`, or install it yourself: `{}` \
             (any installed nightly whose `rustc -vV` shows `commit-date: {}` also works, with its rust-src component)",
            self.release,
            self.commit_date,
            self.install_command(),
            self.commit_date
        )
    }
}

/// The `KEY: value` field of `rustc -vV` output.
pub fn vv_field<'a>(vv: &'a str, key: &str) -> Option<&'a str> {
    vv.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Whether `rustc -vV` output describes the pinned nightly.
pub fn is_pinned(pin: &Pin, vv: &str) -> bool {
    vv_field(vv, "release").is_some_and(|r| r.ends_with("-nightly"))
        && vv_field(vv, "commit-date") == Some(pin.commit_date.as_str())
}

/// What the resolver asks rustup (a trait so that tests can stand in for it).
pub trait Rustup {
    /// Names of the installed toolchains (`rustup toolchain list`).
    fn toolchains(&self) -> Result<Vec<String>>;
    /// `rustc -vV` of one toolchain.
    fn rustc_vv(&self, toolchain: &str) -> Result<String>;
    /// `rustup toolchain install <release> --profile minimal --component rust-src`.
    fn install(&self, release: &str) -> Result<()>;
}

/// An installed toolchain that is the pinned nightly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The name to give `rustup run`, `cargo +<name>`, `--toolchain <name>`.
    pub toolchain: String,
    /// Its `rustc -vV`.
    pub vv: String,
}

/// Finds the pinned nightly among the installed toolchains: the dated release by name first,
/// then any nightly whose commit date matches. `None` when no installed toolchain matches.
pub fn find_installed(pin: &Pin, rustup: &dyn Rustup) -> Result<Option<Resolved>> {
    let mut names = rustup.toolchains()?;
    // `nightly-2026-05-20-x86_64-unknown-linux-gnu` before the others.
    names.sort_by_key(|n| !n.starts_with(&format!("{}-", pin.release)) && *n != pin.release);
    for name in names.into_iter().filter(|n| n.starts_with("nightly")) {
        // A toolchain that cannot run (broken install) is not the pinned one.
        let Ok(vv) = rustup.rustc_vv(&name) else {
            continue;
        };
        if is_pinned(pin, &vv) {
            return Ok(Some(Resolved {
                toolchain: name,
                vv,
            }));
        }
    }
    Ok(None)
}

/// [`find_installed`], and when nothing matches, rustup installs the dated release; an error
/// says exactly what to install by hand when that fails too.
pub fn resolve_or_install(pin: &Pin, rustup: &dyn Rustup) -> Result<Resolved> {
    if let Some(found) = find_installed(pin, rustup)? {
        return Ok(found);
    }
    if let Err(e) = rustup.install(&pin.release) {
        bail!(
            "rustup could not install the pinned nightly {} ({e:#}); install it by hand: `{}` \
             (or any nightly whose `rustc -vV` shows `commit-date: {}`, with rust-src)",
            pin.release,
            pin.install_command(),
            pin.commit_date
        );
    }
    match find_installed(pin, rustup)? {
        Some(found) => Ok(found),
        None => bail!(
            "rustup installed {} but its `rustc -vV` does not show commit-date {}: fix \
             nightly-commit-date in [workspace.metadata.detector]",
            pin.release,
            pin.commit_date
        ),
    }
}

/// The real rustup on PATH.
pub struct SystemRustup;

fn run_captured(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!(
            "cannot start {:?} (is rustup installed? https://rustup.rs)",
            cmd.get_program()
        )
    })?;
    if !out.status.success() {
        bail!(
            "{:?} failed with {}: {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Rustup for SystemRustup {
    fn toolchains(&self) -> Result<Vec<String>> {
        let list = run_captured(Command::new("rustup").args(["toolchain", "list"]))?;
        Ok(list
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    fn rustc_vv(&self, toolchain: &str) -> Result<String> {
        run_captured(
            Command::new("rustup")
                .args(["run", toolchain, "rustc", "-vV"])
                // Inside a build script cargo sets RUSTC to the stable compiler; the toolchain's
                // own rustc is wanted here.
                .env_remove("RUSTC")
                .env_remove("RUSTC_WRAPPER")
                .env_remove("RUSTC_WORKSPACE_WRAPPER")
                .env_remove("RUSTUP_TOOLCHAIN"),
        )
    }

    fn install(&self, release: &str) -> Result<()> {
        eprintln!("+ rustup toolchain install {release} --profile minimal --component rust-src");
        let status = Command::new("rustup")
            .args(["toolchain", "install", release, "--profile", "minimal"])
            .args(["--component", "rust-src"])
            .status()
            .context("cannot start rustup (is it installed? https://rustup.rs)")?;
        if !status.success() {
            bail!("rustup toolchain install {release} failed with {status}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    const MANIFEST: &str = r#"
[workspace]
members = ["x"]

[workspace.metadata.detector]
# comment
nightly = "nightly-2026-05-20"   # rustup's name
nightly-commit-date = "2026-05-19"

[workspace.package]
nightly = "not this one"
"#;

    fn pin() -> Pin {
        Pin::from_manifest(MANIFEST).unwrap()
    }

    fn vv(release: &str, date: &str) -> String {
        format!(
            "rustc {release} (e50aa6fba {date})\nbinary: rustc\ncommit-hash: e50aa6fba4e6\ncommit-date: {date}\nhost: x86_64-unknown-linux-gnu\nrelease: {release}\nLLVM version: 22.1.4\n"
        )
    }

    /// Installed toolchains (name -> rustc -vV); `install` adds `installable` ones.
    struct Fake {
        installed: RefCell<BTreeMap<String, String>>,
        installable: BTreeMap<String, String>,
        installs: RefCell<Vec<String>>,
    }

    impl Fake {
        fn new(installed: &[(&str, String)]) -> Self {
            Fake {
                installed: RefCell::new(
                    installed
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.clone()))
                        .collect(),
                ),
                installable: BTreeMap::new(),
                installs: RefCell::new(Vec::new()),
            }
        }
    }

    impl Rustup for Fake {
        fn toolchains(&self) -> Result<Vec<String>> {
            Ok(self.installed.borrow().keys().cloned().collect())
        }
        fn rustc_vv(&self, toolchain: &str) -> Result<String> {
            self.installed
                .borrow()
                .get(toolchain)
                .cloned()
                .context("not installed")
        }
        fn install(&self, release: &str) -> Result<()> {
            self.installs.borrow_mut().push(release.to_string());
            let vv = self
                .installable
                .get(release)
                .context("could not download: network unreachable")?;
            self.installed
                .borrow_mut()
                .insert(format!("{release}-x86_64-unknown-linux-gnu"), vv.clone());
            Ok(())
        }
    }

    #[test]
    fn the_pin_is_read_from_the_detector_metadata_table_only() {
        assert_eq!(
            pin(),
            Pin {
                release: "nightly-2026-05-20".into(),
                commit_date: "2026-05-19".into()
            }
        );
        let err =
            Pin::from_manifest("[workspace]\nnightly = \"nightly-2026-05-20\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("[workspace.metadata.detector]"),
            "{err:#}"
        );
        let bad = "[workspace.metadata.detector]\nnightly = \"nightly\"\nnightly-commit-date = \"2026-05-19\"\n";
        assert!(
            Pin::from_manifest(bad).is_err(),
            "an undated nightly is no pin"
        );
    }

    #[test]
    fn the_repository_pins_a_dated_nightly() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let pin = Pin::from_workspace(&root).unwrap();
        assert!(pin.release.starts_with("nightly-20"), "{pin:?}");
    }

    #[test]
    fn an_installed_nightly_with_the_pinned_commit_date_counts_whatever_its_name() {
        let fake = Fake::new(&[
            (
                "stable-x86_64-unknown-linux-gnu",
                vv("1.95.0", "2026-04-14"),
            ),
            (
                "nightly-2026-01-01-x86_64-unknown-linux-gnu",
                vv("1.94.0-nightly", "2025-12-31"),
            ),
            (
                "nightly-x86_64-unknown-linux-gnu",
                vv("1.97.0-nightly", "2026-05-19"),
            ),
        ]);
        let got = resolve_or_install(&pin(), &fake).unwrap();
        assert_eq!(got.toolchain, "nightly-x86_64-unknown-linux-gnu");
        assert!(fake.installs.borrow().is_empty(), "nothing is downloaded");
    }

    #[test]
    fn the_dated_release_is_preferred_and_a_stable_with_that_date_is_not_a_nightly() {
        let fake = Fake::new(&[
            (
                "nightly-x86_64-unknown-linux-gnu",
                vv("1.97.0-nightly", "2026-05-19"),
            ),
            (
                "nightly-2026-05-20-x86_64-unknown-linux-gnu",
                vv("1.97.0-nightly", "2026-05-19"),
            ),
        ]);
        let got = find_installed(&pin(), &fake).unwrap().unwrap();
        assert_eq!(got.toolchain, "nightly-2026-05-20-x86_64-unknown-linux-gnu");
        assert!(!is_pinned(&pin(), &vv("1.97.0", "2026-05-19")));
    }

    #[test]
    fn without_a_match_rustup_installs_the_dated_release() {
        let mut fake = Fake::new(&[(
            "nightly-x86_64-unknown-linux-gnu",
            vv("1.98.0-nightly", "2026-06-30"),
        )]);
        fake.installable.insert(
            "nightly-2026-05-20".into(),
            vv("1.97.0-nightly", "2026-05-19"),
        );
        let got = resolve_or_install(&pin(), &fake).unwrap();
        assert_eq!(*fake.installs.borrow(), ["nightly-2026-05-20"]);
        assert_eq!(got.toolchain, "nightly-2026-05-20-x86_64-unknown-linux-gnu");
    }

    #[test]
    fn when_rustup_cannot_fetch_the_error_names_the_exact_install_command() {
        let fake = Fake::new(&[(
            "stable-x86_64-unknown-linux-gnu",
            vv("1.95.0", "2026-04-14"),
        )]);
        let err = format!("{:#}", resolve_or_install(&pin(), &fake).unwrap_err());
        assert!(
            err.contains(
                "rustup toolchain install nightly-2026-05-20 --profile minimal --component rust-src"
            ),
            "{err}"
        );
        assert!(err.contains("network unreachable"), "{err}");
        assert!(pin().install_hint().contains(&pin().install_command()));
    }
}
