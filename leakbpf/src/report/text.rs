//! The report for people, shaped like a Go goroutine dump: `COUNT @ stack`,
//! then the numbers and the reasons.
use std::fmt::Write as _;

use super::{
    classify::seconds,
    model::{Group, Report},
};
use crate::symbolize::Frame;

/// Sockets listed per group; JSON lists them all.
const SOCKETS_SHOWN: usize = 5;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let open = report.open_sockets;
    let _ = writeln!(
        out,
        "leakbpf: {open} open sockets in {} processes after {} (hooks: {}, {} events, {})",
        report.processes.len(),
        seconds(report.duration_s),
        report.hooks,
        report.events,
        if report.complete {
            "nothing lost".to_owned()
        } else {
            format!("INCOMPLETE: {}", report.incomplete.join("; "))
        }
    );
    if report.hidden_groups > 0 {
        let _ = writeln!(
            out,
            "leakbpf: showing the largest groups only (--top): and {} more groups with {} sockets",
            report.hidden_groups, report.hidden_sockets
        );
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "leakbpf: note: {warning}");
    }
    for process in &report.processes {
        let _ = writeln!(
            out,
            "\n== pid {} {} ({}): {} open",
            process.pid,
            process.comm,
            process.exe.as_deref().unwrap_or("exe unknown"),
            process.open
        );
        if let Some(id) = &process.container_id {
            let pod = process
                .pod_uid
                .as_deref()
                .map(|uid| format!(", pod {uid}"))
                .unwrap_or_default();
            let _ = writeln!(out, "#   container {}{pod}", &id[..id.len().min(12)]);
        }
        for group in &process.groups {
            render_group(&mut out, group);
        }
    }
    if report.processes.is_empty() {
        out.push_str("\nNo open sockets matched.\n");
    }
    out
}

fn render_group(out: &mut String, group: &Group) {
    let classes: Vec<&str> = group.classes.iter().map(|c| c.name()).collect();
    let _ = writeln!(
        out,
        "\n{} @ {}{}",
        group.count,
        group.direction.as_str(),
        if classes.is_empty() {
            String::new()
        } else {
            format!("  [{}]", classes.join(", "))
        }
    );
    let states: Vec<String> = group
        .states
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "#   {}; oldest {}, newest {}",
        states.join(", "),
        seconds(group.oldest_age_s),
        seconds(group.newest_age_s)
    );
    let remotes: Vec<String> = group
        .remotes
        .iter()
        .map(|r| format!("{} ({})", r.addr, r.count))
        .collect();
    let _ = writeln!(out, "#   to {}", remotes.join(", "));
    if let Some(site) = crate::report::classify::request_site_text(&group.request_stack) {
        let _ = writeln!(out, "#   requested from {site}");
    }
    if let Some(opener) = &group.opener {
        let _ = writeln!(
            out,
            "#   opened by pid {} {}{}",
            opener.pid,
            opener.comm,
            if opener.exited { " (exited)" } else { "" }
        );
    }
    if !group.holder_found {
        let _ = writeln!(
            out,
            "#   held by: not found in any fd table (listed under the opener)"
        );
    }
    if group.shared > 0 {
        let _ = writeln!(
            out,
            "#   {} of these sockets are also held by other processes (counted once in the total)",
            group.shared
        );
    }
    if group.direction != crate::event::Direction::Preexisting {
        let _ = writeln!(
            out,
            "#   while tracing this stack opened {} and closed {}",
            group.opened_during_trace, group.closed_during_trace
        );
    }
    for evidence in &group.evidence {
        let _ = writeln!(out, "#   why: {evidence}");
    }
    for hint in &group.hints {
        let _ = writeln!(out, "#   hint: {hint}");
    }
    render_stacks(out, group);
    let shown = group.sockets.len().min(SOCKETS_SHOWN);
    let _ = writeln!(
        out,
        "#   sockets ({shown} of {}, oldest first): cookie fd tid local -> remote state age idle unread",
        group.count
    );
    for s in &group.sockets[..shown] {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
        let _ = writeln!(
            out,
            "#     {} {} {} {} -> {} {} {} {} {}{}",
            s.cookie,
            opt(s.fd.map(|fd| fd.to_string())),
            s.tid,
            s.local,
            s.remote,
            s.state,
            seconds(s.age_s),
            opt(s.idle_s.map(seconds)),
            opt(s.unread_bytes.map(|b| b.to_string())),
            if s.shared_with.is_empty() {
                String::new()
            } else {
                let pids: Vec<String> = s.shared_with.iter().map(u32::to_string).collect();
                format!(" (also held by pid {})", pids.join(", "))
            }
        );
    }
}

/// The request stack first (the code to fix), then the connect's own.
fn render_stacks(out: &mut String, group: &Group) {
    if !group.request_stack.is_empty() {
        let _ = writeln!(
            out,
            "#   request (the goroutine whose request dialed these connections):"
        );
        for frame in &group.request_stack {
            let _ = writeln!(out, "#\t{}", frame_line(frame));
        }
        let _ = writeln!(out, "#   dial:");
    }
    if group.stack.is_empty() {
        let _ = writeln!(out, "#   (opened before tracing: no stack)");
    }
    for frame in &group.stack {
        let _ = writeln!(out, "#\t{}", frame_line(frame));
    }
}

/// `0x4f3a21  net.(*Dialer).DialContext+0x1a1  /usr/lib/go/src/net/dial.go:421`
fn frame_line(frame: &Frame) -> String {
    let mut line = format!("{:#x}\t", frame.address);
    match (&frame.symbol, &frame.module) {
        (Some(symbol), _) => {
            line.push_str(symbol);
            if let Some(offset) = frame.offset {
                let _ = write!(line, "+{offset:#x}");
            }
        }
        (None, Some(module)) => {
            let _ = write!(line, "[{module}]");
        }
        (None, None) => line.push_str("[unknown]"),
    }
    if let Some(file) = &frame.file {
        let _ = write!(line, "\t{file}");
        if let Some(number) = frame.line {
            let _ = write!(line, ":{number}");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        event::Direction,
        report::model::{Class, ProcessReport, RemoteCount, SocketReport},
    };

    #[test]
    fn reads_like_a_goroutine_dump() {
        let group = Group {
            direction: Direction::Connect,
            count: 2,
            opener: Some(crate::report::model::Opener {
                pid: 100,
                comm: "parent".to_owned(),
                exited: true,
            }),
            holder_found: true,
            shared: 1,
            oldest_age_s: 120.0,
            newest_age_s: 3.0,
            states: BTreeMap::from([(crate::event::TcpState::CloseWait, 2)]),
            classes: vec![Class::CloseWait],
            evidence: vec!["2 of 2 sockets are in CLOSE_WAIT".to_owned()],
            hints: vec![],
            remotes: vec![RemoteCount {
                addr: "127.0.0.1:8080".to_owned(),
                count: 2,
            }],
            opened_during_trace: 2,
            closed_during_trace: 0,
            request_stack: vec![],
            stack: vec![Frame {
                address: 0x004f_3a21,
                symbol: Some("main.httpSend".to_owned()),
                offset: Some(0x1a),
                module: None,
                file: Some("/src/main.go".to_owned()),
                line: Some(12),
            }],
            kernel_stack: vec![],
            sockets: vec![SocketReport {
                cookie: 7,
                fd: Some(5),
                shared_with: Box::new([102]),
                tid: 101,
                local: "127.0.0.1:50000".parse().unwrap(),
                remote: "127.0.0.1:8080".parse().unwrap(),
                state: crate::event::TcpState::CloseWait,
                age_s: 120.0,
                idle_s: None,
                unread_bytes: Some(0),
                unsent_bytes: None,
            }],
        };
        let report = Report {
            version: 1,
            hooks: "tracepoint".to_owned(),
            duration_s: 10.0,
            events: 42,
            complete: true,
            open_sockets: 2,
            processes: vec![ProcessReport {
                pid: 101,
                comm: "leaky".to_owned(),
                exe: Some("/usr/bin/leaky".to_owned()),
                open: 2,
                groups: vec![group],
                ..ProcessReport::default()
            }],
            ..Report::default()
        };
        let text = render(&report);
        let expected = "\
leakbpf: 2 open sockets in 1 processes after 10.0s (hooks: tracepoint, 42 events, nothing lost)

== pid 101 leaky (/usr/bin/leaky): 2 open

2 @ connect  [close_wait]
#   CLOSE_WAIT 2; oldest 2m0s, newest 3.0s
#   to 127.0.0.1:8080 (2)
#   opened by pid 100 parent (exited)
#   1 of these sockets are also held by other processes (counted once in the total)
#   while tracing this stack opened 2 and closed 0
#   why: 2 of 2 sockets are in CLOSE_WAIT
#\t0x4f3a21\tmain.httpSend+0x1a\t/src/main.go:12
#   sockets (1 of 2, oldest first): cookie fd tid local -> remote state age idle unread
#     7 5 101 127.0.0.1:50000 -> 127.0.0.1:8080 CLOSE_WAIT 2m0s - 0 (also held by pid 102)
";
        assert_eq!(text, expected);
    }

    fn go_frame(symbol: &str, file: &str, line: u32) -> Frame {
        Frame {
            address: 0x40_1000,
            symbol: Some(symbol.to_owned()),
            offset: Some(0x10),
            module: None,
            file: Some(file.to_owned()),
            line: Some(line),
        }
    }

    /// The request site comes first: its line right under the count, its
    /// stack before the dial's.
    #[test]
    fn the_request_site_comes_first() {
        let mut group = Group::for_tests(Direction::Connect, 3);
        group.stack = vec![go_frame(
            "net/http.(*Transport).dialConn",
            "/usr/lib/go/src/net/http/transport.go",
            1565,
        )];
        group.request_stack = vec![
            go_frame(
                "net/http.(*Client).Post",
                "/usr/lib/go/src/net/http/client.go",
                825,
            ),
            go_frame("main.fetchUser", "/src/app/handler.go", 41),
            go_frame("main.handler", "/src/app/handler.go", 20),
        ];
        let mut out = String::new();
        render_group(&mut out, &group);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], "3 @ connect");
        assert_eq!(
            lines[4],
            "#   requested from main.fetchUser (handler.go:41) \u{2190} main.handler (handler.go:20)"
        );
        let request = out.find("main.fetchUser+0x10").unwrap();
        let dial = out.find("dialConn+0x10").unwrap();
        assert!(request < dial, "{out}");
    }
}
