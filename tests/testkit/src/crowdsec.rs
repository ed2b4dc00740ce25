//! CrowdSec for the tests, unpacked from Debian's package without installing it.
//!
//! `apt-get install crowdsec` is not an option: the package's post-install step registers with
//! CrowdSec's online Central API, fails without network, and leaves dpkg half-configured. The
//! tests only need the two binaries, so the `.deb` is downloaded (`apt-get download`) and
//! unpacked (`dpkg-deb -x`) into a private directory; `crowdsec -c CONFIG -no-cs` then runs the
//! Local API alone from a private configuration.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The Debian package.
pub const PACKAGE: &str = "crowdsec";

/// `DETECTOR_CROWDSEC_DIR`, else `<workspace>/target/crowdsec`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("DETECTOR_CROWDSEC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/crowdsec"))
}

/// The unpacked binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub crowdsec: PathBuf,
    pub cscli: PathBuf,
}

impl Binaries {
    fn under(dir: &Path) -> Binaries {
        let bin = dir.join("root/usr/bin");
        Binaries {
            crowdsec: bin.join("crowdsec"),
            cscli: bin.join("cscli"),
        }
    }

    fn exist(&self) -> bool {
        self.crowdsec.is_file() && self.cscli.is_file()
    }
}

/// The binaries under `dir`, downloading and unpacking the package first if they are missing.
/// Safe to call from tests running in parallel: each works in its own temporary directory and
/// the first finished rename wins.
pub fn ensure(dir: &Path) -> Result<Binaries> {
    let bins = Binaries::under(dir);
    if bins.exist() {
        return Ok(bins);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let work = dir.join(format!(
        ".fetch-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = fetch_into(&work);
    if result.is_ok() && !bins.exist() {
        let _ = std::fs::remove_dir_all(dir.join("root"));
        // Another caller may have won meanwhile; either copy is the same package.
        let _ = std::fs::rename(work.join("root"), dir.join("root"));
    }
    let _ = std::fs::remove_dir_all(&work);
    result?;
    if !bins.exist() {
        bail!(
            "{} unpacked, but {} is missing",
            PACKAGE,
            bins.crowdsec.display()
        );
    }
    Ok(bins)
}

fn fetch_into(work: &Path) -> Result<()> {
    let download = || {
        Command::new("apt-get")
            .args(["download", PACKAGE])
            .current_dir(work)
            .output()
            .context("running apt-get download")
    };
    let mut out = download()?;
    if !out.status.success() {
        // A fresh machine has no package lists yet.
        let update = Command::new("apt-get")
            .arg("update")
            .status()
            .context("running apt-get update")?;
        if !update.success() {
            bail!("apt-get update failed");
        }
        out = download()?;
    }
    if !out.status.success() {
        bail!(
            "apt-get download {PACKAGE} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let deb = std::fs::read_dir(work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(work.join("root"))
        .status()
        .context("running dpkg-deb -x")?;
    if !st.success() {
        bail!("dpkg-deb -x {} failed", deb.display());
    }
    Ok(())
}
