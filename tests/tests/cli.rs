//! Bad input gets one clear line and a non-zero exit.
use std::process::Command;

use leakbpf_tests::leakbpf_bin;

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
    assert!(stdout.contains("hook set          tracepoint:"), "{stdout}");
}
