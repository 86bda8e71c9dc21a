//! Bad input gets one clear line and a non-zero exit.
use std::process::Command;

use leakbpf_tests::{Leakbpf, leakbpf_bin, of, opens};

fn run(args: &[&str]) -> (i32, String) {
    let output = Command::new(leakbpf_bin())
        .args(args)
        .output()
        .expect("running leakbpf");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn unknown_pid_is_one_line_and_fails() {
    let (code, stderr) = run(&["events", "--pid", "999999999"]);
    assert_eq!(code, 1);
    assert_eq!(stderr, "leakbpf: error: no process with pid 999999999\n");
}

#[test]
fn bad_ring_size_is_one_line_and_fails() {
    let (code, stderr) = run(&["events", "--ring-bytes", "1000", "--duration", "1s"]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        "leakbpf: error: invalid value '1000' for '--ring-bytes <BYTES>': must be a power of \
         two from 4096 to 1073741824 (1 GiB), not 1000 (see --help)\n"
    );
}

#[test]
fn bad_duration_is_rejected_by_the_parser() {
    let (code, stderr) = run(&["events", "--duration", "soon"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("invalid value 'soon' for '--duration"),
        "{stderr}"
    );
}

#[test]
fn without_root_it_says_so() {
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(leakbpf_bin())
        .args(["events", "--duration", "1s"])
        .output()
        .expect("running setpriv (util-linux)");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("leakbpf: error: missing CAP_BPF (load the eBPF programs")
            && stderr.contains("run as root or grant: CAP_BPF CAP_PERFMON")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
}

/// The capabilities tracing needs, as `setpriv` names them (util-linux 2.38
/// predates the names of CAP_BPF and CAP_PERFMON: cap_39, cap_38).
const TRACING_CAPS: [(&str, &str); 5] = [
    ("cap_39", "CAP_BPF"),
    ("cap_38", "CAP_PERFMON"),
    ("cap_12", "CAP_NET_ADMIN"),
    ("cap_19", "CAP_SYS_PTRACE"),
    ("cap_2", "CAP_DAC_READ_SEARCH"),
];

/// `leakbpf ARGS` as uid 65534 with exactly `caps` (ambient).
fn as_nobody_with(caps: &[&str], args: &[&str]) -> Command {
    let list: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let list = list.join(",");
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={list}"))
        .arg(format!("--ambient-caps={list}"))
        .arg(leakbpf_bin())
        .args(args);
    command
}

/// Without root, with exactly the five capabilities, `trace` reports a
/// real leak exactly (tracefs is mounted: no CAP_SYS_ADMIN); without any
/// one of them, one line names it.
#[test]
fn capabilities_instead_of_root() {
    let all: Vec<&str> = TRACING_CAPS.iter().map(|(cap, _)| *cap).collect();
    for (dropped, name) in TRACING_CAPS {
        let caps: Vec<&str> = all.iter().copied().filter(|c| *c != dropped).collect();
        let output = as_nobody_with(&caps, &["trace", "--duration", "1"])
            .output()
            .expect("running setpriv (util-linux)");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "without {name}: {stderr}");
        assert!(
            stderr.starts_with(&format!("leakbpf: error: missing {name} ("))
                && stderr.lines().count() == 1,
            "without {name}: {stderr}"
        );
    }

    let mut listener = {
        let mut c = leakbpf_tests::python("listener.py");
        c.arg("0");
        leakbpf_tests::Fixture::spawn(c)
    };
    let port = listener.port();
    listener.ready();
    let mut trace = as_nobody_with(&all, &["trace", "--format", "json", "--duration", "4"]);
    let trace = trace
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting leakbpf as nobody");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut client = leakbpf_tests::python("client.py");
    client.args(["127.0.0.1", &port.to_string(), "3", "1"]);
    let mut client = leakbpf_tests::Fixture::spawn(client);
    client.ready();
    let output = trace.wait_with_output().expect("waiting for leakbpf");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{err}: {stderr}"));
    assert_eq!(report["complete"], true, "{report:#}");
    let entry = leakbpf_tests::process(&report, client.pid())
        .unwrap_or_else(|| panic!("client {} not reported: {report:#}", client.pid()));
    assert_eq!(entry["open"], 2, "{entry:#}");
}

#[test]
fn check_names_the_hook_set() {
    let stdout = leakbpf_tests::check_output();
    // The sets are listed best first, each usable or not on this kernel:
    // `auto` must name the first usable one, whichever kernel this is.
    let sets: Vec<(&str, bool)> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("set "))
        .map(|rest| {
            let name = rest.split_whitespace().next().unwrap_or_default();
            (name, rest.ends_with(": usable"))
        })
        .collect();
    assert_eq!(sets.len(), 3, "one line per hook set: {stdout}");
    let best = sets.iter().find(|(_, usable)| *usable).map_or_else(
        || panic!("no usable hook set on this kernel: {stdout}"),
        |(name, _)| *name,
    );
    assert!(
        stdout.contains(&format!("hook set          {best}:")),
        "auto should pick {best}: {stdout}"
    );
}

/// `--log-kernel` starts the reader of the kernel side's aya-log records on
/// the loaded object (the verifier accepts the programs that hold log
/// statements) and tracing works as without it. The logged failure paths
/// (an unrecordable stack, an unreadable accepted socket) cannot be caused
/// on purpose; the line format has a unit test (tracer.rs).
#[test]
fn log_kernel_attaches_the_kernel_log_reader() {
    let leakbpf = Leakbpf::events(&["--log-kernel"]);
    let pid = std::process::id();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a listener");
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).expect("connecting");
    let (server, _) = listener.accept().expect("accepting");
    drop((client, server));
    leakbpf.wait_for("1 connect, 1 accept and 2 closes from the test", |e| {
        opens(e, pid, "connect").len() == 1
            && opens(e, pid, "accept").len() == 1
            && of(e, "close", pid).len() == 2
    });
    let stopped = leakbpf.stop();
    assert!(!stopped.stderr.contains("error"), "{}", stopped.stderr);
    for line in stopped.stderr.lines() {
        assert!(line.starts_with("leakbpf: "), "{line:?}");
    }
    assert_eq!(
        stopped.summary["lost"]["accept_reads"], 0,
        "{}",
        stopped.summary
    );
}

/// A thread id of this test process that is not its pid.
fn a_thread_id() -> u32 {
    let pid = std::process::id();
    let _worker = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(5)));
    std::fs::read_dir("/proc/self/task")
        .expect("listing /proc/self/task")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&tid| tid != pid)
        .expect("a second thread")
}

/// Bad input, table-driven: each gets one line naming the problem and a
/// non-zero exit, never a panic, and nothing is attached first.
#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn bad_input_gets_one_line_and_a_non_zero_exit() {
    let thread = a_thread_id().to_string();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dir_path = dir.path().to_str().expect("UTF-8").to_owned();
    let missing_dir = format!("{dir_path}/no/such/dir/report.json");
    let typo_config = format!("{dir_path}/agent.toml");
    std::fs::write(&typo_config, "intervall = \"30s\"\n").expect("writing a config file");
    let missing_config = format!("{dir_path}/none.toml");
    // A port somebody else holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
    let taken_addr = taken.local_addr().expect("its address").to_string();
    let cases: Vec<(Vec<&str>, &str, i32)> = vec![
        (
            vec!["agent", "--window", "1"],
            "the growing window takes 2 to 1000 intervals, not 1",
            2,
        ),
        (
            vec!["agent", "--max-sockets", "10"],
            "tracked sockets can be capped from 1000",
            2,
        ),
        (vec!["agent", "--top-k", "0"], "must be at least 1", 2),
        (
            vec!["agent", "--listen", "nowhere"],
            "invalid value 'nowhere' for '--listen",
            2,
        ),
        (
            vec!["agent", "--interval", "0"],
            "must be longer than zero",
            2,
        ),
        (
            vec!["agent", "--metric-label", "1node=x"],
            "is not a Prometheus label name",
            2,
        ),
        (
            vec!["agent", "--config", &missing_config],
            "reading the config file",
            1,
        ),
        (
            vec!["agent", "--config", &typo_config],
            "unknown field `intervall`",
            1,
        ),
        (
            vec!["agent", "--listen", &taken_addr],
            "listening on 127.0.0.1:",
            1,
        ),
        (
            vec!["trace", "--duration", "300000000000y"],
            "longer than leakbpf takes",
            2,
        ),
        (
            vec!["trace", "--duration", "9223372036854775807s"],
            "longer than leakbpf takes",
            2,
        ),
        (
            vec!["events", "--duration", "9223372036854775807s"],
            "longer than leakbpf takes",
            2,
        ),
        (
            vec!["trace", "--min-age", "1000000000y"],
            "longer than leakbpf takes",
            2,
        ),
        (
            vec!["trace", "--idle", "400d"],
            "longer than leakbpf takes",
            2,
        ),
        (
            vec!["trace", "--duration", "soon"],
            "invalid value 'soon' for '--duration",
            2,
        ),
        (
            vec!["trace", "--duration", "0"],
            "must be longer than zero",
            2,
        ),
        (
            vec!["trace", "--idle=-5"],
            "invalid value \'-5\' for \'--idle",
            2,
        ),
        (vec!["trace", "--pid", "2"], "pid 2 is a kernel thread", 1),
        (vec!["trace", "--pid", &thread], "is a thread of process", 1),
        (vec!["trace", "--pid", "0"], "no process with pid 0", 1),
        (
            vec!["events", "--pid", "999999999"],
            "no process with pid 999999999",
            1,
        ),
        (
            vec!["trace", "--pid", "abc"],
            "invalid value 'abc' for '--pid",
            2,
        ),
        (
            vec!["trace", "--comm", "a-much-too-long-name"],
            "keeps 15 bytes of a command name",
            2,
        ),
        (vec!["events", "--comm", ""], "must not be empty", 2),
        (vec!["trace", "--top", "0"], "must be at least 1", 2),
        (
            vec!["trace", "--top", "lots"],
            "is not a number of groups",
            2,
        ),
        (
            vec!["trace", "--ring-bytes", "2147483648"],
            "power of two from 4096 to 1073741824",
            2,
        ),
        (
            vec!["trace", "--ring-bytes", "3"],
            "power of two from 4096",
            2,
        ),
        (
            vec!["events", "--ring-bytes", "1000"],
            "power of two from 4096",
            2,
        ),
        (
            vec!["trace", "--hooks", "nonsense"],
            "invalid value 'nonsense' for '--hooks",
            2,
        ),
        (
            vec!["trace", "--format", "xml"],
            "invalid value 'xml' for '--format",
            2,
        ),
        (vec!["trace", "--output", &missing_dir], "cannot write", 1),
        (vec!["trace", "--output", &dir_path], "it is a directory", 1),
        (
            vec!["frobnicate"],
            "unrecognized subcommand 'frobnicate'",
            2,
        ),
        (
            vec!["trace", "--duration", "1s", "extra"],
            "unexpected argument 'extra'",
            2,
        ),
    ];
    for (args, fragment, code) in &cases {
        let (got, stderr) = run(args);
        assert_eq!(got, *code, "{args:?}: exit {got}, stderr:\n{stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line, got:\n{stderr}"
        );
        assert!(
            stderr.starts_with("leakbpf: error: ") && stderr.contains(fragment),
            "{args:?}: expected {fragment:?} in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert!(cases.len() >= 20);
}

/// A hook set this kernel refuses (from `leakbpf check`).
fn a_refused_set() -> String {
    let stdout = leakbpf_tests::check_output();
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("set "))
        .find(|rest| !rest.ends_with(": usable"))
        .and_then(|rest| rest.split_whitespace().next())
        .map_or_else(
            || panic!("every hook set is usable here: no failing run to test\n{stdout}"),
            str::to_owned,
        )
}

/// A run that fails after --output was named never truncates what the
/// file held, and leaves no temporary file behind.
#[test]
fn a_failed_run_keeps_the_previous_report() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let report = dir.path().join("report.json");
    std::fs::write(&report, "the previous report\n").expect("writing the old report");
    let set = a_refused_set();
    let (code, stderr) = run(&[
        "trace",
        "--duration",
        "1",
        "--hooks",
        &set,
        "--output",
        report.to_str().expect("UTF-8"),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&report).expect("reading the report"),
        "the previous report\n"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("listing the directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the report: {left:?}");
}
