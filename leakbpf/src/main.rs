use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = leakbpf::cli::Cli::parse();
    match leakbpf::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line: the error and its causes, outermost first.
            eprintln!("leakbpf: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
