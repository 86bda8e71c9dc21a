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

const CHURN: &str = "20000";
// Both ends are held: 2 * HOLD fds, under the 20000 hard limit here.
const HOLD: &str = "9000";
const HOLDERS: usize = 3;
const ROUNDS: usize = 5;

pub fn bench(root: &Path, leakbpf: &Path) -> Result<()> {
    let connbench = build_connbench(root)?;
    churn_table(&connbench, leakbpf)?;
    kernel_table(&connbench, leakbpf)?;
    memory_table(&connbench, leakbpf)
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

/// ns per connection with no tracer and under each command, median of
/// [`ROUNDS`], with leakbpf's CPU per event and its losses.
fn churn_table(connbench: &Path, leakbpf: &Path) -> Result<()> {
    println!(
        "| setting | ns per connection (median of {ROUNDS}) | overhead | leakbpf CPU per event | events | lost |"
    );
    println!("|---|---|---|---|---|---|");
    let baseline = median(
        (0..ROUNDS)
            .map(|_| churn(connbench))
            .collect::<Result<_>>()?,
    );
    println!("| no tracer | {baseline:.0} | - | - | - | - |");
    for (label, args) in [
        (
            "`leakbpf trace` (tracepoint set)",
            vec!["trace", "--format", "json", "--output", "/dev/null"],
        ),
        (
            "`leakbpf events --format json`",
            vec!["events", "--format", "json"],
        ),
    ] {
        let mut times = Vec::new();
        let mut cpu_per_event = Vec::new();
        let mut events = 0;
        let mut lost = 0;
        for _ in 0..ROUNDS {
            let tracer = Tracer::start(leakbpf, &args)?;
            times.push(churn(connbench)?);
            let cpu = tracer.cpu_seconds()?;
            let summary = tracer.stop()?;
            events = summary.events;
            lost = summary.lost;
            cpu_per_event.push(cpu * 1e9 / summary.events.max(1) as f64);
        }
        let median_ns = median(times);
        println!(
            "| {label} | {median_ns:.0} | {:+.1}% | {:.0} ns | {events} | {lost} |",
            (median_ns / baseline - 1.0) * 100.0,
            median(cpu_per_event),
        );
    }
    Ok(())
}

/// The kernel side's own cost, per program, from `bpf_stats` (run time and
/// run count of each program, `bpftool prog show`), over one churn under
/// `leakbpf trace`: the table every kernel-side change is judged by.
fn kernel_table(connbench: &Path, leakbpf: &Path) -> Result<()> {
    Command::new("sysctl")
        .args(["-qw", "kernel.bpf_stats_enabled=1"])
        .run()?;
    let connections: f64 = CHURN.parse()?;
    println!();
    println!("| `leakbpf trace` program | runs per connection | ns per run | ns per connection |");
    println!("|---|---|---|---|");
    let existing = prog_stats()?;
    let tracer = Tracer::start(
        leakbpf,
        &["trace", "--format", "json", "--output", "/dev/null"],
    )?;
    // Its programs: those loaded since (nothing else loads any meanwhile).
    let before: Vec<(u64, ProgStats)> = prog_stats()?
        .into_iter()
        .filter(|(id, _)| !existing.contains_key(id))
        .collect();
    churn(connbench)?;
    let after = prog_stats()?;
    tracer.stop()?;
    let mut total = 0.0;
    for (id, start) in before {
        let Some(end) = after.get(&id) else { continue };
        let runs = end.runs.saturating_sub(start.runs) as f64;
        let ns = end.ns.saturating_sub(start.ns) as f64;
        if runs == 0.0 {
            continue;
        }
        total += ns / connections;
        println!(
            "| {} | {:.2} | {:.0} | {:.0} |",
            end.name,
            runs / connections,
            ns / runs,
            ns / connections
        );
    }
    println!("| **total** | | | **{total:.0}** |");
    Ok(())
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

/// leakbpf's resident set while it tracks `HOLD * 2 * HOLDERS` open
/// sockets, the cost per socket as a slope, and the time to report them.
fn memory_table(connbench: &Path, leakbpf: &Path) -> Result<()> {
    let tracer = Tracer::start(
        leakbpf,
        &["trace", "--format", "json", "--output", "/dev/null"],
    )?;
    let idle_rss = tracer.rss_kib()?;
    // Several holders: each keeps 2 * HOLD fds, under the per-process limit.
    // The cost per socket is the slope between the first holder and all of
    // them: fixed costs (ring pages becoming resident, buffers sized by the
    // first burst) fall out.
    let mut holders = Vec::new();
    let mut first_rss = 0;
    for index in 0..HOLDERS {
        holders.push(start_holder(connbench)?);
        thread::sleep(Duration::from_millis(500));
        if index == 0 {
            first_rss = tracer.rss_kib()?;
        }
    }
    let busy_rss = tracer.rss_kib()?;
    let report_started = Instant::now();
    let summary = tracer.stop()?;
    let report_s = report_started.elapsed().as_secs_f64();
    for mut holder in holders {
        drop(holder.stdin.take());
        holder.wait()?;
    }
    let sockets: f64 = HOLD.parse::<f64>()? * 2.0 * HOLDERS as f64;
    println!();
    println!("| memory | value |");
    println!("|---|---|");
    println!("| leakbpf RSS, tracing, nothing open | {idle_rss} KiB |");
    println!("| leakbpf RSS with {sockets} open sockets tracked | {busy_rss} KiB |");
    let per_holder = sockets / HOLDERS as f64;
    println!("| leakbpf RSS with {per_holder} open sockets tracked | {first_rss} KiB |");
    println!(
        "| per tracked socket (slope from {per_holder} to {sockets}) | {:.0} bytes |",
        busy_rss.saturating_sub(first_rss) as f64 * 1024.0 / (sockets - per_holder)
    );
    println!("| report of {sockets} sockets (SIGINT to exit) | {report_s:.2} s |");
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

fn churn(connbench: &Path) -> Result<f64> {
    let output = Command::new(connbench)
        .args(["churn", CHURN])
        .output()
        .context("running connbench churn")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .strip_prefix("ns_per_connection ")
        .and_then(|n| n.parse().ok())
        .with_context(|| {
            format!(
                "connbench said {text:?} {}",
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
}

struct Summary {
    events: u64,
    lost: u64,
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
        let mut child = Command::new(leakbpf)
            .args(args)
            .stdout(Stdio::null())
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
        Ok(Tracer { child })
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
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .run()?;
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .context("stderr")?
            .read_to_string(&mut stderr)?;
        let status = self.child.wait()?;
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
        })
    }
}
