//! `leakbpf agent` end to end: real programs attached, real fixture
//! processes (a server and a leaking client, separate processes), the HTTP
//! API read with curl, `go tool pprof` and `promtool`.
use std::{process::Command, time::Duration};

use leakbpf_tests::{
    Fixture,
    agent::{Agent, leak_client, leak_server, open_more, sample},
    c_fixture_linked, go_tool_pprof, symbols,
};
use serde_json::Value;

/// The interval the tests run the agent with, and its growing window.
const INTERVAL_S: u64 = 1;

fn agent(extra: &[&str]) -> Agent {
    let interval = format!("{INTERVAL_S}s");
    let mut args = vec!["--interval", interval.as_str(), "--window", "3"];
    args.extend_from_slice(extra);
    Agent::start(&args)
}

fn open(client: &mut Fixture, n: usize) {
    assert!(open_more(client, n) >= n);
}

fn process(report: &Value, pid: u32) -> Option<&Value> {
    report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"] == pid)
}

fn open_of(report: &Value, pid: u32) -> u64 {
    process(report, pid).map_or(0, |p| p["open"].as_u64().unwrap())
}

#[test]
fn a_leak_shows_in_metrics_and_leaks_with_its_stack_and_clears_when_the_process_exits() {
    let agent = agent(&[]);
    let (_server, port) = leak_server("127.0.0.1");
    let mut client = leak_client("127.0.0.1", port, None);
    let pid = client.pid();
    open(&mut client, 4);
    let window = Duration::from_secs(2 * INTERVAL_S);
    // Two intervals, plus the time one snapshot takes.
    let within = window + Duration::from_millis(900);
    let query = format!("?pid={pid}");
    let (report, took) = agent.wait_leaks(&query, within, "the leak in /leaks", |r| {
        open_of(r, pid) == 4 && process(r, pid).unwrap()["groups"][0]["classes"][0] == "close_wait"
    });
    eprintln!("leak listed after {took:?}");
    assert_eq!(report["complete"], true, "{report:#}");
    let group = &process(&report, pid).unwrap()["groups"][0];
    assert_eq!(group["direction"], "connect");
    assert_eq!(group["count"], 4);
    assert_eq!(group["states"]["CLOSE_WAIT"], 4);
    let frames = symbols(&group["stack"]);
    assert!(
        frames.iter().any(|f| f == "internal_connect"),
        "Python's connect frame in the stack: {frames:?}"
    );
    let metrics = agent.metrics();
    let labels = [
        ("pid", pid.to_string()),
        ("comm", "python3".to_owned()),
        ("direction", "connect".to_owned()),
        ("state", "CLOSE_WAIT".to_owned()),
    ];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        sample(&metrics, "leakbpf_open_sockets", &labels),
        Some(4.0),
        "{metrics}"
    );
    assert!(sample(&metrics, "leakbpf_suspects", &[("class", "close_wait")]).unwrap() >= 1.0);
    let appeared = agent
        .log()
        .into_iter()
        .find(|l| l["suspect"]["pid"] == pid && l["change"] == "appeared")
        .expect("an `appeared` log line for the suspect");
    assert_eq!(appeared["suspect"]["count"], 4);
    assert_eq!(appeared["suspect"]["classes"][0], "close_wait");
    assert!(
        appeared["suspect"]["top_frames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("internal_connect")),
        "{appeared}"
    );

    client.kill();
    agent.wait_leaks(&query, within, "the exited process leaving /leaks", |r| {
        open_of(r, pid) == 0
    });
    let pid_label = format!("pid=\"{pid}\"");
    agent.wait_for("the exited process's series leaving /metrics", || {
        !agent.metrics().contains(&pid_label)
    });
    let cleared = agent.log();
    assert!(
        cleared
            .iter()
            .any(|l| l["suspect"]["pid"] == pid && l["change"] == "cleared"),
        "a `cleared` line: {cleared:?}"
    );
}

#[test]
fn a_steady_leak_gets_its_fd_exhaustion_predicted_within_a_quarter() {
    let agent = agent(&[]);
    let (_server, port) = leak_server("127.0.0.1");
    let limit = 160;
    let mut client = leak_client("127.0.0.1", port, Some(limit));
    let pid = client.pid();
    // Ten sockets a second: from a handful of fds to 160 in about 15 s.
    client.send_line("drip 0.1");
    let (report, _) = agent.wait_leaks(
        &format!("?pid={pid}"),
        Duration::from_secs(12),
        "a forecast",
        |r| process(r, pid).is_some_and(|p| p["outlook"]["fd_exhaustion_s"].is_number()),
    );
    let asked = unix_now();
    let outlook = &process(&report, pid).unwrap()["outlook"];
    assert_eq!(outlook["fd_limit"], limit);
    let predicted = asked + outlook["fd_exhaustion_s"].as_f64().unwrap();
    let line = client.read_line();
    let actual: f64 = line
        .strip_prefix("emfile ")
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the fixture said {line:?}, not `emfile T N`"));
    let horizon = actual - asked;
    let error = (predicted - actual).abs() / horizon;
    eprintln!(
        "forecast made {horizon:.1}s before EMFILE: predicted {:.1}s, off by {:.1}s ({:.0}%); rate {} sockets/h",
        predicted - asked,
        predicted - actual,
        error * 100.0,
        outlook["leak_rate_per_hour"]
    );
    assert!(
        horizon > 2.0,
        "the forecast came too late to test: {horizon}s"
    );
    assert!(
        error <= 0.25,
        "predicted {predicted}, EMFILE at {actual}: {:.0}% off",
        error * 100.0
    );
    let said = agent.log();
    let growing = said
        .iter()
        .find(|l| {
            l["suspect"]["pid"] == pid
                && l["message"]
                    .as_str()
                    .unwrap()
                    .contains("fd limit 160 reached in about")
        })
        .unwrap_or_else(|| panic!("a log line with the forecast: {said:?}"));
    assert!(
        growing["suspect"]["classes"]
            .as_array()
            .unwrap()
            .contains(&"growing".into())
    );
    let metrics = agent.metrics();
    assert!(
        sample(
            &metrics,
            "leakbpf_fd_exhaustion_seconds",
            &[("pid", &pid.to_string())]
        )
        .is_some(),
        "{metrics}"
    );
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A network namespace for one test, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("leakbpf-test-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "-n",
            &name,
            "addr",
            "add",
            "10.77.0.1/32",
            "dev",
            "lo",
        ]);
        Netns(name)
    }

    fn python(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, "python3", "-u"])
            .arg(leakbpf_tests::fixture_source("agent_leaker.py"))
            .args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|err| panic!("{args:?}: {err}"));
    assert!(status.success(), "{args:?} failed");
}

#[test]
fn sockets_inside_another_network_namespace_are_listed_with_its_addresses() {
    let ns = Netns::new();
    // Server and leaking client both start before the agent.
    let mut server = Fixture::spawn(ns.python(&["serve", "10.77.0.1"]));
    let port = server.port();
    server.ready();
    let mut client = Fixture::spawn(ns.python(&["client", "10.77.0.1", &port.to_string()]));
    client.ready();
    open(&mut client, 3);
    // `ip netns exec` execs python: the fixture's pid is the client.
    let pid = client.pid();
    let agent = agent(&[]);
    let (report, _) = agent.wait_leaks(
        &format!("?pid={pid}"),
        Duration::from_secs(3 * INTERVAL_S),
        "the namespaced client",
        |r| open_of(r, pid) == 3,
    );
    let group = &process(&report, pid).unwrap()["groups"][0];
    assert_eq!(group["direction"], "preexisting", "opened before the agent");
    assert_eq!(group["holder_found"], true);
    let remote = format!("10.77.0.1:{port}");
    for socket in group["sockets"].as_array().unwrap() {
        assert_eq!(socket["remote"], remote.as_str(), "{socket}");
        assert!(socket["local"].as_str().unwrap().starts_with("10.77.0.1:"));
        assert_eq!(socket["state"], "CLOSE_WAIT");
    }
    assert_eq!(report["complete"], true, "{report:#}");
    let warnings = report["warnings"].to_string();
    assert!(!warnings.contains("network namespace"), "{warnings}");
}

#[test]
fn lost_events_are_healed_by_reconciliation_and_counted() {
    // The smallest ring: a stopped reader loses a burst.
    let agent = agent(&["--ring-bytes", "4096"]);
    let (_server, port) = leak_server("127.0.0.1");
    let mut client = leak_client("127.0.0.1", port, None);
    let pid = client.pid();
    open(&mut client, 10);
    let query = format!("?pid={pid}");
    agent.wait_leaks(&query, Duration::from_secs(5), "the first 10", |r| {
        open_of(r, pid) == 10
    });
    agent.signal(libc::SIGSTOP);
    // While the reader is stopped: 300 opens fill the ring; the closes of
    // the first 10 find it full.
    open(&mut client, 300);
    client.send_line("close 10");
    assert_eq!(client.read_line(), "open 300");
    std::thread::sleep(Duration::from_millis(200));
    agent.signal(libc::SIGCONT);
    let (report, _) = agent.wait_leaks(
        &query,
        Duration::from_secs(6 * INTERVAL_S),
        "exact counts after reconciliation",
        |r| open_of(r, pid) == 300 && r["complete"] == true,
    );
    assert!(
        report["lost_events"].as_u64().unwrap() > 0,
        "the burst lost events: {report:#}"
    );
    let metrics = agent.metrics();
    let lost = sample(&metrics, "leakbpf_lost_total", &[("cause", "ringbuf_full")]).unwrap();
    let removed = sample(
        &metrics,
        "leakbpf_reconciliation_fixes_total",
        &[("fix", "removed")],
    )
    .unwrap();
    let added = sample(
        &metrics,
        "leakbpf_reconciliation_fixes_total",
        &[("fix", "added")],
    )
    .unwrap();
    eprintln!("lost {lost} events; reconciliation removed {removed}, added {added}");
    assert!(lost > 0.0);
    // At least one of the 10 (a close is smaller than an open: a few may
    // still fit in the full ring); the server's sockets count too.
    assert!(
        removed >= 1.0,
        "the sockets closed while their closes were lost: {removed}"
    );
    assert!(
        added > 0.0 && added <= 300.0,
        "opens lost and added back: {added}"
    );
    assert_eq!(sample(&metrics, "leakbpf_complete", &[]), Some(1.0));
}

/// The ids `bpftool` lists for `what` (`prog` or `link`).
fn bpf_ids(what: &str) -> std::collections::BTreeSet<u64> {
    let output = Command::new("bpftool")
        .args([what, "list", "--json"])
        .output()
        .expect("running bpftool (Debian's bpftool package)");
    assert!(output.status.success(), "bpftool {what} list failed");
    let listed: Value = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    listed
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|entry| entry["id"].as_u64())
        .collect()
}

#[test]
fn sigterm_exits_within_two_seconds_and_leaves_nothing_attached() {
    let (programs, linked) = (bpf_ids("prog"), bpf_ids("link"));
    let pinned_before = std::fs::read_dir("/sys/fs/bpf").map_or(0, Iterator::count);
    let agent = agent(&[]);
    // What appeared while it runs is its own (other tests run one at a time).
    let its_programs: Vec<u64> = bpf_ids("prog").difference(&programs).copied().collect();
    let its_links: Vec<u64> = bpf_ids("link").difference(&linked).copied().collect();
    assert!(
        its_programs.len() >= 4,
        "the agent's programs are loaded: {its_programs:?}"
    );
    let (status, took) = agent.terminate();
    eprintln!(
        "SIGTERM to exit: {took:?}; {} programs and {} links detached",
        its_programs.len(),
        its_links.len()
    );
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // The kernel frees a program after its last reference goes, in a work
    // item: allow it a moment.
    let released = std::time::Instant::now();
    while released.elapsed() < Duration::from_secs(2)
        && bpf_ids("prog").iter().any(|id| its_programs.contains(id))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (programs_after, links_after) = (bpf_ids("prog"), bpf_ids("link"));
    let left: Vec<&u64> = its_programs
        .iter()
        .filter(|id| programs_after.contains(id))
        .collect();
    assert!(left.is_empty(), "programs left loaded: {left:?}");
    let left: Vec<&u64> = its_links
        .iter()
        .filter(|id| links_after.contains(id))
        .collect();
    assert!(left.is_empty(), "links left behind: {left:?}");
    let pinned_after = std::fs::read_dir("/sys/fs/bpf").map_or(0, Iterator::count);
    assert_eq!(pinned_after, pinned_before, "pins left in /sys/fs/bpf");
}

#[test]
fn curl_pprof_and_promtool_accept_the_outputs() {
    let agent = agent(&[]);
    let (_server, port) = leak_server("127.0.0.1");
    let mut client = leak_client("127.0.0.1", port, None);
    let pid = client.pid();
    open(&mut client, 2);
    agent.wait_leaks(
        &format!("?pid={pid}"),
        Duration::from_secs(5),
        "the leak",
        |r| open_of(r, pid) == 2,
    );
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.txt");
    std::fs::write(&metrics, agent.get("/metrics")).unwrap();
    let checked = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", metrics.display()))
        .output()
        .expect("running promtool (Debian's prometheus package)");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let url = agent.url(&format!("/leaks.pprof?pid={pid}"));
    let top = go_tool_pprof(&["-top", &url]);
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.status.success(),
        "go tool pprof: {}",
        String::from_utf8_lossy(&top.stderr)
    );
    assert!(text.contains("internal_connect"), "{text}");
    // An evaluation on demand (rate-limited in the agent).
    let fresh = agent.leaks(&format!("?pid={pid}&fresh=1"));
    assert_eq!(open_of(&fresh, pid), 2, "{fresh:#}");
    // A bad query is a 400 with the reason, not a crash.
    assert!(agent.try_get("/leaks?min_age=soon").is_none());
    assert!(agent.try_get("/leaks?bogus=1").is_none());
    assert_eq!(agent.get("/healthz"), b"ok\n");
}

/// The agent's resident set size, from /proc (`None` once it is gone).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Samples the agent's RSS and its kernel stack map every 2 s.
struct Sampler {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<(Vec<(f64, f64)>, f64)>,
}

impl Sampler {
    fn start(agent: &Agent, started: std::time::Instant) -> Sampler {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let agent_pid = agent.pid();
        let metrics_url = agent.url("/metrics");
        let thread = std::thread::spawn(move || {
            let mut rss = Vec::new();
            let mut max_kernel_stacks: f64 = 0.0;
            while stopped.recv_timeout(Duration::from_secs(2)).is_err() {
                let Some(kib) = rss_kib(agent_pid) else { break };
                #[allow(clippy::cast_precision_loss)]
                rss.push((started.elapsed().as_secs_f64(), kib as f64));
                let out = Command::new("curl")
                    .args(["-sf", &metrics_url])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                if let Some(n) = sample(&text, "leakbpf_tracked", &[("what", "kernel_stacks")]) {
                    max_kernel_stacks = max_kernel_stacks.max(n);
                }
            }
            (rss, max_kernel_stacks)
        });
        Sampler { stop, thread }
    }

    /// (time s, RSS KiB) samples, and the most stack-map entries seen.
    fn stop(self) -> (Vec<(f64, f64)>, f64) {
        let _ = self.stop.send(());
        self.thread.join().unwrap()
    }
}

/// Nothing was lost, so reconciliation had nothing to mend: a socket
/// released while a snapshot was being taken, yet listed by it, is not
/// brought back as pre-existing.
fn assert_nothing_to_mend(metrics: &str) {
    for fix in ["added", "removed"] {
        assert_eq!(
            sample(
                metrics,
                "leakbpf_reconciliation_fixes_total",
                &[("fix", fix)]
            ),
            Some(0.0),
            "reconciliation {fix} sockets although no event was lost"
        );
    }
}

/// Least-squares slope of `(x, y)` points.
fn slope(points: &[(f64, f64)]) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let num: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    num / den
}

#[test]
fn a_million_connections_from_4096_stacks_leave_exactly_the_leaks_flat_memory_and_a_bounded_stack_map()
 {
    const CONNECTIONS: u64 = 1_000_000;
    const LEAK_EVERY: u64 = 100_000;
    // Paced: a busy service's churn over a minute and more, not a flood
    // that saturates both cores (that is the benchmark's job).
    const PER_SECOND: u64 = 12_500;
    let agent = Agent::start(&["--interval", "2s", "--window", "3"]);
    let mut churn = Fixture::spawn({
        let mut c = Command::new(c_fixture_linked("churn_stacks", &["-pthread"]));
        c.args([
            CONNECTIONS.to_string(),
            LEAK_EVERY.to_string(),
            PER_SECOND.to_string(),
        ]);
        c
    });
    let pid = churn.pid();
    let started = std::time::Instant::now();
    let sampler = Sampler::start(&agent, started);
    let done = loop {
        let line = churn.read_line();
        if line.starts_with("done ") {
            break line;
        }
    };
    let took = started.elapsed();
    let leaks: u64 = done.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(leaks, CONNECTIONS / LEAK_EVERY);
    // Two evaluations after the churn: nothing in flight any more.
    let query = format!("?pid={pid}");
    let (report, _) = agent.wait_leaks(&query, Duration::from_secs(10), "exactly the leaks", |r| {
        process(r, pid)
            .is_some_and(|p| p["groups"].as_array().unwrap().len() == 1 && p["open"] == leaks)
    });
    let (rss, max_kernel_stacks) = sampler.stop();
    let group = &process(&report, pid).unwrap()["groups"][0];
    assert_eq!(group["count"], leaks);
    assert!(
        symbols(&group["stack"]).iter().any(|f| f == "leak_here"),
        "{group:#}"
    );
    assert_eq!(group["classes"][0], "close_wait");
    assert_eq!(report["lost_stacks"], 0, "{report:#}");
    assert_eq!(report["lost_events"], 0, "{report:#}");
    assert_eq!(report["complete"], true, "{report:#}");
    // Zero false suspects: every suspect ever logged for the churn is the leak.
    for line in agent.log().iter().filter(|l| l["suspect"]["pid"] == pid) {
        let frames = line["suspect"]["top_frames"].to_string();
        assert!(frames.contains("leak_here"), "a false suspect: {line}");
    }
    // Stacks no open socket uses are freed once unused for two intervals.
    agent.wait_for("the stack map to shed the churn's stacks", || {
        sample(
            &agent.metrics(),
            "leakbpf_tracked",
            &[("what", "kernel_stacks")],
        )
        .is_some_and(|n| n < 256.0)
    });
    let metrics = agent.metrics();
    let kernel_stacks = sample(&metrics, "leakbpf_tracked", &[("what", "kernel_stacks")]).unwrap();
    let pruned = sample(
        &metrics,
        "leakbpf_evictions_total",
        &[("what", "kernel_stacks")],
    )
    .unwrap();
    let tracked = sample(&metrics, "leakbpf_tracked", &[("what", "sockets")]).unwrap();
    assert_nothing_to_mend(&metrics);
    // After warm-up (the first 10 s).
    let warm: Vec<(f64, f64)> = rss.iter().copied().filter(|(t, _)| *t >= 10.0).collect();
    let per_min = slope(&warm) * 60.0;
    let (first, last) = (warm.first().unwrap().1, warm.last().unwrap().1);
    eprintln!(
        "churn: {CONNECTIONS} connections in {took:?}; RSS {first} -> {last} KiB after warm-up, slope {per_min:.1} KiB/min \
         over {} samples; kernel stack map: at most {max_kernel_stacks} entries seen, {kernel_stacks} now, {pruned} pruned; \
         {tracked} sockets tracked",
        warm.len()
    );
    eprintln!("RSS samples (s, KiB): {rss:?}");
    assert!(
        warm.len() >= 3,
        "too few RSS samples after warm-up: {rss:?}"
    );
    assert!(
        last - first < 16.0 * 1024.0,
        "RSS grew by {} KiB after warm-up: {rss:?}",
        last - first
    );
    assert!(max_kernel_stacks < 16384.0, "the stack map filled up");
    assert!(
        kernel_stacks < 256.0,
        "stacks of closed sockets stay: {kernel_stacks}"
    );
    assert!(
        pruned >= max_kernel_stacks - 256.0,
        "the churn's stacks were pruned: {pruned} of {max_kernel_stacks}"
    );
}
