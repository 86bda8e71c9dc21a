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
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "leakbpf: error: --ring-bytes must be a power of two of at least 4096, not 1000\n"
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
        stderr.starts_with("leakbpf: error: leakbpf needs root") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn check_names_the_hook_set() {
    let output = Command::new(leakbpf_bin())
        .arg("check")
        .output()
        .expect("running leakbpf check");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
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
