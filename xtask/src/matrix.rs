//! `cargo xtask matrix`: the privileged end-to-end tests on several kernels
//! and every hook set. The host runs them directly; Debian's stock kernels
//! boot under qemu (software emulation, see vm.rs), once per kernel, and run
//! every set inside that boot. Each (kernel, set) cell first asks leakbpf to
//! trace with that set: a set the kernel cannot run must be refused in one
//! line naming what is missing, and is shown as such. A set that runs gets
//! the lifecycle tests, a representative subset of the `trace` report
//! tests, and the io_uring accept test. Prints a table and fails if any
//! cell failed.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::vm::{self, KernelSpec};

/// Every hook set, in leakbpf's order of preference.
pub const SETS: [&str; 3] = ["fentry", "kprobe", "tracepoint"];

/// The `--kernel` value for the machine itself.
pub const HOST: &str = "host";

/// Where a script runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Host,
    /// A VM under software emulation: slower, and fewer tests.
    Guest,
}

impl Place {
    /// Seconds the tests wait for anything.
    fn test_timeout_s(self) -> u32 {
        match self {
            Place::Host => 20,
            Place::Guest => 120,
        }
    }
}

/// The `trace` report tests each cell runs (tests/tests/trace.rs): one
/// trace with every kind of group (accepts and connects with stacks, IPv6,
/// a Go client in CLOSE_WAIT, sockets open before tracing), and an accept
/// already waiting when tracing starts (missed by fexit/kretprobe, and
/// reported). The single-purpose tests run on the host (`./x test`); under
/// emulation every leakbpf start costs seconds.
const TRACE_TESTS: [&str; 2] = [
    "report_on_every_kind_of_group",
    "accept_waiting_before_tracing",
];

/// The lifecycle tests each guest cell runs: all but the full-ring test,
/// whose loss accounting is the ring buffer's, the same for every set
/// (it runs on the host).
const GUEST_LIFECYCLE_TESTS: [&str; 3] = [
    "counts_opens_and_closes_per_process",
    "go_connect_stacks_show_the_dialer",
    "ipv6_sockets_are_traced",
];

/// VMs booted at once. The tests inside run one at a time and mostly keep
/// one emulated CPU busy, so on a 2-core machine three guests share the
/// cores with little loss each, and the short 5.10 run fills a lane.
const VM_LANES: usize = 3;

/// The io_uring accept test (tests/tests/trace.rs): attributed where the
/// set sees io_uring accepts, reported as a warning where it does not.
const IO_URING_TEST: &str = "io_uring_accepts";

/// What each cell runs, in order.
const PARTS: [Part; 3] = [Part::Lifecycle, Part::Trace, Part::IoUring];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Lifecycle,
    Trace,
    IoUring,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Lifecycle => "lifecycle",
            Part::Trace => "trace",
            Part::IoUring => "io_uring",
        }
    }

    /// Test names to run from its binary (empty: all of them).
    fn filters(self, place: Place) -> &'static [&'static str] {
        match self {
            Part::Lifecycle if place == Place::Guest => &GUEST_LIFECYCLE_TESTS,
            Part::Lifecycle => &[],
            Part::Trace => &TRACE_TESTS,
            Part::IoUring => &[IO_URING_TEST],
        }
    }
}

/// The built test executables.
pub struct TestBinaries {
    lifecycle: PathBuf,
    trace: PathBuf,
}

impl TestBinaries {
    fn for_part(&self, part: Part) -> &Path {
        match part {
            Part::Lifecycle => &self.lifecycle,
            Part::Trace | Part::IoUring => &self.trace,
        }
    }
}

/// One (kernel, hook set) cell.
#[derive(Debug, PartialEq)]
struct Cell {
    kernel: String,
    set: String,
    outcome: CellOutcome,
    seconds: f64,
}

#[derive(Debug, PartialEq)]
enum CellOutcome {
    /// leakbpf refused the set: its one line of stderr, and whether that
    /// line has the expected shape.
    Refused { line: String, well_formed: bool },
    /// Each part's `N passed, M failed` summary and whether it passed.
    Ran(Vec<(Part, String, bool)>),
    /// The cell left no result (the VM died first).
    Missing,
}

impl Cell {
    fn ok(&self) -> bool {
        match &self.outcome {
            CellOutcome::Refused { well_formed, .. } => *well_formed,
            CellOutcome::Ran(parts) => {
                parts.len() == PARTS.len() && parts.iter().all(|(_, _, ok)| *ok)
            }
            CellOutcome::Missing => false,
        }
    }
}

/// Runs the matrix on `kernels` (`host` or Debian kernel image packages)
/// and `sets`, prints the table, and fails if any cell failed.
pub fn matrix(root: &Path, leakbpf: &Path, kernels: &[String], sets: &[String]) -> Result<()> {
    let started = Instant::now();
    for set in sets {
        if !SETS.contains(&set.as_str()) {
            bail!(
                "unknown hook set {set:?}: expected one of {}",
                SETS.join(", ")
            );
        }
    }
    let tests = build_tests(root)?;
    build_fixtures(&tests, leakbpf)?;
    let mut cells = Vec::new();
    if kernels.iter().any(|k| k == HOST) {
        cells.extend(host_cells(root, leakbpf, &tests, sets)?);
    }
    let guests = kernels
        .iter()
        .filter(|k| *k != HOST)
        .map(|k| KernelSpec::package(k))
        .collect::<Result<Vec<_>>>()?;
    for guest in in_lanes(&guests, |kernel| {
        vm_cells(root, leakbpf, &tests, kernel, sets)
    })? {
        cells.extend(guest);
    }
    println!("{}", render_table(&cells));
    println!("matrix wall time: {:.0} s", started.elapsed().as_secs_f64());
    let failed = cells.iter().filter(|c| !c.ok()).count();
    if failed > 0 {
        bail!("{failed} of {} matrix cells failed", cells.len());
    }
    println!("{} cells passed, 0 failed", cells.len());
    Ok(())
}

/// Runs `run` on every kernel, [`VM_LANES`] at a time; results in order.
fn in_lanes(
    kernels: &[KernelSpec],
    run: impl Fn(&KernelSpec) -> Result<Vec<Cell>> + Sync,
) -> Result<Vec<Vec<Cell>>> {
    // Downloads and tools first, one at a time: apt locks its lists.
    for kernel in kernels {
        vm::ensure_kernel(kernel)?;
    }
    vm::ensure_vng()?;
    vm::ensure_busybox()?;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Vec<Cell>>>>> =
        Mutex::new(kernels.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..VM_LANES.min(kernels.len()) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(kernel) = kernels.get(index) else {
                        break;
                    };
                    let result = run(kernel);
                    results
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)[index] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        .map(|result| result.expect("every kernel ran"))
        .collect()
}

/// The host: the same script, run directly.
fn host_cells(
    root: &Path,
    leakbpf: &Path,
    tests: &TestBinaries,
    sets: &[String],
) -> Result<Vec<Cell>> {
    let out_dir = fresh_dir(&root.join("target/matrix/host"))?;
    let script = cell_script(root, leakbpf, tests, &out_dir, sets, Place::Host);
    let status = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(root)
        .status()
        .context("running the matrix script on the host")?;
    if !status.success() {
        bail!("the matrix script failed on the host: {status}");
    }
    let kernel = format!("{} (host)", os_release());
    Ok(read_cells(&kernel, sets, &out_dir))
}

/// One boot of `kernel` runs every set.
fn vm_cells(
    root: &Path,
    leakbpf: &Path,
    tests: &TestBinaries,
    kernel: &KernelSpec,
    sets: &[String],
) -> Result<Vec<Cell>> {
    let out_dir = fresh_dir(&root.join("target/matrix").join(kernel.release()))?;
    let script = cell_script(root, leakbpf, tests, &out_dir, sets, Place::Guest);
    let output = vm::run_in_vm(kernel, &script, &out_dir, Duration::from_mins(30))?;
    let cells = read_cells(&format!("{} (qemu)", kernel.release()), sets, &out_dir);
    // The whole console, for a guest that died (the error shows an excerpt).
    let _ = std::fs::write(out_dir.join("guest.stderr"), &output.stderr);
    if !output.success() || cells.iter().any(|c| !c.ok()) {
        eprintln!("{}", output.stdout);
        if let Err(err) = output.clone().into_result() {
            eprintln!("{err:#}");
        }
    }
    println!(
        "{}: boot {:.0} s, whole VM run {:.0} s",
        kernel.release(),
        output.boot.map_or(0.0, |b| b.as_secs_f64()),
        output.wall.as_secs_f64()
    );
    Ok(cells)
}

fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// A bash script that runs every set in `sets` and records, in OUT_DIR:
/// `results` lines `SET PART EXIT SECONDS` (PART `refused`, `lifecycle`,
/// `trace`, `io_uring`), `SET.refused` (leakbpf's stderr when it refuses
/// the set) and `SET.PART.log` (the test output).
fn cell_script(
    root: &Path,
    leakbpf: &Path,
    tests: &TestBinaries,
    out_dir: &Path,
    sets: &[String],
    place: Place,
) -> String {
    let out = out_dir.display();
    let mut script = format!(
        "set -u\ncd {root}\n\
         export HOME=/tmp LEAKBPF_BIN={leakbpf} LEAKBPF_PREBUILT_FIXTURES=1 \
         LEAKBPF_TEST_TIMEOUT_S={timeout_s}\n\
         elapsed() {{ echo $(( $(date +%s%N) / 1000000 - start_ms )); }}\n",
        root = root.display(),
        leakbpf = leakbpf.display(),
        timeout_s = place.test_timeout_s(),
    );
    for set in sets {
        let _ = writeln!(
            script,
            "start_ms=$(( $(date +%s%N) / 1000000 ))\n\
             if ! \"$LEAKBPF_BIN\" events --duration 1s --hooks {set} >/dev/null 2>{out}/{set}.refused; then\n\
             echo \"{set} refused 1 $(elapsed)\" >> {out}/results\n\
             else"
        );
        for part in PARTS {
            let _ = writeln!(
                script,
                "LEAKBPF_HOOKS={set} {binary} --test-threads=1 {filters} > {out}/{set}.{name}.log 2>&1\n\
                 echo \"{set} {name} $? $(elapsed)\" >> {out}/results",
                binary = tests.for_part(part).display(),
                filters = part.filters(place).join(" "),
                name = part.name(),
            );
        }
        script.push_str("fi\n");
    }
    script
}

/// The cells of `kernel` from what [`cell_script`] left in `out_dir`.
fn read_cells(kernel: &str, sets: &[String], out_dir: &Path) -> Vec<Cell> {
    let results = std::fs::read_to_string(out_dir.join("results")).unwrap_or_default();
    let read = |name: String| std::fs::read_to_string(out_dir.join(name)).unwrap_or_default();
    sets.iter()
        .map(|set| {
            let cell = parse_cell(kernel, set, &results, |part| read(format!("{set}.{part}")));
            if !cell.ok() {
                for part in ["refused", "lifecycle.log", "trace.log", "io_uring.log"] {
                    let text = read(format!("{set}.{part}"));
                    if !text.is_empty() {
                        eprintln!("--- {kernel} / {set} / {part} ---\n{text}");
                    }
                }
            }
            cell
        })
        .collect()
}

/// One cell from the `results` lines and its files (`refused`,
/// `PART.log`), read through `file`.
fn parse_cell(kernel: &str, set: &str, results: &str, file: impl Fn(&str) -> String) -> Cell {
    let mut seconds = 0.0;
    let mut refused = None;
    let mut parts = Vec::new();
    for fields in results
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
    {
        let [line_set, part, exit, millis] = fields[..] else {
            continue;
        };
        if line_set != set {
            continue;
        }
        seconds = millis.parse::<f64>().unwrap_or(0.0) / 1000.0;
        if part == "refused" {
            refused = Some(file("refused"));
        } else if let Some(part) = PARTS.into_iter().find(|p| p.name() == part) {
            let log = file(&format!("{}.log", part.name()));
            parts.push((part, test_summary(&log), exit == "0"));
        }
    }
    let outcome = match refused {
        Some(stderr) => refusal(set, &stderr),
        None if parts.is_empty() => CellOutcome::Missing,
        None => CellOutcome::Ran(parts),
    };
    Cell {
        kernel: kernel.to_owned(),
        set: set.to_owned(),
        outcome,
        seconds,
    }
}

/// A refusal must be exactly one line naming what the set needs.
fn refusal(set: &str, stderr: &str) -> CellOutcome {
    let line = stderr.lines().next().unwrap_or_default().trim().to_owned();
    let well_formed = stderr.lines().count() == 1
        && line.starts_with("leakbpf: error: kernel ")
        && line.contains(&format!("the {set} hook set needs "));
    CellOutcome::Refused { line, well_formed }
}

fn render_table(cells: &[Cell]) -> String {
    let mut table = String::from(
        "\n| kernel | hook set | lifecycle | trace | io_uring | seconds |\n|---|---|---|---|---|---|\n",
    );
    for cell in cells {
        let columns = match &cell.outcome {
            CellOutcome::Refused { line, well_formed } => {
                let mark = if *well_formed { "" } else { "FAILED: " };
                let line = line.trim_start_matches("leakbpf: error: ");
                format!("{mark}refused: {line} | | ")
            }
            CellOutcome::Missing => "FAILED: did not run | | ".to_owned(),
            CellOutcome::Ran(parts) => PARTS
                .iter()
                .map(
                    |want| match parts.iter().find(|(part, _, _)| part == want) {
                        Some((_, summary, true)) => summary.clone(),
                        Some((_, summary, false)) => format!("FAILED: {summary}"),
                        None => "FAILED: did not run".to_owned(),
                    },
                )
                .collect::<Vec<_>>()
                .join(" | "),
        };
        let _ = writeln!(
            table,
            "| {} | {} | {columns} | {:.0} |",
            cell.kernel, cell.set, cell.seconds
        );
    }
    table
}

/// Builds (does not run) the lifecycle and trace test executables.
fn build_tests(root: &Path) -> Result<TestBinaries> {
    let output = Command::new("cargo")
        .current_dir(root)
        .args([
            "test",
            "--release",
            "-p",
            "leakbpf-tests",
            "--test",
            "lifecycle",
        ])
        .args(["--test", "trace", "--no-run", "--message-format=json"])
        .output()
        .context("building the end-to-end tests")?;
    if !output.status.success() {
        bail!(
            "building the end-to-end tests failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(TestBinaries {
        lifecycle: test_executable(&stdout, "lifecycle")?,
        trace: test_executable(&stdout, "trace")?,
    })
}

/// The executable cargo's JSON messages name for test target `name`.
fn test_executable(messages: &str, name: &str) -> Result<PathBuf> {
    let target = format!("\"name\":\"{name}\"");
    messages
        .lines()
        .filter(|line| line.contains("\"executable\"") && line.contains(&target))
        .find_map(|line| {
            let start = line.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = start + line[start..].find('"')?;
            Some(PathBuf::from(&line[start..end]))
        })
        .with_context(|| format!("cargo named no {name} test executable"))
}

/// The guests see the tree read-only: every fixture is built here first
/// (the tests' harness builds them; `fixtures_are_built` asks for all).
fn build_fixtures(tests: &TestBinaries, leakbpf: &Path) -> Result<()> {
    let output = Command::new(&tests.trace)
        .args(["--exact", "fixtures_are_built"])
        .env("LEAKBPF_BIN", leakbpf)
        .output()
        .context("building the test fixtures")?;
    if !output.status.success() || !String::from_utf8_lossy(&output.stdout).contains("1 passed") {
        bail!(
            "building the test fixtures failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// `test result: ok. 4 passed; 0 failed; ...` -> `4 passed, 0 failed`.
fn test_summary(output: &str) -> String {
    output
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("test result: "))
        .map_or_else(
            || "no test result".to_owned(),
            |rest| {
                rest.split(';')
                    .take(2)
                    .map(|s| {
                        s.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        )
}

fn os_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "host".to_owned(), |s| s.trim().to_owned())
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

    fn files(name: &str) -> String {
        match name {
            "lifecycle.log" => "test result: ok. 4 passed; 0 failed; 0 ignored".to_owned(),
            "trace.log" => "test result: ok. 5 passed; 0 failed; 0 ignored".to_owned(),
            "io_uring.log" => "test result: FAILED. 0 passed; 1 failed; 0 ignored".to_owned(),
            "refused" => "leakbpf: error: kernel 5.10.0-46-amd64: the kprobe hook set needs \
                          bpf_get_socket_cookie in tracing programs (Linux 5.12+)\n"
                .to_owned(),
            _ => String::new(),
        }
    }

    #[test]
    fn reads_a_cell_that_ran() {
        let results = "fentry lifecycle 0 20100\nfentry trace 0 45000\nfentry io_uring 1 51000\n\
                       kprobe refused 1 3000\n";
        let cell = parse_cell("6.1 (qemu)", "fentry", results, files);
        assert_eq!(cell.seconds, 51.0);
        assert_eq!(
            cell.outcome,
            CellOutcome::Ran(vec![
                (Part::Lifecycle, "4 passed, 0 failed".to_owned(), true),
                (Part::Trace, "5 passed, 0 failed".to_owned(), true),
                (Part::IoUring, "0 passed, 1 failed".to_owned(), false),
            ])
        );
        assert!(!cell.ok());
        let table = render_table(&[cell]);
        assert!(
            table.contains("| 6.1 (qemu) | fentry | 4 passed, 0 failed | 5 passed, 0 failed | FAILED: 0 passed, 1 failed | 51 |"),
            "{table}"
        );
    }

    #[test]
    fn a_refusal_is_one_line_naming_the_set() {
        let results = "kprobe refused 1 3000\n";
        let cell = parse_cell("5.10 (qemu)", "kprobe", results, files);
        assert!(cell.ok(), "{cell:?}");
        let table = render_table(&[cell]);
        assert!(
            table.contains("| kprobe | refused: kernel 5.10.0-46-amd64: the kprobe hook set needs bpf_get_socket_cookie"),
            "{table}"
        );
        // Two lines, or a line that does not name the set, is a failure.
        let two = refusal(
            "kprobe",
            "leakbpf: error: kernel 5.10: the kprobe hook set needs x\nmore\n",
        );
        assert!(matches!(
            two,
            CellOutcome::Refused {
                well_formed: false,
                ..
            }
        ));
        let other = refusal(
            "kprobe",
            "leakbpf: error: kernel 5.10: the fentry hook set needs x\n",
        );
        assert!(matches!(
            other,
            CellOutcome::Refused {
                well_formed: false,
                ..
            }
        ));
    }

    #[test]
    fn a_cell_without_results_failed() {
        let cell = parse_cell("7.3 (qemu)", "tracepoint", "fentry trace 0 1000\n", files);
        assert_eq!(cell.outcome, CellOutcome::Missing);
        assert!(!cell.ok());
    }
}
