//! Command-line arguments. Parsing lives here; each command's behaviour lives
//! in `commands/`.
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::hooks::HookChoice;

#[derive(Debug, Parser)]
#[command(
    name = "leakbpf",
    version,
    about = "Find TCP sockets that programs open and never close, and where they were opened.",
    long_about = "Find TCP sockets that programs open and never close, and where they were opened.\n\n\
        leakbpf attaches small eBPF programs to the kernel's TCP socket lifecycle (connect, \
        accept, state changes, close, destroy) and follows every socket from the process that \
        opened it to the process that released it. It needs root.\n\n\
        Start with `leakbpf check` to see which hooks this kernel allows, then \
        `leakbpf events` to watch sockets come and go."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream socket lifecycle events as they happen (like tcpconnect, tcpaccept and tcplife in one).
    ///
    /// One line per event: `open` (a connect() started or an accept() returned a socket),
    /// `state` (a TCP state change), `close` (the owner released it: close(), exit, last fd)
    /// and `destroy` (the kernel freed it). State and destroy happen inside the kernel, not in a
    /// process: they show the socket's owner. Only sockets opened while leakbpf runs are shown.
    #[command(after_help = "Examples:\n  \
        leakbpf events --duration 10s\n  \
        leakbpf events --pid 1234 --format json\n  \
        leakbpf events --comm curl --stacks")]
    Events(EventsArgs),
    /// Show what this kernel supports and which hook set leakbpf would use.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub tracer: TracerArgs,
    /// Stop after this long (e.g. 10s, 2m); default: until Ctrl-C.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[arg(short, long, value_enum, default_value_t = EventFormat::Text)]
    pub format: EventFormat,
    /// Add the symbolized user and kernel stacks of open events.
    #[arg(long)]
    pub stacks: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub tracer: TracerArgs,
}

/// Which sockets to show.
#[derive(Debug, Default, Args)]
pub struct FilterArgs {
    /// Only sockets owned by this process (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only sockets owned by processes with this exact command name.
    #[arg(short, long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only IPv4 sockets.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Only IPv6 sockets.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
}

/// How the kernel side is set up.
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct TracerArgs {
    /// Hook set: `auto` picks the best one this kernel allows (see `leakbpf check`).
    #[arg(long, value_enum, default_value_t = HookChoice::Auto)]
    pub hooks: HookChoice,
    /// Size of the kernel-to-user ring buffer in bytes (power of two). Events that do not fit
    /// are lost and counted; raise it if leakbpf reports losses.
    #[arg(long, value_name = "BYTES")]
    pub ring_bytes: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EventFormat {
    /// Aligned columns for people.
    Text,
    /// One JSON object per line, then a `summary` object.
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|err| format!("{err} (write durations like 10s, 500ms, 2m)"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(duration)
}
