//! The one decoder of ring-buffer records, and the event model every command
//! shares. Records are the `#[repr(C)]` structs of `leakbpf_common`; decoding
//! checks sizes before reading and never panics on bad bytes.
use std::{
    fmt,
    mem::size_of,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

use leakbpf_common::{self as common, direction, kind};
use serde::Serialize;

/// One socket lifecycle fact from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Boxed: an open is 320 bytes, every other event under 90, and each
    /// event is moved a few times between the ring and the table (one
    /// allocation per open doubled the decoder's rate: BENCHMARKS.md).
    Open(Box<Open>),
    State(StateChange),
    Close(Close),
    Destroy(Destroy),
    Exit(Exit),
    /// A process replaced its image (only while the Go probes are on).
    Exec(Exec),
    /// A user stack that came through the ring, for the next open of
    /// `cookie` (see [`Stack::Inline`]); consumed by the stack resolver.
    Stack(InlineStack),
}

impl Event {
    /// The kinds' names, as `events` prints them and metrics label them,
    /// in the order of [`Event::kind_index`].
    pub const KINDS: [&'static str; 7] =
        ["open", "state", "close", "destroy", "exit", "stack", "exec"];

    /// This event's place in [`Event::KINDS`] (a counter per kind needs no
    /// string on the hot path).
    pub fn kind_index(&self) -> usize {
        match self {
            Event::Open(_) => 0,
            Event::State(_) => 1,
            Event::Close(_) => 2,
            Event::Destroy(_) => 3,
            Event::Exit(_) => 4,
            Event::Stack(_) => 5,
            Event::Exec(_) => 6,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        Event::KINDS[self.kind_index()]
    }

    pub fn time_ns(&self) -> u64 {
        match self {
            Event::Open(e) => e.time_ns,
            Event::State(e) => e.time_ns,
            Event::Close(e) => e.time_ns,
            Event::Destroy(e) => e.time_ns,
            Event::Exit(e) => e.time_ns,
            Event::Stack(e) => e.time_ns,
            Event::Exec(e) => e.time_ns,
        }
    }

    pub fn cookie(&self) -> u64 {
        match self {
            Event::Open(e) => e.cookie,
            Event::State(e) => e.cookie,
            Event::Close(e) => e.cookie,
            Event::Destroy(e) => e.cookie,
            Event::Stack(e) => e.cookie,
            Event::Exit(_) | Event::Exec(_) => 0,
        }
    }
}

/// A socket address in 24 bytes, where `SocketAddr` takes 32: the report
/// and the snapshot it is built from each hold every socket (100,000 and
/// more), two addresses each, and the 100k report's peak memory is within
/// a few MiB of its target (BENCHMARKS.md). Compares, hashes and displays
/// as the `SocketAddr` it was made from (flow info aside, which a TCP
/// socket's addresses do not carry). Serialized as `Display` writes it (an
/// IPv6 scope included), not as serde would write a `SocketAddr` (which
/// drops the scope), and not kept as a string.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address {
    ip: [u8; 16],
    scope_id: u32,
    port: u16,
    family: Family,
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Address {
        let (ip, scope_id) = addr_bytes(&addr);
        Address {
            ip,
            scope_id,
            port: addr.port(),
            family: if addr.is_ipv6() {
                Family::Ipv6
            } else {
                Family::Ipv4
            },
        }
    }
}

impl From<Address> for SocketAddr {
    fn from(addr: Address) -> SocketAddr {
        socket_addr(&addr.ip, addr.port, addr.scope_id, addr.family)
    }
}

/// An address as the kernel keeps it, 16 bytes (an IPv4 address in the
/// first four), and its scope.
fn addr_bytes(addr: &SocketAddr) -> ([u8; 16], u32) {
    match addr {
        SocketAddr::V4(a) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&a.ip().octets());
            (out, 0)
        }
        SocketAddr::V6(a) => (a.ip().octets(), a.scope_id()),
    }
}

/// The address [`addr_bytes`] gave `bytes` and `scope_id`.
fn socket_addr(bytes: &[u8; 16], port: u16, scope_id: u32, family: Family) -> SocketAddr {
    match family {
        Family::Ipv6 => SocketAddrV6::new(Ipv6Addr::from(*bytes), port, 0, scope_id).into(),
        Family::Ipv4 => {
            SocketAddrV4::new(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]), port).into()
        }
    }
}

impl std::str::FromStr for Address {
    type Err = std::net::AddrParseError;
    fn from_str(text: &str) -> Result<Address, Self::Err> {
        text.parse::<SocketAddr>().map(Address::from)
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        SocketAddr::from(*self).fmt(f)
    }
}

impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        SocketAddr::from(*self).fmt(f)
    }
}

impl PartialEq<SocketAddr> for Address {
    fn eq(&self, other: &SocketAddr) -> bool {
        SocketAddr::from(*self) == *other
    }
}

impl Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        out.collect_str(self)
    }
}

/// A socket got an owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub time_ns: u64,
    pub cookie: u64,
    pub task: Task,
    pub endpoints: Endpoints,
    pub direction: Direction,
    /// The owner's fd, where the hook knows it (accept).
    pub fd: Option<i32>,
    pub user_stack: Stack,
    pub kernel_stack: Stack,
    /// A Go connect's request site (see [`crate::go_requests`]): the user
    /// stack of the goroutine whose request dialed it; [`Stack::NOT_PROBED`]
    /// where there is none to look for, [`Stack::UNJOINED`] for a probed Go
    /// process's connect no request was seen to ask for.
    pub request_stack: Stack,
    /// User stack pointer at the syscall and the words above it (see
    /// [`crate::unwind`]); 0 and zeros when unknown.
    pub user_sp: u64,
    pub user_stack_top: [u64; common::USER_STACK_TOP_WORDS],
    /// The caller frame-pointer unwinding skipped, recovered by user space
    /// ([`crate::stacks::StackResolver`]) before the event is applied.
    pub leaf_caller: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub time_ns: u64,
    pub cookie: u64,
    pub old: TcpState,
    /// Addresses after the change; `endpoints.state` is the new state.
    pub endpoints: Endpoints,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub time_ns: u64,
    pub cookie: u64,
    pub task: Task,
    pub state: TcpState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destroy {
    pub time_ns: u64,
    pub cookie: u64,
}

/// A user stack copied into the ring because the stack map could not take
/// it (see `leakbpf_common::StackEvent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlineStack {
    pub time_ns: u64,
    pub cookie: u64,
    /// Instruction pointers, innermost first.
    pub ips: Vec<u64>,
}

/// A process ended (its thread-group leader exited).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub time_ns: u64,
    pub task: Task,
}

/// A process (`task.pid`) now runs another binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    pub time_ns: u64,
    pub task: Task,
}

/// The process (and thread) that did something.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub comm: Comm,
    /// When the process started (ns since boot; 0 when unknown): with the
    /// pid, its identity across pid reuse.
    #[serde(skip)]
    pub start_ns: u64,
}

/// A task's command name, inline like the kernel's (`TASK_COMM_LEN`): every
/// tracked socket keeps its owner's, so no heap allocation per socket.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Comm {
    bytes: [u8; common::COMM_LEN],
    len: u8,
}

impl Comm {
    /// From the kernel's NUL-padded bytes; invalid UTF-8 becomes `?`.
    pub fn from_kernel(raw: &[u8; common::COMM_LEN]) -> Comm {
        // The 16 bytes as one word: the first NUL, the mask of what comes
        // before it, and the ASCII test without a byte loop or a copy of
        // variable length (every open and close decodes a name).
        const ONES: u128 = u128::from_le_bytes([0x01; common::COMM_LEN]);
        const HIGHS: u128 = u128::from_le_bytes([0x80; common::COMM_LEN]);
        let word = u128::from_le_bytes(*raw);
        // The lowest flagged byte is the first NUL (flags above it may be
        // false, never below).
        let zeros = word.wrapping_sub(ONES) & !word & HIGHS;
        let len = (zeros.trailing_zeros() / 8) as usize;
        let kept = if len == common::COMM_LEN {
            word
        } else {
            word & ((1u128 << (len * 8)) - 1)
        };
        let mut bytes = kept.to_le_bytes();
        if kept & HIGHS != 0 && std::str::from_utf8(&bytes[..len]).is_err() {
            for byte in &mut bytes[..len] {
                if !byte.is_ascii() {
                    *byte = b'?';
                }
            }
        }
        Comm {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        // Valid UTF-8 by construction.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

impl From<&str> for Comm {
    /// Longer names are cut at a character boundary, as the kernel cuts them.
    fn from(name: &str) -> Comm {
        let mut end = name.len().min(common::COMM_LEN - 1);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut raw = [0u8; common::COMM_LEN];
        raw[..end].copy_from_slice(&name.as_bytes()[..end]);
        Comm::from_kernel(&raw)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Connect,
    Accept,
    /// Found already open when tracing started.
    Preexisting,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Connect => "connect",
            Direction::Accept => "accept",
            Direction::Preexisting => "preexisting",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Family {
    #[serde(rename = "ipv4")]
    Ipv4,
    #[serde(rename = "ipv6")]
    Ipv6,
}

/// A socket's addresses and TCP state in the kernel's form: address bytes
/// (IPv4 in the first four) and ports, 44 bytes copied whole from a record
/// into the socket table (two `SocketAddr`s are 64, built field by field).
/// [`SocketAddr`]s are made where they are printed or compared.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    local_addr: [u8; 16],
    remote_addr: [u8; 16],
    /// An IPv6 link-local socket's interface (sock_diag's); both ends share
    /// it.
    scope_id: u32,
    local_port: u16,
    remote_port: u16,
    family: Family,
    pub state: TcpState,
}

impl Endpoints {
    /// From two addresses of one family (an IPv4 address beside an IPv6
    /// one is taken as IPv4-mapped).
    pub fn new(local: SocketAddr, remote: SocketAddr, state: TcpState) -> Endpoints {
        let v6 = local.is_ipv6() || remote.is_ipv6();
        let bytes = |addr: &SocketAddr| -> ([u8; 16], u32) {
            match addr {
                SocketAddr::V4(a) if v6 => (a.ip().to_ipv6_mapped().octets(), 0),
                _ => addr_bytes(addr),
            }
        };
        let (local_addr, local_scope) = bytes(&local);
        let (remote_addr, remote_scope) = bytes(&remote);
        Endpoints {
            local_addr,
            remote_addr,
            scope_id: local_scope.max(remote_scope),
            local_port: local.port(),
            remote_port: remote.port(),
            family: if v6 { Family::Ipv6 } else { Family::Ipv4 },
            state,
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn local(&self) -> SocketAddr {
        self.addr(&self.local_addr, self.local_port)
    }

    pub fn remote(&self) -> SocketAddr {
        self.addr(&self.remote_addr, self.remote_port)
    }

    /// 0 while a connect has no source port yet, or once the socket is
    /// unhashed.
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    #[cfg(test)]
    pub(crate) fn set_local_port(&mut self, port: u16) {
        self.local_port = port;
    }

    fn addr(&self, bytes: &[u8; 16], port: u16) -> SocketAddr {
        socket_addr(bytes, port, self.scope_id, self.family)
    }
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoints")
            .field("family", &self.family)
            .field("local", &self.local())
            .field("remote", &self.remote())
            .field("state", &self.state)
            // The raw fields are what `local` and `remote` print.
            .finish_non_exhaustive()
    }
}

/// A stack id from the kernel's stack map, or why there is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stack {
    Id(u32),
    /// `bpf_get_stackid` failed with this errno (e.g. EEXIST on a collision,
    /// EFAULT without a user stack).
    Missing(i32),
    /// Not in the stack map: it came through the ring just before the open
    /// ([`Event::Stack`]); the stack resolver gives it an id of its own.
    Inline,
}

impl Stack {
    /// No request site to look for: an accept, a process leakbpf does not
    /// probe, or the Go uprobes are off.
    pub const NOT_PROBED: Stack = Stack::Missing(-common::go::NOT_PROBED);
    /// A probed Go process connected from a goroutine no request was seen
    /// to dial from.
    pub const UNJOINED: Stack = Stack::Missing(-common::go::UNJOINED);

    /// The stack map id, if the stack was recorded.
    pub fn id(self) -> Option<u32> {
        match self {
            Stack::Id(id) => Some(id),
            Stack::Missing(_) | Stack::Inline => None,
        }
    }
}

/// A TCP state: the one type the decoder, sock_diag, the report model and
/// classification share (the numbers are `leakbpf_common::tcp_state`).
/// Ordered by name, as reports list them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    BoundInactive,
    Unknown(u8),
}

impl TcpState {
    #[cfg(test)]
    const KNOWN: [TcpState; 13] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
        TcpState::BoundInactive,
    ];

    pub fn from_kernel(value: u8) -> Self {
        use TcpState::{
            BoundInactive, Close, CloseWait, Closing, Established, FinWait1, FinWait2, LastAck,
            Listen, NewSynRecv, SynRecv, SynSent, TimeWait, Unknown,
        };
        use common::tcp_state as n;
        // The inverse of `to_kernel` (a unit test holds them together).
        match value {
            n::ESTABLISHED => Established,
            n::SYN_SENT => SynSent,
            n::SYN_RECV => SynRecv,
            n::FIN_WAIT1 => FinWait1,
            n::FIN_WAIT2 => FinWait2,
            n::TIME_WAIT => TimeWait,
            n::CLOSE => Close,
            n::CLOSE_WAIT => CloseWait,
            n::LAST_ACK => LastAck,
            n::LISTEN => Listen,
            n::CLOSING => Closing,
            n::NEW_SYN_RECV => NewSynRecv,
            n::BOUND_INACTIVE => BoundInactive,
            other => Unknown(other),
        }
    }

    /// The kernel's number for it.
    pub fn to_kernel(self) -> u8 {
        use TcpState::{
            BoundInactive, Close, CloseWait, Closing, Established, FinWait1, FinWait2, LastAck,
            Listen, NewSynRecv, SynRecv, SynSent, TimeWait, Unknown,
        };
        use common::tcp_state as n;
        match self {
            Established => n::ESTABLISHED,
            SynSent => n::SYN_SENT,
            SynRecv => n::SYN_RECV,
            FinWait1 => n::FIN_WAIT1,
            FinWait2 => n::FIN_WAIT2,
            TimeWait => n::TIME_WAIT,
            Close => n::CLOSE,
            CloseWait => n::CLOSE_WAIT,
            LastAck => n::LAST_ACK,
            Listen => n::LISTEN,
            Closing => n::CLOSING,
            NewSynRecv => n::NEW_SYN_RECV,
            BoundInactive => n::BOUND_INACTIVE,
            Unknown(value) => value,
        }
    }

    /// The name `ss` and the kernel use, e.g. `CLOSE_WAIT`.
    pub fn name(self) -> &'static str {
        use TcpState::{
            BoundInactive, Close, CloseWait, Closing, Established, FinWait1, FinWait2, LastAck,
            Listen, NewSynRecv, SynRecv, SynSent, TimeWait, Unknown,
        };
        match self {
            Established => "ESTABLISHED",
            SynSent => "SYN_SENT",
            SynRecv => "SYN_RECV",
            FinWait1 => "FIN_WAIT1",
            FinWait2 => "FIN_WAIT2",
            TimeWait => "TIME_WAIT",
            Close => "CLOSE",
            CloseWait => "CLOSE_WAIT",
            LastAck => "LAST_ACK",
            Listen => "LISTEN",
            Closing => "CLOSING",
            NewSynRecv => "NEW_SYN_RECV",
            BoundInactive => "BOUND_INACTIVE",
            Unknown(_) => "UNKNOWN",
        }
    }
}

impl Ord for TcpState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name()
            .cmp(other.name())
            .then(self.to_kernel().cmp(&other.to_kernel()))
    }
}

impl PartialOrd for TcpState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for TcpState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// Why a record could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than a {what} ({need} bytes)")]
    Short {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("record has unknown kind {0}")]
    UnknownKind(u32),
    #[error("record has unknown address family {0}")]
    UnknownFamily(u16),
    #[error("open record has unknown direction {0}")]
    UnknownDirection(u8),
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let header: common::EventHeader = read_record(bytes, "header")?;
    match header.kind {
        kind::OPEN => decode_open(&header, bytes),
        kind::STATE => {
            let raw: common::StateEvent = read_record(bytes, "state record")?;
            Ok(Event::State(StateChange {
                time_ns: header.time_ns,
                cookie: header.cookie,
                old: TcpState::from_kernel(raw.old_state),
                endpoints: endpoints(&raw.endpoints)?,
            }))
        }
        kind::CLOSE => {
            let raw: common::CloseEvent = read_record(bytes, "close record")?;
            Ok(Event::Close(Close {
                time_ns: header.time_ns,
                cookie: header.cookie,
                task: task(&raw.task),
                state: TcpState::from_kernel(raw.state),
            }))
        }
        kind::DESTROY => {
            let _: common::DestroyEvent = read_record(bytes, "destroy record")?;
            Ok(Event::Destroy(Destroy {
                time_ns: header.time_ns,
                cookie: header.cookie,
            }))
        }
        kind::EXIT => {
            let raw: common::ExitEvent = read_record(bytes, "exit record")?;
            Ok(Event::Exit(Exit {
                time_ns: header.time_ns,
                task: task(&raw.task),
            }))
        }
        kind::EXEC => {
            let raw: common::ExecEvent = read_record(bytes, "exec record")?;
            Ok(Event::Exec(Exec {
                time_ns: header.time_ns,
                task: task(&raw.task),
            }))
        }
        kind::STACK => {
            let raw: common::StackEvent = read_record(bytes, "stack record")?;
            let frames = (raw.bytes as usize / 8).min(common::MAX_STACK_DEPTH);
            Ok(Event::Stack(InlineStack {
                time_ns: header.time_ns,
                cookie: header.cookie,
                ips: raw.ips[..frames].to_vec(),
            }))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// An open, read field by field from the record into its box. Read whole
/// into a local first, the record (264 bytes) and then the `Open` (320)
/// were copied on their way to the heap, most of the decoder's time
/// (perf, eleventh session).
fn decode_open(header: &common::EventHeader, bytes: &[u8]) -> Result<Event, DecodeError> {
    check_len::<common::OpenEvent>(bytes, "open record")?;
    // Never dereferenced as a whole: each field is read unaligned.
    #[allow(clippy::cast_ptr_alignment)]
    let raw = bytes.as_ptr().cast::<common::OpenEvent>();
    // SAFETY: the length was checked; the fields are integers and byte
    // arrays, valid for any bit pattern, read unaligned in place.
    macro_rules! field {
        ($name:ident) => {
            unsafe { std::ptr::addr_of!((*raw).$name).read_unaligned() }
        };
    }
    let direction = match field!(direction) {
        direction::CONNECT => Direction::Connect,
        direction::ACCEPT => Direction::Accept,
        other => return Err(DecodeError::UnknownDirection(other)),
    };
    let endpoints = endpoints(&field!(endpoints))?;
    let fd = field!(fd);
    let open = Box::<Open>::new_uninit();
    Ok(Event::Open(Box::write(
        open,
        Open {
            time_ns: header.time_ns,
            cookie: header.cookie,
            task: task(&field!(task)),
            endpoints,
            direction,
            fd: (fd >= 0).then_some(fd),
            user_stack: stack(field!(user_stack_id)),
            kernel_stack: stack(field!(kernel_stack_id)),
            request_stack: stack(field!(request_stack_id)),
            user_sp: field!(user_sp),
            user_stack_top: field!(user_stack_top),
            leaf_caller: None,
        },
    )))
}

/// Fails unless `bytes` holds a whole `T` (a `what`).
fn check_len<T>(bytes: &[u8], what: &'static str) -> Result<(), DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            what,
            need,
            got: bytes.len(),
        });
    }
    Ok(())
}

/// Reads a plain-old-data record from the front of `bytes`.
fn read_record<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    check_len::<T>(bytes, what)?;
    // SAFETY: the length was checked; every T used here is a #[repr(C)]
    // struct of integers and byte arrays, valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn task(raw: &common::Task) -> Task {
    Task {
        pid: raw.pid,
        tid: raw.tid,
        cgroup_id: raw.cgroup_id,
        comm: Comm::from_kernel(&raw.comm),
        start_ns: raw.start_ns,
    }
}

fn stack(id: common::StackId) -> Stack {
    if id == common::STACK_INLINE {
        return Stack::Inline;
    }
    match u32::try_from(id) {
        Ok(id) => Stack::Id(id),
        Err(_) => Stack::Missing(-id),
    }
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn endpoints(raw: &common::Endpoints) -> Result<Endpoints, DecodeError> {
    let (family, local_addr, remote_addr) = match raw.family {
        // Only the first four bytes are the address: what follows is not
        // promised to be zero, and equal tuples must compare equal.
        AF_INET => {
            let v4 = |a: &[u8; 16]| u128::from_le_bytes(*a) & u128::from(u32::MAX);
            (
                Family::Ipv4,
                v4(&raw.local_addr).to_le_bytes(),
                v4(&raw.remote_addr).to_le_bytes(),
            )
        }
        AF_INET6 => (Family::Ipv6, raw.local_addr, raw.remote_addr),
        other => return Err(DecodeError::UnknownFamily(other)),
    };
    Ok(Endpoints {
        local_addr,
        remote_addr,
        scope_id: 0,
        local_port: raw.local_port,
        remote_port: raw.remote_port,
        family,
        state: TcpState::from_kernel(raw.state),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a #[repr(C)] POD value.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>())
        }
        .to_vec()
    }

    fn raw_task() -> common::Task {
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"client");
        common::Task {
            pid: 4242,
            tid: 4243,
            cgroup_id: 7,
            comm,
            start_ns: 123_456,
        }
    }

    fn raw_endpoints_v4() -> common::Endpoints {
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut remote = [0u8; 16];
        remote[..4].copy_from_slice(&[10, 1, 2, 3]);
        common::Endpoints {
            family: AF_INET,
            local_port: 50000,
            remote_port: 8080,
            state: 1,
            _pad: 0,
            local_addr: local,
            remote_addr: remote,
        }
    }

    #[test]
    fn an_address_is_the_socket_address_it_was_made_from() {
        assert_eq!(size_of::<Address>(), 24);
        for text in [
            "127.0.0.1:8080",
            "10.1.2.3:0",
            "[::1]:443",
            "[fe80::1%3]:22",
            "[::ffff:10.0.0.1]:80",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let compact = Address::from(addr);
            assert_eq!(SocketAddr::from(compact), addr);
            assert_eq!(compact.to_string(), text);
            assert_eq!(
                serde_json::to_string(&compact).unwrap(),
                format!("\"{text}\"")
            );
        }
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::7f00:1]:80".parse().unwrap();
        assert_ne!(Address::from(v4), Address::from(v6));
    }

    /// The record sizes are an ABI between the two halves: pin them.
    #[test]
    fn record_sizes_are_pinned() {
        assert_eq!(size_of::<common::EventHeader>(), 24);
        assert_eq!(size_of::<common::Task>(), 40);
        assert_eq!(size_of::<common::Endpoints>(), 40);
        assert_eq!(size_of::<common::OpenEvent>(), 264);
        assert_eq!(size_of::<common::StateEvent>(), 72);
        assert_eq!(size_of::<common::CloseEvent>(), 72);
        assert_eq!(size_of::<common::DestroyEvent>(), 24);
        assert_eq!(size_of::<common::ExitEvent>(), 64);
        assert_eq!(size_of::<common::StackEvent>(), 1048, "the largest record");
    }

    #[test]
    fn decodes_an_ipv4_connect() {
        let raw = common::OpenEvent {
            header: common::EventHeader {
                kind: kind::OPEN,
                cpu: 1,
                time_ns: 1_000,
                cookie: 99,
            },
            task: raw_task(),
            endpoints: raw_endpoints_v4(),
            direction: direction::CONNECT,
            _pad: [0; 3],
            fd: -1,
            user_stack_id: 5,
            kernel_stack_id: -17,
            request_stack_id: 11,
            _pad2: 0,
            user_sp: 0x7ffd_0000,
            user_stack_top: [7; common::USER_STACK_TOP_WORDS],
        };
        let event = decode(&bytes_of(&raw)).unwrap();
        let Event::Open(open) = event else {
            panic!("not an open: {event:?}")
        };
        assert_eq!(open.cookie, 99);
        assert_eq!(open.time_ns, 1_000);
        assert_eq!(open.task.pid, 4242);
        assert_eq!(open.task.tid, 4243);
        assert_eq!(open.task.comm, "client");
        assert_eq!(open.task.start_ns, 123_456);
        assert_eq!(open.direction, Direction::Connect);
        assert_eq!(open.fd, None);
        assert_eq!(open.endpoints.local(), "127.0.0.1:50000".parse().unwrap());
        assert_eq!(open.endpoints.remote(), "10.1.2.3:8080".parse().unwrap());
        assert_eq!(open.endpoints.state, TcpState::Established);
        assert_eq!(open.user_stack, Stack::Id(5));
        assert_eq!(open.kernel_stack, Stack::Missing(17));
        assert_eq!(open.request_stack, Stack::Id(11));
        assert_eq!(open.user_sp, 0x7ffd_0000);
        assert_eq!(open.user_stack_top[15], 7);
        assert_eq!(open.leaf_caller, None);
        // The open is read in place, field by field: at an odd address too.
        let mut shifted = vec![0u8];
        shifted.extend(bytes_of(&raw));
        assert_eq!(decode(&shifted[1..]).unwrap(), Event::Open(open));
    }

    #[test]
    fn decodes_an_ipv6_state_change() {
        let mut ep = raw_endpoints_v4();
        ep.family = AF_INET6;
        ep.local_addr = Ipv6Addr::LOCALHOST.octets();
        ep.remote_addr = Ipv6Addr::LOCALHOST.octets();
        ep.state = 8;
        let raw = common::StateEvent {
            header: common::EventHeader {
                kind: kind::STATE,
                cpu: 0,
                time_ns: 5,
                cookie: 3,
            },
            endpoints: ep,
            old_state: 1,
            _pad: [0; 7],
        };
        let Event::State(change) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not a state change")
        };
        assert_eq!(change.old, TcpState::Established);
        assert_eq!(change.endpoints.state, TcpState::CloseWait);
        assert_eq!(change.endpoints.family(), Family::Ipv6);
        assert_eq!(change.endpoints.remote(), "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn decodes_close_and_destroy() {
        let raw = common::CloseEvent {
            header: common::EventHeader {
                kind: kind::CLOSE,
                cpu: 0,
                time_ns: 10,
                cookie: 3,
            },
            task: raw_task(),
            family: AF_INET,
            state: 7,
            _pad: [0; 5],
        };
        let Event::Close(close) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not a close")
        };
        assert_eq!(
            (close.cookie, close.task.pid, close.state),
            (3, 4242, TcpState::Close)
        );

        let raw = common::DestroyEvent {
            header: common::EventHeader {
                kind: kind::DESTROY,
                cpu: 0,
                time_ns: 11,
                cookie: 3,
            },
        };
        assert_eq!(
            decode(&bytes_of(&raw)).unwrap(),
            Event::Destroy(Destroy {
                time_ns: 11,
                cookie: 3
            })
        );
    }

    #[test]
    fn comm_is_inline_and_always_text() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(b"curl");
        assert_eq!(Comm::from_kernel(&raw), "curl");
        raw[..15].copy_from_slice(b"a-very-long-com");
        assert_eq!(Comm::from_kernel(&raw).as_str(), "a-very-long-com");
        raw[1] = 0xff;
        assert_eq!(Comm::from_kernel(&raw).as_str(), "a?very-long-com");
        // No NUL at all: all 16 bytes.
        let full = *b"sixteen-chars-xx";
        assert_eq!(Comm::from_kernel(&full).as_str(), "sixteen-chars-xx");
        // What follows the first NUL is not the name, and is not kept.
        let mut tail = [0u8; 16];
        tail[..3].copy_from_slice(b"zsh");
        tail[4..7].copy_from_slice(b"old");
        assert_eq!(Comm::from_kernel(&tail), Comm::from("zsh"));
        assert_eq!(Comm::from_kernel(&[0; 16]).as_str(), "");
        // Valid UTF-8 stays; in a name that is not, every non-ASCII byte
        // becomes `?`.
        let mut utf8 = [0u8; 16];
        utf8[..5].copy_from_slice("héé".as_bytes());
        assert_eq!(Comm::from_kernel(&utf8).as_str(), "héé");
        utf8[4] = 0;
        assert_eq!(Comm::from_kernel(&utf8).as_str(), "h???");
        assert_eq!(Comm::from("sixteen-chars-xx").as_str(), "sixteen-chars-x");
        assert_eq!(Comm::from("ééééééééé").as_str(), "ééééééé");
        assert_eq!(size_of::<Comm>(), 17);
    }

    #[test]
    fn tcp_states_round_trip_and_sort_by_name() {
        for value in 0..=u8::MAX {
            assert_eq!(TcpState::from_kernel(value).to_kernel(), value);
        }
        for state in TcpState::KNOWN {
            assert_eq!(TcpState::from_kernel(state.to_kernel()), state);
        }
        assert_eq!(TcpState::from_kernel(0), TcpState::Unknown(0));
        assert_eq!(TcpState::from_kernel(14), TcpState::Unknown(14));
        assert_eq!(TcpState::from_kernel(8), TcpState::CloseWait);
        assert_eq!(TcpState::CloseWait.name(), "CLOSE_WAIT");
        let mut states = [
            TcpState::SynSent,
            TcpState::Established,
            TcpState::CloseWait,
            TcpState::FinWait1,
        ];
        states.sort();
        assert_eq!(
            states.map(TcpState::name),
            ["CLOSE_WAIT", "ESTABLISHED", "FIN_WAIT1", "SYN_SENT"]
        );
    }

    #[test]
    fn decodes_an_inline_stack_and_its_open() {
        let mut raw = common::StackEvent {
            header: common::EventHeader {
                kind: kind::STACK,
                cpu: 0,
                time_ns: 5,
                cookie: 77,
            },
            bytes: 24,
            _pad: 0,
            ips: [0; common::MAX_STACK_DEPTH],
        };
        raw.ips[..4].copy_from_slice(&[0x10, 0x20, 0x30, 0xdead]);
        let Event::Stack(stack) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not a stack event");
        };
        assert_eq!(
            (stack.cookie, stack.ips.as_slice()),
            (77, &[0x10, 0x20, 0x30][..])
        );
        // A byte count beyond the array is clamped, never read past it.
        raw.bytes = u32::MAX;
        let Event::Stack(stack) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not a stack event");
        };
        assert_eq!(stack.ips.len(), common::MAX_STACK_DEPTH);
        assert_eq!(super::stack(common::STACK_INLINE), Stack::Inline);
    }

    #[test]
    fn decodes_an_exit() {
        let raw = common::ExitEvent {
            header: common::EventHeader {
                kind: kind::EXIT,
                cpu: 0,
                time_ns: 12,
                cookie: 0,
            },
            task: raw_task(),
        };
        let Event::Exit(exit) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not an exit")
        };
        assert_eq!(
            (exit.time_ns, exit.task.pid, exit.task.comm.as_str()),
            (12, 4242, "client")
        );
    }

    #[test]
    fn decodes_an_exec() {
        let raw = common::ExecEvent {
            header: common::EventHeader {
                kind: kind::EXEC,
                cpu: 0,
                time_ns: 13,
                cookie: 0,
            },
            task: raw_task(),
        };
        let event = decode(&bytes_of(&raw)).unwrap();
        assert_eq!(event.kind_name(), "exec");
        assert_eq!(event.cookie(), 0);
        let Event::Exec(exec) = event else {
            panic!("not an exec")
        };
        assert_eq!((exec.time_ns, exec.task.pid), (13, 4242));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(
            decode(&[1, 0, 0]),
            Err(DecodeError::Short {
                what: "header",
                need: 24,
                got: 3
            })
        );
        let header = common::EventHeader {
            kind: kind::OPEN,
            cpu: 0,
            time_ns: 0,
            cookie: 1,
        };
        assert_eq!(
            decode(&bytes_of(&header)),
            Err(DecodeError::Short {
                what: "open record",
                need: 264,
                got: 24
            })
        );
        let unknown = common::EventHeader { kind: 77, ..header };
        assert_eq!(
            decode(&bytes_of(&unknown)),
            Err(DecodeError::UnknownKind(77))
        );

        let mut raw = common::StateEvent {
            header: common::EventHeader {
                kind: kind::STATE,
                ..header
            },
            endpoints: raw_endpoints_v4(),
            old_state: 1,
            _pad: [0; 7],
        };
        raw.endpoints.family = 1;
        assert_eq!(decode(&bytes_of(&raw)), Err(DecodeError::UnknownFamily(1)));
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let mut bytes = bytes;
            if let Some(kind) = bytes.first_mut() {
                // Mostly known kinds, so the per-kind paths are exercised.
                *kind %= 6;
            }
            let _ = decode(&bytes);
        }
    }
}
