//! `--format folded`: Brendan Gregg's folded stacks, the input of
//! flamegraph.pl and inferno-flamegraph, so a flame graph of leaked sockets
//! is one pipe away.
//!
//! One line per [`Group`](super::model::Group), root first:
//!
//! ```text
//! comm (pid N);[direction];outermost_frame;...;innermost_frame COUNT
//! ```
//!
//! The process and the direction come first so each process, and within it
//! connects, accepts and pre-existing sockets, form separate towers. Frames
//! are the user stack (the kernel stack is the same few socket syscalls for
//! every group, so it is left out), named as in the pprof output
//! ([`frame_name`]). A group without a stack ends at its `[direction]`.
//!
//! `;` separates frames and a newline ends a record, so names cannot
//! contain them: each `;` in a name becomes `:` (the nearest look-alike that
//! the format does not reserve) and each `\r` or `\n` becomes a space.
use std::fmt::Write;

use super::{
    model::Report,
    pprof::{direction_frame_name, frame_name, process_frame_name},
};

/// Renders `report` as folded stacks, one `\n`-terminated line per group,
/// in report order.
pub fn encode(report: &Report) -> String {
    let mut out = String::new();
    for process in &report.processes {
        let root = sanitize(&process_frame_name(process));
        for group in &process.groups {
            out.push_str(&root);
            out.push(';');
            out.push_str(&sanitize(&direction_frame_name(group.direction)));
            // The request site below the dial: main -> handler -> fetchUser
            // -> ... -> dialConn reads top-down in a flame graph.
            for frame in group.stack.iter().chain(&group.request_stack).rev() {
                out.push(';');
                out.push_str(&sanitize(&frame_name(frame)));
            }
            // Writing to a String cannot fail.
            let _ = writeln!(out, " {}", group.count);
        }
    }
    out
}

/// Replaces the characters the format reserves (see the module doc).
fn sanitize(name: &str) -> String {
    name.replace(';', ":").replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{report::pprof::tests::sample_report, symbolize::Frame};

    #[test]
    fn sample() {
        assert_eq!(
            encode(&sample_report()),
            "server (pid 100);[connect];0x555500000f00;dial;connect 3\n\
             server (pid 100);[preexisting] 2\n\
             worker (pid 200);[accept];libfoo.so.1+0xabc;main;connect 1\n"
        );
    }

    #[test]
    fn reserved_characters() {
        let mut report = sample_report();
        report.processes.truncate(1);
        let process = &mut report.processes[0];
        process.comm = "a;b\nc".to_string();
        process.groups.truncate(1);
        process.groups[0].stack = vec![Frame {
            address: 1,
            symbol: Some("Lfoo;bar;\r\n".to_string()),
            ..Frame::default()
        }];
        assert_eq!(encode(&report), "a:b c (pid 100);[connect];Lfoo:bar:   3\n");
    }

    /// The request site below the dial: a flame graph reads main ->
    /// handler -> ... -> dialConn.
    #[test]
    fn request_frames_sit_below_the_dial() {
        let mut report = sample_report();
        report.processes.truncate(1);
        let group = &mut report.processes[0].groups[0];
        group.stack.truncate(1);
        let frame = |name: &str| Frame {
            address: 1,
            symbol: Some(name.to_string()),
            ..Frame::default()
        };
        group.stack = vec![frame("dialConn")];
        group.request_stack = vec![
            frame("queueForDial"),
            frame("main.fetchUser"),
            frame("main.main"),
        ];
        report.processes[0].groups.truncate(1);
        assert_eq!(
            encode(&report),
            "server (pid 100);[connect];main.main;main.fetchUser;queueForDial;dialConn 3\n"
        );
    }

    #[test]
    fn empty() {
        assert_eq!(encode(&Report::default()), "");
    }
}
