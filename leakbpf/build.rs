//! Builds the eBPF programs with the pinned nightly (see `./x`) and leaves the
//! object in OUT_DIR, where `include_bytes_aligned!` embeds it.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let workspace = workspace_root()?;
    let root_dir = format!("{workspace}/leakbpf-ebpf");
    let toolchain_file = format!("{root_dir}/rust-toolchain.toml");
    println!("cargo::rerun-if-changed={toolchain_file}");
    let toolchain = pinned_channel(&toolchain_file)?;
    aya_build::build_ebpf(
        [Package {
            name: "leakbpf-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF programs (leakbpf-ebpf) failed")
}

/// The `channel = "..."` line of a rust-toolchain.toml.
fn pinned_channel(path: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .next()
        .ok_or_else(|| anyhow!("{path} names no channel"))
}

fn workspace_root() -> anyhow::Result<String> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let parent = std::path::Path::new(&dir)
        .parent()
        .context("leakbpf has no parent directory")?;
    Ok(parent.display().to_string())
}
