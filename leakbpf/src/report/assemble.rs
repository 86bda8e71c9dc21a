//! Builds a [`Report`] from the socket table: groups open sockets per
//! process by how and where they were opened, adds what the kernel says of
//! them now (state, queues, idle time, fd), classifies and ranks. Pure: the
//! live facts and the frames come in from the caller.
use std::collections::{BTreeMap, HashMap};

use super::{
    classify::{self, Thresholds},
    model::{Group, ProcessReport, RemoteCount, Report, SocketReport},
};
use crate::{
    event::{Direction, TcpState},
    filter::Filter,
    socket_table::{GroupKey, Socket, SocketTable},
    symbolize::Frame,
};

/// What the kernel says of a socket at report time (sock_diag, /proc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveFacts {
    pub state: Option<TcpState>,
    pub unread_bytes: Option<u32>,
    pub unsent_bytes: Option<u32>,
    /// Milliseconds since data last moved in either direction.
    pub idle_ms: Option<u64>,
    pub fd: Option<i32>,
}

/// Where frames come from (the stack map and a symbolizer, or a test).
pub trait FrameSource {
    fn user(&self, socket: &Socket) -> Vec<Frame>;
    fn kernel(&self, socket: &Socket) -> Vec<Frame>;
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

/// Builds the report; `header` carries the run's facts (hooks, events,
/// losses) and gets `processes` filled in.
pub fn assemble(
    mut header: Report,
    table: &SocketTable,
    live: &HashMap<u64, LiveFacts>,
    exes: &HashMap<u32, String>,
    frames: &dyn FrameSource,
    options: &Options<'_>,
) -> Report {
    let age_s = |socket: &Socket| options.now_ns.saturating_sub(socket.opened_ns) as f64 / 1e9;
    let mut groups: HashMap<GroupKey, Vec<&Socket>> = HashMap::new();
    for socket in table.open_sockets() {
        if options
            .filter
            .matches(&socket.owner, socket.endpoints.family)
            && age_s(socket) >= options.min_age_s
        {
            groups.entry(socket.group_key()).or_default().push(socket);
        }
    }

    let mut built: Vec<(u32, String, Group)> = groups
        .into_iter()
        .map(|(key, mut sockets)| {
            sockets.sort_by_key(|s| (s.opened_ns, s.cookie));
            let group = group(&key, &sockets, table, live, frames, options);
            (key.pid, sockets[0].owner.comm.to_string(), group)
        })
        .collect();
    // Largest first; ties by pid and stack for stable output.
    built.sort_by(|a, b| {
        b.2.count
            .cmp(&a.2.count)
            .then(a.0.cmp(&b.0))
            .then_with(|| frame_names(&a.2.stack).cmp(&frame_names(&b.2.stack)))
    });
    if let Some(top) = options.top {
        built.truncate(top);
    }

    let mut processes: Vec<ProcessReport> = Vec::new();
    for (pid, comm, group) in built {
        match processes.iter_mut().find(|p| p.pid == pid) {
            Some(process) => {
                process.open += group.count;
                process.groups.push(group);
            }
            None => processes.push(ProcessReport {
                pid,
                comm,
                exe: exes.get(&pid).cloned(),
                open: group.count,
                groups: vec![group],
            }),
        }
    }
    processes.sort_by(|a, b| b.open.cmp(&a.open).then(a.pid.cmp(&b.pid)));
    header.processes = processes;
    header
}

fn group(
    key: &GroupKey,
    sockets: &[&Socket],
    table: &SocketTable,
    live: &HashMap<u64, LiveFacts>,
    frames: &dyn FrameSource,
    options: &Options<'_>,
) -> Group {
    let reports: Vec<SocketReport> = sockets
        .iter()
        .map(|socket| socket_report(socket, live.get(&socket.cookie), options.now_ns))
        .collect();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut remotes: HashMap<&str, usize> = HashMap::new();
    for report in &reports {
        *states.entry(report.state.clone()).or_default() += 1;
        *remotes.entry(&report.remote).or_default() += 1;
    }
    let mut remotes: Vec<RemoteCount> = remotes
        .into_iter()
        .map(|(addr, count)| RemoteCount {
            addr: addr.to_owned(),
            count,
        })
        .collect();
    remotes.sort_by(|a, b| b.count.cmp(&a.count).then(a.addr.cmp(&b.addr)));
    remotes.truncate(10);

    let counts = table.group_counts(key);
    let stack = frames.user(sockets[0]);
    let found = classify::classify(&reports, key.direction, counts, options.thresholds);
    let ages = reports.iter().map(|r| r.age_s);
    Group {
        direction: key.direction,
        count: reports.len(),
        oldest_age_s: ages.clone().fold(0.0, f64::max),
        newest_age_s: ages.fold(f64::INFINITY, f64::min),
        states,
        classes: found.iter().map(|(class, _)| *class).collect(),
        evidence: found.into_iter().map(|(_, evidence)| evidence).collect(),
        hints: classify::hints(&stack),
        remotes,
        opened_during_trace: counts.opened,
        closed_during_trace: counts.closed,
        kernel_stack: if key.direction == Direction::Preexisting {
            Vec::new()
        } else {
            frames.kernel(sockets[0])
        },
        stack,
        sockets: reports,
    }
}

fn socket_report(socket: &Socket, live: Option<&LiveFacts>, now_ns: u64) -> SocketReport {
    let live = live.copied().unwrap_or_default();
    SocketReport {
        cookie: socket.cookie,
        fd: live.fd.or(socket.fd),
        tid: socket.owner.tid,
        local: socket.endpoints.local.to_string(),
        remote: socket.endpoints.remote.to_string(),
        state: live
            .state
            .unwrap_or(socket.endpoints.state)
            .name()
            .to_owned(),
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
    use super::*;
    use crate::{
        cli::FilterArgs,
        event::{Close, Endpoints, Event, Family, Open, Stack, Task},
        report::model::Class,
    };

    struct Names;
    impl FrameSource for Names {
        fn user(&self, socket: &Socket) -> Vec<Frame> {
            let name = match socket.user_stack {
                Stack::Id(1) => "main.leakOne",
                Stack::Id(_) => "main.other",
                Stack::Missing(_) => return Vec::new(),
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
        Event::Open(Open {
            time_ns,
            cookie,
            task: Task {
                pid,
                tid: pid + 1,
                cgroup_id: 0,
                comm: format!("p{pid}").as_str().into(),
            },
            endpoints: Endpoints {
                family: Family::Ipv4,
                local: format!("127.0.0.1:{}", 40000 + cookie).parse().unwrap(),
                remote: format!("127.0.0.1:{remote_port}").parse().unwrap(),
                state: TcpState::Established,
            },
            direction: Direction::Connect,
            fd: None,
            user_stack: Stack::Id(stack),
            kernel_stack: Stack::Id(9),
            user_sp: 0,
            user_stack_top: [0; leakbpf_common::USER_STACK_TOP_WORDS],
            leaf_caller: None,
        })
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

    /// Two processes, three stacks: groups by (pid, direction, stack),
    /// ranked by count, with states from the kernel where known.
    #[test]
    fn groups_ranks_and_enriches() {
        let mut table = SocketTable::default();
        for cookie in 1..=4 {
            table.apply(&open(cookie, 100, 1, cookie * SEC, 8080));
        }
        table.apply(&open(5, 100, 2, SEC, 9090));
        table.apply(&open(6, 200, 1, SEC, 8080));
        table.apply(&open(7, 200, 1, SEC, 8080));
        table.apply(&close(7, 200));
        let mut live = HashMap::new();
        live.insert(
            1,
            LiveFacts {
                state: Some(TcpState::CloseWait),
                unread_bytes: Some(10),
                fd: Some(7),
                idle_ms: Some(40_000),
                ..LiveFacts::default()
            },
        );
        let exes = HashMap::from([(100, "/usr/bin/leaky".to_owned())]);
        let filter = Filter::default();
        let report = assemble(header(), &table, &live, &exes, &Names, &options(&filter));

        assert_eq!(report.processes.len(), 2);
        let leaky = &report.processes[0];
        assert_eq!(
            (leaky.pid, leaky.open, leaky.exe.as_deref()),
            (100, 5, Some("/usr/bin/leaky"))
        );
        assert_eq!(leaky.groups.len(), 2);
        let big = &leaky.groups[0];
        assert_eq!(big.count, 4);
        assert_eq!(big.stack[0].symbol.as_deref(), Some("main.leakOne"));
        assert_eq!(big.kernel_stack[0].symbol.as_deref(), Some("tcp_connect"));
        assert_eq!(big.states["CLOSE_WAIT"], 1);
        assert_eq!(big.states["ESTABLISHED"], 3);
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

    #[test]
    fn filters_by_owner_age_and_top() {
        let mut table = SocketTable::default();
        for cookie in 1..=3 {
            table.apply(&open(cookie, 100, 1, cookie * SEC, 8080));
        }
        table.apply(&open(4, 200, 2, SEC, 8080));
        let live = HashMap::new();
        let exes = HashMap::new();

        let only_200 = Filter::new(&FilterArgs {
            pids: vec![200],
            ..FilterArgs::default()
        });
        let report = assemble(header(), &table, &live, &exes, &Names, &options(&only_200));
        assert_eq!(report.processes.len(), 1);
        assert_eq!(report.processes[0].pid, 200);

        let all = Filter::default();
        let mut older = options(&all);
        older.min_age_s = 8.5;
        let report = assemble(header(), &table, &live, &exes, &Names, &older);
        let counts: Vec<(u32, usize)> = report.processes.iter().map(|p| (p.pid, p.open)).collect();
        assert_eq!(
            counts,
            [(100, 1), (200, 1)],
            "only sockets at least 8.5 s old"
        );

        let mut top = options(&all);
        top.top = Some(1);
        let report = assemble(header(), &table, &live, &exes, &Names, &top);
        assert_eq!(report.processes.len(), 1);
        assert_eq!(report.processes[0].groups[0].count, 3);
    }
}
