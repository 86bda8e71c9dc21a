//! The kernel's own list of TCP sockets, read over `NETLINK_SOCK_DIAG`
//! (what `ss -ti` shows).
//!
//! Why netlink rather than `/proc/net/tcp{,6}`: only inet_diag reports the
//! socket cookie (`idiag_cookie`), the very value `bpf_get_socket_cookie`
//! returns in the eBPF programs, so it is the one key that joins these facts
//! to traced events. It also carries `struct tcp_info` (idle times, byte
//! counters) and is much cheaper than parsing text on hosts with many
//! sockets.
//!
//! The request and the message framing use `netlink-packet-sock-diag` and
//! `netlink-sys`. `tcp_info` is parsed here, by the offsets of the kernel
//! uapi `linux/tcp.h`, and not by the crate's `rich_nlas` feature: that
//! parser needs the whole struct as the crate knows it, so on a kernel with a
//! shorter `tcp_info` it fails the entire message (the socket would be lost,
//! not just its counters). Reading by offset lets each field be present or
//! absent on its own.
//!
//! A netlink socket sees only its own network namespace: [`super::netns`]
//! calls [`dump`] once per namespace.
use std::{
    io,
    net::{IpAddr, SocketAddr, SocketAddrV6},
};

use anyhow::{Context, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use crate::event::{Address, Family};

/// Kernel TCP state numbers (`include/net/tcp_states.h`), as in
/// [`DiagSocket::state`].
pub use leakbpf_common::tcp_state as state;

/// The bit of `state` in a state mask (the kernel's `TCPF_*`).
pub const fn state_bit(state: u8) -> u32 {
    1 << state
}

/// Every TCP state the kernel knows, as a mask.
pub const ALL_STATES: u32 = ((1 << (state::BOUND_INACTIVE + 1)) - 1) & !1;

/// Every state but LISTEN: listeners are where leaks come from, not leaks
/// themselves, and a busy server has many of them. Includes
/// `BOUND_INACTIVE`, so a socket bound and then forgotten is still found.
pub const DEFAULT_STATES: u32 = ALL_STATES & !state_bit(state::LISTEN);

/// One TCP socket as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    /// The socket cookie: the same value as `bpf_get_socket_cookie` and
    /// `getsockopt(SO_COOKIE)`, the identity shared with eBPF events.
    pub cookie: u64,
    /// Inode of the socket's file; 0 when no file exists (TIME_WAIT and
    /// request sockets, or a socket whose file was already released).
    pub inode: u64,
    /// Owner uid, as seen from this process's user namespace.
    pub uid: u32,
    pub family: Family,
    pub local: Address,
    pub remote: Address,
    /// Kernel TCP state number, see [`state`].
    pub state: u8,
    /// `idiag_rqueue`. For a listener: connections waiting for `accept`.
    /// Otherwise `rcv_nxt - copied_seq`: bytes received that the process has
    /// not read, plus 1 once the peer's FIN has arrived and has not been
    /// read (CLOSE_WAIT, LAST_ACK, CLOSING). See [`Self::unread_bytes`].
    pub recv_queue: u32,
    /// `idiag_wqueue`. For a listener: the backlog size. Otherwise bytes
    /// written and not yet acknowledged by the peer.
    pub send_queue: u32,
    /// Milliseconds since data was last received (`tcpi_last_data_recv`);
    /// `None` when the kernel sent no `tcp_info` (TIME_WAIT and request
    /// sockets have none).
    pub last_data_recv_ms: Option<u32>,
    /// Milliseconds since data was last sent (`tcpi_last_data_sent`).
    pub last_data_sent_ms: Option<u32>,
}

impl DiagSocket {
    /// Bytes received that the process has not read: [`Self::recv_queue`]
    /// without the one sequence number that an unread FIN takes. 0 for
    /// listeners (whose `recv_queue` counts connections, not bytes).
    pub fn unread_bytes(&self) -> u32 {
        match self.state {
            state::LISTEN => 0,
            state::CLOSE_WAIT | state::LAST_ACK | state::CLOSING => {
                self.recv_queue.saturating_sub(1)
            }
            _ => self.recv_queue,
        }
    }
}

/// The outcome of one dump.
#[derive(Clone, Debug, Default)]
pub struct Dump {
    pub sockets: Vec<DiagSocket>,
    /// Messages the netlink crate could not decode (e.g. an attribute of a
    /// newer kernel with an unexpected size). They are skipped so that one
    /// odd socket does not hide all others; a non-zero count means the
    /// list is incomplete.
    pub undecodable: usize,
}

/// Dumps the TCP sockets (IPv4 and IPv6) whose state is in `states`, a
/// mask of [`state_bit`]s such as [`DEFAULT_STATES`], with `tcp_info`.
pub fn dump(states: u32) -> Result<Dump> {
    let mut sockets = Vec::new();
    let undecodable = dump_each(states, &mut |socket| sockets.push(socket))?;
    Ok(Dump {
        sockets,
        undecodable,
    })
}

/// [`dump`], handing each socket to `sink` as it is decoded (no list of
/// them all: a snapshot puts them straight into its map). Returns how many
/// messages could not be decoded.
pub fn dump_each(states: u32, sink: &mut dyn FnMut(DiagSocket)) -> Result<usize> {
    let mut socket =
        Socket::new(NETLINK_SOCK_DIAG).context("opening a NETLINK_SOCK_DIAG socket")?;
    socket
        .bind_auto()
        .context("binding the NETLINK_SOCK_DIAG socket")?;
    socket
        .connect(&NetlinkAddr::new(0, 0))
        .context("connecting the NETLINK_SOCK_DIAG socket")?;
    let mut undecodable = 0;
    let mut buf = Vec::with_capacity(RECV_BUF);
    for (sequence, family) in [(1, AF_INET), (2, AF_INET6)] {
        request(&socket, sequence, family, states)
            .with_context(|| format!("sending the inet_diag request for family {family}"))?;
        receive(&socket, &mut buf, sink, &mut undecodable)
            .with_context(|| format!("reading the inet_diag dump for family {family}"))?;
    }
    Ok(undecodable)
}

/// TCP sockets in use in the calling thread's network namespace
/// (`/proc/thread-self/net/sockstat`), to size a map for a dump once.
pub fn in_use() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/thread-self/net/sockstat").ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("TCP: inuse "))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The cookie of the TCP socket connecting `local` and `remote`, if the
/// kernel has one; asking generates it (`sock_gen_cookie`) when no one had.
pub fn cookie_of(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let dump = dump(DEFAULT_STATES).ok()?;
    dump.sockets
        .iter()
        .find(|s| s.local == local && s.remote == remote)
        .map(|s| s.cookie)
}

/// The kernel caps one dump datagram at 32 KiB (`netlink_dump`); twice that
/// leaves room, and `MSG_TRUNC` still detects a longer one.
const RECV_BUF: usize = 64 * 1024;

fn request(socket: &Socket, sequence: u32, family: u8, states: u32) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::from_bits_retain(states),
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    let sent = socket.send(&bytes, 0)?;
    if sent != bytes.len() {
        bail!("short send: {sent} of {} bytes", bytes.len());
    }
    Ok(())
}

/// Reads datagrams until NLMSG_DONE, handing sockets to `sink`.
fn receive(
    socket: &Socket,
    buf: &mut Vec<u8>,
    sink: &mut dyn FnMut(DiagSocket),
    undecodable: &mut usize,
) -> Result<()> {
    loop {
        buf.clear();
        let len = loop {
            match socket.recv(buf, libc::MSG_TRUNC) {
                Ok(len) => break len,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        if len > buf.len() {
            bail!("netlink datagram of {len} bytes truncated to {}", buf.len());
        }
        let mut offset = 0;
        while offset < len {
            let message = &buf[offset..len];
            let length = NetlinkBuffer::new_checked(message)
                .context("malformed netlink header")?
                .length() as usize;
            offset += (length + 3) & !3;
            match NetlinkMessage::<SockDiagMessage>::deserialize(&message[..length]) {
                Ok(message) => match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        sink(convert(&response));
                    }
                    NetlinkPayload::Done(done) => {
                        if done.code < 0 {
                            return Err(io::Error::from_raw_os_error(-done.code).into());
                        }
                        return Ok(());
                    }
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(error.to_io().into());
                    }
                    NetlinkPayload::Overrun(_) => bail!("netlink overrun"),
                    _ => {}
                },
                Err(_) => *undecodable += 1,
            }
        }
    }
}

fn convert(response: &InetResponse) -> DiagSocket {
    let header = &response.header;
    let id = &header.socket_id;
    let cookie = u64::from(u32::from_ne_bytes(id.cookie[..4].try_into().unwrap()))
        | u64::from(u32::from_ne_bytes(id.cookie[4..].try_into().unwrap())) << 32;
    let info = response.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(bytes) => Some(TcpInfo(bytes.as_slice())),
        _ => None,
    });
    DiagSocket {
        cookie,
        inode: u64::from(header.inode),
        uid: header.uid,
        family: if header.family == AF_INET6 {
            Family::Ipv6
        } else {
            Family::Ipv4
        },
        local: socket_addr(id.source_address, id.source_port, id.interface_id).into(),
        remote: socket_addr(id.destination_address, id.destination_port, id.interface_id).into(),
        state: header.state,
        recv_queue: header.recv_queue,
        send_queue: header.send_queue,
        last_data_recv_ms: info.and_then(|i| i.u32(tcp_info::LAST_DATA_RECV)),
        last_data_sent_ms: info.and_then(|i| i.u32(tcp_info::LAST_DATA_SENT)),
    }
}

/// Like `getsockname`: an IPv6 link-local address carries the bound
/// interface as its scope id, any other address has scope 0.
fn socket_addr(ip: IpAddr, port: u16, interface: u32) -> SocketAddr {
    match ip {
        IpAddr::V4(ip) => SocketAddr::new(ip.into(), port),
        IpAddr::V6(ip) => {
            let scope = if ip.is_unicast_link_local() {
                interface
            } else {
                0
            };
            SocketAddrV6::new(ip, port, 0, scope).into()
        }
    }
}

/// Byte offsets in `struct tcp_info` (uapi `linux/tcp.h`). The layout only
/// grows at the end, so a field is present iff the kernel's struct (the
/// attribute's length) reaches past it.
mod tcp_info {
    #[cfg(test)]
    pub const STATE: usize = 0;
    pub const LAST_DATA_SENT: usize = 44;
    pub const LAST_DATA_RECV: usize = 52;
    #[cfg(test)]
    pub const BYTES_ACKED: usize = 120;
}

/// The raw `INET_DIAG_INFO` attribute: a `struct tcp_info` in host byte
/// order, as long as the running kernel's version of it.
#[derive(Clone, Copy)]
struct TcpInfo<'a>(&'a [u8]);

impl TcpInfo<'_> {
    fn bytes<const N: usize>(self, offset: usize) -> Option<[u8; N]> {
        self.0.get(offset..offset + N)?.try_into().ok()
    }

    fn u32(self, offset: usize) -> Option<u32> {
        self.bytes(offset).map(u32::from_ne_bytes)
    }

    #[cfg(test)]
    fn u64(self, offset: usize) -> Option<u64> {
        self.bytes(offset).map(u64::from_ne_bytes)
    }

    #[cfg(test)]
    fn state(self) -> Option<u8> {
        self.bytes::<1>(tcp_info::STATE).map(|[b]| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_info_fields_present_only_when_long_enough() {
        // A kernel older than 4.1 sends a tcp_info that ends before
        // tcpi_bytes_acked: the idle times are there, the counters are not.
        let mut old = vec![0u8; 104];
        old[tcp_info::STATE] = state::ESTABLISHED;
        old[52..56].copy_from_slice(&7u32.to_ne_bytes());
        let info = TcpInfo(&old);
        assert_eq!(info.state(), Some(state::ESTABLISHED));
        assert_eq!(info.u32(tcp_info::LAST_DATA_RECV), Some(7));
        assert_eq!(info.u64(tcp_info::BYTES_ACKED), None);

        let mut new = vec![0u8; 232];
        new[120..128].copy_from_slice(&(1u64 << 40).to_ne_bytes());
        assert_eq!(TcpInfo(&new).u64(tcp_info::BYTES_ACKED), Some(1 << 40));
        assert_eq!(TcpInfo(&[]).u32(tcp_info::LAST_DATA_SENT), None);
    }

    #[test]
    fn state_masks() {
        assert_eq!(ALL_STATES, 0x3ffe);
        assert_eq!(DEFAULT_STATES & state_bit(state::LISTEN), 0);
        assert_ne!(DEFAULT_STATES & state_bit(state::CLOSE_WAIT), 0);
    }

    /// The snapshot holds one per TCP socket on the host at once, while
    /// the report is built (BENCHMARKS.md: the report's peak).
    #[test]
    fn a_diag_socket_stays_small() {
        assert!(size_of::<DiagSocket>() <= 96, "{}", size_of::<DiagSocket>());
    }

    #[test]
    fn unread_bytes_discounts_the_fin() {
        let mut socket = DiagSocket {
            cookie: 1,
            inode: 1,
            uid: 0,
            family: Family::Ipv4,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            state: state::CLOSE_WAIT,
            recv_queue: 101,
            send_queue: 0,
            last_data_recv_ms: None,
            last_data_sent_ms: None,
        };
        assert_eq!(socket.unread_bytes(), 100);
        socket.state = state::ESTABLISHED;
        assert_eq!(socket.unread_bytes(), 101);
        socket.state = state::LISTEN;
        assert_eq!(socket.unread_bytes(), 0);
    }

    /// The live dump reports tcp_info for a connected socket, and the state
    /// byte at offset 0 of that struct agrees with the message header: a
    /// check that the attribute is the tcp_info this module parses.
    #[test]
    #[ignore = "host: real sockets and sock_diag on this kernel; `./x test` runs it"]
    fn live_tcp_info_matches_header() {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let local = client.local_addr().unwrap();

        let mut socket = Socket::new(NETLINK_SOCK_DIAG).unwrap();
        socket.bind_auto().unwrap();
        socket.connect(&NetlinkAddr::new(0, 0)).unwrap();
        request(&socket, 7, AF_INET, state_bit(state::ESTABLISHED)).unwrap();
        let mut buf = Vec::with_capacity(RECV_BUF);
        // Decode by hand to reach the raw attribute.
        let mut found = None;
        'outer: loop {
            buf.clear();
            let len = socket.recv(&mut buf, 0).unwrap();
            let mut offset = 0;
            while offset < len {
                let length = NetlinkBuffer::new_checked(&buf[offset..len])
                    .unwrap()
                    .length() as usize;
                let message =
                    NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..offset + length])
                        .unwrap();
                offset += (length + 3) & !3;
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        if convert(&r).local == local {
                            found = Some(r);
                        }
                    }
                    NetlinkPayload::Done(_) => break 'outer,
                    _ => {}
                }
            }
        }
        let response = found.expect("client socket in the dump");
        let info = response
            .nlas
            .iter()
            .find_map(|nla| match nla {
                Nla::TcpInfo(bytes) => Some(bytes.clone()),
                _ => None,
            })
            .expect("INET_DIAG_INFO attribute");
        assert!(info.len() >= 136, "tcp_info of {} bytes", info.len());
        assert_eq!(TcpInfo(&info).state(), Some(response.header.state));
        assert_eq!(response.header.state, state::ESTABLISHED);
    }
}
