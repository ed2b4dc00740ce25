//! `cargo xtask setup`: installs the build and test prerequisites, idempotently.
//!
//! - the pinned nightly (`[workspace.metadata.detector]` in the workspace Cargo.toml, resolved
//!   as detector/build.rs resolves it: an installed nightly with the pinned commit date counts,
//!   otherwise rustup installs the dated release) with its `rust-src` (aya-build compiles the
//!   eBPF crate with `-Z build-std=core`);
//! - `bpf-linker`, built against that nightly rustc's own libLLVM (Debian 12 has no LLVM of the
//!   version nightly uses). bpf-linker finds LLVM through `LLVM_PREFIX/lib/libLLVM.so`, so we
//!   make a prefix of symlinks into the toolchain; the linker's rpath points at that prefix, so
//!   it lives under CARGO_HOME, keyed by the nightly's rustc release, and must persist;
//! - the Debian packages the tests use.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use detector_testkit::apt;

use crate::nightly::{self, Pin, SystemRustup};
use crate::util::{output, run_cmd, workspace_root};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the build, the kernel tests, the lab and the benches need (nftables and
/// ethtool: `cargo xtask bench veth`; openssl: the CrowdSec TLS test's certificates and the
/// cluster's rediss:// test; redis-server: the cluster tests, each of which starts its own
/// private instance; the policy-rc.d guard keeps the packaged service stopped).
pub const APT_PACKAGES: &[&str] = &[
    "bpftool",
    "redis-server",
    "iproute2",
    "util-linux",
    "procps",
    "nftables",
    "ethtool",
    "openssl",
];

#[derive(clap::Args)]
pub struct Options {
    /// Skip the Debian packages (only the Rust side).
    #[arg(long)]
    no_apt: bool,
}

pub fn run(opts: Options) -> Result<()> {
    let pin = Pin::from_workspace(&workspace_root())?;
    let resolved = nightly::resolve_or_install(&pin, &SystemRustup)?;
    eprintln!(
        "setup: pinned nightly {} (commit-date {}): toolchain {}",
        pin.release, pin.commit_date, resolved.toolchain
    );
    let nightly = Nightly::from_resolved(resolved)?;
    ensure_rust_src(&nightly)?;
    ensure_bpf_linker(&nightly)?;
    if !opts.no_apt {
        let mut packages = APT_PACKAGES.to_vec();
        packages.extend(
            apt::lab_packages()
                .into_iter()
                .filter(|p| !APT_PACKAGES.contains(p)),
        );
        ensure_apt_packages(&packages)?;
        ensure_crowdsec()?;
    }
    eprintln!("setup: all prerequisites are in place");
    Ok(())
}

/// CrowdSec for the `crowdsec` tests, unpacked (never installed: its post-install step needs
/// the internet and leaves dpkg half-configured without it) under target/crowdsec.
fn ensure_crowdsec() -> Result<()> {
    let dir = detector_testkit::crowdsec::default_dir();
    let bins = detector_testkit::crowdsec::ensure(&dir)
        .context("fetching CrowdSec for the tests (apt-get download + dpkg-deb -x)")?;
    eprintln!("setup: CrowdSec unpacked: {}", bins.crowdsec.display());
    Ok(())
}

/// What the resolved pinned nightly's `rustc -vV` says about it.
pub struct Nightly {
    /// The rustup toolchain name, e.g. `nightly-2026-05-20-x86_64-unknown-linux-gnu`.
    pub toolchain: String,
    /// e.g. `1.97.0-nightly`
    pub release: String,
    /// e.g. `22` from `LLVM version: 22.1.4`
    pub llvm_major: String,
    pub sysroot: PathBuf,
}

impl Nightly {
    /// The pinned nightly, which must be installed (no download).
    pub fn installed() -> Result<Self> {
        let pin = Pin::from_workspace(&workspace_root())?;
        match nightly::find_installed(&pin, &SystemRustup)? {
            Some(resolved) => Self::from_resolved(resolved),
            None => bail!("{}", pin.install_hint()),
        }
    }

    fn from_resolved(resolved: nightly::Resolved) -> Result<Self> {
        let nightly::Resolved { toolchain, vv } = resolved;
        let field = |name: &str| {
            nightly::vv_field(&vv, name)
                .map(str::to_string)
                .with_context(|| format!("`rustc -vV` of {toolchain} printed no `{name}:` line"))
        };
        let release = field("release")?;
        let llvm = field("LLVM version")?;
        let llvm_major = llvm.split('.').next().unwrap_or_default().to_string();
        let sysroot = output(
            Command::new("rustup")
                .args(["run", &toolchain, "rustc", "--print", "sysroot"])
                .env_remove("RUSTC"),
        )?;
        Ok(Nightly {
            toolchain,
            release,
            llvm_major,
            sysroot: PathBuf::from(sysroot.trim()),
        })
    }

    fn has_rust_src(&self) -> bool {
        self.sysroot
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .exists()
    }

    /// The toolchain's own libLLVM, e.g. `lib/libLLVM.so.22.1-rust-1.97.0-nightly`.
    fn libllvm(&self) -> Result<PathBuf> {
        let lib = self.sysroot.join("lib");
        let suffix = format!("-rust-{}", self.release);
        let entries =
            std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with("libLLVM.so.") && name.ends_with(&suffix) {
                return Ok(lib.join(name));
            }
        }
        bail!("no libLLVM.so.*{suffix} in {}", lib.display())
    }

    /// Where the symlink prefix for bpf-linker lives (persistent, per nightly release).
    fn llvm_prefix(&self) -> PathBuf {
        cargo_home().join("detector-llvm").join(&self.release)
    }
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn ensure_rust_src(n: &Nightly) -> Result<()> {
    if n.has_rust_src() {
        eprintln!("setup: rust-src of {}: present", n.toolchain);
        return Ok(());
    }
    run_cmd(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        &n.toolchain,
    ]))
}

/// The stamp records which nightly the installed bpf-linker was built against.
fn stamp_path(n: &Nightly) -> PathBuf {
    n.llvm_prefix().join("bpf-linker.stamp")
}

fn stamp_text(n: &Nightly) -> String {
    format!(
        "bpf-linker {BPF_LINKER_VERSION} llvm-{} rustc {}\n",
        n.llvm_major, n.release
    )
}

fn bpf_linker_ok(n: &Nightly) -> bool {
    let stamped = std::fs::read_to_string(stamp_path(n)).is_ok_and(|s| s == stamp_text(n));
    let runs = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        });
    stamped && runs
}

fn ensure_bpf_linker(n: &Nightly) -> Result<()> {
    // The prefix always points at the resolved pinned toolchain's libLLVM, also when an earlier
    // setup made it for another toolchain of the same rustc release.
    let libllvm = n.libllvm()?;
    let prefix = n.llvm_prefix();
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let file_name = libllvm.file_name().expect("libLLVM path has a file name");
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        symlink_replace(&libllvm, &link)?;
    }
    if bpf_linker_ok(n) {
        eprintln!(
            "setup: bpf-linker {BPF_LINKER_VERSION} (llvm-{}): present",
            n.llvm_major
        );
        return Ok(());
    }
    run_cmd(
        Command::new("cargo")
            .arg(format!("+{}", n.toolchain))
            .args([
                "install",
                "bpf-linker",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{}", n.llvm_major))
            .env("LLVM_PREFIX", &prefix),
    )?;
    std::fs::write(stamp_path(n), stamp_text(n)).context("writing the bpf-linker stamp")?;
    Ok(())
}

/// Points `link` at `target` unless it already does; the new link is renamed into place, so a
/// bpf-linker starting meanwhile never finds the library missing.
fn symlink_replace(target: &Path, link: &Path) -> Result<()> {
    if std::fs::read_link(link).ok().as_deref() == Some(target) {
        return Ok(());
    }
    let tmp = link.with_extension("detector-tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", tmp.display())),
    }
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("linking {} -> {}", tmp.display(), target.display()))?;
    std::fs::rename(&tmp, link).with_context(|| format!("replacing {}", link.display()))
}

/// Installs the missing Debian packages with the lab's debconf answers and the policy-rc.d
/// guard (no package starts a daemon); a guard an interrupted run left behind goes first.
pub fn ensure_apt_packages(packages: &[&str]) -> Result<()> {
    apt::remove_stale_guard()?;
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !apt::dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages: present ({})", packages.join(" "));
        return Ok(());
    }
    apt::install(&missing, apt::LAB_DEBCONF_TXT, apt::Echo::Shown)
}

/// Checks (without installing) what building the eBPF program needs; used by every other task.
pub fn check_build_prereqs() -> Result<()> {
    let n = Nightly::installed()?;
    let mut missing = Vec::new();
    if !n.has_rust_src() {
        missing.push(format!("the rust-src component of {}", n.toolchain));
    }
    if !bpf_linker_ok(&n) {
        missing.push(format!(
            "bpf-linker {BPF_LINKER_VERSION} built for llvm-{}",
            n.llvm_major
        ));
    }
    if !missing.is_empty() {
        bail!(
            "missing: {}; run `cargo xtask setup` first",
            missing.join(", ")
        );
    }
    Ok(())
}
