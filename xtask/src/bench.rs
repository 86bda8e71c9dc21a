//! `cargo xtask bench`: what leakbpf costs the traced host, measured on real
//! loopback connections (tests/fixtures/connbench.c), and what it keeps in
//! memory per tracked socket. Prints a Markdown table for BENCHMARKS.md.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::Run as _;

/// Connections per churn round: about 4 s here, as the issue measured
/// (rounds of 20,000, under a second, spread ±15% from the VM alone).
const CHURN: &str = "100000";
/// Connections per paired round (`--only pair`), where both builds see
/// the same connections and the spread is smaller.
const PAIR_CHURN: &str = "20000";
// Both ends are held: 2 * HOLD fds, under the 20000 hard limit here.
const HOLD: &str = "9000";
/// 6 holders of 2 * 9000 sockets: 108,000 open sockets, the scale run.
const HOLDERS: usize = 6;
/// 56 holders: 1,008,000 open sockets, what the agent must fit in 128 MiB
/// (`--only million`; not part of the default run: it takes a minute and
/// about 4 GiB of kernel socket memory).
const MILLION_HOLDERS: usize = 56;
const ROUNDS: usize = 7;

pub fn bench(root: &Path, leakbpf: &Path, only: &[String], against: Option<&Path>) -> Result<()> {
    if let Some(part) = only
        .iter()
        .find(|p| !["churn", "syscalls", "memory", "go", "million", "pair"].contains(&p.as_str()))
    {
        bail!("--only takes churn, syscalls, memory, go, million or pair, not {part:?}");
    }
    let run = |part: &str| only.is_empty() || only.iter().any(|p| p == part);
    if only.iter().any(|p| p == "pair") && against.is_none() {
        bail!("--only pair needs --against PATH (the build to compare with)");
    }
    let connbench = build_connbench(root)?;
    if let Some(against) = against
        && run("pair")
    {
        pair_table(&connbench, leakbpf, against)?;
    }
    if only.iter().all(|p| p == "pair") && !only.is_empty() {
        return Ok(());
    }
    if run("churn") {
        churn_table(&connbench, leakbpf)?;
    }
    if run("syscalls") {
        syscall_table(&connbench, leakbpf)?;
    }
    if run("memory") {
        memory_table(&connbench, leakbpf, HOLDERS)?;
    }
    if only.iter().any(|p| p == "million") {
        memory_table(&connbench, leakbpf, MILLION_HOLDERS)?;
    }
    if run("go") {
        // Go 1.19 has no parentGoid: four probes per dial; 1.23: two.
        for (go, version) in [("go", "1.19"), ("/usr/lib/go-1.23/bin/go", "1.23")] {
            go_table(&build_gobench(root, go, version)?, version, leakbpf)?;
        }
    }
    Ok(())
}

/// Requests per Go round: each dials a connection of its own.
const GO_REQUESTS: &str = "5000";
const GO_ROUNDS: usize = 7;

/// The Go request load (tests/fixtures/gobench.go), built by `go`.
fn build_gobench(root: &Path, go: &str, version: &str) -> Result<PathBuf> {
    let gobench = root.join(format!("target/fixtures/gobench-go{version}"));
    Command::new(go)
        .arg("build")
        .arg("-o")
        .arg(&gobench)
        .arg(root.join("tests/fixtures/gobench.go"))
        .env("GO111MODULE", "off")
        .env("GOTOOLCHAIN", "local")
        .env(
            "GOCACHE",
            root.join(format!("target/fixtures/go-cache-{version}")),
        )
        .run()?;
    Ok(gobench)
}

/// What the Go request-site uprobes cost a Go program: interleaved rounds
/// of net/http requests (one new connection each) untraced, under `trace
/// --no-go-uprobes` and under `trace`; per request, the wall time and
/// each Go uprobe program's bpf_stats. The uprobe's trap (int3, single
/// step) is not in bpf_stats: the wall-time difference shows it.
fn go_table(gobench: &Path, version: &str, leakbpf: &Path) -> Result<()> {
    const TRACE: &[&str] = &["trace", "--format", "json", "--output", "/dev/null"];
    let settings: [(&str, Option<Vec<&str>>); 3] = [
        ("nothing attached", None),
        (
            "`leakbpf trace --no-go-uprobes`",
            Some([TRACE, &["--no-go-uprobes"]].concat()),
        ),
        ("`leakbpf trace` (Go uprobes)", Some(TRACE.to_vec())),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); settings.len()];
    let mut programs: std::collections::BTreeMap<String, (u64, u64)> =
        std::collections::BTreeMap::new();
    for _ in 0..GO_ROUNDS {
        for (index, (_, args)) in settings.iter().enumerate() {
            let existing = prog_stats()?;
            let tracer = match args {
                Some(args) => Some(Tracer::start(leakbpf, args)?),
                None => None,
            };
            let before: Vec<(u64, ProgStats)> = prog_stats()?
                .into_iter()
                .filter(|(id, _)| !existing.contains_key(id))
                .collect();
            times[index].push(measured(
                Command::new(gobench).arg(GO_REQUESTS),
                "ns_per_request",
            )?);
            if index == 2 {
                let after = prog_stats()?;
                for (id, start) in before {
                    if let Some(end) = after.get(&id)
                        && end.name.starts_with("go_")
                    {
                        let entry = programs.entry(end.name.clone()).or_default();
                        entry.0 += end.ns.saturating_sub(start.ns);
                        entry.1 += end.runs.saturating_sub(start.runs);
                    }
                }
            }
            if let Some(tracer) = tracer {
                tracer.stop()?;
            }
        }
    }
    println!();
    println!(
        "| Go {version} requests, a new connection each | ns per request (median of {GO_ROUNDS}, min–max) | vs untraced |"
    );
    println!("|---|---|---|");
    let base = median(times[0].clone());
    for ((label, _), done) in settings.iter().zip(&times) {
        let mut sorted = done.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "| {label} | {:.0} ({:.0}–{:.0}) | {:+.0} ns |",
            median(done.clone()),
            sorted[0],
            sorted[sorted.len() - 1],
            median(done.clone()) - base
        );
    }
    let requests = GO_REQUESTS.parse::<f64>()? * GO_ROUNDS as f64;
    println!();
    println!(
        "| Go {version} uprobe program | runs per request | ns per run (BPF only) | ns per request |"
    );
    println!("|---|---|---|---|");
    // Programs not attached to this binary (the bridge on Go 1.21+) never run.
    for (name, (ns, runs)) in programs.into_iter().filter(|(_, (_, runs))| *runs > 0) {
        println!(
            "| {name} | {:.2} | {:.0} | {:.0} |",
            runs as f64 / requests,
            ns as f64 / runs.max(1) as f64,
            ns as f64 / requests
        );
    }
    Ok(())
}

/// The loopback connect/accept/close load (tests/fixtures/connbench.c).
fn build_connbench(root: &Path) -> Result<PathBuf> {
    let connbench = root.join("target/fixtures/connbench");
    std::fs::create_dir_all(root.join("target/fixtures"))?;
    Command::new("gcc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&connbench)
        .arg(root.join("tests/fixtures/connbench.c"))
        .run()?;
    Ok(connbench)
}

/// What runs during a churn round.
#[derive(Clone, Copy)]
enum Setting {
    Untraced,
    Leakbpf(&'static str, &'static [&'static str]),
    /// The bpftrace program a user would write instead (`PEER_SCRIPT`).
    Bpftrace,
}

impl Setting {
    /// Starts what this setting attaches (nothing when untraced); `existing`
    /// are the programs loaded before, to tell bpftrace's apart.
    fn start(
        self,
        leakbpf: &Path,
        script: &Path,
        existing: &std::collections::BTreeMap<u64, ProgStats>,
    ) -> Result<Option<Tracer>> {
        Ok(match self {
            Setting::Untraced => None,
            Setting::Leakbpf(_, args) => Some(Tracer::start(leakbpf, args)?),
            Setting::Bpftrace => Some(Tracer::start_bpftrace(script, existing)?),
        })
    }

    fn label(self) -> &'static str {
        match self {
            Setting::Untraced => "nothing attached",
            Setting::Leakbpf(label, _) => label,
            Setting::Bpftrace => "bpftrace: opener ustack per socket, deleted at destroy",
        }
    }
}

const SETTINGS: [Setting; 5] = [
    Setting::Untraced,
    Setting::Leakbpf(
        "`leakbpf trace`",
        &["trace", "--format", "json", "--output", "/dev/null"],
    ),
    Setting::Leakbpf(
        "`leakbpf agent`",
        &["agent", "--listen", "127.0.0.1:0", "--interval", "10s"],
    ),
    Setting::Leakbpf(
        "`leakbpf events --format json`",
        &["events", "--format", "json"],
    ),
    Setting::Bpftrace,
];

/// The peer: each socket's opener user stack, kept until the socket is
/// destroyed (what someone would write with bpftrace for the same question).
const PEER_SCRIPT: &str = "tracepoint:sock:inet_sock_set_state
/args->protocol == IPPROTO_TCP && args->oldstate == TCP_CLOSE && args->newstate == TCP_SYN_SENT/
{ @open[args->skaddr] = ustack; }
tracepoint:tcp:tcp_destroy_sock { delete(@open[args->skaddr]); }
";

/// One round of one setting.
struct Round {
    ns_per_connection: f64,
    /// leakbpf's CPU per event (trace, events), its events and losses.
    cpu_per_event: Option<f64>,
    events: u64,
    lost: u64,
    /// Program name -> (run ns, runs) over the churn (bpf_stats).
    programs: std::collections::BTreeMap<String, (u64, u64)>,
}

/// Interleaved rounds (A B C D E, A B C D E, ...) of the churn under each
/// setting: throughput against the untraced round of the same pass (median
/// and range), leakbpf's CPU per event and losses, and each setting's
/// kernel-side cost per program from bpf_stats.
fn churn_table(connbench: &Path, leakbpf: &Path) -> Result<()> {
    Command::new("sysctl")
        .args(["-qw", "kernel.bpf_stats_enabled=1"])
        .run()?;
    let script = std::env::temp_dir().join("leakbpf-bench-peer.bt");
    std::fs::write(&script, PEER_SCRIPT)?;
    let mut rounds: Vec<Vec<Round>> = SETTINGS.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (index, setting) in SETTINGS.iter().enumerate() {
            rounds[index].push(round(*setting, connbench, leakbpf, &script)?);
        }
    }
    println!(
        "| attached | ns per connection (median of {ROUNDS}) | throughput vs untraced (median, min–max) | leakbpf CPU per event | events | lost |"
    );
    println!("|---|---|---|---|---|---|");
    let base: Vec<f64> = rounds[0].iter().map(|r| r.ns_per_connection).collect();
    for (setting, done) in SETTINGS.iter().zip(&rounds) {
        let mut ratios: Vec<f64> = done
            .iter()
            .zip(&base)
            .map(|(r, b)| b / r.ns_per_connection)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let cpu: Vec<f64> = done.iter().filter_map(|r| r.cpu_per_event).collect();
        let final_round = done.last().context("no rounds")?;
        let (cpu, events, lost) = if cpu.is_empty() {
            ("-".to_owned(), "-".to_owned(), "-".to_owned())
        } else {
            (
                format!("{:.0} ns", median(cpu)),
                final_round.events.to_string(),
                final_round.lost.to_string(),
            )
        };
        println!(
            "| {} | {:.0} | {:.3} ({:.3}–{:.3}) | {cpu} | {events} | {lost} |",
            setting.label(),
            median(done.iter().map(|r| r.ns_per_connection).collect()),
            median(ratios.clone()),
            ratios[0],
            ratios[ratios.len() - 1],
        );
    }
    let connections: f64 = CHURN.parse::<f64>()? * ROUNDS as f64;
    for (setting, done) in SETTINGS.iter().zip(&rounds).skip(1) {
        println!();
        println!(
            "| {} program | runs per connection | ns per run | ns per connection |",
            setting.label()
        );
        println!("|---|---|---|---|");
        let mut totals: std::collections::BTreeMap<&str, (u64, u64)> =
            std::collections::BTreeMap::new();
        for r in done {
            for (name, (ns, runs)) in &r.programs {
                let total = totals.entry(name.as_str()).or_default();
                total.0 += ns;
                total.1 += runs;
            }
        }
        let mut sum = 0.0;
        for (name, (ns, runs)) in totals {
            if runs == 0 {
                continue;
            }
            sum += ns as f64 / connections;
            println!(
                "| {name} | {:.2} | {:.0} | {:.0} |",
                runs as f64 / connections,
                ns as f64 / runs as f64,
                ns as f64 / connections
            );
        }
        println!("| **total** | | | **{sum:.0}** |");
    }
    Ok(())
}

/// Rounds of the paired comparison (an even number: each build is attached
/// first in half of them).
const PAIR_ROUNDS: usize = 6;

/// getppid() calls per syscall round (about a second here).
const SYSCALLS: &str = "5000000";

/// What every system call on the host costs while each setting runs,
/// interleaved like the churn: bpf_stats cannot show it. A program on a
/// `syscalls:` tracepoint (the tracepoint set's accept exit) turns on the
/// syscall-tracing slow path for every task, whatever syscall it makes;
/// kprobes, trampolines and the other tracepoints leave it off.
fn syscall_table(connbench: &Path, leakbpf: &Path) -> Result<()> {
    let script = std::env::temp_dir().join("leakbpf-bench-peer.bt");
    std::fs::write(&script, PEER_SCRIPT)?;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); SETTINGS.len()];
    for _ in 0..ROUNDS {
        for (index, setting) in SETTINGS.iter().enumerate() {
            let tracer = setting.start(leakbpf, &script, &prog_stats()?)?;
            times[index].push(measured(
                Command::new(connbench).args(["syscalls", SYSCALLS]),
                "ns_per_syscall",
            )?);
            if let Some(tracer) = tracer {
                tracer.stop()?;
            }
        }
    }
    println!();
    println!(
        "| attached | ns per getppid() (median of {ROUNDS}, min–max) | added to every syscall |"
    );
    println!("|---|---|---|");
    let base = median(times[0].clone());
    for (setting, done) in SETTINGS.iter().zip(&times) {
        let mut sorted = done.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "| {} | {:.1} ({:.1}–{:.1}) | {:+.1} ns |",
            setting.label(),
            median(done.clone()),
            sorted[0],
            sorted[sorted.len() - 1],
            median(done.clone()) - base
        );
    }
    Ok(())
}

/// Program name -> BPF ns per connection over one churn.
type PerConnection = std::collections::BTreeMap<String, f64>;

/// `trace` as the paired comparison runs it.
const PAIR_ARGS: &[&str] = &["trace", "--format", "json", "--output", "/dev/null"];

/// The kernel cost of two builds, both tracing the same churn at once.
/// Apart, each run meets a different machine (this VM's run-to-run spread
/// is ±10%, as large as most single changes); together, every connection
/// runs both builds' programs. The build attached second runs after the
/// first on each hook and finds the socket's and the task's cache lines
/// warm, which makes it about a microsecond cheaper here: so the order
/// alternates, and the effect is the mean of the two orders' differences
/// (the order's own part cancels).
fn pair_table(connbench: &Path, leakbpf: &Path, against: &Path) -> Result<()> {
    Command::new("sysctl")
        .args(["-qw", "kernel.bpf_stats_enabled=1"])
        .run()?;
    // (this build attached first, this build's programs, the other's)
    let mut rounds: Vec<(bool, PerConnection, PerConnection)> = Vec::new();
    for index in 0..PAIR_ROUNDS {
        let this_first = index % 2 == 1;
        let (first, second) = if this_first {
            (leakbpf, against)
        } else {
            (against, leakbpf)
        };
        let existing = prog_stats()?;
        let first_tracer = Tracer::start(first, PAIR_ARGS)?;
        let after_first = prog_stats()?;
        let second_tracer = Tracer::start(second, PAIR_ARGS)?;
        let before = prog_stats()?;
        let connections: f64 = PAIR_CHURN.parse()?;
        churn(connbench, PAIR_CHURN)?;
        let after = prog_stats()?;
        first_tracer.stop()?;
        second_tracer.stop()?;
        let mut firsts = PerConnection::new();
        let mut seconds = PerConnection::new();
        for (id, start) in &before {
            if existing.contains_key(id) {
                continue;
            }
            let Some(end) = after.get(id) else { continue };
            let ns = end.ns.saturating_sub(start.ns) as f64 / connections;
            let side = if after_first.contains_key(id) {
                &mut firsts
            } else {
                &mut seconds
            };
            *side.entry(end.name.clone()).or_default() += ns;
        }
        rounds.push(if this_first {
            (true, firsts, seconds)
        } else {
            (false, seconds, firsts)
        });
    }
    print_pair(&rounds);
    Ok(())
}

/// The paired rounds, then each program's effect.
fn print_pair(rounds: &[(bool, PerConnection, PerConnection)]) {
    let mut names: Vec<String> = rounds
        .iter()
        .flat_map(|(_, this, other)| this.keys().chain(other.keys()).cloned())
        .collect();
    names.sort();
    names.dedup();
    names.retain(|name| {
        rounds.iter().any(|(_, this, other)| {
            this.get(name).copied().unwrap_or(0.0) + other.get(name).copied().unwrap_or(0.0) >= 1.0
        })
    });
    println!(
        "| BPF ns per connection, both builds tracing at once | attached first | {} | total |",
        names.join(" | ")
    );
    println!("|---|---|{}---|", "---|".repeat(names.len()));
    let total = |side: &PerConnection| side.values().sum::<f64>();
    for (round, (this_first, this, other)) in rounds.iter().enumerate() {
        for (label, side, first) in [
            ("this build", this, *this_first),
            ("--against", other, !*this_first),
        ] {
            let cells: Vec<String> = names
                .iter()
                .map(|name| format!("{:.0}", side.get(name).copied().unwrap_or(0.0)))
                .collect();
            println!(
                "| round {}: {label} | {} | {} | {:.0} |",
                round + 1,
                if first { "yes" } else { "no" },
                cells.join(" | "),
                total(side)
            );
        }
    }
    // this − other, per order; the effect is the mean of the two orders'.
    let effect = |value: &dyn Fn(&PerConnection) -> f64| {
        let mean = |this_first: bool| {
            let diffs: Vec<f64> = rounds
                .iter()
                .filter(|(first, _, _)| *first == this_first)
                .map(|(_, this, other)| value(this) - value(other))
                .collect();
            diffs.iter().sum::<f64>() / diffs.len().max(1) as f64
        };
        (mean(false), mean(true))
    };
    println!();
    println!(
        "| this build − --against, ns per connection | attached second | attached first | effect (mean of the two) |"
    );
    println!("|---|---|---|---|");
    for name in names.iter().map(Some).chain([None]) {
        let value = |side: &PerConnection| match name {
            Some(name) => side.get(name.as_str()).copied().unwrap_or(0.0),
            None => total(side),
        };
        let (second, first) = effect(&value);
        println!(
            "| {} | {second:+.0} | {first:+.0} | **{:+.0}** |",
            name.map_or("total", String::as_str),
            f64::midpoint(second, first)
        );
    }
}

/// Runs one churn under `setting`.
fn round(setting: Setting, connbench: &Path, leakbpf: &Path, script: &Path) -> Result<Round> {
    let existing = prog_stats()?;
    let mut done = Round {
        ns_per_connection: 0.0,
        cpu_per_event: None,
        events: 0,
        lost: 0,
        programs: std::collections::BTreeMap::new(),
    };
    let tracer = setting.start(leakbpf, script, &existing)?;
    // Its programs: those loaded since (nothing else loads any meanwhile).
    let before: Vec<(u64, ProgStats)> = prog_stats()?
        .into_iter()
        .filter(|(id, _)| !existing.contains_key(id))
        .collect();
    // CPU from here on: start-up (BTF, the first scan) is not per event.
    let cpu_before = match &tracer {
        Some(tracer) => tracer.cpu_seconds()?,
        None => 0.0,
    };
    done.ns_per_connection = churn(connbench, CHURN)?;
    let after = prog_stats()?;
    for (id, start) in before {
        if let Some(end) = after.get(&id) {
            let entry = done.programs.entry(end.name.clone()).or_default();
            entry.0 += end.ns.saturating_sub(start.ns);
            entry.1 += end.runs.saturating_sub(start.runs);
        }
    }
    if let Some(tracer) = tracer {
        let cpu = tracer.cpu_seconds()? - cpu_before;
        let summary = tracer.stop()?;
        if let Setting::Leakbpf(_, args) = setting
            && args[0] != "agent"
        {
            done.events = summary.events;
            done.lost = summary.lost;
            done.cpu_per_event = Some(cpu * 1e9 / summary.events.max(1) as f64);
        }
    }
    Ok(done)
}

struct ProgStats {
    name: String,
    ns: u64,
    runs: u64,
}

/// Every loaded program's id, name and `bpf_stats` counters.
fn prog_stats() -> Result<std::collections::BTreeMap<u64, ProgStats>> {
    let output = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool (Debian's bpftool package)")?;
    if !output.status.success() {
        bail!("bpftool prog show failed");
    }
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(listed
        .as_array()
        .context("bpftool: not a JSON array")?
        .iter()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                ProgStats {
                    name: p["name"].as_str().unwrap_or("?").to_owned(),
                    ns: p["run_time_ns"].as_u64().unwrap_or(0),
                    runs: p["run_cnt"].as_u64().unwrap_or(0),
                },
            ))
        })
        .collect())
}

/// leakbpf's resident set while it tracks `HOLD * 2 * holders` open
/// sockets, the cost per socket as a slope, and the time to report them.
fn memory_table(connbench: &Path, leakbpf: &Path, holders_wanted: usize) -> Result<()> {
    let tracer = Tracer::start_reporting(leakbpf, &["trace", "--format", "json"])?;
    let idle_rss = tracer.rss_kib()?;
    // Several holders: each keeps 2 * HOLD fds, under the per-process limit.
    // The cost per socket is the slope between the first holder and all of
    // them: fixed costs (ring pages becoming resident, buffers sized by the
    // first burst) fall out.
    let mut holders = Vec::new();
    let mut first_rss = 0;
    for index in 0..holders_wanted {
        holders.push(start_holder(connbench)?);
        thread::sleep(Duration::from_millis(500));
        if index == 0 {
            first_rss = tracer.rss_kib()?;
        }
    }
    let busy_rss = tracer.rss_kib()?;
    let report_started = Instant::now();
    let summary = tracer.stop()?;
    let exit_s = report_started.elapsed().as_secs_f64();
    let report_s = summary
        .report_written
        .context("leakbpf wrote no report")?
        .duration_since(report_started)
        .as_secs_f64();
    for mut holder in holders {
        drop(holder.stdin.take());
        holder.wait()?;
    }
    let sockets: f64 = HOLD.parse::<f64>()? * 2.0 * holders_wanted as f64;
    println!();
    println!("| memory | value |");
    println!("|---|---|");
    println!("| leakbpf RSS, tracing, nothing open | {idle_rss} KiB |");
    println!("| leakbpf RSS with {sockets} open sockets tracked | {busy_rss} KiB |");
    let per_holder = sockets / holders_wanted as f64;
    println!("| leakbpf RSS with {per_holder} open sockets tracked | {first_rss} KiB |");
    println!(
        "| per tracked socket (slope from {per_holder} to {sockets}) | {:.0} bytes |",
        busy_rss.saturating_sub(first_rss) as f64 * 1024.0 / (sockets - per_holder)
    );
    println!("| report of {sockets} sockets (SIGINT to its last byte) | {report_s:.2} s |");
    println!("| the same, to the process's exit (detaching included) | {exit_s:.2} s |");
    println!(
        "| peak RSS, tracking them and reporting (VmHWM) | {} KiB |",
        summary.peak_kib
    );
    println!(
        "| events / lost in that run | {} / {} |",
        summary.events, summary.lost
    );
    Ok(())
}

/// `connbench hold HOLD`, once it says its sockets are open.
fn start_holder(connbench: &Path) -> Result<std::process::Child> {
    let mut holder = Command::new(connbench)
        .args(["hold", HOLD])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting connbench hold")?;
    let mut line = String::new();
    BufReader::new(holder.stdout.take().context("stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("connbench hold said {line:?}");
    }
    Ok(holder)
}

fn churn(connbench: &Path, connections: &str) -> Result<f64> {
    measured(
        Command::new(connbench).args(["churn", connections]),
        "ns_per_connection",
    )
}

/// Runs a load generator and reads the `KEY NUMBER` line it ends with.
fn measured(command: &mut Command, key: &str) -> Result<f64> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .strip_prefix(key)
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| {
            format!(
                "{command:?} said {text:?} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Tracer {
    child: Child,
    /// With the report on a pipe: reads it, and says when its last byte came.
    report: Option<thread::JoinHandle<Option<Instant>>>,
    /// bpftrace loses a SIGINT that comes while it still attaches (a
    /// one-second round can end then): `stop` says it again. Not leakbpf,
    /// which a second signal would cut short.
    repeat_interrupt: bool,
}

struct Summary {
    events: u64,
    lost: u64,
    peak_kib: u64,
    /// When the report's last byte was read (see [`Tracer::start_reporting`]).
    report_written: Option<Instant>,
}

impl Drop for Tracer {
    /// A benchmark that fails half-way must not leave a tracer running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tracer {
    fn start(leakbpf: &Path, args: &[&str]) -> Result<Tracer> {
        Tracer::spawn(leakbpf, args, Stdio::null())
    }

    /// A tracer whose report (on stdout) is read here, so that the time it
    /// is written can be told from the time the process exits (detaching
    /// comes after the report).
    fn start_reporting(leakbpf: &Path, args: &[&str]) -> Result<Tracer> {
        let mut tracer = Tracer::spawn(leakbpf, args, Stdio::piped())?;
        let mut stdout = tracer.child.stdout.take().context("stdout")?;
        tracer.report = Some(thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut last = None;
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                last = Some(Instant::now());
            }
            last
        }));
        Ok(tracer)
    }

    fn spawn(leakbpf: &Path, args: &[&str], stdout: Stdio) -> Result<Tracer> {
        let mut child = Command::new(leakbpf)
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .context("starting leakbpf")?;
        let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
        let mut line = String::new();
        stderr.read_line(&mut line)?;
        if !line.contains("tracing TCP sockets") {
            bail!("leakbpf did not start: {line}");
        }
        child.stderr = Some(stderr.into_inner());
        Ok(Tracer {
            child,
            report: None,
            repeat_interrupt: false,
        })
    }

    /// bpftrace running `script`, once its programs are loaded.
    fn start_bpftrace(
        script: &Path,
        existing: &std::collections::BTreeMap<u64, ProgStats>,
    ) -> Result<Tracer> {
        let child = Command::new("bpftrace")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting bpftrace (Debian's bpftrace package)")?;
        let tracer = Tracer {
            child,
            report: None,
            repeat_interrupt: true,
        };
        let started = Instant::now();
        while prog_stats()?
            .keys()
            .filter(|id| !existing.contains_key(id))
            .count()
            < 2
        {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("bpftrace loaded no programs within 30 s");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(tracer)
    }

    fn stat(&self, file: &str) -> Result<String> {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id()))
            .with_context(|| format!("reading /proc/{}/{file}", self.child.id()))
    }

    /// utime + stime.
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = self.stat("stat")?;
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .context("stat")?
            .1
            .split(' ')
            .collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        // USER_HZ, the unit of /proc/PID/stat times, is 100 on Linux.
        Ok(ticks / 100.0)
    }

    fn peak_rss_kib(&self) -> Result<u64> {
        let status = self.stat("status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmHWM")
    }

    fn rss_kib(&self) -> Result<u64> {
        let status = self.stat("status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS")
    }

    /// SIGINT, wait, and read the event counts from its last stderr line.
    fn stop(mut self) -> Result<Summary> {
        let interrupt = || {
            Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .run()
        };
        interrupt()?;
        // The peak RSS, report included: VmHWM until the process lets go of
        // its memory (its status then has no Vm lines).
        let mut peak_kib = 0;
        let mut interrupted = Instant::now();
        while let Ok(kib) = self.peak_rss_kib() {
            peak_kib = peak_kib.max(kib);
            thread::sleep(Duration::from_millis(5));
            if self.repeat_interrupt && interrupted.elapsed() > Duration::from_secs(5) {
                let _ = interrupt();
                interrupted = Instant::now();
            }
        }
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .context("stderr")?
            .read_to_string(&mut stderr)?;
        let status = self.child.wait()?;
        let report_written = self
            .report
            .take()
            .and_then(|reader| reader.join().ok())
            .flatten();
        if !status.success() {
            bail!("leakbpf failed: {status}: {stderr}");
        }
        let number_before = |word: &str| -> u64 {
            stderr
                .split(word)
                .next()
                .and_then(|s| s.split_whitespace().last())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let lost = stderr
            .split("lost events: ")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok(Summary {
            events: number_before(" events in"),
            lost,
            peak_kib,
            report_written,
        })
    }
}
