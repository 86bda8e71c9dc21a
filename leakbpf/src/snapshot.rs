//! What is open right now, and who holds it: the kernel's socket list
//! (sock_diag) joined with every process's fd table, taken once at start-up
//! (sockets that were already open) and once at report time (who holds
//! each traced socket now, and the kernel's live facts about it).
//!
//! Holders come from the fd tables because that is where the kernel keeps
//! ownership: a socket inherited across fork, duplicated with dup or passed
//! over SCM_RIGHTS is held by every process that has an fd for it, whoever
//! opened it. `trace` and the agent both build their reports from one.
use std::collections::HashMap;

use anyhow::{Context as _, Result};

use crate::{
    clock::monotonic_ns,
    event::{Endpoints, Task, TcpState},
    filter::Filter,
    socket_table::SocketTable,
    sockets::{self, DiagSocket, OwnedSocket, Owner, ScanOptions, ScanStats},
};

/// The open TCP sockets with a file, by cookie, and their holders.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    sockets: sockets::ByCookie,
    /// Processes that existed when it was taken, with their start times
    /// (clock ticks since boot, `/proc/PID/stat`): tells an exited opener
    /// from a living one, and a reused pid from the process that had it.
    alive: HashMap<u32, u64>,
    pub stats: ScanStats,
    /// CLOCK_MONOTONIC time it was taken: sockets opened later are not in it.
    pub taken_ns: u64,
    /// Whether every process's fd table was walked (no `--pid` list).
    pub all_processes: bool,
    /// Socket fds whose socket is not in the kernel's TCP list.
    unlisted: sockets::Unlisted,
}

/// What the kernel says of a socket now (sock_diag's tcp_info).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveFacts {
    pub state: Option<TcpState>,
    /// The local address as the kernel has it now: the reports' kernel
    /// side sends a connect's tuple before its source port is chosen.
    pub local: Option<std::net::SocketAddr>,
    pub unread_bytes: Option<u32>,
    pub unsent_bytes: Option<u32>,
    /// Milliseconds since data last moved in either direction.
    pub idle_ms: Option<u64>,
}

impl Snapshot {
    /// Reads the kernel's socket list and the fd tables of `pids` (every
    /// process when `None`).
    pub fn take(pids: Option<&[u32]>) -> Result<Snapshot> {
        let taken_ns = monotonic_ns();
        let options = ScanOptions {
            pids: pids.map(<[u32]>::to_vec),
            ..ScanOptions::default()
        };
        let (found, stats, unlisted) =
            sockets::scan_full(&options).context("listing the open sockets (sock_diag, /proc)")?;
        Ok(Snapshot {
            sockets: found,
            alive: living_processes(),
            stats,
            taken_ns,
            all_processes: pids.is_none(),
            unlisted,
        })
    }

    /// A snapshot of given facts (for tests and for the pure report code).
    pub fn from_parts(
        found: Vec<OwnedSocket>,
        alive: HashMap<u32, u64>,
        stats: ScanStats,
        taken_ns: u64,
        all_processes: bool,
    ) -> Snapshot {
        Snapshot {
            sockets: found.into_iter().collect(),
            alive,
            stats,
            taken_ns,
            all_processes,
            unlisted: sockets::Unlisted::default(),
        }
    }

    /// Socket fds (pid, fd) whose socket the kernel's TCP list does not
    /// have (other kinds, listeners, TCP sockets in CLOSE).
    pub fn unlisted_socket_fds(&self) -> &sockets::Unlisted {
        &self.unlisted
    }

    /// Every open TCP socket with a file, and its holders.
    pub fn sockets(&self) -> impl Iterator<Item = &OwnedSocket> {
        self.sockets.values()
    }

    pub fn get(&self, cookie: u64) -> Option<&OwnedSocket> {
        self.sockets.get(cookie)
    }

    /// Every (process, fd) that holds the socket, sorted by pid and fd.
    pub fn holders(&self, cookie: u64) -> &[Owner] {
        self.sockets
            .get(cookie)
            .map_or(&[], |owned| owned.owners.as_slice())
    }

    /// Whether the process `pid` that started at `start_ns` (ns since boot,
    /// 0 if unknown) still runs: the pid alone may belong to another by now.
    pub fn is_alive(&self, pid: u32, start_ns: u64) -> bool {
        match self.alive.get(&pid) {
            None => false,
            Some(_) if start_ns == 0 => true,
            Some(&ticks) => ticks == start_ns / ns_per_tick(),
        }
    }

    /// Whether `pid`'s fd table was refused to us (this sandbox's pid 1,
    /// or a run without CAP_SYS_PTRACE): what it holds cannot be seen.
    pub fn unreadable(&self, pid: u32) -> bool {
        self.stats.walk.denied_pids.contains(&pid)
    }

    /// Whether the kernel's socket list has it (it is open in this network
    /// namespace, held by some file).
    pub fn has(&self, cookie: u64) -> bool {
        self.sockets.contains(cookie)
    }

    pub fn live_facts(&self, cookie: u64) -> Option<LiveFacts> {
        self.sockets
            .get(cookie)
            .map(|owned| live_facts(&owned.socket))
    }

    /// Puts the sockets already open into `table`, as pre-existing sockets
    /// of their first holder (their opener is unknown: they were never seen
    /// being opened). Report time finds every holder anew.
    pub fn seed(&self, table: &mut SocketTable, filter: &Filter) {
        for owned in self.sockets.values() {
            let holders = &owned.owners;
            let family = owned.socket.family;
            // Seeded when any holder is of interest; report time decides
            // which holders are shown.
            let Some(first) = holders
                .iter()
                .find(|owner| filter.matches(&holder_task(owner), family))
            else {
                continue;
            };
            let endpoints = Endpoints::new(
                owned.socket.local.into(),
                owned.socket.remote.into(),
                TcpState::from_kernel(owned.socket.state),
            );
            table.insert_preexisting(
                owned.socket.cookie,
                &holder_task(first),
                endpoints,
                Some(first.fd),
                self.taken_ns,
            );
        }
    }

    /// What the scan could not see, for a report's warnings.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.stats.walk.permission_denied > 0 {
            warnings.push(format!(
                "{} processes' fd tables could not be read: sockets they hold are not attributed to them",
                self.stats.walk.permission_denied
            ));
        }
        for refused in &self.stats.namespaces.refused {
            warnings.push(format!(
                "network namespace {refused}: sockets that were open in it before tracing are not listed"
            ));
        }
        if self.stats.undecodable > 0 {
            warnings.push(format!(
                "{} sockets from sock_diag could not be decoded",
                self.stats.undecodable
            ));
        }
        warnings
    }
}

/// A holder as the filter and the report see it.
pub fn holder_task(owner: &Owner) -> Task {
    Task {
        pid: owner.pid,
        tid: 0,
        cgroup_id: 0,
        comm: (&**owner.comm()).into(),
        start_ns: 0,
    }
}

fn live_facts(diag: &DiagSocket) -> LiveFacts {
    let idle_ms = match (diag.last_data_recv_ms, diag.last_data_sent_ms) {
        (Some(recv), Some(sent)) => Some(u64::from(recv.min(sent))),
        _ => None,
    };
    LiveFacts {
        state: Some(TcpState::from_kernel(diag.state)),
        local: Some(diag.local.into()),
        unread_bytes: Some(diag.unread_bytes()),
        unsent_bytes: Some(diag.send_queue),
        idle_ms,
    }
}

/// Every process in /proc now, with its start time in clock ticks.
fn living_processes() -> HashMap<u32, u64> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                    Some((pid, start_ticks(pid)?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks
/// since boot (the kernel's `start_boottime`, rounded down).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    // The comm (field 2) may hold spaces and parentheses: count from the
    // last ')'. Field 3 is the first after it, so field 22 is the 20th.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Nanoseconds per clock tick (`USER_HZ`, 100 on Linux).
fn ns_per_tick() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_start_time_past_an_awkward_comm() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 100 18446744073709551615";
        assert_eq!(parse_start_ticks(stat), Some(987_654));
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let pid = std::process::id();
        let ticks = start_ticks(pid).expect("our own start time");
        let alive = HashMap::from([(pid, ticks)]);
        let snapshot = Snapshot::from_parts(Vec::new(), alive, ScanStats::default(), 0, true);
        let start_ns = ticks * ns_per_tick() + 3;
        assert!(snapshot.is_alive(pid, start_ns));
        assert!(snapshot.is_alive(pid, 0), "unknown start: the pid decides");
        assert!(
            !snapshot.is_alive(pid, start_ns + 5 * ns_per_tick()),
            "same pid, another process"
        );
        assert!(!snapshot.is_alive(pid + 1, 0));
    }
}
