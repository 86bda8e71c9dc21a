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
use leakbpf_common::{
    DestroyEvent, ExitEvent, HookConfig, StateEvent, Task, direction, kind, tcp_state,
};

use crate::{
    emit::{header, submit, submit_open},
    sock::{endpoints, is_tcp, offsets, read},
};

const TCP_SYN_SENT: i32 = tcp_state::SYN_SENT as i32;
const TCP_CLOSE: i32 = tcp_state::CLOSE as i32;

/// Set by user space before load, per hook set.
#[unsafe(no_mangle)]
pub static HOOKS: Global<HookConfig> = Global::new(HookConfig {
    connect_from_state: 1,
    wakeup_bytes: 0,
});

/// `inet_sock_set_state(sk, oldstate, newstate)`, fired before `sk_state`
/// changes. CLOSE -> SYN_SENT happens inside connect(), in the caller's
/// context: without a tcp_connect hook, that transition is the connect's
/// open event. Every other transition may run in softirq, so it carries no
/// task. It also generates each socket's cookie early, so programs that can
/// only read `sk_cookie` (kprobes, syscall exits) find it set.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk: *mut c_void = ctx.arg(0);
    let old_state: i32 = ctx.arg(1);
    let new_state: i32 = ctx.arg(2);
    let off = offsets();
    let sk_addr = sk as u64;
    if !unsafe { is_tcp(sk_addr, &off) } {
        return Ok(());
    }
    let mut ep = unsafe { endpoints(sk_addr, &off)? };
    ep.state = new_state as u8;
    // Generates the cookie on first use; later reads of sk_cookie (accept
    // path) see the same value.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    if old_state == TCP_CLOSE && new_state == TCP_SYN_SENT && HOOKS.load().connect_from_state != 0 {
        submit_open(
            ctx,
            cookie,
            ep,
            direction::CONNECT,
            -1,
            off.pt_regs_sp,
            true,
        );
    } else {
        submit(StateEvent {
            header: header(kind::STATE, cookie),
            endpoints: ep,
            old_state: old_state as u8,
            _pad: [0; 7],
        });
    }
    Ok(())
}

/// `tcp:tcp_destroy_sock`: the kernel frees the socket. The tracepoint
/// itself generates and records the cookie.
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
