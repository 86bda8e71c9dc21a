//! Every network namespace in use, not only leakbpf's own: containers and
//! pods have their own, and sock_diag lists only the sockets of the
//! namespace the asking socket lives in. Namespaces are found through
//! `/proc/PID/ns/net` (one per inode), and each one is dumped from a
//! short-lived thread that joined it with `setns(2)` (the network namespace
//! is per thread, so the rest of leakbpf never leaves its own). Addresses
//! are as that namespace sees them. Socket cookies and inodes are unique
//! across namespaces, so the dumps join with the fd tables as one.
use std::{collections::BTreeMap, fs::File, os::fd::AsRawFd as _};

use anyhow::{Context as _, Result, bail};

use super::{ByCookie, OwnedSocket, Owners, diag};

/// What the dump of every namespace saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceStats {
    /// Namespaces dumped (leakbpf's own included).
    pub listed: usize,
    /// Namespaces that could not be entered (no CAP_SYS_ADMIN, or the last
    /// process in it exited meanwhile), each as `inode: reason`.
    pub refused: Vec<String>,
}

/// The network namespaces processes use, by inode, each with one pid to
/// enter it through. Our own is left out.
pub fn foreign_namespaces() -> BTreeMap<u64, u32> {
    let own = namespace_inode("self");
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(inode) = namespace_inode(&pid.to_string())
            && Some(inode) != own
        {
            found.entry(inode).or_insert(pid);
        }
    }
    found
}

fn namespace_inode(pid: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|meta| meta.ino())
}

/// Dumps our own namespace, then every other one in use, into `into`
/// (each socket with a file, by cookie, its holders still to be joined).
/// Returns the messages that could not be decoded. Failing to enter
/// another namespace is counted, not fatal; failing to dump our own is.
pub fn dump_everywhere(states: u32, into: &mut ByCookie) -> Result<(usize, NamespaceStats)> {
    let mut undecodable = dump_here(states, into)?;
    let mut seen = NamespaceStats {
        listed: 1,
        refused: Vec::new(),
    };
    for (inode, pid) in foreign_namespaces() {
        match dump_in(pid, states, into) {
            Ok(more) => {
                seen.listed += 1;
                undecodable += more;
            }
            Err(err) => seen
                .refused
                .push(format!("net:[{inode}] (pid {pid}): {err:#}")),
        }
    }
    Ok((undecodable, seen))
}

/// Dumps the calling thread's namespace straight into the snapshot's list,
/// sized once for the sockets the kernel counts there: at 100,000 sockets a
/// list beside the snapshot's, or a last doubling, would hold them twice.
fn dump_here(states: u32, into: &mut ByCookie) -> Result<usize> {
    into.reserve(diag::in_use().unwrap_or(0));
    diag::dump_each(states, &mut |socket| {
        // No file, no holder (TIME_WAIT, request and orphaned sockets).
        if socket.inode != 0 {
            into.push(OwnedSocket {
                socket,
                owners: Owners::new(),
            });
        }
    })
}

/// Dumps the namespace `pid` is in, from a thread that joined it.
fn dump_in(pid: u32, states: u32, into: &mut ByCookie) -> Result<usize> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("opening /proc/{pid}/ns/net"))?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("leakbpf-netns".into())
            .spawn_scoped(scope, move || {
                // SAFETY: setns on a valid namespace fd changes only this
                // thread's network namespace; the thread ends right after.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let err = std::io::Error::last_os_error();
                    if err.raw_os_error() == Some(libc::EPERM) {
                        bail!("entering it needs CAP_SYS_ADMIN");
                    }
                    return Err(err).context("setns");
                }
                dump_here(states, into)
            })
            .context("starting the namespace thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
    })
}
