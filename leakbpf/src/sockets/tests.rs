//! Live tests against this process's own sockets. They need to read other
//! processes' fd tables (root, as in CI) and a kernel with inet_diag.
use std::{
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{diag::state, *};
use crate::event::Family;

/// `getsockopt(SO_COOKIE)`: the cookie the kernel gives eBPF programs.
fn so_cookie(socket: &impl AsRawFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid fd, and an out-pointer/length pair to a live u64.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
    cookie
}

fn own_pid() -> u32 {
    std::process::id()
}

/// The scanned socket that `fd` of `pid` refers to.
fn held(sockets: &[OwnedSocket], pid: u32, fd: i32) -> Option<&OwnedSocket> {
    sockets
        .iter()
        .find(|s| s.owners.iter().any(|o| o.pid == pid && o.fd == fd))
}

/// Scans until `done` holds: loopback delivers data and FINs in softirq
/// context, normally before `write`/`close` return, but not guaranteed.
fn scan_until(options: &ScanOptions, done: impl Fn(&[OwnedSocket]) -> bool) -> Vec<OwnedSocket> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sockets = scan(options).expect("scan");
        if done(&sockets) || Instant::now() > deadline {
            return sockets;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One family's setup: two accepted connections with 100 unread bytes each;
/// the client of the second has closed, so its server side is CLOSE_WAIT.
struct Connections {
    listener: TcpListener,
    client: TcpStream,
    unread: TcpStream,
    close_wait: TcpStream,
}

fn connections(bind: &str) -> Connections {
    let listener = TcpListener::bind(bind).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    let (unread, _) = listener.accept().unwrap();
    client.write_all(&[b'x'; 100]).unwrap();
    let mut closing = TcpStream::connect(addr).unwrap();
    let (close_wait, _) = listener.accept().unwrap();
    closing.write_all(&[b'y'; 100]).unwrap();
    drop(closing);
    Connections {
        listener,
        client,
        unread,
        close_wait,
    }
}

fn assert_addresses(found: &OwnedSocket, socket: &TcpStream) {
    assert_eq!(found.socket.local, socket.local_addr().unwrap());
    assert_eq!(found.socket.remote, socket.peer_addr().unwrap());
    let family = match socket.local_addr().unwrap() {
        SocketAddr::V4(_) => Family::Ipv4,
        SocketAddr::V6(_) => Family::Ipv6,
    };
    assert_eq!(found.socket.family, family);
}

#[test]
#[ignore = "host: real sockets, sock_diag and /proc on this kernel; `./x test` runs it"]
fn scan_finds_preexisting_sockets_with_owner_and_kernel_facts() {
    let pid = own_pid();
    let all = [connections("127.0.0.1:0"), connections("[::1]:0")];
    let options = ScanOptions {
        pids: Some(vec![pid]),
        ..ScanOptions::default()
    };
    let sockets = scan_until(&options, |sockets| {
        all.iter().all(|c| {
            held(sockets, pid, c.unread.as_raw_fd()).is_some_and(|s| s.socket.recv_queue == 100)
                && held(sockets, pid, c.close_wait.as_raw_fd())
                    .is_some_and(|s| s.socket.state == state::CLOSE_WAIT)
        })
    });

    for c in &all {
        let unread = held(&sockets, pid, c.unread.as_raw_fd()).expect("unread server socket found");
        assert_eq!(
            unread.owners.as_slice(),
            [Owner::new(
                pid,
                c.unread.as_raw_fd(),
                std::fs::read_to_string("/proc/self/comm")
                    .unwrap()
                    .trim_end(),
                Some(&std::fs::read_link("/proc/self/exe").unwrap()),
            )]
        );
        assert_addresses(unread, &c.unread);
        assert_eq!(unread.socket.cookie, so_cookie(&c.unread));
        assert_eq!(unread.socket.state, state::ESTABLISHED);
        assert_eq!(unread.socket.recv_queue, 100);
        assert_eq!(unread.socket.unread_bytes(), 100);
        assert_eq!(unread.socket.uid, unsafe { libc::geteuid() });
        assert_ne!(unread.socket.inode, 0);
        assert!(
            unread
                .socket
                .last_data_recv_ms
                .is_some_and(|ms| ms < 60_000)
        );
        assert!(unread.socket.last_data_sent_ms.is_some());

        let close_wait =
            held(&sockets, pid, c.close_wait.as_raw_fd()).expect("CLOSE_WAIT socket found");
        assert_eq!(close_wait.owners.len(), 1);
        assert_addresses(close_wait, &c.close_wait);
        assert_eq!(close_wait.socket.cookie, so_cookie(&c.close_wait));
        assert_eq!(close_wait.socket.state, state::CLOSE_WAIT);
        // The unread FIN counts as one byte of idiag_rqueue.
        assert_eq!(close_wait.socket.recv_queue, 101);
        assert_eq!(close_wait.socket.unread_bytes(), 100);

        let client = held(&sockets, pid, c.client.as_raw_fd()).expect("client socket found");
        assert_addresses(client, &c.client);
        assert_eq!(client.socket.cookie, so_cookie(&c.client));
        assert_eq!(client.socket.state, state::ESTABLISHED);
        assert_eq!(client.socket.recv_queue, 0);
        assert_eq!(client.socket.send_queue, 0, "loopback acknowledges at once");

        // Listeners are left out by default...
        assert!(held(&sockets, pid, c.listener.as_raw_fd()).is_none());
    }

    // ...and reported when the state mask asks for them.
    let listeners = scan(&ScanOptions {
        pids: Some(vec![pid]),
        states: diag::state_bit(state::LISTEN),
    })
    .unwrap();
    for c in &all {
        let listener =
            held(&listeners, pid, c.listener.as_raw_fd()).expect("listener with LISTEN mask");
        assert_eq!(listener.socket.state, state::LISTEN);
        assert_eq!(listener.socket.local, c.listener.local_addr().unwrap());
        assert_eq!(listener.socket.cookie, so_cookie(&c.listener));
        assert!(held(&listeners, pid, c.unread.as_raw_fd()).is_none());
    }

    // The dump alone, keyed by cookie, as used to enrich traced sockets.
    let by_cookie: std::collections::HashMap<u64, DiagSocket> = diag::dump(DEFAULT_STATES)
        .unwrap()
        .sockets
        .into_iter()
        .map(|s| (s.cookie, s))
        .collect();
    for c in &all {
        let unread = &by_cookie[&so_cookie(&c.unread)];
        assert_eq!(unread.local, c.unread.local_addr().unwrap());
        assert_eq!(unread.recv_queue, 100);
        assert_eq!(
            by_cookie[&so_cookie(&c.close_wait)].state,
            state::CLOSE_WAIT
        );
    }
}

/// Kills and reaps the child when the test ends, pass or fail.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `sleep` that holds `socket` as its fd `target`, as if inherited
/// across fork.
fn child_holding(socket: &impl AsRawFd, target: i32) -> Reaped {
    let fd = socket.as_raw_fd();
    let mut command = Command::new("sleep");
    command
        .arg("60")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 and fcntl are async-signal-safe; nothing else runs
    // between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto a different fd clears FD_CLOEXEC on the copy.
            let rc = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    Reaped(command.spawn().expect("spawn sleep"))
}

#[test]
#[ignore = "host: real sockets, sock_diag and /proc on this kernel; `./x test` runs it"]
fn shared_sockets_list_every_owner_and_pid_filter_excludes_others() {
    let pid = own_pid();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let target = 200;
    let child = child_holding(&server, target);
    let child_pid = child.0.id();

    // Unfiltered: the socket has both holders, each with its own fd.
    let everyone = scan(&ScanOptions::default()).unwrap();
    let shared = held(&everyone, pid, server.as_raw_fd()).expect("shared socket found");
    assert_eq!(shared.socket.cookie, so_cookie(&server));
    let holders: Vec<(u32, i32)> = shared.owners.iter().map(|o| (o.pid, o.fd)).collect();
    let mut expected = vec![(pid, server.as_raw_fd()), (child_pid, target)];
    expected.sort_unstable();
    assert_eq!(holders, expected);
    let in_child = shared.owners.iter().find(|o| o.pid == child_pid).unwrap();
    assert_eq!(&**in_child.comm(), "sleep");
    assert!(in_child.exe().is_some());

    // Filtered to this process: only its own holds, on any socket; neither
    // the child nor pid 1 (init, whatever it holds) appears.
    let own = scan(&ScanOptions {
        pids: Some(vec![pid]),
        ..ScanOptions::default()
    })
    .unwrap();
    let shared = held(&own, pid, server.as_raw_fd()).expect("own socket found when filtered");
    assert_eq!(
        shared
            .owners
            .iter()
            .map(|o| (o.pid, o.fd))
            .collect::<Vec<_>>(),
        vec![(pid, server.as_raw_fd())]
    );
    assert!(own.iter().flat_map(|s| &s.owners).all(|o| o.pid == pid));
    assert!(
        !own.iter()
            .flat_map(|s| &s.owners)
            .any(|o| o.pid == 1 || o.pid == child_pid)
    );

    // Filtered to the child: the same socket, held only by the child.
    let theirs = scan(&ScanOptions {
        pids: Some(vec![child_pid]),
        ..ScanOptions::default()
    })
    .unwrap();
    assert!(
        theirs
            .iter()
            .flat_map(|s| &s.owners)
            .all(|o| o.pid == child_pid)
    );
    let shared = held(&theirs, child_pid, target).expect("child's socket found");
    assert_eq!(shared.socket.cookie, so_cookie(&server));
    assert_eq!(shared.owners.len(), 1);

    // Filtered to pid 1: whatever it holds, never our sockets.
    let init = scan(&ScanOptions {
        pids: Some(vec![1]),
        ..ScanOptions::default()
    })
    .unwrap();
    assert!(init.iter().flat_map(|s| &s.owners).all(|o| o.pid == 1));
    assert!(held(&init, pid, server.as_raw_fd()).is_none());
    drop(child);
}

/// An established loopback socket as the dump lists it.
fn diag_socket(cookie: u64, inode: u64) -> DiagSocket {
    DiagSocket {
        cookie,
        inode,
        uid: 0,
        family: Family::Ipv4,
        local: "127.0.0.1:1".parse().unwrap(),
        remote: "127.0.0.1:2".parse().unwrap(),
        state: state::ESTABLISHED,
        recv_queue: 0,
        send_queue: 0,
        last_data_recv_ms: None,
        last_data_sent_ms: None,
    }
}

#[test]
fn join_drops_fileless_and_unheld_sockets() {
    let owner = |pid, fd| Owner::new(pid, fd, "", None);
    let mut owners: procfs::OwnersByInode = [
        (0, smallvec::smallvec![owner(1, 3)]),
        (5, smallvec::smallvec![owner(9, 4), owner(2, 7)]),
    ]
    .into_iter()
    .collect();
    // Cookie 3 listed twice (it moved in the kernel's tables mid-dump).
    let mut joined = ByCookie::default();
    for (cookie, inode) in [(3, 6), (1, 0), (2, 5), (3, 6)] {
        joined.push(OwnedSocket {
            socket: diag_socket(cookie, inode),
            owners: Owners::new(),
        });
    }
    owners.insert(6, smallvec::smallvec![owner(4, 4)]);
    join(&mut joined, &mut owners);
    let cookies: Vec<u64> = joined.values().map(|o| o.socket.cookie).collect();
    assert_eq!(cookies, [3, 2], "once each, in dump order, fileless 1 gone");
    assert_eq!(
        joined.get(2).unwrap().owners.as_slice(),
        [owner(2, 7), owner(9, 4)]
    );
    assert!(joined.get(1).is_none() && !joined.contains(4));
}

#[test]
fn a_socket_listed_twice_is_kept_once_and_found() {
    let owned = |cookie, inode| OwnedSocket {
        socket: diag_socket(cookie, inode),
        owners: Owners::new(),
    };
    let found: ByCookie = [
        owned(7, 1),
        owned(9, 2),
        owned(7, 1),
        owned(8, 3),
        owned(9, 2),
    ]
    .into_iter()
    .collect();
    let cookies: Vec<u64> = found.values().map(|o| o.socket.cookie).collect();
    assert_eq!(cookies, [7, 9, 8]);
    for cookie in [7, 8, 9] {
        assert_eq!(found.get(cookie).unwrap().socket.cookie, cookie);
    }
    assert!(found.get(10).is_none());
}

/// A connection nobody asked the cookie of gets one from sock_diag, the
/// same the socket itself reports afterwards.
#[test]
fn cookie_of_names_a_connection_by_its_addresses() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let local = accepted.local_addr().unwrap();
    let remote = accepted.peer_addr().unwrap();
    let cookie = diag::cookie_of(local, remote).expect("the accepted socket");
    assert_ne!(cookie, 0);
    assert_eq!(cookie, so_cookie(&accepted));
    assert_eq!(
        diag::cookie_of(client.local_addr().unwrap(), client.peer_addr().unwrap()),
        Some(so_cookie(&client))
    );
    let nowhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert_eq!(diag::cookie_of(nowhere, remote), None);
}
