//! The report model every output format renders: processes, their groups of
//! outstanding sockets (by direction and opening stack), and the sockets.
//! Field names are the `--format json` contract (version 1).
use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    event::{Address, Direction, TcpState},
    symbolize::Frame,
};

pub const REPORT_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub version: u32,
    /// When it was built (RFC 3339, UTC).
    pub time: String,
    /// The hook set that ran (`tracepoint`, ...).
    pub hooks: String,
    pub duration_s: f64,
    /// Lifecycle events read from the kernel.
    pub events: u64,
    /// Lifecycle events lost (ring buffer full, unreadable accepts, undecodable records).
    pub lost_events: u64,
    /// Stacks the kernel could not record.
    pub lost_stacks: u64,
    /// False whenever events were lost or a tracking limit was hit: then
    /// counts may be wrong; `incomplete` says why.
    pub complete: bool,
    pub incomplete: Vec<String>,
    /// Limits of what could be seen that do not make counts wrong (e.g. a
    /// process whose fd table could not be read: its pre-existing sockets
    /// are not attributed).
    pub warnings: Vec<String>,
    /// Distinct open sockets in the report: a socket held by several
    /// processes is listed under each of them but counted here once.
    pub open_sockets: usize,
    /// Groups `--top` left out, and the sockets in them (counted in
    /// `open_sockets` all the same).
    pub hidden_groups: usize,
    pub hidden_sockets: usize,
    /// Ranked by open sockets, most first.
    pub processes: Vec<ProcessReport>,
}

/// A process that holds open sockets (has an fd for them now): the one to
/// fix or restart. Sockets whose holder could not be found are listed
/// under their opener, in groups with `holder_found: false`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// Its cgroup v2 path, and the container and Kubernetes pod that path
    /// names (docker, containerd, CRI-O), where it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The agent's forecast for a process whose open sockets grow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlook: Option<Outlook>,
    /// Open sockets in all groups (shared ones included).
    pub open: usize,
    /// Ranked by count, most first.
    pub groups: Vec<Group>,
}

/// Outstanding sockets one process holds that were opened the same way, by
/// the same process, from the same stack (pre-existing sockets have no
/// stack and no known opener: one group per holder).
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    pub direction: Direction,
    pub count: usize,
    /// Who opened them (`None` for pre-existing sockets: never seen opening).
    /// It may have exited, or be another process than the holder: fork and
    /// SCM_RIGHTS hand sockets on.
    pub opener: Option<Opener>,
    /// False when no fd table holds these sockets (another network
    /// namespace, an unreadable fd table, an fd in flight): they are listed
    /// under their opener, and the report says so.
    pub holder_found: bool,
    /// Sockets of this group that other processes hold too.
    pub shared: usize,
    pub oldest_age_s: f64,
    pub newest_age_s: f64,
    /// TCP state -> sockets in it (by name in JSON, alphabetical).
    pub states: BTreeMap<TcpState, usize>,
    /// What looks wrong, most telling first.
    pub classes: Vec<Class>,
    /// One sentence of evidence per class, same order.
    pub evidence: Vec<String>,
    /// Advice that depends on the code (e.g. Go's net/http).
    pub hints: Vec<String>,
    /// Most frequent remote endpoints first (at most 10).
    pub remotes: Vec<RemoteCount>,
    /// Sockets this stack opened and closed while tracing (for `growing`).
    pub opened_during_trace: u64,
    pub closed_during_trace: u64,
    /// User stack, innermost frame first; empty for pre-existing sockets.
    pub stack: Vec<Frame>,
    pub kernel_stack: Vec<Frame>,
    /// Go connects dialed by net/http: the stack of the goroutine whose
    /// request dialed them (innermost first; the request site is its first
    /// frame of the program's own code). Absent where there is none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_stack: Vec<Frame>,
    /// Oldest first.
    pub sockets: Vec<SocketReport>,
}

/// How fast a process leaks and when it runs out (`leakbpf agent`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Outlook {
    /// Open sockets gained per hour over the agent's window.
    pub leak_rate_per_hour: f64,
    pub open_fds: Option<u64>,
    /// The soft `RLIMIT_NOFILE` (`None`: unlimited or unreadable).
    pub fd_limit: Option<u64>,
    /// Seconds until `open_fds` reaches `fd_limit` at this rate.
    pub fd_exhaustion_s: Option<f64>,
    /// The memory cgroup's usage, its tightest `memory.max` on the way to
    /// the root, and the socket buffers in it (`memory.stat` `sock`).
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub socket_memory_bytes: Option<u64>,
    /// Seconds until `memory_bytes` reaches the limit at the window's rate.
    pub memory_exhaustion_s: Option<f64>,
}

#[cfg(test)]
impl Group {
    /// `count` CLOSE_WAIT sockets opened by `direction`, nothing else known
    /// (the unit tests' starting point).
    pub(crate) fn for_tests(direction: Direction, count: usize) -> Group {
        Group {
            direction,
            count,
            opener: None,
            holder_found: true,
            shared: 0,
            oldest_age_s: 0.0,
            newest_age_s: 0.0,
            states: [(TcpState::CloseWait, count)].into(),
            classes: Vec::new(),
            evidence: Vec::new(),
            hints: Vec::new(),
            remotes: Vec::new(),
            opened_during_trace: 0,
            closed_during_trace: 0,
            stack: Vec::new(),
            kernel_stack: Vec::new(),
            request_stack: Vec::new(),
            sockets: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Opener {
    pub pid: u32,
    pub comm: String,
    /// The opener is gone; its sockets live on in the holder.
    pub exited: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// The peer closed; the process never did.
    CloseWait,
    /// Data waiting in the receive queue that the process never read.
    Unread,
    /// ESTABLISHED with no traffic for longer than the idle threshold.
    Idle,
    /// Opened while tracing, and none from this stack was closed.
    Growing,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::CloseWait => "close_wait",
            Class::Unread => "unread",
            Class::Idle => "idle",
            Class::Growing => "growing",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteCount {
    pub addr: String,
    pub count: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct SocketReport {
    pub cookie: u64,
    /// The holder's fd (from /proc/PID/fd; the opener's fd from the event
    /// when no holder was found).
    pub fd: Option<i32>,
    /// Other processes that hold it too (fork, dup, SCM_RIGHTS).
    #[serde(skip_serializing_if = "<[u32]>::is_empty")]
    pub shared_with: Box<[u32]>,
    /// Thread that opened it (0 for pre-existing sockets).
    pub tid: u32,
    pub local: Address,
    pub remote: Address,
    pub state: TcpState,
    pub age_s: f64,
    /// Time since data last moved (tcp_info), where known.
    pub idle_s: Option<f64>,
    /// Bytes received but not read by the process.
    pub unread_bytes: Option<u32>,
    /// Bytes queued to send, not yet acknowledged.
    pub unsent_bytes: Option<u32>,
}

#[cfg(test)]
mod tests {
    /// A report of 100,000 sockets holds one of these per socket at once
    /// (BENCHMARKS.md: the report's peak).
    #[test]
    fn a_socket_report_stays_small() {
        assert!(size_of::<super::SocketReport>() <= 128);
    }
}
