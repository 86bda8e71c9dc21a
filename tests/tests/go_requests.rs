//! The Go request site: `leakbpf trace` names the user function whose
//! net/http request dialed each leaked connection, with real Go programs
//! built by Debian's Go 1.19 and bookworm-backports' Go 1.23, with and
//! without symbols, over IPv4 and a Happy Eyeballs (dual-stack) dial.
//! Runs as root, one test at a time.
use std::{path::PathBuf, process::Command, thread, time::Duration};

use leakbpf_tests::{
    Fixture, Leakbpf, command, fixture_source, go_binary_with, groups, groups_in, opens, process,
    symbols, trace_json,
};
use serde_json::{Value, json};

/// The line of `tests/fixtures/gorequests.go` that carries `marker`.
fn marked_line(marker: &str) -> u64 {
    let source = std::fs::read_to_string(fixture_source("gorequests.go")).unwrap();
    let found: Vec<usize> = source
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(marker))
        .map(|(index, _)| index + 1)
        .collect();
    assert_eq!(found.len(), 1, "marker {marker:?} on lines {found:?}");
    found[0] as u64
}

/// The request stack's frames of the program's own code (package main):
/// (function, file name, line).
fn main_frames(group: &Value) -> Vec<(String, String, u64)> {
    group["request_stack"]
        .as_array()
        .unwrap_or_else(|| panic!("group without request_stack: {group:#}"))
        .iter()
        .filter(|frame| {
            frame["symbol"]
                .as_str()
                .is_some_and(|s| s.starts_with("main."))
        })
        .map(|frame| {
            (
                frame["symbol"].as_str().unwrap().to_owned(),
                frame["file"]
                    .as_str()
                    .and_then(|f| f.rsplit('/').next())
                    .unwrap_or("")
                    .to_owned(),
                frame["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// `gorequests server 300ms` of `binary`, ready; and its port.
fn server(binary: &PathBuf) -> (Fixture, u16) {
    let mut server = Fixture::spawn(command(binary, &["server", "300ms"]));
    let port = server.port();
    server.ready();
    (server, port)
}

/// `gorequests two-sites URL 3 2` (through `wrap`, e.g. into a mount
/// namespace), traced; the report and the client's pid. The server runs
/// the same binary and starts first, so leakbpf probes it at start-up.
fn two_sites(binary: &PathBuf, host: &str, wrap: &[&str], trace_args: &[&str]) -> (Value, u32) {
    let (_server, port) = server(binary);
    let trace = trace_json(trace_args);
    let url = format!("http://{host}:{port}/");
    let client_args = ["two-sites", url.as_str(), "3", "2"];
    let mut client = if wrap.is_empty() {
        Fixture::spawn(command(binary, &client_args))
    } else {
        let mut all: Vec<&str> = wrap[1..].to_vec();
        let binary = binary.to_str().unwrap();
        all.push(binary);
        all.extend_from_slice(&client_args);
        Fixture::spawn(command(wrap[0], &all))
    };
    client.ready();
    // The server's idle timeout (300 ms) closes its ends: CLOSE_WAIT.
    thread::sleep(Duration::from_millis(1500));
    (trace.stop(), client.pid())
}

/// One group per request site, with the exact count, the site's function
/// and its file:line, the handler that called it, and the precise hint.
fn assert_two_sites(report: &Value, pid: u32, remote_host: &str, racers: bool) {
    let entry = process(report, pid)
        .unwrap_or_else(|| panic!("client pid {pid} is not in the report: {report:#}"));
    assert_eq!(entry["open"], 5, "{entry:#}");
    let connects = groups_in(report, pid, "connect");
    assert_eq!(
        connects.len(),
        2,
        "two request sites, two groups: {entry:#}"
    );
    assert_eq!(groups(report, pid).len(), 2, "{entry:#}");
    for (group, site, count) in [
        (connects[0], "fetchUser", 3),
        (connects[1], "fetchOrder", 2),
    ] {
        assert_eq!(group["count"], count, "{group:#}");
        assert_eq!(group["states"], json!({"CLOSE_WAIT": count}), "{group:#}");
        let remotes = group["remotes"].as_array().unwrap();
        assert_eq!(remotes.len(), 1, "{group:#}");
        assert!(
            remotes[0]["addr"]
                .as_str()
                .unwrap()
                .starts_with(remote_host),
            "{group:#}"
        );
        let site_line = marked_line(&format!("request site: {site}"));
        let call_line = marked_line(&format!("handler calls: {site}"));
        let frames = main_frames(group);
        assert_eq!(
            frames[..2],
            [
                (
                    format!("main.{site}"),
                    "gorequests.go".to_owned(),
                    site_line
                ),
                (
                    "main.handler".to_owned(),
                    "gorequests.go".to_owned(),
                    call_line
                ),
            ],
            "request stack: {:#}",
            group["request_stack"]
        );
        // The connect's own stack: the dial goroutine's, or a racer's.
        let stack = symbols(&group["stack"]);
        let dialed_by = if racers {
            "net.(*sysDialer).dialParallel.func1"
        } else {
            "net/http.(*Transport).dialConn"
        };
        assert!(
            stack.iter().any(|s| s == dialed_by),
            "connect stack without {dialed_by}: {stack:?}"
        );
        let hint = format!(
            "requested from main.{site} (gorequests.go:{site_line}) \u{2190} main.handler \
             (gorequests.go:{call_line}); each connection also pins \
             persistConn.readLoop/writeLoop goroutines"
        );
        let hints: Vec<&str> = group["hints"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            hints.iter().any(|h| h.starts_with(&hint)),
            "no hint starting {hint:?}: {hints:#?}"
        );
    }
    assert_eq!(report["complete"], true, "{report:#}");
    let unnamed: Vec<&Value> = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w.as_str().unwrap_or("").contains("no request site"))
        .collect();
    assert!(unnamed.is_empty(), "{unnamed:?}");
}

fn two_sites_with(version: &str, stripped: bool) {
    let binary = go_binary_with("gorequests", version, stripped);
    let (report, pid) = two_sites(&binary, "127.0.0.1", &[], &[]);
    assert_two_sites(&report, pid, "127.0.0.1:", false);
}

#[test]
fn go_1_19_two_request_sites() {
    two_sites_with("1.19", false);
}

#[test]
fn go_1_19_stripped_two_request_sites() {
    two_sites_with("1.19", true);
}

#[test]
fn go_1_23_two_request_sites() {
    two_sites_with("1.23", false);
}

#[test]
fn go_1_23_stripped_two_request_sites() {
    two_sites_with("1.23", true);
}

/// A name that resolves to ::1 and 127.0.0.1 (an /etc/hosts bind-mounted
/// in the client's own mount namespace, never the host's): net dials on
/// Happy Eyeballs racer goroutines, bridged through the *sysDialer.
#[test]
fn happy_eyeballs_racers_keep_the_request_site() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "::1 dualstack.leakbpf.test\n127.0.0.1 dualstack.leakbpf.test\n",
    )
    .unwrap();
    let mount = format!("mount --bind {} /etc/hosts && exec \"$@\"", hosts.display());
    for (version, stripped) in [("1.19", false), ("1.23", true)] {
        let binary = go_binary_with("gorequests", version, stripped);
        let (report, pid) = two_sites(
            &binary,
            "dualstack.leakbpf.test",
            &[
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &mount,
                "sh",
            ],
            &[],
        );
        // ::1 sorts first (RFC 6724), so the primary racer connects there.
        assert_two_sites(&report, pid, "[::1]:", true);
    }
}

/// `--no-go-uprobes`: the report is what it was before request sites: one
/// group for both sites (same dial stack), no `request_stack`, the old
/// "caller is on another goroutine" hint.
#[test]
fn without_go_uprobes_the_report_is_as_before() {
    let binary = go_binary_with("gorequests", "1.19", false);
    let (report, pid) = two_sites(&binary, "127.0.0.1", &[], &["--no-go-uprobes"]);
    let connects = groups_in(&report, pid, "connect");
    assert_eq!(
        connects.len(),
        1,
        "{:#}",
        process(&report, pid).unwrap_or(&Value::Null)
    );
    let group = connects[0];
    assert_eq!(group["count"], 5, "{group:#}");
    assert!(group.get("request_stack").is_none(), "{group:#}");
    let hints = group["hints"].as_array().unwrap();
    assert_eq!(hints.len(), 1, "{group:#}");
    assert!(
        hints[0]
            .as_str()
            .unwrap()
            .contains("the caller is on another goroutine"),
        "{group:#}"
    );
    // Nothing about request sites anywhere in the report.
    let text = report.to_string();
    assert!(!text.contains("request_stack"), "{text}");
    assert!(!text.contains("no request site"), "{text}");
}

/// `events --stacks`: each connect of a Go client carries its request
/// stack (3 from fetchUser, 2 from fetchOrder), accepts none.
#[test]
fn events_carry_the_request_stack() {
    let binary = go_binary_with("gorequests", "1.19", false);
    let (server, port) = server(&binary);
    let events = Leakbpf::events(&["--stacks"]);
    let url = format!("http://127.0.0.1:{port}/");
    let mut client = Fixture::spawn(command(&binary, &["two-sites", &url, "3", "2"]));
    client.ready();
    let pid = client.pid();
    events.wait_for("the client's 5 connects", |seen| {
        opens(seen, pid, "connect").len() == 5
    });
    let stopped = events.stop();
    let sites: Vec<String> = opens(&stopped.events, pid, "connect")
        .iter()
        .map(|open| {
            let request = symbols(&open["request_stack"]);
            assert!(open["request_stack_id"].is_u64(), "{open:#}");
            request
                .into_iter()
                .find(|s| s.starts_with("main.fetch"))
                .unwrap_or_else(|| panic!("no request site: {open:#}"))
        })
        .collect();
    assert_eq!(
        sites,
        [
            "main.fetchUser",
            "main.fetchUser",
            "main.fetchUser",
            "main.fetchOrder",
            "main.fetchOrder"
        ]
    );
    for accept in opens(&stopped.events, server.pid(), "accept") {
        assert!(accept.get("request_stack").is_none(), "{accept:#}");
        assert!(accept.get("request_stack_id").is_none(), "{accept:#}");
    }
}

fn bpftool_json(args: &[&str]) -> Value {
    let output = Command::new("bpftool")
        .args(args)
        .arg("--json")
        .output()
        .expect("running bpftool (Debian's bpftool package)");
    assert!(output.status.success(), "bpftool {args:?} failed");
    serde_json::from_slice(&output.stdout).expect("bpftool JSON")
}

/// Ids of the loaded Go uprobe programs (`go_*`), any process's.
fn go_programs() -> Vec<u64> {
    bpftool_json(&["prog", "show"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("go_")))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// Links of `programs`, as bpftool lists them.
fn links_of(programs: &[u64]) -> usize {
    bpftool_json(&["link", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l["prog_id"]
                .as_u64()
                .is_some_and(|id| programs.contains(&id))
        })
        .count()
}

/// Polls `done` until it holds or the test timeout passes.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < *leakbpf_tests::TIMEOUT,
            "timed out waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A Go binary no process ran when tracing started is probed at its first
/// socket, once for all its processes, and let go when the last one exits.
#[test]
fn a_binary_is_probed_once_and_let_go_with_its_last_process() {
    let dir = tempfile::tempdir().unwrap();
    // A copy: an inode of its own, unknown to leakbpf at start-up.
    let binary = dir.path().join("gorequests-copy");
    std::fs::copy(go_binary_with("gorequests", "1.19", false), &binary).unwrap();
    // Only this trace's programs count: an earlier test's leakbpf may
    // still be letting go of its own.
    let others = go_programs();
    let trace = trace_json(&[]);
    let ours: Vec<u64> = go_programs()
        .into_iter()
        .filter(|id| !others.contains(id))
        .collect();
    // go_process_exec's tracepoint link; the binary is not probed yet.
    assert_eq!(links_of(&ours), 1, "programs {ours:?}");
    let (mut server, port) = server(&binary);
    let url = format!("http://127.0.0.1:{port}/");
    let mut client = Fixture::spawn(command(&binary, &["two-sites", &url, "3", "2"]));
    client.ready();
    // Go 1.19 (no parentGoid): four probes, once for the client and the
    // server together.
    eventually("the binary's four probes", || links_of(&ours) == 1 + 4);
    client.kill();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(links_of(&ours), 1 + 4, "the server still runs it");
    server.kill();
    eventually("the probes let go", || links_of(&ours) == 1);
    let report = trace.stop();
    assert_eq!(report["complete"], true, "{report:#}");
}

/// A Go program started after leakbpf, from a binary no process ran when
/// tracing started: leakbpf probes it when it execs, so its requests made
/// after that (here 300 ms later) are all named.
#[test]
fn a_program_started_later_is_probed_at_its_exec() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("gorequests-late");
    std::fs::copy(go_binary_with("gorequests", "1.23", true), &binary).unwrap();
    let trace = trace_json(&[]);
    let (_server, port) = server(&binary);
    let url = format!("http://127.0.0.1:{port}/");
    let mut client = command(&binary, &["two-sites", &url, "3", "2"]);
    client.env("GOREQUESTS_WAIT", "300ms");
    let mut client = Fixture::spawn(client);
    client.ready();
    thread::sleep(Duration::from_millis(1500));
    let report = trace.stop();
    assert_two_sites(&report, client.pid(), "127.0.0.1:", false);
}
