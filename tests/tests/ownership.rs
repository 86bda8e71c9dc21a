//! Sockets that change hands: `leakbpf trace` reports a socket under the
//! processes that hold an fd for it when tracing ends, keeps who opened it
//! (and whether that process is gone), and counts a shared socket once.
//! Real processes fork, exit, pass fds over SCM_RIGHTS and reuse pids; the
//! report must be exact and say `complete`. Runs as root, one at a time.
use std::{thread, time::Duration};

use leakbpf_tests::{
    Fixture, c_fixture, fixture_source, groups, process, python, symbols, trace_json,
};
use serde_json::Value;

/// The accept-and-close sink: clients' sockets end in CLOSE_WAIT.
fn listener() -> (Fixture, u16) {
    let mut c = python("listener.py");
    c.arg("0");
    let mut listener = Fixture::spawn(c);
    let port = listener.port();
    listener.ready();
    (listener, port)
}

fn handoff(args: &[&str]) -> Fixture {
    let mut c = python("handoff.py");
    c.args(args);
    Fixture::spawn(c)
}

/// The one group `pid` holds; panics with its entry otherwise.
fn only_group(report: &Value, pid: u32) -> &Value {
    let found = groups(report, pid);
    assert_eq!(
        found.len(),
        1,
        "pid {pid}: expected exactly one group; its entry: {:#}",
        process(report, pid).unwrap_or(&Value::Null)
    );
    found[0]
}

fn open_of(report: &Value, pid: u32) -> u64 {
    process(report, pid).map_or(0, |p| p["open"].as_u64().unwrap_or(0))
}

fn assert_complete(report: &Value) {
    assert_eq!(
        report["complete"], true,
        "incomplete: {}",
        report["incomplete"]
    );
}

/// A group opened by `opener`, with a stack, held where it is found.
fn assert_opened_by(group: &Value, opener: u32, exited: bool) {
    assert_eq!(group["direction"], "connect", "{group:#}");
    assert_eq!(group["opener"]["pid"], opener, "{group:#}");
    assert_eq!(group["opener"]["exited"], exited, "{group:#}");
    assert_eq!(group["holder_found"], true, "{group:#}");
    assert!(
        group["stack"].as_array().is_some_and(|s| !s.is_empty()),
        "the opener's stack is kept: {group:#}"
    );
}

/// The parent opens 5, forks, closes its copies and stays: the child holds
/// all 5, opened by the living parent; `--comm` of the child finds them.
#[test]
fn fork_parent_closes_child_keeps() {
    let (_listener, port) = listener();
    let all = trace_json(&[]);
    let by_comm = trace_json(&["--comm", "handoff-child"]);
    let mut parent = handoff(&["fork-keep", &port.to_string(), "5"]);
    let children = parent.ready_with_children();
    thread::sleep(Duration::from_millis(500));
    let report = all.stop();
    let filtered = by_comm.stop();
    let (ppid, child) = (parent.pid(), children[0]);

    assert_eq!(open_of(&report, child), 5, "{report:#}");
    assert_eq!(open_of(&report, ppid), 0, "the parent holds nothing");
    let group = only_group(&report, child);
    assert_eq!(group["count"], 5);
    assert_opened_by(group, ppid, false);
    assert_complete(&report);

    assert_eq!(filtered["open_sockets"], 5, "{filtered:#}");
    assert_eq!(open_of(&filtered, child), 5, "{filtered:#}");
    assert_complete(&filtered);
}

/// The parent forks and exits at once and is reaped (a daemon's double
/// fork, a shell): the child holds all 5, their opener is gone.
#[test]
fn fork_parent_exits_child_keeps() {
    let (_listener, port) = listener();
    let trace = trace_json(&[]);
    let mut parent = handoff(&["fork-exit", &port.to_string(), "5"]);
    let children = parent.ready_with_children();
    parent.wait_exit();
    let ppid = parent.pid();
    thread::sleep(Duration::from_millis(500));
    let report = trace.stop();

    let child = children[0];
    assert_eq!(open_of(&report, child), 5, "{report:#}");
    assert!(process(&report, ppid).is_none(), "{report:#}");
    assert_opened_by(only_group(&report, child), ppid, true);
    assert_complete(&report);
}

/// Sockets shared by fork before tracing: while both hold them each lists
/// them, marked shared, counted once; once the parent exits during the
/// trace, the child alone holds all 3.
#[test]
fn shared_before_tracing_then_the_parent_exits() {
    let (_listener, port) = listener();
    let mut parent = handoff(&["fork-hold", &port.to_string(), "3"]);
    let children = parent.ready_with_children();
    let (ppid, child) = (parent.pid(), children[0]);

    let both = trace_json(&["--pid", &ppid.to_string(), "--pid", &child.to_string()]);
    thread::sleep(Duration::from_millis(300));
    let shared = both.stop();
    assert_eq!(shared["open_sockets"], 3, "each socket once: {shared:#}");
    for (pid, other) in [(ppid, child), (child, ppid)] {
        let group = only_group(&shared, pid);
        assert_eq!(group["direction"], "preexisting", "{group:#}");
        assert_eq!(
            (group["count"].as_u64(), group["shared"].as_u64()),
            (Some(3), Some(3))
        );
        for socket in group["sockets"].as_array().unwrap() {
            assert_eq!(
                socket["shared_with"],
                serde_json::json!([other]),
                "{socket}"
            );
        }
    }
    assert_complete(&shared);

    let trace = trace_json(&[]);
    parent.send_line("exit");
    parent.wait_exit();
    thread::sleep(Duration::from_millis(300));
    let report = trace.stop();
    assert_eq!(open_of(&report, child), 3, "{report:#}");
    assert!(process(&report, ppid).is_none(), "{report:#}");
    let group = only_group(&report, child);
    assert_eq!(group["direction"], "preexisting");
    assert_eq!(group["shared"], 0);
    assert_complete(&report);
}

/// A passes 4 sockets to B over SCM_RIGHTS (socket activation, connection
/// passing), closes its copies and exits: B holds all 4, opened by A.
#[test]
fn scm_rights_hands_sockets_to_the_receiver() {
    let (_listener, port) = listener();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("pass.sock");
    let path = path.to_str().expect("a UTF-8 path");
    let mut receiver = handoff(&["receive", path]);
    receiver.ready();
    let trace = trace_json(&[]);
    let mut sender = handoff(&["send", path, &port.to_string(), "4"]);
    sender.ready();
    sender.wait_exit();
    thread::sleep(Duration::from_millis(500));
    let report = trace.stop();

    let (a, b) = (sender.pid(), receiver.pid());
    assert_eq!(open_of(&report, b), 4, "{report:#}");
    assert!(process(&report, a).is_none(), "{report:#}");
    assert_opened_by(only_group(&report, b), a, true);
    assert_complete(&report);
}

/// 50 times: a process connects and exits, and the next process gets its
/// pid at once and keeps a socket. The late end of the old process must
/// never take the new one's socket: 50 of 50, each opened by its holder.
#[test]
fn pid_reuse_never_wipes_the_new_process() {
    let (_listener, port) = listener();
    let trace = trace_json(&[]);
    let mut driver = handoff(&["reuse", &port.to_string(), "50"]);
    let children = driver.ready_with_children();
    assert_eq!(children.len(), 50);
    thread::sleep(Duration::from_millis(500));
    let report = trace.stop();

    let mut held = 0;
    for &pid in &children {
        assert_eq!(open_of(&report, pid), 1, "pid {pid}: {report:#}");
        let group = only_group(&report, pid);
        assert_eq!(group["opener"]["pid"], pid, "{group:#}");
        assert_eq!(group["opener"]["exited"], false, "{group:#}");
        held += 1;
    }
    assert_eq!(held, 50);
    assert_complete(&report);
}

/// A thread opens 3 sockets and ends; the process keeps them: they are the
/// process's, with the thread that opened them.
#[test]
fn a_thread_opens_the_process_keeps() {
    let (_listener, port) = listener();
    let trace = trace_json(&[]);
    let mut fixture = handoff(&["thread", &port.to_string(), "3"]);
    fixture.ready();
    thread::sleep(Duration::from_millis(300));
    let report = trace.stop();
    let pid = fixture.pid();
    assert_eq!(open_of(&report, pid), 3, "{report:#}");
    let group = only_group(&report, pid);
    assert_opened_by(group, pid, false);
    for socket in group["sockets"].as_array().unwrap() {
        assert_ne!(socket["tid"], pid, "opened by the thread: {socket}");
    }
    assert_complete(&report);
}

/// A program connects in `leaky_connect_in_A`, then execs another that
/// keeps the fd: the stack is A's, never the new image's.
#[test]
fn exec_after_open_keeps_the_openers_stack() {
    let (_listener, port) = listener();
    let trace = trace_json(&[]);
    let b = c_fixture("exec_b");
    let mut fixture = Fixture::spawn({
        let mut c = std::process::Command::new(c_fixture("exec_a"));
        c.arg(port.to_string()).arg(&b);
        c
    });
    fixture.ready();
    thread::sleep(Duration::from_millis(300));
    let report = trace.stop();
    let pid = fixture.pid();
    assert_eq!(open_of(&report, pid), 1, "{report:#}");
    let group = only_group(&report, pid);
    assert_opened_by(group, pid, false);
    let stack = symbols(&group["stack"]);
    assert!(
        stack.iter().any(|s| s == "leaky_connect_in_A"),
        "stack {stack:?}"
    );
    assert!(
        !stack.iter().any(|s| s.contains("innocent_function_in_B")),
        "stack {stack:?}"
    );
    assert!(
        process(&report, pid).unwrap()["exe"]
            .as_str()
            .is_some_and(|exe| exe.ends_with("/exec_b")),
        "the holder is exec_b now: {report:#}"
    );
    assert_complete(&report);
}

/// 2000 sockets from 2000 distinct user stacks in one trace: stack map
/// hash collisions must not lose one (the stack then comes through the
/// ring): 2000 groups, each with its stack, nothing lost.
#[test]
fn two_thousand_distinct_stacks_lose_none() {
    let (_listener, port) = listener();
    let trace = trace_json(&[]);
    let mut fixture = Fixture::spawn({
        let mut c = std::process::Command::new(c_fixture("stacks"));
        c.arg(port.to_string()).arg("2000");
        c
    });
    fixture.ready();
    thread::sleep(Duration::from_millis(500));
    let report = trace.stop();
    let pid = fixture.pid();
    assert_eq!(report["lost_stacks"], 0, "{}", report["incomplete"]);
    assert_complete(&report);
    assert_eq!(open_of(&report, pid), 2000);
    let found = groups(&report, pid);
    assert_eq!(found.len(), 2000, "one group per distinct stack");
    for group in found {
        let stack = symbols(&group["stack"]);
        assert!(
            stack.iter().any(|s| s == "open_one") && stack.iter().any(|s| s == "main"),
            "{stack:?}"
        );
    }
}

/// One function connects at two call sites (tests/fixtures/two_sites.c).
/// The frame-pointer walk of both is the same (glibc's `connect` keeps no
/// frame, so both skip the function's own return address) and so is the
/// kernel's stack id; only each connect's words at the stack pointer tell
/// the sites apart. Two groups, one socket each, whose second frame is
/// `connect_both` at the line of its own `connect` call.
#[test]
fn two_call_sites_in_one_function_are_two_groups() {
    let (_listener, port) = listener();
    let trace = trace_json(&[]);
    let mut fixture = Fixture::spawn({
        let mut c = std::process::Command::new(c_fixture("two_sites"));
        c.arg(port.to_string());
        c
    });
    fixture.ready();
    thread::sleep(Duration::from_millis(500));
    let report = trace.stop();
    let pid = fixture.pid();
    assert_complete(&report);
    assert_eq!(open_of(&report, pid), 2);
    let source = std::fs::read_to_string(fixture_source("two_sites.c")).expect("fixture source");
    let line_of = |call: &str| {
        1 + source
            .lines()
            .position(|line| line.contains(call))
            .unwrap_or_else(|| panic!("{call} is not in two_sites.c")) as u64
    };
    let mut expected = vec![line_of("connect(first,"), line_of("connect(second,")];
    let mut found: Vec<u64> = groups(&report, pid)
        .into_iter()
        .map(|group| {
            assert_eq!(group["count"], 1, "{group:#}");
            let caller = &group["stack"][1];
            assert_eq!(caller["symbol"], "connect_both", "{group:#}");
            caller["line"]
                .as_u64()
                .unwrap_or_else(|| panic!("no line: {group:#}"))
        })
        .collect();
    found.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        found,
        expected,
        "one group per call site: {:#}",
        process(&report, pid).unwrap_or(&Value::Null)
    );
}

/// The host's cgroup2 mount point, as this test process sees it.
fn host_cgroup2() -> std::path::PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))?
        })
        .expect("no cgroup2 mount: the cgroup namespace test needs one")
}

/// A command that runs leakbpf as a container would: in a cgroup of its
/// own, in its own cgroup namespace, with its own cgroup2 mount where the
/// host's was (a tmpfs hides the host's first: the same cgroup2 superblock
/// cannot be mounted on itself), which shows its namespace's root only.
/// With `host_view`, the host's root is bound there first (a mounted host
/// cgroupfs, as `-v /sys/fs/cgroup:/host/cgroup` gives a container).
fn in_cgroup_namespace(
    cgroup: &std::path::Path,
    host_view: Option<&std::path::Path>,
    args: &[&str],
) -> std::process::Command {
    let host = host_cgroup2();
    let bind = host_view.map_or(String::new(), |view| {
        format!("mount --bind {} {} && ", host.display(), view.display())
    });
    let script = format!(
        "echo $$ > {cgroup}/cgroup.procs && exec unshare --cgroup --mount --propagation private \
         sh -c '{bind}mount -t tmpfs none {parent} && mkdir -p {host} \
         && mount -t cgroup2 none {host} && exec \"$0\" \"$@\"' {bin} trace \"$@\"",
        cgroup = cgroup.display(),
        host = host.display(),
        parent = host.parent().expect("the cgroup2 mount is not /").display(),
        bin = leakbpf_tests::leakbpf_bin().display(),
    );
    let mut command = std::process::Command::new("sh");
    command.arg("-c").arg(script).arg("sh").args(args);
    command
}

/// A cgroup under the host root for one test, removed at the end.
struct TestCgroup(std::path::PathBuf);

impl TestCgroup {
    fn new() -> TestCgroup {
        let path = host_cgroup2().join(format!("leakbpf-test-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("creating a test cgroup");
        TestCgroup(path)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// leakbpf in its own cgroup namespace with its own cgroup2 mount: without
/// a way to the host's root it refuses in one line that names the fix;
/// with `--cgroup-root` it attaches there and a host client's closes all
/// count (6 opened, 5 closed: exactly 1 reported, no phantoms).
#[test]
fn in_a_cgroup_namespace_it_attaches_to_the_host_root() {
    let cgroup = TestCgroup::new();
    let view = tempfile::tempdir().expect("a temporary directory");

    let output = in_cgroup_namespace(
        &cgroup.0,
        None,
        &["--hooks", "tracepoint", "--duration", "1s"],
    )
    .output()
    .expect("running leakbpf in a cgroup namespace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("leakbpf: error: ")
            && stderr.contains("is only the root of this cgroup namespace")
            && stderr.contains("--cgroup-root"),
        "{stderr}"
    );

    let (_listener, port) = listener();
    let view_path = view.path().to_str().expect("a UTF-8 path").to_owned();
    let trace = leakbpf_tests::TraceRun::start_command(in_cgroup_namespace(
        &cgroup.0,
        Some(view.path()),
        &["--format", "json", "--cgroup-root", &view_path],
    ));
    let mut client = python("client.py");
    client.args(["127.0.0.1", &port.to_string(), "6", "5"]);
    let mut client = Fixture::spawn(client);
    client.ready();
    thread::sleep(Duration::from_millis(500));
    let report = trace.stop();
    let pid = client.pid();
    assert_eq!(open_of(&report, pid), 1, "{report:#}");
    assert_eq!(only_group(&report, pid)["count"], 1);
    assert_complete(&report);
}
