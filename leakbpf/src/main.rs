use std::process::ExitCode;

use clap::{Parser as _, error::ErrorKind};

fn main() -> ExitCode {
    tune_malloc();
    let cli = match leakbpf::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            return ExitCode::from(2);
        }
        Err(err) => {
            // One line, like every other error: clap's first line says what
            // is wrong; `--help` says the rest.
            let text = err.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("leakbpf: error: {first} (see --help)");
            return ExitCode::from(2);
        }
    };
    match leakbpf::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line: the error and its causes, outermost first.
            eprintln!("leakbpf: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc raises its mmap threshold each time a large block is freed, after
/// which blocks of that size come from the arenas and stay there when
/// freed. A report's snapshot and socket lists are such blocks, made and
/// dropped once per report (each evaluation, in the agent): a fixed
/// threshold gives them back to the kernel when they go, and two arenas are
/// enough for our few threads. Peak RSS of a report of 108,000 sockets:
/// 85-86 MiB without this, 77-80 with it (BENCHMARKS.md).
fn tune_malloc() {
    // SAFETY: mallopt only sets glibc's allocator parameters; called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
