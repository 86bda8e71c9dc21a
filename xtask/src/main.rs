//! Build, lint and test orchestration. Run through `./x`, which installs the
//! pinned toolchains and bpf-linker first and puts them on PATH.
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod fuzz;
mod matrix;
mod vm;

#[derive(Parser)]
#[command(about = "leakbpf's developer tasks (run them through ./x)")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build leakbpf (release, with its eBPF programs embedded).
    Build,
    /// Build, then run leakbpf on this host (default: `trace --duration 10s`). Needs root.
    Run {
        /// Arguments for leakbpf.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// rustfmt and clippy on the user crates and, separately, on the eBPF crate.
    Lint,
    /// Lint, unit tests, the privileged end-to-end tests, then the kernel matrix. Needs root.
    Test,
    /// Measure leakbpf's cost on loopback connections and on every syscall, its memory per
    /// socket, and what the Go request-site uprobes cost a Go program. Needs root.
    Bench {
        /// Only these parts: `churn`, `syscalls`, `memory`, `go` (default: all four), or
        /// `million` (a million tracked sockets; only when asked for).
        #[arg(long = "only", value_name = "PART")]
        only: Vec<String>,
        /// Measure this leakbpf binary instead of building the checkout (an
        /// older commit's build, for a before/after in one session).
        #[arg(long, value_name = "PATH")]
        leakbpf: Option<PathBuf>,
        /// Also run the paired kernel comparison: this build and the one at PATH traced at
        /// once, which is attached first alternating round by round, bpf_stats per program
        /// for each (`--only pair` runs only that).
        #[arg(long, value_name = "PATH")]
        against: Option<PathBuf>,
    },
    /// Run every fuzz target (decoder, socket table, .gopclntab) for a bounded time.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// The end-to-end tests (lifecycle, trace, io_uring) on the host kernel and, under qemu,
    /// on Debian's stock kernels, once per hook set; prints a (kernel, hook set) table. Needs
    /// root.
    Matrix {
        /// `host`, or a Debian kernel image package to boot (default: the host, then
        /// 5.10, 6.1, 6.12 and the newest Debian kernel; see xtask/src/vm.rs).
        #[arg(long = "kernel", value_name = "PACKAGE")]
        kernels: Vec<String>,
        /// Hook sets to run (default: fentry, kprobe and tracepoint).
        #[arg(long = "set", value_name = "SET")]
        sets: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    let root = workspace_root();
    match task {
        Task::Build => build(&root).map(|_| ()),
        Task::Run { args } => {
            let binary = build(&root)?;
            require_root("leakbpf")?;
            let args = if args.is_empty() {
                vec![
                    "trace".to_owned(),
                    "--duration".to_owned(),
                    "10s".to_owned(),
                ]
            } else {
                args
            };
            cmd(&binary, &root).args(args).run()
        }
        Task::Lint => lint(&root),
        Task::Matrix { kernels, sets } => {
            let binary = build(&root)?;
            require_root("the kernel matrix")?;
            run_matrix(&root, &binary, kernels, sets)
        }
        Task::Bench {
            only,
            leakbpf,
            against,
        } => {
            let against = against
                .map(|path| {
                    std::fs::canonicalize(&path)
                        .with_context(|| format!("--against {}", path.display()))
                })
                .transpose()?;
            let binary = match leakbpf {
                Some(path) => std::fs::canonicalize(&path)
                    .with_context(|| format!("--leakbpf {}", path.display()))?,
                None => build(&root)?,
            };
            require_root("the benchmarks")?;
            bench::bench(&root, &binary, &only, against.as_deref())
        }
        Task::Fuzz { seconds } => fuzz::fuzz(&root, seconds),
        Task::Test => {
            lint(&root)?;
            let binary = build(&root)?;
            require_root("the end-to-end tests")?;
            // Pure logic first: fast, any user (`cargo test -p leakbpf --lib`
            // passes without root, Go or kernel BTF).
            cargo(&root)
                .args([
                    "test",
                    "--release",
                    "-p",
                    "leakbpf",
                    "-p",
                    "leakbpf-common",
                    "-p",
                    "xtask",
                ])
                .run()?;
            // Unit tests that need this host: root, Go, kernel BTF, real
            // sockets (marked `#[ignore = "host: ..."]`).
            cargo(&root)
                .args([
                    "test",
                    "--release",
                    "-p",
                    "leakbpf",
                    "--lib",
                    "--",
                    "--ignored",
                ])
                .run()?;
            // They share kernel state and load programs: one at a time.
            cargo(&root)
                .args([
                    "test",
                    "--release",
                    "-p",
                    "leakbpf-tests",
                    "--",
                    "--test-threads=1",
                ])
                .env("LEAKBPF_BIN", &binary)
                .run()?;
            // A short, bounded fuzz pass over the kept corpora.
            fuzz::fuzz(&root, 10)?;
            // The same tests on other kernels and every hook set.
            run_matrix(&root, &binary, Vec::new(), Vec::new())
        }
    }
}

/// The matrix, with empty lists meaning every kernel and every set.
fn run_matrix(root: &Path, binary: &Path, kernels: Vec<String>, sets: Vec<String>) -> Result<()> {
    let kernels = if kernels.is_empty() {
        std::iter::once(matrix::HOST)
            .chain(vm::KERNEL_MATRIX.iter().copied())
            .map(str::to_owned)
            .collect()
    } else {
        kernels
    };
    let sets = if sets.is_empty() {
        matrix::SETS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        sets
    };
    matrix::matrix(root, binary, &kernels, &sets)
}

fn build(root: &Path) -> Result<PathBuf> {
    cargo(root)
        .args(["build", "--release", "-p", "leakbpf"])
        .run()?;
    Ok(root.join("target/release/leakbpf"))
}

fn lint(root: &Path) -> Result<()> {
    cargo(root).args(["fmt", "--all", "--check"]).run()?;
    cargo(root)
        .args([
            "clippy",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .run()?;
    // The eBPF crate: its own target and toolchain (leakbpf-ebpf/rust-toolchain.toml).
    let ebpf = root.join("leakbpf-ebpf");
    Command::new("cargo")
        .current_dir(&ebpf)
        .args([
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .run()
}

fn require_root(what: &str) -> Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        bail!("{what} needs root to load eBPF programs: run ./x as root (sudo ./x ...)");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn cargo(root: &Path) -> Command {
    cmd(Path::new("cargo"), root)
}

fn cmd(program: &Path, root: &Path) -> Command {
    let mut command = Command::new(program);
    command.current_dir(root);
    command
}

trait Run {
    fn run(&mut self) -> Result<()>;
}

impl Run for Command {
    fn run(&mut self) -> Result<()> {
        let status = self.status().with_context(|| format!("running {self:?}"))?;
        if !status.success() {
            bail!("{self:?} failed with {status}");
        }
        Ok(())
    }
}
