//! Command-line arguments. Parsing lives here; each command's behaviour lives
//! in `commands/`.
use std::time::Duration;

use clap::{
    Args, Parser, Subcommand, ValueEnum,
    builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _},
};

use crate::hooks::{HookChoice, sets::SETS};

#[derive(Debug, Parser)]
#[command(
    name = "leakbpf",
    version,
    about = "Find TCP sockets that programs open and never close, and where they were opened.",
    long_about = "Find TCP sockets that programs open and never close, and where they were opened.\n\n\
        leakbpf attaches small eBPF programs to the kernel's TCP socket lifecycle (connect, \
        accept, state changes, close, destroy) and follows every socket from the process that \
        opened it to the process that released it. It needs root.\n\n\
        `leakbpf trace` reports the sockets processes hold open, grouped by the stack that \
        opened them, and why they look leaked; `leakbpf events` streams every socket's life; \
        `leakbpf check` shows which hooks this kernel allows."
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
    /// Report the sockets processes hold open, grouped by the stack that opened them, and why
    /// they look leaked.
    ///
    /// Traces until --duration ends or Ctrl-C, then lists every TCP socket still open and owned
    /// by a process: those opened while tracing (with the user stack that opened
    /// them) and those already open when tracing started (found through sock_diag and
    /// /proc/PID/fd, reported as `preexisting`). Per process, sockets are grouped by direction
    /// and stack and ranked by count, like a goroutine dump; each group is classified:
    /// close_wait (the peer closed, the process never did), unread (received data never read),
    /// idle (ESTABLISHED without traffic for --idle), growing (this stack opened sockets while
    /// tracing and closed none).
    #[command(after_help = "Examples:
          leakbpf trace --duration 30s
          leakbpf trace --pid 1234 --min-age 1m
          leakbpf trace --duration 1m --format pprof --output sockets.pb.gz && go tool pprof -top sockets.pb.gz
          leakbpf trace --duration 1m --format folded | flamegraph.pl > sockets.svg")]
    Trace(TraceArgs),
    /// Show what this kernel supports and which hook set leakbpf would use.
    Check(CheckArgs),
    /// Run as the always-on host daemon: leak suspects, Prometheus metrics, JSON and pprof over HTTP.
    ///
    /// Traces every process until SIGTERM or SIGINT. Every --interval it reports, like `trace`,
    /// the sockets processes hold, reconciles its table with the kernel's socket tables (every
    /// network namespace), and judges suspects per process and group: close_wait, unread, idle,
    /// and growing (the open count rose across the last --window intervals, opening more than
    /// closing). For a growing process it forecasts when it reaches its open-file limit and its
    /// memory cgroup's limit. A suspect that appears, changes class or clears is logged as one
    /// JSON line on stdout. Read-only HTTP on --listen: /metrics (Prometheus), /leaks (the
    /// `trace --format json` report; ?pid=, ?comm=, ?min_age=), /leaks.pprof (`go tool pprof`),
    /// /healthz.
    #[command(after_help = "Examples:
          leakbpf agent
          leakbpf agent --listen 0.0.0.0:9464 --interval 30s --window 10
          leakbpf agent --config /etc/leakbpf/agent.toml
          curl -s http://127.0.0.1:9464/leaks?min_age=10m | jq '.processes[] | {pid, comm, open}'
          go tool pprof -top http://127.0.0.1:9464/leaks.pprof

        Config file (TOML; flags win): listen, interval, window, top_k, idle, max_sockets.")]
    Agent(AgentArgs),
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub tracer: TracerArgs,
    /// Serve the HTTP API on this address [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Evaluate suspects and refresh /metrics and /leaks this often [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Intervals over which a group must keep rising to be `growing` [default: 6].
    #[arg(long, value_name = "N", value_parser = parse_window)]
    pub window: Option<usize>,
    /// Processes (most open sockets first) that get their own metric series; the rest are
    /// summed under pid="other" [default: 50].
    #[arg(long, value_name = "K", value_parser = parse_top)]
    pub top_k: Option<usize>,
    /// An ESTABLISHED socket without traffic for this long is `idle` [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    pub idle: Option<Duration>,
    /// Track at most this many sockets; more are counted as evictions and make the state
    /// incomplete [default: 1048576].
    #[arg(long, value_name = "N", value_parser = parse_max_sockets)]
    pub max_sockets: Option<usize>,
    /// Read settings from this TOML file (flags given here win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Add the constant label KEY="VALUE" to every series of /metrics (e.g. the node name);
    /// repeatable.
    #[arg(long = "metric-label", value_name = "KEY=VALUE", value_parser = crate::agent::config::parse_metric_label)]
    pub metric_labels: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub tracer: TracerArgs,
    /// Stop after this long (e.g. 10s, 2m; a bare number is seconds); default: until Ctrl-C.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[arg(short, long, value_enum, default_value_t = EventFormat::Text)]
    pub format: EventFormat,
    /// Add the symbolized user and kernel stacks of open events.
    #[arg(long)]
    pub stacks: bool,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub tracer: TracerArgs,
    /// Trace this long (e.g. 30s, 5m; a bare number is seconds); default: until Ctrl-C.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Only report sockets open at least this long (e.g. 10s, or 10). Pre-existing sockets count as
    /// opened when tracing started.
    #[arg(long, value_parser = parse_duration_or_zero, default_value = "0s")]
    pub min_age: Duration,
    /// An ESTABLISHED socket without traffic for this long is classified `idle`.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub idle: Duration,
    /// Report only the N largest groups (the totals still count them all).
    #[arg(long, value_name = "N", value_parser = parse_top)]
    pub top: Option<usize>,
    /// Leave out sockets that were already open when tracing started.
    #[arg(long)]
    pub no_preexisting: bool,
    #[arg(short, long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// Write the report here instead of to standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Like a goroutine dump: `COUNT @ direction`, reasons, stack, sockets.
    Text,
    /// One JSON document (version 1).
    Json,
    /// Gzipped profile.proto of open sockets by stack, for `go tool pprof` and profile UIs.
    Pprof,
    /// Folded stacks for flamegraph.pl and inferno.
    Folded,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub tracer: TracerArgs,
}

/// Which sockets to show.
#[derive(Debug, Default, Args)]
pub struct FilterArgs {
    /// Only sockets held by this process (repeatable; a process id, not a thread id).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only sockets held by processes with this exact command name (the kernel keeps 15
    /// characters of it).
    #[arg(short, long, value_name = "NAME", value_parser = parse_comm)]
    pub comm: Option<String>,
    /// Only IPv4 sockets.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Only IPv6 sockets.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
}

impl FilterArgs {
    /// The library's filter: the one place the flags become it.
    pub fn filter(&self) -> crate::filter::Filter {
        let family = match (self.ipv4, self.ipv6) {
            (true, _) => Some(crate::event::Family::Ipv4),
            (_, true) => Some(crate::event::Family::Ipv6),
            _ => None,
        };
        crate::filter::Filter::new(self.pids.clone(), self.comm.clone(), family)
    }
}

/// How the kernel side is set up.
#[derive(Clone, Debug, Default, Args)]
pub struct TracerArgs {
    /// Hook set: `auto` picks the best one this kernel allows (see `leakbpf check`).
    #[arg(long, value_name = "SET", default_value = "auto", value_parser = hook_choice_parser())]
    pub hooks: HookChoice,
    /// Size of the kernel-to-user ring buffer in bytes (power of two). Events that do not fit
    /// are lost and counted; raise it if leakbpf reports losses.
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_bytes)]
    pub ring_bytes: Option<u32>,
    /// Print the kernel side's rare failures (a stack that could not be recorded, an accepted
    /// socket that could not be read) on stderr, one `leakbpf: kernel: ` line each. They are
    /// counted either way.
    #[arg(long)]
    pub log_kernel: bool,
    /// The root of the host's cgroup v2 hierarchy, for the cgroup socket hook. Needed only
    /// inside a container with its own cgroup namespace and without the host's pid namespace:
    /// mount the host's cgroup2 (e.g. `-v /sys/fs/cgroup:/host/cgroup:ro`) and name it here.
    /// By default leakbpf finds the root in its own mounts or in pid 1's (/proc/1/root).
    #[arg(long, value_name = "DIR")]
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Also take the kernel stack of every connect and accept (off by default: it is nearly the
    /// same for every socket, and each walk costs the traced process).
    #[arg(long)]
    pub kernel_stacks: bool,
    /// Do not attach uprobes to Go programs. By default leakbpf probes net/http's Transport in
    /// every Go binary it sees (entry uprobes on four functions, about a microsecond per
    /// request) to name the request site: the function whose request dialed the connection.
    #[arg(long)]
    pub no_go_uprobes: bool,
}

impl TracerArgs {
    /// The library's options: the one place the flags become them.
    pub fn options(&self) -> crate::tracer::TracerOptions {
        crate::tracer::TracerOptions {
            hooks: self.hooks,
            ring_bytes: self.ring_bytes,
            log_kernel: self.log_kernel,
            cgroup_root: self.cgroup_root.clone(),
            all_facts: false,
            kernel_stacks: self.kernel_stacks,
            go_uprobes: !self.no_go_uprobes,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EventFormat {
    /// Aligned columns for people.
    Text,
    /// One JSON object per line, then a `summary` object.
    Json,
}

/// `--hooks` values and their help, from the hook set table (best first).
fn hook_choice_parser() -> impl clap::builder::TypedValueParser<Value = HookChoice> {
    let names: Vec<&str> = SETS.iter().map(|spec| spec.name).collect();
    let auto = PossibleValue::new("auto").help(format!(
        "the best set this kernel allows: {}",
        names.join(", else ")
    ));
    let sets = SETS.iter().map(|spec| {
        let (major, minor) = spec.min_kernel();
        PossibleValue::new(spec.name).help(format!("{} (Linux {major}.{minor}+)", spec.description))
    });
    PossibleValuesParser::new(std::iter::once(auto).chain(sets)).map(|name| {
        name.parse::<HookChoice>()
            .expect("every possible value names a hook set")
    })
}

/// The longest duration any flag takes: beyond it, a typo.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The largest ring buffer leakbpf asks the kernel for (locked kernel memory).
pub const MAX_RING_BYTES: u32 = 1 << 30;

fn parse_window(text: &str) -> Result<usize, String> {
    let n = text
        .parse::<usize>()
        .map_err(|_| format!("{text} is not a number of intervals"))?;
    crate::agent::config::check_window(n)
}

fn parse_max_sockets(text: &str) -> Result<usize, String> {
    let n = text
        .parse::<usize>()
        .map_err(|_| format!("{text} is not a number of sockets"))?;
    crate::agent::config::check_max_sockets(n)
}

fn parse_top(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (leave --top out to see every group)".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text} is not a number of groups")),
    }
}

/// The kernel keeps 15 bytes of a command name (`TASK_COMM_LEN` - 1): a
/// longer name could never match.
fn parse_comm(text: &str) -> Result<String, String> {
    let max = leakbpf_common::COMM_LEN - 1;
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if text.len() > max {
        let kept: String = text
            .chars()
            .scan(0, |len, c| {
                *len += c.len_utf8();
                (*len <= max).then_some(c)
            })
            .collect();
        return Err(format!(
            "the kernel keeps {max} bytes of a command name, so {text:?} would never match: use {kept:?}"
        ));
    }
    Ok(text.to_owned())
}

fn parse_ring_bytes(text: &str) -> Result<u32, String> {
    let bytes: u64 = text
        .parse()
        .map_err(|_| format!("{text} is not a number of bytes"))?;
    if !bytes.is_power_of_two() || bytes < 4096 || bytes > u64::from(MAX_RING_BYTES) {
        return Err(format!(
            "must be a power of two from 4096 to {MAX_RING_BYTES} (1 GiB), not {bytes}"
        ));
    }
    Ok(bytes as u32)
}

/// A duration as people type them: with a unit (`10s`, `500ms`, `2m`,
/// `1h30m`), or a bare number of seconds (`10`, `2.5`), as `timeout`,
/// `sleep` and bcc's tools read it.
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    let duration = parse_any_duration(text)?;
    if duration > MAX_DURATION {
        return Err(format!(
            "{text} is longer than leakbpf takes (at most {})",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(duration)
}

fn parse_any_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return text
            .parse::<f64>()
            .ok()
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
            .ok_or_else(|| format!("{text} is not a number of seconds (or write 10s, 500ms, 2m)"));
    }
    humantime::parse_duration(text)
        .map_err(|err| format!("{err} (write durations like 10, 10s, 500ms, 2m)"))
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration_or_zero(text)?;
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units_or_bare_seconds() {
        let ok = |text: &str| parse_duration(text).unwrap();
        assert_eq!(ok("10"), Duration::from_secs(10));
        assert_eq!(ok("2.5"), Duration::from_millis(2500));
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(parse_duration_or_zero("0").unwrap(), Duration::ZERO);
        for bad in ["soon", "", "1.2.3", "-5", "10 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_duration("0").unwrap_err(),
            "must be longer than zero",
            "a zero --duration"
        );
    }
}
