//! TCP sockets that are open right now, with their owners and the kernel's
//! facts about them, independent of tracing.
//!
//! Why: many leaks began before leakbpf started, so the eBPF events never
//! show their open. At start-up [`scan`] finds every socket already held by
//! a process; at report time another [`scan`] adds what only the kernel
//! knows about each open socket (queued bytes, idle times, fds). Both are
//! joined to traced sockets by the socket cookie, the value
//! `bpf_get_socket_cookie` gives the eBPF side.
//!
//! [`diag`] reads the kernel's socket list over `NETLINK_SOCK_DIAG`;
//! [`procfs`] maps socket inodes to the processes holding them.
//!
//! [`netns`] dumps every network namespace in use (containers, pods), each
//! as that namespace sees its addresses.
pub mod diag;
pub mod netns;
pub mod procfs;
pub mod unseen;

use anyhow::{Context, Result};

use crate::socket_table::cookie_hash;

pub use self::{
    diag::{DEFAULT_STATES, DiagSocket},
    procfs::{Names, Owner, Owners, WalkStats},
};

/// What to look for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanOptions {
    /// Only sockets held by these processes (thread-group ids); all
    /// processes when `None`.
    pub pids: Option<Vec<u32>>,
    /// TCP states to report, as a mask of [`diag::state_bit`]s.
    pub states: u32,
}

impl Default for ScanOptions {
    /// Every process, every state but LISTEN.
    fn default() -> Self {
        Self {
            pids: None,
            states: DEFAULT_STATES,
        }
    }
}

/// A TCP socket that at least one process holds open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedSocket {
    pub socket: DiagSocket,
    /// Every (process, fd) holding it, sorted: a socket inherited across
    /// `fork` or duplicated with `dup` has several.
    pub owners: Owners,
}

/// How complete a scan is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub walk: WalkStats,
    /// Sockets the kernel reported but the netlink crate could not decode.
    pub undecodable: usize,
    /// Network namespaces dumped, and those that could not be entered.
    pub namespaces: netns::NamespaceStats,
}

/// TCP sockets with a file (inode != 0) that some process holds, with
/// their owners.
pub fn scan(options: &ScanOptions) -> Result<Vec<OwnedSocket>> {
    scan_full(options).map(|(sockets, _, _)| sockets.into_values().collect())
}

/// Owned sockets in a list, found by cookie through an index of 4-byte
/// positions. A hash map of 108,000 took 131,072 buckets of 144 bytes
/// (19 MiB); this takes 108,000 entries of 136 and 0.6 MiB of index.
#[derive(Clone, Debug, Default)]
pub struct ByCookie {
    sockets: Vec<OwnedSocket>,
    /// Positions in `sockets`, hashed by their cookie; built by
    /// [`Self::finish`].
    index: hashbrown::HashTable<u32>,
}

impl ByCookie {
    /// Room for `more` sockets: exactly, when it is empty.
    pub fn reserve(&mut self, more: usize) {
        if self.sockets.is_empty() {
            self.sockets.reserve_exact(more);
        } else {
            self.sockets.reserve(more);
        }
    }

    /// Adds a socket; lookups need [`Self::finish`] first.
    pub fn push(&mut self, owned: OwnedSocket) {
        self.sockets.push(owned);
    }

    /// Keeps the sockets `keep` says (in their order), once each (a dump
    /// may list a socket twice if it moves in the kernel's tables
    /// meanwhile), gives back the room left and indexes them.
    pub fn finish(&mut self, keep: impl FnMut(&mut OwnedSocket) -> bool) {
        self.sockets.retain_mut(keep);
        self.index_once();
    }

    fn index_once(&mut self) {
        self.index = hashbrown::HashTable::with_capacity(self.sockets.len());
        let mut twice = Vec::new();
        for (position, owned) in self.sockets.iter().enumerate() {
            let cookie = owned.socket.cookie;
            let sockets = &self.sockets;
            match self.index.entry(
                cookie_hash(cookie),
                |&at| sockets[at as usize].socket.cookie == cookie,
                |&at| cookie_hash(sockets[at as usize].socket.cookie),
            ) {
                hashbrown::hash_table::Entry::Occupied(_) => twice.push(position),
                hashbrown::hash_table::Entry::Vacant(entry) => {
                    entry.insert(u32::try_from(position).expect("fewer than 2^32 sockets"));
                }
            }
        }
        if !twice.is_empty() {
            let mut position = 0;
            self.sockets.retain(|_| {
                position += 1;
                twice.binary_search(&(position - 1)).is_err()
            });
            return self.index_once();
        }
        self.sockets.shrink_to_fit();
    }

    pub fn get(&self, cookie: u64) -> Option<&OwnedSocket> {
        self.index
            .find(cookie_hash(cookie), |&at| {
                self.sockets[at as usize].socket.cookie == cookie
            })
            .map(|&at| &self.sockets[at as usize])
    }

    pub fn contains(&self, cookie: u64) -> bool {
        self.get(cookie).is_some()
    }

    pub fn values(&self) -> std::slice::Iter<'_, OwnedSocket> {
        self.sockets.iter()
    }

    pub fn into_values(self) -> std::vec::IntoIter<OwnedSocket> {
        self.sockets.into_iter()
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

impl FromIterator<OwnedSocket> for ByCookie {
    fn from_iter<I: IntoIterator<Item = OwnedSocket>>(iter: I) -> Self {
        let mut found = ByCookie {
            sockets: iter.into_iter().collect(),
            index: hashbrown::HashTable::new(),
        };
        found.finish(|_| true);
        found
    }
}

/// Socket fds (pid, fd) whose socket the kernel's TCP list did not have:
/// other kinds of sockets, listeners, and TCP sockets in CLOSE (unhashed).
pub type Unlisted = std::collections::HashSet<(u32, i32)>;

/// [`scan`], also saying what it could not see (fd tables it was refused,
/// undecodable messages, namespaces it could not enter), so a caller can
/// warn that the list is partial, and returning the socket fds nothing
/// listed.
pub fn scan_full(options: &ScanOptions) -> Result<(ByCookie, ScanStats, Unlisted)> {
    // The kernel's list and the fd tables at once, on two threads: each is
    // about half of a large report's time (100,000 sockets: ~0.46 s of
    // netlink dump, ~0.78 s of readlink), and neither needs the other until
    // the join. Both are moments of a moving system either way: a socket
    // caught by both may have been released since, which is why the agent
    // does not re-add a socket whose release it saw while this ran
    // (`SocketTable::record_departures`).
    let (dumped, walked) = std::thread::scope(|scope| {
        let walker = scope.spawn(|| procfs::walk_owners(options.pids.as_deref()));
        let mut found = ByCookie::default();
        let dump = netns::dump_everywhere(options.states, &mut found).map(|d| (found, d));
        let walk = walker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (dump, walk)
    });
    let (mut found, (undecodable, namespaces)) = dumped?;
    let (mut owners, walk) = walked.context("listing /proc")?;
    let stats = ScanStats {
        walk,
        undecodable,
        namespaces,
    };
    join(&mut found, &mut owners);
    let unlisted = owners
        .into_values()
        .flatten()
        .map(|owner| (owner.pid, owner.fd))
        .collect();
    Ok((found, stats, unlisted))
}

/// Gives each dumped socket its holders, in place; a socket nobody holds
/// (released since it was dumped, or held only by a process whose table
/// was not read) leaves the list. What is left in `owners` is held but not
/// listed.
fn join(found: &mut ByCookie, owners: &mut procfs::OwnersByInode) {
    found.finish(|owned| {
        if owned.socket.inode == 0 {
            return false;
        }
        let Some(mut held) = owners.remove(&owned.socket.inode) else {
            return false;
        };
        held.sort_by_key(|o| (o.pid, o.fd));
        owned.owners = held;
        true
    });
}

#[cfg(test)]
mod tests;
