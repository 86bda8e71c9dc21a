//! Which processes hold which sockets, from `/proc/PID/fd`.
//!
//! The kernel's socket list (see [`super::diag`]) names a socket's inode but
//! not who holds it; the only place that says so is each process's fd table,
//! where a socket fd is a symlink to `socket:[INODE]`. Walking it costs one
//! `readdir` per process and one `readlink` per fd; `comm` and `exe` are read
//! only for processes that hold at least one socket.
//!
//! Processes and fds come and go during the walk: vanished ones (ENOENT,
//! ESRCH) are skipped silently, and other failures, such as permission
//! errors without CAP_SYS_PTRACE, are counted in [`WalkStats`], since they
//! make the result incomplete.
//!
//! Only thread-group leaders are listed in `/proc`; their threads share the
//! fd table (a thread that `unshare(CLONE_FILES)`d is not seen).
use std::{ffi::OsStr, fs, io, os::unix::ffi::OsStrExt, path::Path, sync::Arc};

/// One process's hold on a socket: 16 bytes, so that a socket's only
/// holder fits in place ([`Owners`]) with no allocation per socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub pid: u32,
    pub fd: i32,
    /// Read once per process, shared by all its fds (a holder of 100k
    /// sockets has one).
    pub names: Arc<Names>,
}

/// What a process holding sockets is called.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Names {
    /// `/proc/PID/comm`: the thread-group leader's name (up to 15 bytes).
    pub comm: Arc<str>,
    /// `/proc/PID/exe`; `None` for kernel threads or when unreadable. A
    /// replaced or deleted binary ends in " (deleted)".
    pub exe: Option<Arc<Path>>,
}

impl Owner {
    /// An owner with names of its own (the walk shares one per process).
    pub fn new(pid: u32, fd: i32, comm: &str, exe: Option<&Path>) -> Owner {
        Owner {
            pid,
            fd,
            names: Arc::new(Names {
                comm: comm.into(),
                exe: exe.map(Arc::from),
            }),
        }
    }

    pub fn comm(&self) -> &Arc<str> {
        &self.names.comm
    }

    pub fn exe(&self) -> Option<&Arc<Path>> {
        self.names.exe.as_ref()
    }
}

/// A socket's holders: nearly always one, kept in place.
pub type Owners = smallvec::SmallVec<[Owner; 1]>;

/// What the walk could not see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// Processes whose fd table was read.
    pub processes: usize,
    /// Processes of which something (the fd table, an fd, `exe`) was
    /// refused (EACCES, EPERM): sockets they hold may be missing.
    pub permission_denied: usize,
    /// Those processes' pids.
    pub denied_pids: Vec<u32>,
    /// Processes with other failures, neither vanished nor refused (e.g.
    /// EMFILE), and failures listing `/proc` itself.
    pub other_errors: usize,
}

/// What went wrong while reading one process.
#[derive(Clone, Copy, Default)]
struct Failures {
    denied: bool,
    other: bool,
}

impl Failures {
    /// Notes `error`, unless it says the process or fd is gone.
    fn note(&mut self, error: &io::Error) {
        match error.raw_os_error() {
            Some(libc::ENOENT | libc::ESRCH) => {}
            Some(libc::EACCES | libc::EPERM) => self.denied = true,
            _ => self.other = true,
        }
    }
}

/// Socket owners by socket inode.
/// FxHash: inodes are the kernel's counters, and a report looks up one per
/// socket (SipHash was a visible share of reporting 100k sockets).
pub type OwnersByInode = rustc_hash::FxHashMap<u64, Owners>;

/// Socket owners by inode for every process, or only for `pids` (a socket
/// shared across `fork` or `dup` has one owner per (process, fd)), with
/// what the walk missed. Fails only if `/proc`
/// itself cannot be listed.
pub fn walk_owners(pids: Option<&[u32]>) -> io::Result<(OwnersByInode, WalkStats)> {
    walk_in(Path::new("/proc"), pids)
}

fn walk_in(proc: &Path, pids: Option<&[u32]>) -> io::Result<(OwnersByInode, WalkStats)> {
    let mut owners = OwnersByInode::default();
    let mut stats = WalkStats::default();
    match pids {
        Some(pids) => {
            for &pid in pids {
                walk_process(proc, pid, &mut owners, &mut stats);
            }
        }
        None => {
            for entry in fs::read_dir(proc)? {
                let Ok(entry) = entry else {
                    stats.other_errors += 1;
                    continue;
                };
                if let Some(pid) = parse_pid(&entry.file_name()) {
                    walk_process(proc, pid, &mut owners, &mut stats);
                }
            }
        }
    }
    Ok((owners, stats))
}

fn parse_pid(name: &OsStr) -> Option<u32> {
    let name = name.to_str()?;
    if name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

fn walk_process(proc: &Path, pid: u32, owners: &mut OwnersByInode, stats: &mut WalkStats) {
    let mut failures = Failures::default();
    if walk_fds(&proc.join(pid.to_string()), pid, owners, &mut failures) {
        stats.processes += 1;
    }
    stats.permission_denied += usize::from(failures.denied);
    if failures.denied {
        stats.denied_pids.push(pid);
    }
    stats.other_errors += usize::from(failures.other);
}

/// Adds what process `pid` (whose /proc directory is `dir`) holds to
/// `owners`; false if its fd table could not be read.
fn walk_fds(dir: &Path, pid: u32, owners: &mut OwnersByInode, failures: &mut Failures) -> bool {
    let fd_dir = dir.join("fd");
    let (entries, links) =
        match fs::read_dir(&fd_dir).and_then(|e| Ok((e, fs::File::open(&fd_dir)?))) {
            Ok(opened) => opened,
            Err(e) => {
                failures.note(&e);
                return false;
            }
        };
    let mut held = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                failures.note(&e);
                continue;
            }
        };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        match read_fd_link(&links, fd) {
            Ok(Some(inode)) => held.push((inode, fd)),
            Ok(None) => {}
            Err(e) => failures.note(&e),
        }
    }
    if held.is_empty() {
        return true;
    }
    let comm = match fs::read(dir.join("comm")) {
        Ok(mut comm) => {
            if comm.last() == Some(&b'\n') {
                comm.pop();
            }
            Arc::from(String::from_utf8_lossy(&comm))
        }
        // Gone since its fds were read: what it held is being released.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => return true,
        Err(e) => {
            failures.note(&e);
            Arc::from("")
        }
    };
    let exe: Option<Arc<Path>> = fs::read_link(dir.join("exe"))
        .map_err(|e| failures.note(&e))
        .ok()
        .map(Arc::from);
    let names = Arc::new(Names { comm, exe });
    for (inode, fd) in held {
        owners.entry(inode).or_default().push(Owner {
            pid,
            fd,
            names: Arc::clone(&names),
        });
    }
    true
}

/// The socket inode fd `fd` of the `/proc/PID/fd` directory `links` leads
/// to (`None` for any other file). `readlinkat` on the open directory: a
/// path per fd made the kernel look up /proc, the pid and `fd` again for
/// each of them, a fifth of reporting 100k sockets.
fn read_fd_link(links: &fs::File, fd: i32) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd as _;
    let mut name = [0u8; 12];
    let digits = fd.to_string();
    name[..digits.len()].copy_from_slice(digits.as_bytes());
    // `socket:[` + a u64 + `]` is 29 bytes: a longer target is not a socket.
    let mut target = [0u8; 64];
    // SAFETY: `name` is NUL-terminated (an i32 has at most 11 characters),
    // `target` is writable for its length, and `links` is an open fd.
    let n = unsafe {
        libc::readlinkat(
            links.as_raw_fd(),
            name.as_ptr().cast(),
            target.as_mut_ptr().cast(),
            target.len(),
        )
    };
    let Ok(n) = usize::try_from(n) else {
        return Err(io::Error::last_os_error());
    };
    Ok(socket_inode(OsStr::from_bytes(&target[..n])))
}

/// The inode in a `socket:[INODE]` fd link.
fn socket_inode(target: &OsStr) -> Option<u64> {
    let digits = target
        .as_bytes()
        .strip_prefix(b"socket:[")?
        .strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report of 100,000 sockets keeps a holder per socket: in place,
    /// not one allocation each (BENCHMARKS.md, fifth session).
    #[test]
    fn a_sole_holder_is_kept_in_place() {
        assert_eq!(size_of::<Owner>(), 16);
        assert_eq!(size_of::<Owners>(), 24);
        let mut owners = Owners::new();
        owners.push(Owner::new(1, 3, "x", None));
        assert!(!owners.spilled());
    }

    #[test]
    fn parses_socket_links() {
        assert_eq!(socket_inode(OsStr::new("socket:[12345]")), Some(12345));
        assert_eq!(socket_inode(OsStr::new("pipe:[12345]")), None);
        assert_eq!(socket_inode(OsStr::new("/tmp/socket:[1]")), None);
        assert_eq!(socket_inode(OsStr::new("socket:[]")), None);
        assert_eq!(parse_pid(OsStr::new("42")), Some(42));
        assert_eq!(parse_pid(OsStr::new("self")), None);
        assert_eq!(parse_pid(OsStr::new("+4")), None);
    }

    #[test]
    fn vanished_pids_are_silent() {
        // No such process: not an error, not counted.
        let (owners, stats) = walk_owners(Some(&[u32::MAX])).unwrap();
        assert!(owners.is_empty());
        assert_eq!(stats, WalkStats::default());
    }

    #[test]
    fn failures_ignore_vanished() {
        let mut failures = Failures::default();
        failures.note(&io::Error::from_raw_os_error(libc::ENOENT));
        failures.note(&io::Error::from_raw_os_error(libc::ESRCH));
        assert!(!failures.denied && !failures.other);
        failures.note(&io::Error::from_raw_os_error(libc::EACCES));
        assert!(failures.denied && !failures.other);
        failures.note(&io::Error::from_raw_os_error(libc::EMFILE));
        assert!(failures.other);
    }

    /// A made-up /proc: one process holding a socket twice and a pipe, one
    /// without an fd table (a zombie has none readable), and an entry that
    /// is not a pid.
    #[test]
    fn walks_a_fake_proc() {
        use std::os::unix::fs::symlink;
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path();
        fs::create_dir_all(root.join("123/fd")).unwrap();
        fs::write(root.join("123/comm"), "server\n").unwrap();
        symlink("/usr/bin/server", root.join("123/exe")).unwrap();
        symlink("socket:[42]", root.join("123/fd/3")).unwrap();
        symlink("socket:[42]", root.join("123/fd/7")).unwrap();
        symlink("pipe:[43]", root.join("123/fd/4")).unwrap();
        fs::create_dir_all(root.join("456")).unwrap();
        fs::create_dir_all(root.join("self/fd")).unwrap();
        symlink("socket:[44]", root.join("self/fd/3")).unwrap();

        let (mut owners, stats) = walk_in(root, None).unwrap();
        let filtered = walk_in(root, Some(&[456])).unwrap().0;

        assert_eq!(owners.len(), 1);
        let mut held = owners.remove(&42).unwrap();
        held.sort_by_key(|o| o.fd);
        let owner = |fd| Owner::new(123, fd, "server", Some(Path::new("/usr/bin/server")));
        assert_eq!(held.as_slice(), [owner(3), owner(7)]);
        assert_eq!(
            stats,
            WalkStats {
                processes: 1,
                ..WalkStats::default()
            }
        );
        assert!(filtered.is_empty());
    }

    #[test]
    #[ignore = "host: a real socket in /proc on this kernel; `./x test` runs it"]
    fn finds_own_socket_fd() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        let pid = std::process::id();
        let (owners, _) = walk_owners(Some(&[pid])).unwrap();
        let own = owners
            .values()
            .flatten()
            .find(|o| o.fd == fd)
            .expect("listener fd among socket fds");
        assert_eq!(own.pid, pid);
        assert_eq!(
            own.exe().map(|e| &**e),
            Some(fs::read_link("/proc/self/exe").unwrap().as_path())
        );
        assert_eq!(
            &**own.comm(),
            fs::read_to_string("/proc/self/comm").unwrap().trim_end()
        );
    }
}
