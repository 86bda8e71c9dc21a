//! End-to-end: the real programs attached to this kernel, real processes on
//! loopback, exact counts per pid. Runs as root, one test at a time.
use std::{thread, time::Duration};

use leakbpf_tests::{
    Fixture, Leakbpf, c_server, expected_hooks, go_dialer, of, opens, python, symbols, unused_port,
};
use serde_json::Value;

/// A Python client opens 5 and closes 2 (plus one refused connect); a C
/// server in another process accepts 5 and closes 2. Then both are killed
/// and the kernel releases the rest in their names.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: two processes through their whole lives"
)]
fn counts_opens_and_closes_per_process() {
    let test_started = std::time::Instant::now();
    let leakbpf = Leakbpf::events(&["--stacks"]);
    let mut server = Fixture::spawn({
        let mut c = std::process::Command::new(c_server());
        c.args(["0", "5", "2"]);
        c
    });
    let port = server.port();
    let refused = unused_port();
    let mut client = Fixture::spawn({
        let mut c = python("client.py");
        c.args([
            "127.0.0.1",
            &port.to_string(),
            "5",
            "2",
            "--refused-port",
            &refused.to_string(),
        ]);
        c
    });
    client.ready();
    server.ready();
    let (cpid, spid) = (client.pid(), server.pid());

    leakbpf.wait_for(
        "6 connects and 3 closes from the client, 5 accepts and 2 closes from the server",
        |e| {
            opens(e, cpid, "connect").len() == 6
                && of(e, "close", cpid).len() == 3
                && opens(e, spid, "accept").len() == 5
                && of(e, "close", spid).len() == 2
        },
    );
    // Nothing more may come while both hold their sockets.
    thread::sleep(Duration::from_millis(300));
    let events = leakbpf.snapshot();
    assert_eq!(opens(&events, cpid, "connect").len(), 6);
    assert_eq!(
        opens(&events, cpid, "accept").len(),
        0,
        "an accept attributed to the client"
    );
    assert_eq!(of(&events, "close", cpid).len(), 3);
    assert_eq!(opens(&events, spid, "accept").len(), 5);
    assert_eq!(
        opens(&events, spid, "connect").len(),
        0,
        "a connect attributed to the server"
    );
    assert_eq!(of(&events, "close", spid).len(), 2);

    // The refused connect opened, went SYN_SENT -> CLOSE, and was closed.
    let failed: Vec<&Value> = opens(&events, cpid, "connect")
        .into_iter()
        .filter(|e| e["remote"] == format!("127.0.0.1:{refused}"))
        .collect();
    assert_eq!(failed.len(), 1, "one open to the refused port");
    let cookie = &failed[0]["cookie"];
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "state" && e["cookie"] == *cookie && e["state"] == "CLOSE"),
        "the refused connect never reached CLOSE"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "close" && e["cookie"] == *cookie)
            .count(),
        1,
        "the refused connect was not closed exactly once"
    );

    // Accepts: the server's comm, its stack through handle_client, and its
    // fd where the hook sees it (the accept syscall's exit).
    for accept in opens(&events, spid, "accept") {
        assert_eq!(accept["comm"], "server");
        if expected_hooks() == "tracepoint" {
            assert!(
                accept["fd"].as_i64().unwrap() > 2,
                "accept without an fd: {accept}"
            );
        }
        assert_eq!(accept["local"], format!("127.0.0.1:{port}"));
        let user = symbols(&accept["user_stack"]);
        assert!(
            user.iter().any(|s| s == "handle_client"),
            "accept stack {user:?}"
        );
        assert!(user.iter().any(|s| s == "main"), "accept stack {user:?}");
        assert_walked_by_leakbpf(accept);
    }
    // Connects: the client's pid, the server's address, a kernel stack.
    for connect in opens(&events, cpid, "connect") {
        assert!(
            connect["comm"].as_str().unwrap().starts_with("python"),
            "{connect}"
        );
        let kernel = symbols(&connect["kernel_stack"]);
        assert!(
            kernel.iter().any(|s| s.contains("connect")),
            "kernel stack {kernel:?}"
        );
    }

    // Killing them releases the rest, attributed to each owner.
    client.kill();
    leakbpf.wait_for("6 client closes after kill", |e| {
        of(e, "close", cpid).len() == 6
    });
    server.kill();
    leakbpf.wait_for("5 server closes after kill", |e| {
        of(e, "close", spid).len() == 5
    });

    let stopped = leakbpf.stop();
    assert_eq!(of(&stopped.events, "close", cpid).len(), 6);
    assert_eq!(of(&stopped.events, "close", spid).len(), 5);
    // Every close carries the lifetime of its socket: from its open to its
    // release, positive, and shorter than this test has run.
    let elapsed_ms = test_started.elapsed().as_secs_f64() * 1e3;
    for close in of(&stopped.events, "close", cpid) {
        let open = opens(&stopped.events, cpid, "connect")
            .into_iter()
            .find(|o| o["cookie"] == close["cookie"])
            .unwrap_or_else(|| panic!("no open for {close}"));
        let between_ns = close["time_ns"].as_u64().unwrap() - open["time_ns"].as_u64().unwrap();
        let lifetime_ms = close["lifetime_ms"].as_f64().unwrap();
        assert!(
            (lifetime_ms * 1e6 - between_ns as f64).abs() < 1e3,
            "lifetime {lifetime_ms} ms, open to close {between_ns} ns: {close}"
        );
        assert!(lifetime_ms > 0.0 && lifetime_ms < elapsed_ms, "{close}");
    }
    assert_eq!(stopped.summary["lost_events"], 0, "{}", stopped.summary);
    assert_eq!(stopped.summary["complete"], true, "{}", stopped.summary);
    assert_eq!(stopped.summary["hooks"], expected_hooks().as_str());
}

/// The user stack of `open` was walked by leakbpf's own kernel code (its
/// id carries bit 30: the `USER_STACKS` map), not by the kernel's walker,
/// which costs a page fault at the end of nearly every walk; except with
/// the fentry set, whose programs can be preempted mid-walk.
fn assert_walked_by_leakbpf(open: &Value) {
    if expected_hooks() == "fentry" {
        // fentry programs can be preempted: the kernel's walker (see
        // `stack_ids` in leakbpf-ebpf/src/emit.rs).
        assert_ne!(open["user_stack_id"].as_u64().unwrap() >> 30, 1, "{open}");
        return;
    }
    let id = open["user_stack_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no user stack id: {open}"));
    assert_eq!(id >> 30, 1, "a user stack not walked by leakbpf: {open}");
}

/// Go keeps frame pointers: a net.Dial stack reaches main through the dialer.
#[test]
fn go_connect_stacks_show_the_dialer() {
    let leakbpf = Leakbpf::events(&["--stacks"]);
    let mut server = Fixture::spawn({
        let mut c = std::process::Command::new(c_server());
        c.args(["0", "3", "0"]);
        c
    });
    let port = server.port();
    let mut dialer = Fixture::spawn({
        let mut c = std::process::Command::new(go_dialer());
        c.args([format!("127.0.0.1:{port}"), "3".to_owned()]);
        c
    });
    dialer.ready();
    server.ready();
    let pid = dialer.pid();
    leakbpf.wait_for("3 Go connects", |e| opens(e, pid, "connect").len() == 3);
    let events = leakbpf.snapshot();
    for connect in opens(&events, pid, "connect") {
        assert_eq!(connect["comm"], "dialer");
        let user = symbols(&connect["user_stack"]);
        assert!(
            user.iter().any(|s| s == "net.(*Dialer).DialContext"),
            "Go stack without net.(*Dialer).DialContext: {user:?}"
        );
        assert!(
            user.iter().any(|s| s == "main.dialOne"),
            "Go stack {user:?}"
        );
        assert_walked_by_leakbpf(connect);
    }
    assert_eq!(of(&events, "close", pid).len(), 0);
    dialer.kill();
    leakbpf.wait_for("3 Go closes after kill", |e| of(e, "close", pid).len() == 3);
    let stopped = leakbpf.stop();
    assert_eq!(stopped.summary["lost_events"], 0, "{}", stopped.summary);
}

#[test]
fn ipv6_sockets_are_traced() {
    let leakbpf = Leakbpf::events(&["-6"]);
    let mut server = Fixture::spawn({
        let mut c = std::process::Command::new(c_server());
        c.args(["-6", "0", "3", "1"]);
        c
    });
    let port = server.port();
    let mut client = Fixture::spawn({
        let mut c = python("client.py");
        c.args(["-6", "::1", &port.to_string(), "3", "1"]);
        c
    });
    client.ready();
    server.ready();
    let (cpid, spid) = (client.pid(), server.pid());
    leakbpf.wait_for("3 IPv6 connects and accepts", |e| {
        opens(e, cpid, "connect").len() == 3
            && opens(e, spid, "accept").len() == 3
            && of(e, "close", cpid).len() == 1
            && of(e, "close", spid).len() == 1
    });
    thread::sleep(Duration::from_millis(300));
    let events = leakbpf.snapshot();
    assert_eq!(of(&events, "close", cpid).len(), 1);
    assert_eq!(of(&events, "close", spid).len(), 1);
    for open in opens(&events, spid, "accept") {
        assert_eq!(open["family"], "ipv6");
        assert_eq!(open["local"], format!("[::1]:{port}"));
    }
    for open in of(&events, "open", cpid) {
        assert_eq!(open["remote"], format!("[::1]:{port}"));
    }
    let stopped = leakbpf.stop();
    assert!(
        stopped.events.iter().all(|e| e["family"] == "ipv6"),
        "-6 let an IPv4 event through"
    );
    assert_eq!(stopped.summary["lost_events"], 0, "{}", stopped.summary);
}

/// A frozen consumer and a one-page ring: the burst cannot fit, and the
/// loss is counted and reported instead of silently missing.
#[test]
fn a_full_ring_is_counted_and_reported() {
    let leakbpf = Leakbpf::events(&["--ring-bytes", "4096"]);
    let mut listener = Fixture::spawn({
        let mut c = python("listener.py");
        c.arg("0");
        c
    });
    let port = listener.port();
    listener.ready();
    leakbpf.signal(libc::SIGSTOP);
    let mut burst = Fixture::spawn({
        let mut c = python("burst.py");
        c.args(["127.0.0.1", &port.to_string(), "500"]);
        c
    });
    burst.ready();
    leakbpf.signal(libc::SIGCONT);
    let stopped = leakbpf.stop();
    let lost = stopped.summary["lost_events"].as_u64().unwrap();
    let ringbuf_full = stopped.summary["lost"]["ringbuf_full"].as_u64().unwrap();
    // 500 connects make well over 2000 events; a page holds a few dozen.
    assert!(lost >= 1000, "only {lost} lost: {}", stopped.summary);
    assert_eq!(lost, ringbuf_full);
    assert_eq!(stopped.summary["complete"], false);
    let reason = format!("{lost} events lost");
    assert!(
        stopped.summary["incomplete"][0]
            .as_str()
            .is_some_and(|r| r.starts_with(&reason)),
        "{}",
        stopped.summary
    );
    assert!(
        stopped
            .stderr
            .contains(&format!("warning: incomplete: {reason}")),
        "loss not reported on stderr:\n{}",
        stopped.stderr
    );
}
