//! Builds the XDP program (detector-ebpf) for the BPF target with the pinned nightly toolchain
//! and bpf-linker, and leaves the object in OUT_DIR where `enforce::load` embeds it.
use std::path::Path;

use anyhow::{Context as _, anyhow};

#[path = "build/nightly.rs"]
#[allow(dead_code)] // shared with xtask, which uses more of it
mod nightly;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata {
        packages,
        workspace_root,
        ..
    } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    // The pin lives in the workspace manifest: a new pin must rebuild the program.
    println!("cargo:rerun-if-changed={workspace_root}/Cargo.toml");
    println!("cargo:rerun-if-changed=build/nightly.rs");
    let pin = nightly::Pin::from_workspace(Path::new(workspace_root.as_str()))?;
    let toolchain = nightly::find_installed(&pin, &nightly::SystemRustup)?
        .ok_or_else(|| anyhow!(pin.install_hint()))?
        .toolchain;
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
    // aya-build runs `rustup run <toolchain> cargo build ...` for the BPF target.
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain)).with_context(|| {
        format!(
            "building the eBPF program with {toolchain} failed; `cargo xtask setup` installs bpf-linker and the rust-src it needs"
        )
    })?;
    // The bench object (detector-ebpf's second bin) is not embedded: only its path is passed
    // on, for `cargo xtask bench xdp`, so the shipped binary carries the production object alone.
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
    println!("cargo:rustc-env=DETECTOR_BENCH_OBJECT={out_dir}/detector-bench");
    Ok(())
}
