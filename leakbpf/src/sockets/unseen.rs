//! Open sockets leakbpf never saw opening, found at report time.
//!
//! Why: two kinds of open pass every hook of some set, and such sockets
//! would silently be missing from the report.
//! * An io_uring accept (IORING_OP_ACCEPT) never passes through the
//!   accept/accept4 system calls, whose exits are where the tracepoint set
//!   learns who accepted a socket (the fentry and kprobe sets hook
//!   inet_csk_accept and see it).
//! * An accept() already blocked when the fentry or kprobe set attaches
//!   returns past fexit/kretprobe, which only see calls that entered after
//!   them: an idle server's next connection.
//!
//! Every socket open at start-up is in the table (the pre-existing scan),
//! and every one opened later is, if its open was seen. So at report time a
//! socket some process holds whose cookie the table does not know was
//! opened unseen; the report names its holder in a warning.
use std::{
    collections::{BTreeMap, HashSet},
    fs,
};

use super::OwnedSocket;

/// What `/proc/PID/fd/N` links to for an io_uring instance.
const IO_URING_LINK: &str = "anon_inode:[io_uring]";

/// A process holding sockets leakbpf never saw opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unseen {
    pub pid: u32,
    pub comm: String,
    pub sockets: usize,
    /// It holds an io_uring instance.
    pub io_uring: bool,
}

impl Unseen {
    /// The report's warning about it.
    pub fn warning(&self, hooks: &str) -> String {
        let sockets = format!(
            "{} TCP socket{}",
            self.sockets,
            if self.sockets == 1 { "" } else { "s" }
        );
        if self.io_uring {
            format!(
                "pid {} ({}) holds an io_uring instance and {sockets} leakbpf never saw \
                 opened: the {hooks} hook set does not see accepts made through io_uring, so \
                 they are missing from this report (the fentry and kprobe hook sets see them)",
                self.pid, self.comm
            )
        } else {
            format!(
                "pid {} ({}) holds {sockets} opened while tracing that leakbpf never saw \
                 opened (an accept() already waiting when tracing started returns past the \
                 {hooks} hook set's hooks); they are missing from this report",
                self.pid, self.comm
            )
        }
    }
}

/// Warnings for every process (all, or `pids`) holding sockets of `found`
/// (the report's snapshot: no second scan) that are `wanted` and for which
/// `known(cookie)` is false. Call it only when the table holds every socket
/// open at start-up.
pub fn warnings<'a>(
    found: impl IntoIterator<Item = &'a OwnedSocket>,
    known: impl Fn(u64) -> bool,
    wanted: impl Fn(&OwnedSocket) -> bool,
    pids: Option<&[u32]>,
    hooks: &str,
) -> Vec<String> {
    let found: Vec<OwnedSocket> = found
        .into_iter()
        .filter(|o| wanted(o) && !known(o.socket.cookie))
        .filter_map(|o| {
            let mut o = o.clone();
            if let Some(pids) = pids {
                o.owners.retain(|owner| pids.contains(&owner.pid));
            }
            (!o.owners.is_empty()).then_some(o)
        })
        .collect();
    if found.is_empty() {
        return Vec::new();
    }
    let holders = io_uring_holders(pids);
    unseen(&found, |_| false, &holders)
        .iter()
        .map(|u| u.warning(hooks))
        .collect()
}

/// The owners of sockets of `found` that are not `known`, with how many,
/// by pid; `io_uring` holders are marked.
#[expect(
    clippy::implicit_hasher,
    reason = "one caller, with the standard hasher"
)]
pub fn unseen(
    found: &[OwnedSocket],
    known: impl Fn(u64) -> bool,
    io_uring: &HashSet<u32>,
) -> Vec<Unseen> {
    let mut by_pid: BTreeMap<u32, Unseen> = BTreeMap::new();
    for owned in found.iter().filter(|o| !known(o.socket.cookie)) {
        // A socket shared by fork/dup counts once: for an io_uring holder
        // (the likely opener), else for its first holder.
        let Some(owner) = owned
            .owners
            .iter()
            .find(|o| io_uring.contains(&o.pid))
            .or_else(|| owned.owners.first())
        else {
            continue;
        };
        by_pid
            .entry(owner.pid)
            .or_insert_with(|| Unseen {
                pid: owner.pid,
                comm: owner.comm().to_string(),
                sockets: 0,
                io_uring: io_uring.contains(&owner.pid),
            })
            .sockets += 1;
    }
    by_pid.into_values().collect()
}

/// Processes (all, or `pids`) with an io_uring fd.
pub fn io_uring_holders(pids: Option<&[u32]>) -> HashSet<u32> {
    let pids: Vec<u32> = match pids {
        Some(pids) => pids.to_vec(),
        None => fs::read_dir("/proc")
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default(),
    };
    pids.into_iter()
        .filter(|&pid| holds_io_uring(pid))
        .collect()
}

fn holds_io_uring(pid: u32) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == IO_URING_LINK))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::Family,
        sockets::{DiagSocket, Owner, diag::state},
    };

    fn owned(cookie: u64, pids: &[u32]) -> OwnedSocket {
        OwnedSocket {
            socket: DiagSocket {
                cookie,
                inode: cookie,
                uid: 0,
                family: Family::Ipv4,
                local: "127.0.0.1:1".parse().unwrap(),
                remote: "127.0.0.1:2".parse().unwrap(),
                state: state::ESTABLISHED,
                recv_queue: 0,
                send_queue: 0,
                last_data_recv_ms: None,
                last_data_sent_ms: None,
            },
            owners: pids
                .iter()
                .map(|&pid| Owner::new(pid, 4, &format!("p{pid}"), None))
                .collect(),
        }
    }

    #[test]
    fn names_holders_of_sockets_never_seen() {
        let found = [
            owned(1, &[10]), // seen opened
            owned(2, &[10]),
            owned(3, &[10]),
            owned(4, &[20]), // no io_uring
            owned(5, &[30, 10]),
        ];
        let holders: HashSet<u32> = [10].into();
        let unseen = unseen(&found, |cookie| cookie == 1, &holders);
        assert_eq!(
            unseen,
            vec![
                Unseen {
                    pid: 10,
                    comm: "p10".to_owned(),
                    sockets: 3,
                    io_uring: true,
                },
                Unseen {
                    pid: 20,
                    comm: "p20".to_owned(),
                    sockets: 1,
                    io_uring: false,
                },
            ]
        );
        assert_eq!(
            unseen[0].warning("tracepoint"),
            "pid 10 (p10) holds an io_uring instance and 3 TCP sockets leakbpf never saw \
             opened: the tracepoint hook set does not see accepts made through io_uring, so \
             they are missing from this report (the fentry and kprobe hook sets see them)"
        );
        assert_eq!(
            unseen[1].warning("kprobe"),
            "pid 20 (p20) holds 1 TCP socket opened while tracing that leakbpf never saw \
             opened (an accept() already waiting when tracing started returns past the \
             kprobe hook set's hooks); they are missing from this report"
        );
    }

    #[test]
    fn nothing_to_say_when_every_socket_was_seen() {
        let found = [owned(1, &[10]), owned(2, &[10])];
        let holders: HashSet<u32> = [10].into();
        assert!(unseen(&found, |_| true, &holders).is_empty());
        assert!(unseen(&[], |_| false, &holders).is_empty());
    }

    #[test]
    fn this_process_holds_no_io_uring() {
        assert!(io_uring_holders(Some(&[std::process::id()])).is_empty());
    }
}
