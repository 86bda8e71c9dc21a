//! What is open right now, and who holds it: the kernel's socket list
//! (sock_diag) joined with every process's fd table, taken once at start-up
//! (sockets that were already open) and once at report time (who holds
//! each traced socket now, and the kernel's live facts about it).
//!
//! Holders come from the fd tables because that is where the kernel keeps
//! ownership: a socket inherited across fork, duplicated with dup or passed
//! over SCM_RIGHTS is held by every process that has an fd for it, whoever
//! opened it. `trace` and the agent both build their reports from one.
use std::collections::{HashMap, HashSet};

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
    sockets: HashMap<u64, OwnedSocket>,
    /// Processes that existed when it was taken (all of /proc, or the
    /// `--pid` list): tells an exited opener from a living one.
    alive: HashSet<u32>,
    pub stats: ScanStats,
    /// CLOCK_MONOTONIC time it was taken: sockets opened later are not in it.
    pub taken_ns: u64,
    /// Whether every process's fd table was walked (no `--pid` list).
    pub all_processes: bool,
}

/// What the kernel says of a socket now (sock_diag's tcp_info).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveFacts {
    pub state: Option<TcpState>,
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
        let (found, stats) = sockets::scan_with_stats(&options)
            .context("listing the open sockets (sock_diag, /proc)")?;
        let alive = match pids {
            Some(pids) => pids
                .iter()
                .copied()
                .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
                .collect(),
            None => living_pids(),
        };
        Ok(Snapshot::from_parts(
            found,
            alive,
            stats,
            taken_ns,
            pids.is_none(),
        ))
    }

    /// A snapshot of given facts (for tests and for the pure report code).
    pub fn from_parts(
        found: Vec<OwnedSocket>,
        alive: HashSet<u32>,
        stats: ScanStats,
        taken_ns: u64,
        all_processes: bool,
    ) -> Snapshot {
        Snapshot {
            sockets: found
                .into_iter()
                .map(|owned| (owned.socket.cookie, owned))
                .collect(),
            alive,
            stats,
            taken_ns,
            all_processes,
        }
    }

    pub fn get(&self, cookie: u64) -> Option<&OwnedSocket> {
        self.sockets.get(&cookie)
    }

    /// Every (process, fd) that holds the socket, sorted by pid and fd.
    pub fn holders(&self, cookie: u64) -> &[Owner] {
        self.sockets
            .get(&cookie)
            .map_or(&[], |owned| owned.owners.as_slice())
    }

    pub fn is_alive(&self, pid: u32) -> bool {
        self.alive.contains(&pid)
    }

    /// Whether `pid`'s fd table was refused to us (this sandbox's pid 1,
    /// or a run without CAP_SYS_PTRACE): what it holds cannot be seen.
    pub fn unreadable(&self, pid: u32) -> bool {
        self.stats.walk.denied_pids.contains(&pid)
    }

    /// Whether the kernel's socket list has it (it is open in this network
    /// namespace, held by some file).
    pub fn has(&self, cookie: u64) -> bool {
        self.sockets.contains_key(&cookie)
    }

    pub fn live_facts(&self, cookie: u64) -> Option<LiveFacts> {
        self.sockets
            .get(&cookie)
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
            let endpoints = Endpoints {
                family,
                local: owned.socket.local,
                remote: owned.socket.remote,
                state: TcpState::from_kernel(owned.socket.state),
            };
            table.insert_preexisting(
                owned.socket.cookie,
                holder_task(first),
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
        comm: owner.comm.as_str().into(),
    }
}

fn live_facts(diag: &DiagSocket) -> LiveFacts {
    let idle_ms = match (diag.last_data_recv_ms, diag.last_data_sent_ms) {
        (Some(recv), Some(sent)) => Some(u64::from(recv.min(sent))),
        _ => None,
    };
    LiveFacts {
        state: Some(TcpState::from_kernel(diag.state)),
        unread_bytes: Some(diag.unread_bytes()),
        unsent_bytes: Some(diag.send_queue),
        idle_ms,
    }
}

/// Every pid in /proc now.
fn living_pids() -> HashSet<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
