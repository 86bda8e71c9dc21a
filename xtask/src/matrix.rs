//! `cargo xtask matrix`: the privileged lifecycle tests on several kernels
//! and hook sets. The host kernel runs the set it allows (and must refuse the
//! others with a clear line); Debian's stock kernels boot under qemu
//! (software emulation, see vm.rs) and run the tests once per hook set.
//! Prints a table of (kernel, hook set) results and fails if any failed.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::vm::{self, KernelSpec};

/// Hook sets the VMs must run: every one.
const SETS: [&str; 3] = ["fentry", "kprobe", "tracepoint"];

/// Waits inside the tests, under software emulation.
const GUEST_TEST_TIMEOUT_S: &str = "120";

struct Row {
    kernel: String,
    set: String,
    result: String,
    seconds: f64,
    ok: bool,
}

pub fn matrix(root: &Path, leakbpf: &Path, kernels: &[String]) -> Result<()> {
    let started = Instant::now();
    let tests = lifecycle_test_binary(root)?;
    let mut rows = Vec::new();

    // The host: its own set, with fixtures built here for the guests too.
    let host = uname();
    let begun = Instant::now();
    let output = Command::new(&tests)
        .arg("--test-threads=1")
        .env("LEAKBPF_BIN", leakbpf)
        .output()
        .context("running the lifecycle tests on the host")?;
    rows.push(Row {
        kernel: format!("{host} (host)"),
        set: "auto".to_owned(),
        result: test_summary(&String::from_utf8_lossy(&output.stdout)),
        seconds: begun.elapsed().as_secs_f64(),
        ok: output.status.success(),
    });
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    }
    // The sets the host lacks must be refused in one line naming the gap.
    for set in SETS {
        let output = Command::new(leakbpf)
            .args(["events", "--duration", "1s", "--hooks", set])
            .output()
            .context("running leakbpf on the host")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            continue; // available here: covered by the `auto` row
        }
        let first = stderr.lines().next().unwrap_or_default().to_owned();
        rows.push(Row {
            kernel: format!("{host} (host)"),
            set: set.to_owned(),
            ok: stderr.lines().count() == 1 && first.contains(&format!("the {set} hook set needs")),
            result: format!("refused: {first}"),
            seconds: 0.0,
        });
    }

    for package in kernels {
        let kernel = KernelSpec::package(package)?;
        let rw_dir = root.join("target/matrix").join(kernel.release());
        let _ = std::fs::remove_dir_all(&rw_dir);
        std::fs::create_dir_all(&rw_dir)?;
        let script = guest_script(root, leakbpf, &tests, &rw_dir);
        // Boot once, run every set: the boot is the slow part.
        let output = vm::run_in_vm(&kernel, &script, &rw_dir, Duration::from_secs(40 * 60))?;
        let results = std::fs::read_to_string(rw_dir.join("results")).unwrap_or_default();
        for set in SETS {
            let line = results
                .lines()
                .find(|l| l.split_whitespace().next() == Some(set));
            let log =
                std::fs::read_to_string(rw_dir.join(format!("{set}.log"))).unwrap_or_default();
            let (ok, seconds) = match line.map(|l| l.split_whitespace().collect::<Vec<_>>()) {
                Some(fields) if fields.len() == 3 => {
                    (fields[1] == "0", fields[2].parse().unwrap_or(0.0))
                }
                _ => (false, 0.0),
            };
            if !ok {
                eprintln!("--- {} / {set} ---\n{log}", kernel.release());
            }
            rows.push(Row {
                kernel: format!("{} (qemu)", kernel.release()),
                set: set.to_owned(),
                result: if line.is_some() {
                    test_summary(&log)
                } else {
                    "did not run".to_owned()
                },
                seconds,
                ok,
            });
        }
        if !output.success() {
            eprintln!("{}", output.stdout);
            if let Err(err) = output.clone().into_result() {
                eprintln!("{err:#}");
            }
        }
        let boot = output.boot.map_or(0.0, |b| b.as_secs_f64());
        println!(
            "{}: boot {boot:.0} s, whole VM run {:.0} s",
            kernel.release(),
            output.wall.as_secs_f64()
        );
    }

    let mut table = String::from("\n| kernel | hook set | result | seconds |\n|---|---|---|---|\n");
    for row in &rows {
        let _ = writeln!(
            table,
            "| {} | {} | {}{} | {:.0} |",
            row.kernel,
            row.set,
            if row.ok { "" } else { "FAILED: " },
            row.result,
            row.seconds
        );
    }
    println!("{table}");
    println!("matrix wall time: {:.0} s", started.elapsed().as_secs_f64());
    let failed = rows.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        bail!("{failed} of {} matrix rows failed", rows.len());
    }
    println!("{} passed, 0 failed", rows.len());
    Ok(())
}

/// The lifecycle test binary, built (not run) by cargo.
fn lifecycle_test_binary(root: &Path) -> Result<PathBuf> {
    let output = Command::new("cargo")
        .current_dir(root)
        .args([
            "test",
            "--release",
            "-p",
            "leakbpf-tests",
            "--test",
            "lifecycle",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("building the lifecycle tests")?;
    if !output.status.success() {
        bail!(
            "building the lifecycle tests failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("\"executable\"") && line.contains("\"name\":\"lifecycle\""))
        .find_map(|line| {
            let start = line.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = start + line[start..].find('"')?;
            Some(PathBuf::from(&line[start..end]))
        })
        .context("cargo named no lifecycle test executable")
}

/// Runs the tests once per hook set; results go to RW_DIR/results as
/// `SET EXIT SECONDS` lines, logs to RW_DIR/SET.log.
fn guest_script(root: &Path, leakbpf: &Path, tests: &Path, rw_dir: &Path) -> String {
    let mut script = format!("set -u\ncd {}\n", root.display());
    for set in SETS {
        let _ = writeln!(
            script,
            "start=$(date +%s)\n\
             HOME=/tmp LEAKBPF_BIN={leakbpf} LEAKBPF_HOOKS={set} LEAKBPF_PREBUILT_FIXTURES=1 \
             LEAKBPF_TEST_TIMEOUT_S={GUEST_TEST_TIMEOUT_S} {tests} --test-threads=1 \
             > {rw}/{set}.log 2>&1\n\
             echo \"{set} $? $(( $(date +%s) - start ))\" >> {rw}/results",
            leakbpf = leakbpf.display(),
            tests = tests.display(),
            rw = rw_dir.display(),
        );
    }
    script
}

/// `test result: ok. 4 passed; 0 failed; ...` -> `4 passed, 0 failed`.
fn test_summary(output: &str) -> String {
    output
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("test result: "))
        .map(|rest| {
            rest.split(';')
                .take(2)
                .map(|s| {
                    s.trim()
                        .trim_start_matches("ok. ")
                        .trim_start_matches("FAILED. ")
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "no test result".to_owned())
}

fn uname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarizes_cargo_test_output() {
        let out = "running 4 tests\n\ntest result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.24s\n";
        assert_eq!(test_summary(out), "4 passed, 0 failed");
        let out = "test result: FAILED. 3 passed; 1 failed; 0 ignored";
        assert_eq!(test_summary(out), "3 passed, 1 failed");
        assert_eq!(test_summary("boom"), "no test result");
    }
}
