//! Records that cross the kernel/user boundary.
//!
//! Every ring-buffer record starts with an [`EventHeader`]; its `kind` says
//! which of the `*Event` structs follows. The layouts are `#[repr(C)]` with
//! explicit padding so both sides agree byte for byte; `leakbpf::event`
//! decodes them and pins their sizes in tests.
#![no_std]

/// Size of the ring buffer of events unless `--ring-bytes` says otherwise:
/// a churn of ~50k connections/s never fills it between two drains.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// Length of a task's `comm`, as in the kernel's `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// Values of [`EventHeader::kind`].
pub mod kind {
    /// A socket got an owner: a connect() started or an accept() returned it.
    pub const OPEN: u32 = 1;
    /// The kernel moved a socket from one TCP state to another.
    pub const STATE: u32 = 2;
    /// A process released the socket (close(), exit, last fd gone).
    pub const CLOSE: u32 = 3;
    /// The kernel destroyed the socket.
    pub const DESTROY: u32 = 4;
    /// A process is gone (its thread-group leader was freed, after every
    /// thread exited and released its files); `cookie` is 0.
    pub const EXIT: u32 = 5;
    /// A user stack copied whole into the ring, because the stack map could
    /// not take it (hash collision, or full): it precedes the open event of
    /// the same socket, whose `user_stack_id` is [`super::STACK_INLINE`].
    pub const STACK: u32 = 6;
    /// A process replaced its image (execve); `cookie` is 0. Sent only
    /// while the Go request-site probes are on: user space probes the new
    /// binary before the program makes its first request.
    pub const EXEC: u32 = 7;
}

/// TCP states, numbered as in the kernel's `include/net/tcp_states.h`: the
/// one list of them (user space names them in `leakbpf::event::TcpState`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    /// A request socket (half-open connection on a listener); never owned
    /// by a process.
    pub const NEW_SYN_RECV: u8 = 12;
    /// Bound with `bind()` but neither listening nor connecting (Linux 6.8+
    /// reports these only when asked for this state).
    pub const BOUND_INACTIVE: u8 = 13;
}

/// Values of [`OpenEvent::direction`].
pub mod direction {
    pub const CONNECT: u8 = 1;
    pub const ACCEPT: u8 = 2;
}

/// Indexes of the per-CPU `LOST` counters: everything the kernel side had to
/// drop, so user space can say a result may be incomplete.
pub mod lost {
    /// `bpf_ringbuf_reserve` failed: the ring was full, the event is gone.
    pub const RINGBUF_FULL: u32 = 0;
    /// `bpf_get_stackid` failed for a user stack (map full, collision).
    pub const USER_STACK: u32 = 1;
    /// `bpf_get_stackid` failed for a kernel stack.
    pub const KERNEL_STACK: u32 = 2;
    /// A kernel read on the accept path failed; that accept is not reported.
    pub const ACCEPT_READ: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
}

/// First bytes of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// CPU the event was taken on (ordering hints only).
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds. 0 in the closes
    /// and state changes of a lean kernel side ([`HookConfig::lean`]): no
    /// report reads their time.
    pub time_ns: u64,
    /// The socket's cookie: its identity for its whole life.
    pub cookie: u64,
}

/// The task that did something to a socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Task {
    /// Thread-group id (what users call the pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    /// The process's start (its thread-group leader's `start_boottime`,
    /// ns since boot): with the pid, an identity no pid reuse can fake.
    pub start_ns: u64,
}

/// A socket's addresses and state as read from its `struct sock_common`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// Local port, host byte order (0 until bound).
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// TCP state (`TCP_ESTABLISHED` = 1 ...).
    pub state: u8,
    pub _pad: u8,
    /// IPv4 in the first 4 bytes (network order), or IPv6.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// Words copied from the top of the user stack at an open. Frame-pointer
/// unwinding skips the caller of a leaf function that keeps no frame (libc's
/// connect()/accept() wrappers); with these words and the function's
/// `.eh_frame` rules, user space recovers that caller's return address.
pub const USER_STACK_TOP_WORDS: usize = 16;

/// A stack id the kernel could not get is stored as `-errno`.
pub type StackId = i32;

/// A kernel stack deliberately not taken: at a syscall's exit it is always
/// the syscall-exit path, and kernels before 6.x cannot take it there at all
/// (they hand the program user-mode registers). `-ENODATA`; not a loss.
pub const STACK_NOT_TAKEN: StackId = -61;

/// The user stack is not in the stack map but in the [`StackEvent`] just
/// before this open (beyond every errno, which stops at 4095).
pub const STACK_INLINE: StackId = -4096;

/// The Go request site (`net/http` dials on a goroutine of its own; entry
/// uprobes on the Transport tie that goroutine back to the caller's stack).
pub mod go {
    use super::StackId;

    /// `request_stack_id` of an open that has no request site to look for:
    /// an accept, or a process whose binary leakbpf does not probe.
    pub const NOT_PROBED: StackId = super::STACK_NOT_TAKEN;
    /// A probed Go process connected from a goroutine no request was seen
    /// dialing from (not net/http, a request made before the probes were
    /// attached, a cgo dial). `-ENOENT`.
    pub const UNJOINED: StackId = -2;

    /// The attach cookie of every Go uprobe: where that binary's `runtime.g`
    /// keeps the goroutine id (low half) and, on Go 1.21+, the id of the
    /// goroutine that started it, `parentGoid` (high half; 0: none).
    pub const fn cookie(goid_offset: u32, parent_goid_offset: u32) -> u64 {
        goid_offset as u64 | (parent_goid_offset as u64) << 32
    }
}

/// Frames a stack holds at most (the kernel's default `perf_event_max_stack`).
pub const MAX_STACK_DEPTH: usize = 127;

/// A user stack the kernel side walked itself along the frame pointers
/// (`USER_STACKS` map value, keyed by its id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserStack {
    /// Frames in `ips`.
    pub depth: u32,
    pub _pad: u32,
    /// A 64-bit hash of the frames; the id is 30 bits of it.
    pub hash: u64,
    /// Instruction pointers, innermost first.
    pub ips: [u64; MAX_STACK_DEPTH],
}

/// Ids of [`UserStack`]s have this bit set and the one above clear: apart
/// from the kernel stack map's indices (below 2^14) and the ids user space
/// gives stacks that came through the ring (2^31 and above).
pub const USER_STACK_ID_BIT: u32 = 1 << 30;

/// A user stack copied into the ring (see [`kind::STACK`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackEvent {
    pub header: EventHeader,
    /// Bytes of `ips` that hold frames (8 per frame).
    pub bytes: u32,
    pub _pad: u32,
    /// Instruction pointers, innermost first.
    pub ips: [u64; MAX_STACK_DEPTH],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenEvent {
    pub header: EventHeader,
    pub task: Task,
    pub endpoints: Endpoints,
    /// One of [`direction`].
    pub direction: u8,
    pub _pad: [u8; 3],
    /// File descriptor the owner holds it by, or -1 where the hook cannot know.
    pub fd: i32,
    pub user_stack_id: StackId,
    pub kernel_stack_id: StackId,
    /// A Go connect's request site: the user stack of the goroutine that
    /// asked net/http for this connection (see [`go`]), or one of
    /// [`go::NOT_PROBED`], [`go::UNJOINED`], `-errno` of that stack.
    pub request_stack_id: StackId,
    pub _pad2: u32,
    /// User stack pointer (0 if unknown) and the words above it.
    pub user_sp: u64,
    pub user_stack_top: [u64; USER_STACK_TOP_WORDS],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateEvent {
    pub header: EventHeader,
    /// Addresses after the change; `endpoints.state` is the new state.
    pub endpoints: Endpoints,
    pub old_state: u8,
    pub _pad: [u8; 7],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseEvent {
    pub header: EventHeader,
    pub task: Task,
    pub family: u16,
    /// TCP state at release.
    pub state: u8,
    pub _pad: [u8; 5],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestroyEvent {
    pub header: EventHeader,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    pub task: Task,
}

/// See [`kind::EXEC`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub task: Task,
}

/// Byte offsets into kernel structures and tracepoint records, read by user
/// space from BTF and tracefs format files at start-up and written into the
/// programs as a read-only global before load. Rust eBPF has no CO-RE, so
/// nothing here may be a compile-time constant.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    // struct sock (struct sock_common is its first member)
    pub sk_family: u32,
    pub sk_state: u32,
    pub sk_num: u32,
    pub sk_dport: u32,
    pub sk_rcv_saddr: u32,
    pub sk_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_cookie: u32,
    pub sk_protocol: u32,
    /// `sock.sk_socket`: its `struct socket`, whose `sk` is cleared when the
    /// owner releases it (inet_release), before the protocol's close.
    pub sk_socket: u32,
    // task_struct -> files_struct -> fdtable -> file -> socket -> sock
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// `pt_regs.sp`, `.bp`, `.ip`: the user registers saved at syscall
    /// entry, where the walk of the user stack starts.
    pub pt_regs_sp: u32,
    pub pt_regs_bp: u32,
    pub pt_regs_ip: u32,
    // task_struct identity, for the exit event
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    /// `task_struct.thread.fsbase` (x86-64): a Go thread's TLS base; the
    /// current goroutine's `g` is the word just below it.
    pub task_fsbase: u32,
    /// task_struct -> css_set -> its cgroup on the v2 hierarchy -> kernfs
    /// node -> id: what `bpf_get_current_cgroup_id` returns, by plain
    /// loads.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    // tracepoint records
    /// `ret` in `syscalls:sys_exit_accept{,4}`.
    pub accept_exit_ret: u32,
    /// `sock_cookie` in `tcp:tcp_destroy_sock`.
    pub destroy_cookie: u32,
    /// Parameters of `inet_csk_accept` (4 before Linux 6.10, 2 since): a
    /// fexit program reads the returned socket right after them.
    pub accept_arity: u32,
}

/// How the loaded hook set divides the work, set before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookConfig {
    /// 1: the state tracepoint reports connects (CLOSE -> SYN_SENT), as in
    /// the tracepoint set; 0: a tcp_connect hook does.
    pub connect_from_state: u32,
    /// Wake the reader only once this many bytes wait in the ring; user
    /// space drains it on a short timer anyway. A wakeup per event costs
    /// the traced process and the reader far more than the event itself.
    pub wakeup_bytes: u32,
    /// Bit `1 << state` set: report transitions into that TCP state. The
    /// reports need few of them (ESTABLISHED for the final tuple,
    /// CLOSE_WAIT, CLOSE); `events` asks for all. The state program returns
    /// at once on any other, before reading the socket.
    pub state_mask: u32,
    /// 1: take the kernel stack at every open (`--kernel-stacks`); it is
    /// nearly the same for every connect and accept, and costs a walk.
    pub kernel_stacks: u32,
    /// 1: send only what the socket table of `trace` and the agent needs
    /// (no destroys: it forgets a socket at its close; closes name only the
    /// pid; closes and state changes carry no time). 0: every fact, for
    /// `events`.
    pub lean: u32,
    /// 1: look up the Go request site of each connect (the Go uprobes are
    /// loaded; `--no-go-uprobes` clears it).
    pub go_requests: u32,
}

/// The transitions the socket table needs for `trace` and the agent: the
/// peer closed, or the connection ended while its owner still holds it.
/// Not ESTABLISHED: the report reads the state and the connect's source
/// port (chosen after the open is sent) from sock_diag; a socket sock_diag
/// no longer lists is in CLOSE, which is sent.
pub const REPORT_STATES: u32 = (1 << tcp_state::CLOSE_WAIT) | (1 << tcp_state::CLOSE);
/// Every transition (`events`).
pub const ALL_STATES: u32 = u32::MAX;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with no implicit padding.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HookConfig {}
    // SAFETY: as above (two u32, then u64s).
    unsafe impl aya::Pod for super::UserStack {}
}
