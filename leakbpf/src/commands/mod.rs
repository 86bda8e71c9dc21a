//! One module per subcommand; `run` dispatches. Errors bubble up to main,
//! which prints them once, on one line.
mod agent;
mod check;
mod events;
mod session;
mod trace;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Events(args) => events::run(args),
        Command::Trace(args) => trace::run(&args),
        Command::Check(args) => check::run(&args),
        Command::Agent(args) => agent::run(&args),
    }
}
