//! Programs every hook set uses: TCP state changes (and, for the tracepoint
//! set, connects), socket destruction, and process ends. All three are
//! stable tracepoints.
use core::ffi::c_void;

use aya_ebpf::{
    Global,
    helpers::generated::bpf_get_socket_cookie,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use leakbpf_common::{DestroyEvent, ExitEvent, HookConfig, Task, direction, kind, tcp_state};

use crate::{
    emit::{header, submit, submit_open, submit_state},
    sock::{load, offsets, read, tcp_endpoints_btf},
};

const TCP_SYN_SENT: i32 = tcp_state::SYN_SENT as i32;
const TCP_CLOSE: i32 = tcp_state::CLOSE as i32;
const TCP_SYN_RECV: i32 = tcp_state::SYN_RECV as i32;

/// Set by user space before load, per hook set.
#[unsafe(no_mangle)]
pub static HOOKS: Global<HookConfig> = Global::new(HookConfig {
    connect_from_state: 1,
    wakeup_bytes: 0,
    state_mask: u32::MAX,
    kernel_stacks: 1,
    lean: 0,
    go_requests: 0,
});

/// `inet_sock_set_state(sk, oldstate, newstate)`, fired before `sk_state`
/// changes. CLOSE -> SYN_SENT happens inside connect(), in the caller's
/// context: without a tcp_connect hook, that transition is the connect's
/// open event. Every other transition may run in softirq, so it carries no
/// task. It also generates each socket's cookie early, so programs that can
/// only read `sk_cookie` (kprobes, syscall exits) find it set.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    state_changed(&ctx);
    0
}

fn state_changed(ctx: &BtfTracePointContext) {
    let sk: *mut c_void = ctx.arg(0);
    let old_state: i32 = ctx.arg(1);
    let new_state: i32 = ctx.arg(2);
    let config = HOOKS.load();
    let opens =
        old_state == TCP_CLOSE && new_state == TCP_SYN_SENT && config.connect_from_state != 0;
    // Most transitions matter to no report: leave before reading anything.
    // A passive open's SYN_RECV -> ESTABLISHED comes before its accept
    // returns, so the reports learn nothing from it (the accept carries the
    // tuple); only `events` (every state) shows it.
    let passive = old_state == TCP_SYN_RECV && config.lean != 0;
    if !opens && (passive || (config.state_mask >> (new_state & 31)) & 1 == 0) {
        if new_state == TCP_SYN_SENT || passive {
            // The connect hooks of the other sets and the accept hooks read
            // sk_cookie: make it now.
            let _ = unsafe { bpf_get_socket_cookie(sk) };
        }
        return;
    }
    let off = offsets();
    let sk_addr = sk as u64;
    if config.lean != 0 && !opens && unsafe { released(sk_addr, &off) } {
        // Its owner let go of it (close() is running): the reports have
        // forgotten it at the release already.
        return;
    }
    // The tuple as it is now (a connect's source port is chosen after its
    // open; the reports take it from sock_diag, or from a held socket's
    // last state change here).
    let Some(mut ep) = (unsafe { tcp_endpoints_btf(sk_addr, &off) }) else {
        return;
    };
    ep.state = new_state as u8;
    // Generates the cookie on first use; later reads of sk_cookie (accept
    // path) see the same value.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    if opens {
        submit_open(ctx, cookie, ep, direction::CONNECT, -1, true, false);
    } else {
        submit_state(cookie, ep, old_state as u8);
    }
}

/// True once the socket's owner released it: inet_release clears
/// `socket->sk` before the protocol closes the sock (and an orphan has no
/// socket at all). `sk` is the tracepoint's BTF-typed argument: plain loads.
#[inline(always)]
unsafe fn released(sk: u64, off: &leakbpf_common::KernelOffsets) -> bool {
    // SAFETY: BTF-checked loads from `struct sock` and the `struct socket`
    // it points to (the JIT guards each against faults).
    let socket: u64 = unsafe { load(sk, off.sk_socket) };
    socket == 0 || unsafe { load::<u64>(socket, off.socket_sk) } != sk
}

/// `tcp:tcp_destroy_sock`: the kernel frees the socket. The tracepoint
/// itself generates and records the cookie. Attached for `events` only:
/// the reports forget a socket at its close.
#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    let off = offsets();
    if let Ok(cookie) = unsafe { ctx.read_at::<u64>(off.destroy_cookie as usize) } {
        submit(DestroyEvent {
            header: header(kind::DESTROY, cookie),
        });
    }
    0
}

/// `sched_process_free(struct task_struct *p)`: a task's last reference is
/// gone. For a thread-group leader that means the whole process ended and
/// released its files (sched_process_exit would be too early: it fires
/// before exit_files()). User space retires the pid on it, so a lost close
/// cannot become a phantom leak and a reused pid starts clean. Runs in RCU
/// callback context: the task is read from the argument, not `current`.
#[btf_tracepoint(function = "sched_process_free")]
pub fn sched_process_free(ctx: BtfTracePointContext) -> i32 {
    let task: *mut c_void = ctx.arg(0);
    let off = offsets();
    let task = task as u64;
    let (Ok(pid), Ok(tgid), Ok(comm), Ok(start_ns)) = (
        unsafe { read::<u32>(task, off.task_pid) },
        unsafe { read::<u32>(task, off.task_tgid) },
        unsafe { read::<[u8; 16]>(task, off.task_comm) },
        unsafe { read::<u64>(task, off.task_start_boottime) },
    ) else {
        return 0;
    };
    if pid == tgid {
        crate::go_request::forget_process(tgid);
        submit(ExitEvent {
            header: header(kind::EXIT, 0),
            task: Task {
                pid,
                tid: pid,
                cgroup_id: 0,
                comm,
                start_ns,
            },
        });
    }
    0
}
