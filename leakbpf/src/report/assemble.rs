//! Builds a [`Report`] from the socket table and a [`Snapshot`] of who
//! holds what now: groups open sockets per holding process by how, by whom
//! and where they were opened, adds what the kernel says of them now
//! (state, queues, idle time, fd), classifies and ranks. Pure: the snapshot
//! and the frames come in from the caller.
use std::collections::BTreeMap;

use super::{
    classify::{self, Thresholds},
    model::{Group, Opener, ProcessReport, RemoteCount, Report, SocketReport},
};
use crate::{
    event::{Direction, Task, TcpState},
    filter::Filter,
    snapshot::{LiveFacts, Snapshot, holder_task},
    socket_table::{GroupKey, Socket, SocketTable},
    symbolize::Frame,
};

/// Where frames come from (the stack map and a symbolizer, or a test).
pub trait FrameSource {
    fn user(&self, socket: &Socket) -> Vec<Frame>;
    fn kernel(&self, socket: &Socket) -> Vec<Frame>;
    /// The Go request site's stack; empty where there is none.
    fn request(&self, _socket: &Socket) -> Vec<Frame> {
        Vec::new()
    }
}

/// Everything besides the table that shapes the report.
pub struct Options<'a> {
    pub now_ns: u64,
    pub filter: &'a Filter,
    /// Sockets younger than this are left out.
    pub min_age_s: f64,
    /// Keep the largest N groups (all if None).
    pub top: Option<usize>,
    pub thresholds: Thresholds,
}

/// One process's hold on a socket.
struct Held {
    holder: Task,
    /// Shared with the snapshot: no copy per socket.
    exe: Option<std::sync::Arc<std::path::Path>>,
    fd: Option<i32>,
    /// Other holders' pids.
    shared_with: Box<[u32]>,
}

/// A report group: one holder, one way of opening, one opener, one stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ReportKey {
    holder: u32,
    holder_found: bool,
    opened: GroupKey,
}

/// Builds the report; `header` carries the run's facts (hooks, events,
/// losses) and gets `processes` and `open_sockets` filled in, and an
/// `incomplete` reason for sockets no fd table holds.
pub fn assemble(
    mut header: Report,
    table: &SocketTable,
    snapshot: &Snapshot,
    frames: &dyn FrameSource,
    options: &Options<'_>,
) -> Report {
    let held = hold_by_group(table, snapshot, options);
    if held.holder_missing > 0 {
        header.incomplete.push(format!(
            "{} open sockets were found in no fd table (another network namespace, \
             an fd table that could not be read, or an fd in flight): they are listed under their opener",
            held.holder_missing
        ));
        header.complete = false;
    }
    let mut built: Vec<BuiltGroup> = held
        .groups
        .into_iter()
        .map(|(key, gathered)| {
            let (comm, exe) = (
                gathered.holder.comm.to_string(),
                gathered.exe.as_ref().map(|e| e.display().to_string()),
            );
            let group = group(&key, gathered, table, snapshot, frames, options);
            (key.holder, comm, exe, group)
        })
        .collect();
    // Largest first; ties by pid and stack for stable output.
    built.sort_by(|a, b| {
        b.3.count
            .cmp(&a.3.count)
            .then(a.0.cmp(&b.0))
            .then_with(|| frame_names(&a.3.stack).cmp(&frame_names(&b.3.stack)))
    });
    if let Some(top) = options.top
        && built.len() > top
    {
        header.hidden_groups = built.len() - top;
        header.hidden_sockets = built[top..].iter().map(|(.., group)| group.count).sum();
        built.truncate(top);
    }
    header.open_sockets = held.distinct;
    header.processes = by_process(built);
    header
}

/// A finished group with its holder's pid, comm and exe.
type BuiltGroup = (u32, String, Option<String>, Group);

/// A report group while its sockets are gathered. Each socket is kept as
/// its finished [`SocketReport`] only: a report of 100,000 sockets holds no
/// other copy of them.
struct Gathered {
    /// Its earliest socket (by open time, then cookie): its opener and
    /// stacks speak for the group.
    first: Socket,
    /// That socket's holder, and its executable.
    holder: Task,
    exe: Option<std::sync::Arc<std::path::Path>>,
    sockets: Vec<SocketReport>,
}

/// Open sockets as the report shows them: per report group, each holder's
/// hold on them.
struct HeldGroups {
    /// FxHash: looked up once per socket shown (SipHash was a visible part
    /// of a report of 100,000).
    groups: rustc_hash::FxHashMap<ReportKey, Gathered>,
    /// Distinct sockets shown.
    distinct: usize,
    /// Sockets shown without a holder, unexplained.
    holder_missing: usize,
}

/// Groups the open sockets `options` wants by holder (or, with none found,
/// by opener), how, by whom and where they were opened.
fn hold_by_group(table: &SocketTable, snapshot: &Snapshot, options: &Options<'_>) -> HeldGroups {
    let age_s = |socket: &Socket| options.now_ns.saturating_sub(socket.opened_ns) as f64 / 1e9;
    let mut out = HeldGroups {
        groups: rustc_hash::FxHashMap::default(),
        distinct: 0,
        holder_missing: 0,
    };
    for socket in table.open_sockets() {
        // Opened after the snapshot: its holders are not in it yet.
        if socket.opened_ns > snapshot.taken_ns || age_s(&socket) < options.min_age_s {
            continue;
        }
        let family = socket.endpoints.family();
        let held = holders(&socket, snapshot);
        let found = !held.is_empty();
        let shown: Vec<Held> = if found {
            held.into_iter()
                .filter(|h| options.filter.matches(&h.holder, family))
                .collect()
        } else if options.filter.matches(&socket.opener, family) {
            // Nobody's fd table has it (but the kernel never said it was
            // released): list it under its opener and say so.
            vec![Held {
                holder: socket.opener.clone(),
                exe: None,
                fd: socket.fd,
                shared_with: Box::default(),
            }]
        } else {
            Vec::new()
        };
        if shown.is_empty() {
            continue;
        }
        out.distinct += 1;
        // The kernel has it, and its opener's fd table is closed to us: the
        // opener most likely still holds it (a warning says whose tables
        // could not be read). Anything else without a holder is a gap.
        let explained = !found
            && snapshot.has(socket.cookie)
            && snapshot.is_alive(socket.opener.pid, socket.opener.start_ns)
            && snapshot.unreadable(socket.opener.pid);
        out.holder_missing += usize::from(!found && !explained);
        let live = snapshot.live_facts(socket.cookie);
        let order = (socket.opened_ns, socket.cookie);
        for held in shown {
            let key = ReportKey {
                holder: held.holder.pid,
                holder_found: found,
                opened: socket.group_key(),
            };
            let report = socket_report(&socket, &held, live, options.now_ns);
            match out.groups.entry(key) {
                std::collections::hash_map::Entry::Occupied(mut entry) => {
                    let gathered = entry.get_mut();
                    if order < (gathered.first.opened_ns, gathered.first.cookie) {
                        gathered.first = socket.clone();
                        gathered.holder = held.holder;
                        gathered.exe = held.exe;
                    }
                    // Grown by an eighth, not doubled: six holders of
                    // 18,000 sockets each kept room for 32,768 (30 MiB
                    // where 16 do), and a large block grows in place.
                    let sockets = &mut gathered.sockets;
                    if sockets.len() == sockets.capacity() {
                        sockets.reserve_exact((sockets.len() / 8).max(64));
                    }
                    sockets.push(report);
                }
                std::collections::hash_map::Entry::Vacant(entry) => {
                    entry.insert(Gathered {
                        first: socket.clone(),
                        holder: held.holder,
                        exe: held.exe,
                        sockets: vec![report],
                    });
                }
            }
        }
    }
    out
}

/// Groups gathered per holding process, most open sockets first.
fn by_process(built: Vec<BuiltGroup>) -> Vec<ProcessReport> {
    let mut processes: Vec<ProcessReport> = Vec::new();
    for (pid, comm, exe, group) in built {
        match processes.iter_mut().find(|p| p.pid == pid) {
            Some(process) => {
                process.open += group.count;
                process.exe = process.exe.take().or(exe);
                process.groups.push(group);
            }
            None => processes.push(ProcessReport {
                pid,
                comm,
                exe,
                open: group.count,
                groups: vec![group],
                ..ProcessReport::default()
            }),
        }
    }
    processes.sort_by(|a, b| b.open.cmp(&a.open).then(a.pid.cmp(&b.pid)));
    processes
}

/// Each process holding `socket` now, once per process (its lowest fd).
fn holders(socket: &Socket, snapshot: &Snapshot) -> Vec<Held> {
    let owners = snapshot.holders(socket.cookie);
    let mut pids: Vec<u32> = owners.iter().map(|o| o.pid).collect();
    pids.dedup();
    owners
        .iter()
        .enumerate()
        .filter(|(i, owner)| *i == 0 || owners[i - 1].pid != owner.pid)
        .map(|(_, owner)| Held {
            holder: holder_task(owner),
            exe: owner.exe().cloned(),
            fd: Some(owner.fd),
            shared_with: pids.iter().copied().filter(|&p| p != owner.pid).collect(),
        })
        .collect()
}

fn group(
    key: &ReportKey,
    gathered: Gathered,
    table: &SocketTable,
    snapshot: &Snapshot,
    frames: &dyn FrameSource,
    options: &Options<'_>,
) -> Group {
    // Oldest first (the same age for all: the same clock reading), then by
    // cookie. Room left by growing is given back: a group may hold 100,000.
    let mut reports = gathered.sockets;
    reports.sort_unstable_by(|a, b| b.age_s.total_cmp(&a.age_s).then(a.cookie.cmp(&b.cookie)));
    reports.shrink_to_fit();
    let mut states: BTreeMap<TcpState, usize> = BTreeMap::new();
    let mut remotes: rustc_hash::FxHashMap<crate::event::Address, usize> =
        rustc_hash::FxHashMap::default();
    for report in &reports {
        *states.entry(report.state).or_default() += 1;
        *remotes.entry(report.remote).or_default() += 1;
    }
    let mut remotes: Vec<RemoteCount> = remotes
        .into_iter()
        .map(|(addr, count)| RemoteCount {
            addr: addr.to_string(),
            count,
        })
        .collect();
    remotes.sort_by(|a, b| b.count.cmp(&a.count).then(a.addr.cmp(&b.addr)));
    remotes.truncate(10);

    let direction = key.opened.direction;
    let first = &gathered.first;
    let counts = table.group_counts(&key.opened);
    let stack = frames.user(first);
    let request_stack = frames.request(first);
    let found = classify::classify(&reports, direction, counts, options.thresholds);
    let ages = reports.iter().map(|r| r.age_s);
    Group {
        direction,
        count: reports.len(),
        opener: (direction != Direction::Preexisting).then(|| Opener {
            pid: first.opener.pid,
            comm: first.opener.comm.to_string(),
            exited: !snapshot.is_alive(first.opener.pid, first.opener.start_ns),
        }),
        holder_found: key.holder_found,
        shared: reports.iter().filter(|r| !r.shared_with.is_empty()).count(),
        oldest_age_s: ages.clone().fold(0.0, f64::max),
        newest_age_s: ages.fold(f64::INFINITY, f64::min),
        states,
        classes: found.iter().map(|(class, _)| *class).collect(),
        evidence: found.into_iter().map(|(_, evidence)| evidence).collect(),
        hints: classify::hints(&stack, &request_stack),
        remotes,
        opened_during_trace: counts.opened,
        closed_during_trace: counts.closed,
        kernel_stack: if direction == Direction::Preexisting {
            Vec::new()
        } else {
            frames.kernel(first)
        },
        stack,
        request_stack,
        sockets: reports,
    }
}

fn socket_report(
    socket: &Socket,
    held: &Held,
    live: Option<LiveFacts>,
    now_ns: u64,
) -> SocketReport {
    let live = live.unwrap_or_default();
    SocketReport {
        cookie: socket.cookie,
        fd: held.fd,
        shared_with: held.shared_with.clone(),
        tid: socket.opener.tid,
        local: live
            .local
            .unwrap_or_else(|| socket.endpoints.local())
            .into(),
        remote: socket.endpoints.remote().into(),
        state: live.state.unwrap_or(socket.endpoints.state),
        age_s: now_ns.saturating_sub(socket.opened_ns) as f64 / 1e9,
        idle_s: live.idle_ms.map(|ms| ms as f64 / 1e3),
        unread_bytes: live.unread_bytes,
        unsent_bytes: live.unsent_bytes,
    }
}

fn frame_names(frames: &[Frame]) -> Vec<Option<&str>> {
    frames.iter().map(|f| f.symbol.as_deref()).collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{
        event::{Close, Endpoints, Event, Family, Open, Stack, TcpState},
        report::model::Class,
        sockets::{DiagSocket, OwnedSocket, Owner, ScanStats},
    };

    struct Names;
    impl FrameSource for Names {
        fn user(&self, socket: &Socket) -> Vec<Frame> {
            let name = match socket.user_stack {
                Stack::Id(1) => "main.leakOne",
                Stack::Id(_) => "main.other",
                Stack::Missing(_) | Stack::Inline => return Vec::new(),
            };
            vec![Frame {
                address: 0x1000,
                symbol: Some(name.to_owned()),
                ..Frame::default()
            }]
        }
        fn kernel(&self, _: &Socket) -> Vec<Frame> {
            vec![Frame {
                address: 0xffff_0000,
                symbol: Some("tcp_connect".to_owned()),
                ..Frame::default()
            }]
        }
    }

    const SEC: u64 = 1_000_000_000;

    fn open(cookie: u64, pid: u32, stack: u32, time_ns: u64, remote_port: u16) -> Event {
        Event::Open(Box::new(Open {
            time_ns,
            cookie,
            task: Task {
                pid,
                tid: pid + 1,
                cgroup_id: 0,
                comm: format!("p{pid}").as_str().into(),
                start_ns: 0,
            },
            endpoints: Endpoints::new(
                format!("127.0.0.1:{}", 40000 + cookie).parse().unwrap(),
                format!("127.0.0.1:{remote_port}").parse().unwrap(),
                TcpState::Established,
            ),
            direction: Direction::Connect,
            fd: None,
            user_stack: Stack::Id(stack),
            kernel_stack: Stack::Id(9),
            user_sp: 0,
            request_stack: Stack::NOT_PROBED,
            user_stack_top: [0; leakbpf_common::USER_STACK_TOP_WORDS],
            leaf_caller: None,
        }))
    }

    fn close(cookie: u64, pid: u32) -> Event {
        Event::Close(Close {
            time_ns: 5 * SEC,
            cookie,
            task: Task {
                pid,
                ..Task::default()
            },
            state: TcpState::Established,
        })
    }

    fn header() -> Report {
        Report {
            version: 1,
            complete: true,
            ..Report::default()
        }
    }

    fn options(filter: &Filter) -> Options<'_> {
        Options {
            now_ns: 10 * SEC,
            filter,
            min_age_s: 0.0,
            top: None,
            thresholds: Thresholds { idle_s: 30.0 },
        }
    }

    /// What the kernel and the fd tables say: (cookie, state, holders as
    /// (pid, fd)).
    /// (cookie, state, holders as (pid, fd)).
    type HeldSocket = (u64, TcpState, Vec<(u32, i32)>);

    struct Kernel {
        sockets: Vec<HeldSocket>,
        alive: Vec<u32>,
        denied: Vec<u32>,
    }

    impl Kernel {
        fn new() -> Kernel {
            Kernel {
                sockets: Vec::new(),
                alive: Vec::new(),
                denied: Vec::new(),
            }
        }

        fn holds(mut self, cookie: u64, state: TcpState, holders: &[(u32, i32)]) -> Kernel {
            self.sockets.push((cookie, state, holders.to_vec()));
            for (pid, _) in holders {
                if !self.alive.contains(pid) {
                    self.alive.push(*pid);
                }
            }
            self
        }

        fn snapshot(self) -> Snapshot {
            let found = self
                .sockets
                .into_iter()
                .map(|(cookie, state, holders)| OwnedSocket {
                    socket: DiagSocket {
                        cookie,
                        inode: cookie + 1000,
                        uid: 0,
                        family: Family::Ipv4,
                        local: "127.0.0.1:1".parse().unwrap(),
                        remote: "127.0.0.1:2".parse().unwrap(),
                        state: if state == TcpState::CloseWait { 8 } else { 1 },
                        recv_queue: if state == TcpState::CloseWait { 11 } else { 0 },
                        send_queue: 0,
                        last_data_recv_ms: Some(1_000),
                        last_data_sent_ms: Some(1_000),
                    },
                    owners: holders
                        .into_iter()
                        .map(|(pid, fd)| {
                            Owner::new(
                                pid,
                                fd,
                                &format!("p{pid}"),
                                Some(&PathBuf::from(format!("/bin/p{pid}"))),
                            )
                        })
                        .collect(),
                })
                .collect();
            let mut stats = ScanStats::default();
            stats.walk.permission_denied = self.denied.len();
            stats.walk.denied_pids = self.denied;
            Snapshot::from_parts(
                found,
                self.alive.into_iter().map(|pid| (pid, 0)).collect(),
                stats,
                20 * SEC,
                true,
            )
        }
    }

    /// Two processes, three stacks: groups by (holder, direction, opener,
    /// stack), ranked by count, with states from the kernel.
    #[test]
    fn groups_ranks_and_enriches() {
        let mut table = SocketTable::default();
        let mut kernel = Kernel::new();
        for cookie in 1..=4 {
            table.apply(&open(cookie, 100, 1, cookie * SEC, 8080));
            let state = if cookie == 1 {
                TcpState::CloseWait
            } else {
                TcpState::Established
            };
            kernel = kernel.holds(cookie, state, &[(100, 6 + cookie as i32)]);
        }
        table.apply(&open(5, 100, 2, SEC, 9090));
        table.apply(&open(6, 200, 1, SEC, 8080));
        table.apply(&open(7, 200, 1, SEC, 8080));
        table.apply(&close(7, 200));
        let kernel = kernel.holds(5, TcpState::Established, &[(100, 20)]).holds(
            6,
            TcpState::Established,
            &[(200, 3)],
        );
        let filter = Filter::default();
        let report = assemble(
            header(),
            &table,
            &kernel.snapshot(),
            &Names,
            &options(&filter),
        );

        assert!(report.complete, "{:?}", report.incomplete);
        assert_eq!(report.open_sockets, 6);
        assert_eq!(report.processes.len(), 2);
        let leaky = &report.processes[0];
        assert_eq!(
            (leaky.pid, leaky.open, leaky.exe.as_deref()),
            (100, 5, Some("/bin/p100"))
        );
        assert_eq!(leaky.groups.len(), 2);
        let big = &leaky.groups[0];
        assert_eq!(big.count, 4);
        assert_eq!(big.stack[0].symbol.as_deref(), Some("main.leakOne"));
        assert_eq!(big.kernel_stack[0].symbol.as_deref(), Some("tcp_connect"));
        assert_eq!(big.states[&TcpState::CloseWait], 1);
        assert_eq!(big.states[&TcpState::Established], 3);
        // The JSON contract: state names as keys, alphabetical.
        assert_eq!(
            serde_json::to_string(&big.states).unwrap(),
            r#"{"CLOSE_WAIT":1,"ESTABLISHED":3}"#
        );
        assert_eq!(
            serde_json::to_value(&big.sockets[0]).unwrap()["state"],
            "CLOSE_WAIT"
        );
        // The local address is the kernel's now (a connect's open is sent
        // before its source port is chosen).
        assert!(
            big.sockets
                .iter()
                .all(|s| s.local.to_string() == "127.0.0.1:1")
        );
        assert_eq!(
            big.remotes,
            [RemoteCount {
                addr: "127.0.0.1:8080".to_owned(),
                count: 4
            }]
        );
        assert_eq!(
            big.classes,
            [Class::CloseWait, Class::Unread, Class::Growing]
        );
        assert_eq!(
            big.opener,
            Some(Opener {
                pid: 100,
                comm: "p100".to_owned(),
                exited: false
            })
        );
        assert!(big.holder_found);
        assert_eq!((big.oldest_age_s, big.newest_age_s), (9.0, 6.0));
        assert_eq!(big.sockets[0].cookie, 1, "oldest first");
        assert_eq!(big.sockets[0].fd, Some(7));
        assert_eq!(big.sockets[0].unread_bytes, Some(10));
        assert_eq!(leaky.groups[1].count, 1);

        let other = &report.processes[1];
        assert_eq!((other.pid, other.open), (200, 1));
        assert_eq!(other.groups[0].opened_during_trace, 2);
        assert_eq!(other.groups[0].closed_during_trace, 1);
        assert!(
            other.groups[0].classes.is_empty(),
            "it closes what it opens"
        );
    }

    /// Parent 100 opened three sockets and exited; child 101 holds two of
    /// them, child 102 holds one of those too, and the third is in no fd
    /// table. Sockets go to their holders, a shared one is listed under
    /// each holder and counted once, and the unheld one makes the report
    /// incomplete.
    #[test]
    fn sockets_belong_to_whoever_holds_them_now() {
        let mut table = SocketTable::default();
        for cookie in 1..=3 {
            table.apply(&open(cookie, 100, 1, SEC, 8080));
        }
        let snapshot = Kernel::new()
            .holds(1, TcpState::Established, &[(101, 5)])
            .holds(2, TcpState::Established, &[(101, 6), (101, 9), (102, 3)])
            .snapshot();
        let filter = Filter::default();
        let report = assemble(header(), &table, &snapshot, &Names, &options(&filter));

        assert_eq!(report.open_sockets, 3, "each socket once");
        let pids: Vec<(u32, usize)> = report.processes.iter().map(|p| (p.pid, p.open)).collect();
        assert_eq!(pids, [(101, 2), (100, 1), (102, 1)]);
        let child = &report.processes[0].groups[0];
        assert_eq!(child.count, 2);
        assert!(child.holder_found);
        assert_eq!(child.shared, 1);
        let opener = child.opener.as_ref().unwrap();
        assert_eq!((opener.pid, opener.exited), (100, true));
        let fds: Vec<Option<i32>> = child.sockets.iter().map(|s| s.fd).collect();
        assert_eq!(
            fds,
            [Some(5), Some(6)],
            "one entry per holder, its lowest fd"
        );
        assert_eq!(*child.sockets[1].shared_with, [102]);
        assert_eq!(*report.processes[2].groups[0].sockets[0].shared_with, [101]);

        let unheld = &report.processes[1].groups[0];
        assert!(!unheld.holder_found);
        assert!(!report.complete);
        assert!(
            report.incomplete[0].starts_with("1 open sockets were found in no fd table"),
            "{:?}",
            report.incomplete
        );

        // --pid 102 shows only what 102 holds.
        let only_102 = Filter::pids_only(vec![102]);
        let report = assemble(header(), &table, &snapshot, &Names, &options(&only_102));
        assert_eq!(report.open_sockets, 1);
        assert_eq!(report.processes.len(), 1);
        assert_eq!(
            (report.processes[0].pid, report.processes[0].open),
            (102, 1)
        );
        assert!(report.complete);
    }

    /// A socket the kernel has whose opener's fd table is closed to us (this
    /// sandbox's pid 1): attributed to the opener, without a gap.
    #[test]
    fn an_unreadable_opener_keeps_its_sockets() {
        let mut table = SocketTable::default();
        table.apply(&open(1, 100, 1, SEC, 8080));
        let mut kernel = Kernel::new().holds(1, TcpState::Established, &[]);
        kernel.alive.push(100);
        kernel.denied.push(100);
        let filter = Filter::default();
        let report = assemble(
            header(),
            &table,
            &kernel.snapshot(),
            &Names,
            &options(&filter),
        );
        assert!(report.complete, "{:?}", report.incomplete);
        assert_eq!(report.processes[0].pid, 100);
        assert!(!report.processes[0].groups[0].holder_found);
    }

    #[test]
    fn filters_by_holder_age_and_top() {
        let mut table = SocketTable::default();
        let mut kernel = Kernel::new();
        for cookie in 1..=3 {
            table.apply(&open(cookie, 100, 1, cookie * SEC, 8080));
            kernel = kernel.holds(cookie, TcpState::Established, &[(100, cookie as i32)]);
        }
        table.apply(&open(4, 200, 2, SEC, 8080));
        let snapshot = kernel
            .holds(4, TcpState::Established, &[(200, 3)])
            .snapshot();

        let only_200 = Filter::pids_only(vec![200]);
        let report = assemble(header(), &table, &snapshot, &Names, &options(&only_200));
        assert_eq!(report.processes.len(), 1);
        assert_eq!(report.processes[0].pid, 200);

        let all = Filter::default();
        let mut older = options(&all);
        older.min_age_s = 8.5;
        let report = assemble(header(), &table, &snapshot, &Names, &older);
        let counts: Vec<(u32, usize)> = report.processes.iter().map(|p| (p.pid, p.open)).collect();
        assert_eq!(
            counts,
            [(100, 1), (200, 1)],
            "only sockets at least 8.5 s old"
        );

        let mut top = options(&all);
        top.top = Some(1);
        let report = assemble(header(), &table, &snapshot, &Names, &top);
        assert_eq!(report.processes.len(), 1);
        assert_eq!(report.processes[0].groups[0].count, 3);
        assert_eq!(report.open_sockets, 4, "the total counts hidden groups");
        assert_eq!((report.hidden_groups, report.hidden_sockets), (1, 1));
    }

    /// Opened after the report-time snapshot: not reported half-known.
    #[test]
    fn sockets_newer_than_the_snapshot_wait_for_the_next_one() {
        let mut table = SocketTable::default();
        table.apply(&open(1, 100, 1, 30 * SEC, 8080));
        let filter = Filter::default();
        let mut opts = options(&filter);
        opts.now_ns = 40 * SEC;
        let report = assemble(header(), &table, &Kernel::new().snapshot(), &Names, &opts);
        assert_eq!(report.open_sockets, 0);
        assert!(report.complete);
    }
}
