//! End-to-end `leakbpf trace`: real leaks in real processes on loopback,
//! then the report's exact numbers per pid, its classes and its stacks.
//! Runs as root, one test at a time.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use leakbpf_tests::{
    Fixture, TIMEOUT, TraceRun, c_server, command, expected_hooks, go_binary, go_binary_stripped,
    go_dialer, go_tool_pprof, groups, groups_in, leakbpf_bin, process, python, symbols, trace_json,
    uring_server,
};
use serde_json::{Value, json};

/// `httpleak server IDLE_TIMEOUT`, ready; returns it and its port.
fn http_server(idle_timeout: &str) -> (Fixture, u16) {
    let mut server = Fixture::spawn(command(go_binary("httpleak"), &["server", idle_timeout]));
    let port = server.port();
    server.ready();
    (server, port)
}

/// `server [ARGS]` (the C server); returns it and its port (not yet ready).
fn c_server_on(args: &[&str]) -> (Fixture, u16) {
    let mut server = Fixture::spawn(command(c_server(), args));
    let port = server.port();
    (server, port)
}

fn client_py(args: &[&str]) -> Fixture {
    let mut c = python("client.py");
    c.args(args);
    Fixture::spawn(c)
}

fn strs(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .collect()
}

/// The one group of `pid` in `direction`; panics with the process entry
/// otherwise.
fn only_group<'a>(report: &'a Value, pid: u32, direction: &str) -> &'a Value {
    let found = groups_in(report, pid, direction);
    assert_eq!(
        found.len(),
        1,
        "pid {pid}: expected exactly one {direction} group; its entry: {:#}",
        process(report, pid).unwrap_or(&Value::Null)
    );
    found[0]
}

fn has_class(group: &Value, class: &str) -> bool {
    strs(&group["classes"]).contains(&class)
}

fn sockets(group: &Value) -> &Vec<Value> {
    group["sockets"]
        .as_array()
        .unwrap_or_else(|| panic!("group without sockets: {group}"))
}

fn fixtures_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures");
    std::fs::create_dir_all(&dir).expect("creating target/fixtures");
    dir
}

/// A Go client that never closes its response bodies: once the server's
/// idle timeout closes its end, every connection sits in CLOSE_WAIT, all
/// opened by net/http's dial goroutine.
#[test]
fn go_body_never_closed_is_close_wait() {
    let (server, port) = http_server("300ms");
    let trace = trace_json(&[]);
    let url = format!("http://127.0.0.1:{port}/");
    let mut client = Fixture::spawn(command(go_binary("httpleak"), &["body-leak", &url, "5"]));
    client.ready();
    thread::sleep(Duration::from_millis(1500));
    let report = trace.stop();
    let (cpid, spid) = (client.pid(), server.pid());

    let entry = process(&report, cpid)
        .unwrap_or_else(|| panic!("client pid {cpid} is not in the report: {report:#}"));
    assert_eq!(entry["open"], 5, "{entry:#}");
    assert!(
        entry["exe"]
            .as_str()
            .is_some_and(|exe| exe.ends_with("/httpleak")),
        "exe {}",
        entry["exe"]
    );
    assert_eq!(groups(&report, cpid).len(), 1, "{entry:#}");
    let group = only_group(&report, cpid, "connect");
    assert_eq!(group["count"], 5, "{group:#}");
    let stack = symbols(&group["stack"]);
    assert!(
        stack.iter().any(|s| s == "net/http.(*Transport).dialConn"),
        "connect stack without net/http.(*Transport).dialConn: {stack:?}"
    );
    assert!(has_class(group, "close_wait"), "{group:#}");
    assert_eq!(group["states"], json!({"CLOSE_WAIT": 5}), "{group:#}");
    let request = symbols(&group["request_stack"]);
    assert!(
        request.iter().any(|s| s == "main.postOnce"),
        "request stack without main.postOnce: {request:?}"
    );
    assert_eq!(
        group["remotes"],
        json!([{"addr": format!("127.0.0.1:{port}"), "count": 5}]),
        "{group:#}"
    );
    assert!(
        strs(&group["hints"]).iter().any(|h| h.contains("readLoop")),
        "no readLoop hint: {}",
        group["hints"]
    );
    assert_eq!(sockets(group).len(), 5, "{group:#}");

    // The server closed every connection it accepted (idle timeout);
    // its listener is not reported.
    let accepts = groups_in(&report, spid, "accept");
    assert!(
        accepts.is_empty(),
        "the server still holds accepted sockets: {accepts:#?}"
    );
}

/// A Go client that builds a Transport per request: each connection stays
/// idle and ESTABLISHED in its own pool, and the server holds the other end.
#[test]
fn go_transport_per_call_is_idle() {
    let (server, port) = http_server("0");
    let trace = trace_json(&["--idle", "1s"]);
    let url = format!("http://127.0.0.1:{port}/");
    let mut client = Fixture::spawn(command(
        go_binary("httpleak"),
        &["transport-per-call", &url, "4"],
    ));
    client.ready();
    thread::sleep(Duration::from_millis(2500));
    let report = trace.stop();
    let (cpid, spid) = (client.pid(), server.pid());

    let entry = process(&report, cpid)
        .unwrap_or_else(|| panic!("client pid {cpid} is not in the report: {report:#}"));
    assert_eq!(entry["open"], 4, "{entry:#}");
    let group = only_group(&report, cpid, "connect");
    assert_eq!(group["count"], 4, "{group:#}");
    assert_eq!(group["states"], json!({"ESTABLISHED": 4}), "{group:#}");
    assert!(has_class(group, "idle"), "{group:#}");
    let stack = symbols(&group["stack"]);
    assert!(
        stack.iter().any(|s| s == "net/http.(*Transport).dialConn"),
        "connect stack without net/http.(*Transport).dialConn: {stack:?}"
    );
    // The request site: the function that built a Transport per call.
    let request = symbols(&group["request_stack"]);
    assert!(
        request.iter().any(|s| s == "main.getWithNewTransport"),
        "request stack without main.getWithNewTransport: {request:?}"
    );
    assert!(
        strs(&group["hints"])
            .iter()
            .any(|h| h.starts_with("requested from main.getWithNewTransport (httpleak.go:")),
        "hints: {}",
        group["hints"]
    );
    for socket in sockets(group) {
        let idle = socket["idle_s"]
            .as_f64()
            .unwrap_or_else(|| panic!("socket without idle_s: {socket}"));
        assert!(idle >= 1.0, "socket idle only {idle} s: {socket}");
    }

    let server_group = only_group(&report, spid, "accept");
    assert_eq!(server_group["count"], 4, "{server_group:#}");
    let stack = symbols(&server_group["stack"]);
    assert!(
        stack
            .iter()
            .any(|s| s.starts_with("net.") || s.starts_with("internal/poll.")),
        "server accept stack without net. or internal/poll. frames: {stack:?}"
    );
}

/// 2000 connections opened while tracing, 1997 closed: the report names
/// only the 3 left, and nothing was lost on the way.
#[test]
fn thousands_opened_few_left() {
    let mut listener = {
        let mut c = python("listener.py");
        c.arg("0");
        Fixture::spawn(c)
    };
    let port = listener.port();
    listener.ready();
    // Every socket that matters is opened while tracing. Without the
    // pre-existing scan, `complete` says only whether events were lost or
    // the socket table filled up, not whether some unrelated process's fd
    // table was unreadable.
    let trace = trace_json(&[]);
    let mut client = client_py(&["127.0.0.1", &port.to_string(), "2000", "1997"]);
    client.ready();
    // Let the listener accept (and close) the last connections.
    thread::sleep(Duration::from_millis(1000));
    let report = trace.stop();
    let cpid = client.pid();

    let entry = process(&report, cpid)
        .unwrap_or_else(|| panic!("client pid {cpid} is not in the report: {report:#}"));
    assert_eq!(entry["open"], 3, "{entry:#}");
    let mut close_wait = 0;
    for group in groups(&report, cpid) {
        assert_eq!(group["direction"], "connect", "{group:#}");
        for socket in sockets(group) {
            assert_eq!(socket["state"], "CLOSE_WAIT", "{socket}");
            close_wait += 1;
        }
    }
    assert_eq!(close_wait, 3, "{entry:#}");
    assert_eq!(
        report["complete"], true,
        "incomplete: {}",
        report["incomplete"]
    );
    assert_eq!(report["lost_events"], 0);
}

/// The C server keeps 4 of 6 accepted sockets: one group, opened in
/// handle_client called from main, each socket with its fd.
#[test]
fn c_server_leaking_accepts() {
    let trace = trace_json(&[]);
    let (mut server, port) = c_server_on(&["0", "6", "2"]);
    let mut client = client_py(&["127.0.0.1", &port.to_string(), "6", "0"]);
    client.ready();
    server.ready();
    let report = trace.stop();
    let spid = server.pid();

    let group = only_group(&report, spid, "accept");
    assert_eq!(group["count"], 4, "{group:#}");
    let stack = symbols(&group["stack"]);
    let handle = stack.iter().position(|s| s == "handle_client");
    let main = stack.iter().position(|s| s == "main");
    assert!(
        matches!((handle, main), (Some(h), Some(m)) if h < m),
        "accept stack should have handle_client, then main: {stack:?}"
    );
    assert_eq!(sockets(group).len(), 4);
    for socket in sockets(group) {
        assert!(
            socket["fd"].as_i64().is_some_and(|fd| fd > 2),
            "accepted socket without an fd: {socket}"
        );
    }
}

/// Sockets open before tracing started still have their owners, fds and
/// states; they have no stack.
#[test]
fn preexisting_sockets_have_owners() {
    let (mut server, port) = c_server_on(&["0", "3", "0"]);
    let mut client = client_py(&["127.0.0.1", &port.to_string(), "3", "0"]);
    client.ready();
    server.ready();
    let report = trace_json(&["--duration", "1s"]).wait();

    for (who, pid) in [("server", server.pid()), ("client", client.pid())] {
        let entry = process(&report, pid)
            .unwrap_or_else(|| panic!("{who} pid {pid} is not in the report: {report:#}"));
        // The server's listener is not reported.
        assert_eq!(entry["open"], 3, "{who}: {entry:#}");
        let group = only_group(&report, pid, "preexisting");
        assert_eq!(group["count"], 3, "{who}: {group:#}");
        assert_eq!(group["stack"], json!([]), "{who}: {group:#}");
        assert_eq!(
            group["states"],
            json!({"ESTABLISHED": 3}),
            "{who}: {group:#}"
        );
        assert_eq!(sockets(group).len(), 3);
        for socket in sockets(group) {
            assert!(
                socket["fd"].as_i64().is_some_and(|fd| fd > 2),
                "{who} socket without an fd: {socket}"
            );
            assert_eq!(socket["state"], "ESTABLISHED", "{who}: {socket}");
        }
    }
}

/// `--no-preexisting` leaves out what was open before tracing: the same
/// processes then have no entry, while a socket opened during the trace
/// is still reported.
#[test]
fn no_preexisting_reports_only_what_tracing_saw_open() {
    let (mut server, port) = c_server_on(&["0", "4", "0"]);
    let mut before = client_py(&["127.0.0.1", &port.to_string(), "3", "0"]);
    before.ready();
    let trace = trace_json(&["--no-preexisting"]);
    let mut during = client_py(&["127.0.0.1", &port.to_string(), "1", "0"]);
    during.ready();
    server.ready();
    thread::sleep(Duration::from_millis(300));
    let report = trace.stop();

    assert!(
        process(&report, before.pid()).is_none(),
        "sockets from before the trace are left out: {report:#}"
    );
    let group = only_group(&report, during.pid(), "connect");
    assert_eq!(group["count"], 1, "{group:#}");
    let server_groups = groups(&report, server.pid());
    assert_eq!(server_groups.len(), 1, "{report:#}");
    assert_eq!(server_groups[0]["direction"], "accept");
    assert_eq!(
        server_groups[0]["count"], 1,
        "only the accept seen while tracing"
    );
    assert!(
        groups_in(&report, server.pid(), "preexisting").is_empty(),
        "{report:#}"
    );
}

/// A client killed while tracing leaves the report; the server's ends of
/// its connections are now CLOSE_WAIT.
#[test]
fn exited_process_drops_out() {
    // Tracing first: an accept() already blocked when the fentry or kprobe
    // set attaches returns past their hooks.
    let trace = trace_json(&[]);
    let (mut server, port) = c_server_on(&["0", "4", "0"]);
    let mut client = client_py(&["127.0.0.1", &port.to_string(), "4", "0"]);
    client.ready();
    server.ready();
    let cpid = client.pid();
    client.kill();
    thread::sleep(Duration::from_millis(300));
    let report = trace.stop();

    assert!(
        process(&report, cpid).is_none(),
        "killed client pid {cpid} is still reported: {:#}",
        process(&report, cpid).unwrap()
    );
    let group = only_group(&report, server.pid(), "accept");
    assert_eq!(group["count"], 4, "{group:#}");
    assert_eq!(group["states"], json!({"CLOSE_WAIT": 4}), "{group:#}");
    assert!(has_class(group, "close_wait"), "{group:#}");
}

#[test]
fn ipv6_report() {
    let trace = trace_json(&[]);
    let (mut server, port) = c_server_on(&["-6", "0", "2", "0"]);
    let mut client = client_py(&["-6", "::1", &port.to_string(), "2", "0"]);
    client.ready();
    server.ready();
    let report = trace.stop();

    let group = only_group(&report, client.pid(), "connect");
    assert_eq!(group["count"], 2, "{group:#}");
    assert_eq!(
        group["remotes"],
        json!([{"addr": format!("[::1]:{port}"), "count": 2}]),
        "{group:#}"
    );
}

/// Accepts made through io_uring never pass through accept(2). The fentry
/// and kprobe sets see them in inet_csk_accept and attribute them to the
/// server; the tracepoint set cannot, and its report says so by name
/// instead of leaving them out silently.
#[test]
fn io_uring_accepts() {
    let trace = trace_json(&[]);
    let mut server = Fixture::spawn(command(uring_server(), &["3"]));
    let port = server.port();
    let mut client = client_py(&["127.0.0.1", &port.to_string(), "3", "0"]);
    client.ready();
    server.ready();
    let report = trace.stop();
    let spid = server.pid();
    let warnings = strs(&report["warnings"]);
    let about_server: Vec<&&str> = warnings
        .iter()
        .filter(|w| w.starts_with(&format!("pid {spid} (uring_server) holds an io_uring")))
        .collect();
    let hooks = expected_hooks();
    if hooks == "tracepoint" {
        assert!(
            groups_in(&report, spid, "accept").is_empty(),
            "the tracepoint set cannot see io_uring accepts: {report:#}"
        );
        assert_eq!(about_server.len(), 1, "{warnings:#?}");
        assert!(
            about_server[0]
                .contains("3 TCP sockets leakbpf never saw opened: the tracepoint hook set"),
            "{}",
            about_server[0]
        );
    } else {
        // Accepted inline at submit or later from task work: one group per
        // kernel path, all the server's. (The user stack of the task-work
        // path ends in liburing, built without frame pointers.)
        let accepts = groups_in(&report, spid, "accept");
        let count: u64 = accepts.iter().map(|g| g["count"].as_u64().unwrap()).sum();
        assert_eq!(count, 3, "{accepts:#?}");
        assert!(about_server.is_empty(), "{hooks}: {warnings:#?}");
    }
    // The client's connects are seen by every set.
    assert_eq!(only_group(&report, client.pid(), "connect")["count"], 3);
}

/// One trace run with every kind of group the report makes, for the kernel
/// matrix, where each leakbpf start costs seconds of emulation: sockets
/// open before tracing (C server and Python client), a C server's accepts
/// with their stack, a Python client's IPv6 connects, and a Go client whose
/// connections sit in CLOSE_WAIT with net/http's dial stack.
#[test]
fn report_on_every_kind_of_group() {
    let (mut old_server, old_port) = c_server_on(&["0", "2", "0"]);
    let mut old_client = client_py(&["127.0.0.1", &old_port.to_string(), "2", "0"]);
    old_client.ready();
    old_server.ready();
    let (http, http_port) = http_server("300ms");

    let trace = trace_json(&[]);
    let (mut server, port) = c_server_on(&["0", "3", "1"]);
    let mut client = client_py(&["127.0.0.1", &port.to_string(), "3", "0"]);
    let (mut v6_server, v6_port) = c_server_on(&["-6", "0", "2", "0"]);
    let mut v6_client = client_py(&["-6", "::1", &v6_port.to_string(), "2", "0"]);
    let url = format!("http://127.0.0.1:{http_port}/");
    let mut go = Fixture::spawn(command(go_binary("httpleak"), &["body-leak", &url, "3"]));
    for fixture in [
        &mut client,
        &mut server,
        &mut v6_client,
        &mut v6_server,
        &mut go,
    ] {
        fixture.ready();
    }
    // The server's idle timeout closes its ends: CLOSE_WAIT on the client.
    thread::sleep(Duration::from_millis(1500));
    let report = trace.stop();

    for pid in [old_server.pid(), old_client.pid()] {
        let group = only_group(&report, pid, "preexisting");
        assert_eq!(group["count"], 2, "{group:#}");
        assert_eq!(group["states"], json!({"ESTABLISHED": 2}), "{group:#}");
    }
    let accepts = only_group(&report, server.pid(), "accept");
    assert_eq!(accepts["count"], 2, "{accepts:#}");
    let stack = symbols(&accepts["stack"]);
    let handle = stack.iter().position(|s| s == "handle_client");
    let main = stack.iter().position(|s| s == "main");
    assert!(
        matches!((handle, main), (Some(h), Some(m)) if h < m),
        "accept stack should have handle_client, then main: {stack:?}"
    );
    assert_eq!(only_group(&report, client.pid(), "connect")["count"], 3);
    let v6 = only_group(&report, v6_client.pid(), "connect");
    assert_eq!(
        v6["remotes"],
        json!([{"addr": format!("[::1]:{v6_port}"), "count": 2}]),
        "{v6:#}"
    );
    assert_eq!(only_group(&report, v6_server.pid(), "accept")["count"], 2);
    let go_group = only_group(&report, go.pid(), "connect");
    assert_eq!(go_group["count"], 3, "{go_group:#}");
    assert_eq!(go_group["states"], json!({"CLOSE_WAIT": 3}), "{go_group:#}");
    assert!(has_class(go_group, "close_wait"), "{go_group:#}");
    let stack = symbols(&go_group["stack"]);
    assert!(
        stack.iter().any(|s| s == "net/http.(*Transport).dialConn"),
        "Go connect stack without net/http.(*Transport).dialConn: {stack:?}"
    );
    drop(http);
}

/// A server already blocked in accept() when tracing starts: the
/// tracepoint set sees that accept at the syscall's exit; fexit and
/// kretprobe only see calls that entered after them, so the fentry and
/// kprobe sets miss it, and the report says so instead of silently
/// counting one socket too few.
#[test]
fn accept_waiting_before_tracing() {
    let (mut server, port) = c_server_on(&["0", "2", "0"]);
    // Give the server time to block in accept() before tracing starts.
    thread::sleep(Duration::from_millis(500));
    let trace = trace_json(&[]);
    let mut client = client_py(&["127.0.0.1", &port.to_string(), "2", "0"]);
    client.ready();
    server.ready();
    let report = trace.stop();
    let spid = server.pid();
    let warnings = strs(&report["warnings"]);
    let about_server: Vec<&&str> = warnings
        .iter()
        .filter(|w| w.starts_with(&format!("pid {spid} (server) holds")))
        .collect();
    let group = only_group(&report, spid, "accept");
    if expected_hooks() == "tracepoint" {
        assert_eq!(group["count"], 2, "{group:#}");
        assert!(about_server.is_empty(), "{warnings:#?}");
    } else {
        assert_eq!(group["count"], 1, "{group:#}");
        assert_eq!(about_server.len(), 1, "{warnings:#?}");
        assert!(
            about_server[0]
                .contains("holds 1 TCP socket opened while tracing that leakbpf never saw opened"),
            "{}",
            about_server[0]
        );
    }
}

/// Builds every fixture the tests use, so the kernel matrix's read-only
/// guests find them (`./x matrix` runs this first, on the host).
#[test]
fn fixtures_are_built() {
    for fixture in [
        c_server(),
        uring_server(),
        go_dialer(),
        go_binary("httpleak"),
        go_binary_stripped("dialer"),
    ] {
        assert!(fixture.is_file(), "{}", fixture.display());
    }
}

/// Runs a 2 s trace in FORMAT around a C server keeping 2 of 3 accepts;
/// returns what it printed and the server's pid.
fn small_leak_trace(args: &[&str]) -> (leakbpf_tests::TraceOutput, u32) {
    let trace = TraceRun::start(args);
    let (mut server, port) = c_server_on(&["0", "3", "1"]);
    let mut client = client_py(&["127.0.0.1", &port.to_string(), "3", "0"]);
    client.ready();
    server.ready();
    let output = trace.wait_raw();
    (output, server.pid())
}

#[test]
fn text_and_folded_formats() {
    let (output, spid) = small_leak_trace(&["--format", "text", "--duration", "2s"]);
    let text = output.text();
    assert!(
        text.contains(&format!("== pid {spid} server")),
        "no `== pid {spid} server` in:\n{text}"
    );
    assert!(text.contains("@ accept"), "no `@ accept` in:\n{text}");
    assert!(
        text.contains("handle_client"),
        "no handle_client in:\n{text}"
    );

    let (output, spid) = small_leak_trace(&["--format", "folded", "--duration", "2s"]);
    let folded = output.text();
    let prefix = format!("server (pid {spid});");
    let lines: Vec<&str> = folded
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains("handle_client"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one `{prefix}...handle_client...` line in:\n{folded}"
    );
    assert!(lines[0].ends_with(" 2"), "count is not 2: {}", lines[0]);
}

#[test]
fn pprof_is_read_by_go_tool_pprof() {
    let file = fixtures_dir().join("trace-test.pb.gz");
    let _ = std::fs::remove_file(&file);
    let path = file.to_str().expect("UTF-8 path");
    let (output, _) =
        small_leak_trace(&["--format", "pprof", "--output", path, "--duration", "2s"]);
    assert!(
        output.stdout.is_empty(),
        "pprof with --output wrote to stdout too"
    );
    let pprof = go_tool_pprof(&["-top", "-sample_index=sockets", path]);
    let stdout = String::from_utf8_lossy(&pprof.stdout);
    let stderr = String::from_utf8_lossy(&pprof.stderr);
    assert!(
        pprof.status.success(),
        "go tool pprof failed ({}):\n{stdout}\n{stderr}",
        pprof.status
    );
    assert!(
        stdout.contains("handle_client"),
        "go tool pprof -top does not mention handle_client:\n{stdout}\n{stderr}"
    );
}

/// Runs `leakbpf ARGS` to the end (at most [`TIMEOUT`]); its exit code and
/// stderr.
fn run_leakbpf(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(leakbpf_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running leakbpf");
    let start = Instant::now();
    while child.try_wait().expect("waiting for leakbpf").is_none() {
        if start.elapsed() > *TIMEOUT {
            let _ = child.kill();
            let output = child.wait_with_output().expect("leakbpf output");
            panic!(
                "leakbpf {args:?} still ran after {TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("leakbpf output");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_input_is_one_line_and_fails() {
    let (code, stderr) = run_leakbpf(&["trace", "--pid", "999999999"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr, "leakbpf: error: no process with pid 999999999\n");

    let missing = fixtures_dir().join("no-such-dir/report.pb.gz");
    let (code, stderr) = run_leakbpf(&[
        "trace",
        "--format",
        "pprof",
        "--output",
        missing.to_str().expect("UTF-8 path"),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("leakbpf: error: cannot write") && stderr.lines().count() == 1,
        "{stderr:?}"
    );
}

/// A Go binary linked with `-s -w` has no symbol table and no DWARF, yet
/// its stack is named from Go's own line table (.gopclntab).
#[test]
fn stripped_go_binary_gets_go_names() {
    let dialer = go_binary_stripped("dialer");
    let sections = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(&dialer)
        .output()
        .expect("running readelf (binutils)");
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(sections.contains(".gopclntab"), "{sections}");
    assert!(!sections.contains(".symtab"), "not stripped:\n{sections}");
    assert!(
        !sections.contains(".debug_info"),
        "not stripped:\n{sections}"
    );

    let mut server = Fixture::spawn(command(c_server(), &["0", "2", "0"]));
    let port = server.port();
    let trace = trace_json(&[]);
    let mut client = Fixture::spawn(command(&dialer, &[&format!("127.0.0.1:{port}"), "2"]));
    client.ready();
    server.ready();
    let report = trace.stop();
    let connects = groups_in(&report, client.pid(), "connect");
    assert_eq!(connects.len(), 1, "{report:#}");
    assert_eq!(connects[0]["count"], 2);
    let names = symbols(&connects[0]["stack"]);
    for wanted in ["net.(*Dialer).DialContext", "main.dialOne", "main.main"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing: {names:?}"
        );
    }
    let dial_one = connects[0]["stack"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["symbol"] == "main.dialOne")
        .unwrap();
    assert!(
        dial_one["file"]
            .as_str()
            .unwrap()
            .ends_with("fixtures/dialer.go"),
        "{dial_one}"
    );
}

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT each end tracing with a whole
/// report: the client's 2 open sockets, complete, written to --output.
#[test]
fn every_stop_signal_writes_the_report() {
    let (mut server, port) = c_server_on(&["0", "4", "0"]);
    for (name, signal) in [
        ("SIGINT", libc::SIGINT),
        ("SIGTERM", libc::SIGTERM),
        ("SIGHUP", libc::SIGHUP),
        ("SIGQUIT", libc::SIGQUIT),
    ] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("report.json");
        let trace = TraceRun::start(&[
            "--format",
            "json",
            "--no-preexisting",
            "--output",
            path.to_str().expect("UTF-8"),
        ]);
        let mut client = client_py(&["127.0.0.1", &port.to_string(), "1", "0"]);
        client.ready();
        thread::sleep(Duration::from_millis(300));
        trace.stop_with(signal);
        let report: Value = serde_json::from_slice(&std::fs::read(&path).expect("the report"))
            .unwrap_or_else(|err| panic!("{name}: not one JSON document: {err}"));
        assert_eq!(report["complete"], true, "{name}: {report:#}");
        let group = only_group(&report, client.pid(), "connect");
        assert_eq!(group["count"], 1, "{name}: {group:#}");
    }
    server.ready();
}

/// A signal during start-up (programs not yet attached) ends tracing at
/// once with a clean exit and a report, not a kill.
#[test]
fn an_early_signal_exits_cleanly() {
    let child = Command::new(leakbpf_bin())
        .args(["trace", "--format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting leakbpf trace");
    thread::sleep(Duration::from_millis(60));
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let output = child.wait_with_output().expect("waiting for leakbpf");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("not one JSON document ({err}): {stderr}"));
    assert_eq!(report["version"], 1);
}
