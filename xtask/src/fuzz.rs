//! `./x fuzz`: each libFuzzer target in `fuzz/` for a bounded time, on the
//! eBPF nightly (cargo-fuzz needs a nightly; `./x` installs cargo-fuzz).
//! New inputs go to a scratch directory; the corpora kept in the repository
//! (`fuzz/corpus/TARGET`) are read, never grown by a run.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// Every target, as named in fuzz/Cargo.toml.
pub const TARGETS: [&str; 3] = ["decode", "socket_table", "gopclntab"];

/// Runs every target for `seconds`; fails on the first crash.
pub fn fuzz(root: &Path, seconds: u32) -> Result<()> {
    let nightly = nightly(root)?;
    for target in TARGETS {
        let scratch = std::env::temp_dir().join(format!("leakbpf-fuzz-{target}"));
        std::fs::create_dir_all(&scratch)?;
        let corpus = root.join("fuzz/corpus").join(target);
        let output = Command::new("cargo")
            .current_dir(root.join("fuzz"))
            .arg(format!("+{nightly}"))
            .args(["fuzz", "run", target, "-O"])
            .arg(&scratch)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-max_len=4096")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .output()
            .with_context(|| {
                format!(
                    "running cargo fuzz for {target} (is cargo-fuzz installed? ./x installs it)"
                )
            })?;
        let _ = std::fs::remove_dir_all(&scratch);
        let log = String::from_utf8_lossy(&output.stderr);
        let done = log
            .lines()
            .rev()
            .find(|line| line.contains("DONE") || line.starts_with("Done "))
            .unwrap_or("(no summary)");
        if !output.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            bail!(
                "fuzz target {target} failed ({}):\n{}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let kept = std::fs::read_dir(&corpus).map_or(0, Iterator::count);
        println!("fuzz {target}: {done} (kept corpus: {kept} inputs)");
    }
    Ok(())
}

/// The nightly of leakbpf-ebpf/rust-toolchain.toml.
fn nightly(root: &Path) -> Result<String> {
    let file = root.join("leakbpf-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("{} names no channel", file.display()))
}
