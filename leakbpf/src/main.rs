use std::process::ExitCode;

use clap::{Parser as _, error::ErrorKind};

fn main() -> ExitCode {
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
