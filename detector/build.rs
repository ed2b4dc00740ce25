//! Builds the XDP program (detector-ebpf) for the BPF target with the nightly toolchain and
//! bpf-linker, and leaves the object in OUT_DIR where `enforce::load` embeds it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "detector-ebpf")
        .ok_or_else(|| anyhow!("detector-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("detector-ebpf manifest has no parent directory"))?;
    let package = aya_build::Package {
        name: name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building the eBPF program failed; `cargo xtask setup` installs bpf-linker and the nightly rust-src it needs")?;
    // The bench object (detector-ebpf's second bin) is not embedded: only its path is passed
    // on, for `cargo xtask bench xdp`, so the shipped binary carries the production object alone.
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
    println!("cargo:rustc-env=DETECTOR_BENCH_OBJECT={out_dir}/detector-bench");
    Ok(())
}
