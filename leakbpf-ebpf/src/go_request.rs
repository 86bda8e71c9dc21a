//! The Go request site. net/http dials each new connection on a goroutine of
//! its own, so a connect's stack ends in the Transport, not in the code that
//! made the request. Entry uprobes (never uretprobes: they break Go stacks)
//! on four functions tie the two goroutines together, user space attaches
//! them per Go binary (`leakbpf/src/go_requests/`):
//!
//! - `net/http.(*Transport).queueForDial`, on the caller's goroutine: its
//!   user stack is the request site, kept by the `*wantConn` (BX);
//! - `net/http.(*Transport).dialConnFor`, on the dial goroutine: that
//!   goroutine's id -> the same `*wantConn` (BX);
//! - Happy Eyeballs racers connect on goroutines the dial goroutine starts.
//!   On Go 1.21+ a racer's `g.parentGoid` is the dial goroutine; before,
//!   two more probes bridge them, `net.(*sysDialer).dialParallel` (dial
//!   goroutine) and `dialSerial` (racers, or the dial goroutine itself),
//!   whose `*sysDialer` (AX) carries the `*wantConn` over. Each probe hit
//!   costs the program a trap: user space attaches those two only where
//!   there is no `parentGoid`.
//!
//! At a connect, [`request_stack_id`] reads the current goroutine's id
//! through the thread's TLS and follows the chain. Every handler only
//! overwrites entries with the same values, so a function that restarts its
//! entry after a stack growth does no harm. Goroutine ids, not `g`
//! pointers, key the dials: `g`s are reused, ids never. Registers are Go's
//! internal ABI on amd64: AX, BX first arguments, R14 the current `g`.
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{bpf_get_attach_cookie, bpf_get_current_task_btf},
    },
    macros::{map, tracepoint, uprobe},
    maps::LruHashMap,
    programs::{ProbeContext, TracePointContext, tracing::StackIdContext},
};
use leakbpf_common::{ExecEvent, StackId, go, kind, lost};

use crate::{
    emit::{STACKS, count_lost, current_task, header, submit},
    shared::HOOKS,
    sock::{offsets, read},
};

/// A per-process key: goroutine ids and Go pointers mean nothing across
/// processes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoKey {
    tgid: u32,
    _pad: u32,
    value: u64,
}

/// `*wantConn` -> the user stack id of the goroutine that asked for it.
#[map]
static GO_REQUESTS: LruHashMap<GoKey, StackId> = LruHashMap::with_max_entries(16384, 0);

/// Goroutine id of a dial goroutine or a racer -> its `*wantConn`.
#[map]
static GO_DIALS: LruHashMap<GoKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// `*sysDialer` -> the `*wantConn` it dials for.
#[map]
static GO_DIALERS: LruHashMap<GoKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// Process -> its binary's attach cookie ([`leakbpf_common::go::cookie`]:
/// where `runtime.g` keeps the goroutine id and parentGoid), set by its
/// first probe hit: the connect hook needs it and has no cookie.
#[map]
static GO_PROCESSES: LruHashMap<u32, u64> = LruHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn key(tgid: u32, value: u64) -> GoKey {
    GoKey {
        tgid,
        _pad: 0,
        value,
    }
}

#[inline(always)]
fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// (process, goid offset from the attach cookie); the cookie is
/// remembered for the connect hook.
#[inline(always)]
fn probed(ctx: &ProbeContext) -> (u32, u32) {
    let tgid = tgid();
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if unsafe { GO_PROCESSES.get(&tgid) }.is_none_or(|known| *known != cookie) {
        let _ = GO_PROCESSES.insert(&tgid, &cookie, 0);
    }
    (tgid, cookie as u32)
}

/// A goroutine id (`goid`, `parentGoid`) of the `g` at `g`.
#[inline(always)]
fn read_id(g: u64, goid_offset: u32) -> Option<u64> {
    unsafe { bpf_probe_read_user((g + u64::from(goid_offset)) as *const u64) }.ok()
}

#[inline(always)]
fn regs(ctx: &ProbeContext) -> (u64, u64, u64) {
    // SAFETY: a uprobe's context is the task's saved user registers.
    unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).r14) }
}

/// `(*Transport).queueForDial(w *wantConn)`: the request site.
#[uprobe]
pub fn go_queue_for_dial(ctx: ProbeContext) -> u32 {
    let (tgid, _) = probed(&ctx);
    let (_, want_conn, _) = regs(&ctx);
    let stack = match ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)) {
        Ok(id) => id as StackId,
        Err(err) => {
            count_lost(lost::USER_STACK);
            err as StackId
        }
    };
    let _ = GO_REQUESTS.insert(&key(tgid, want_conn), &stack, 0);
    0
}

/// `(*Transport).dialConnFor(w *wantConn)`, first thing on the dial
/// goroutine.
#[uprobe]
pub fn go_dial_conn_for(ctx: ProbeContext) -> u32 {
    let (tgid, goid_offset) = probed(&ctx);
    let (_, want_conn, g) = regs(&ctx);
    if let Some(goid) = read_id(g, goid_offset) {
        let _ = GO_DIALS.insert(&key(tgid, goid), &want_conn, 0);
    }
    0
}

/// `(*sysDialer).dialParallel`: on the dial goroutine, before any racer
/// starts.
#[uprobe]
pub fn go_dial_parallel(ctx: ProbeContext) -> u32 {
    let (tgid, goid_offset) = probed(&ctx);
    let (dialer, _, g) = regs(&ctx);
    let Some(goid) = read_id(g, goid_offset) else {
        return 0;
    };
    if let Some(want_conn) = unsafe { GO_DIALS.get(&key(tgid, goid)) } {
        let want_conn = *want_conn;
        let _ = GO_DIALERS.insert(&key(tgid, dialer), &want_conn, 0);
    }
    0
}

/// `(*sysDialer).dialSerial`: on a racer (or the dial goroutine), which
/// connects next.
#[uprobe]
pub fn go_dial_serial(ctx: ProbeContext) -> u32 {
    let (tgid, goid_offset) = probed(&ctx);
    let (dialer, _, g) = regs(&ctx);
    let Some(goid) = read_id(g, goid_offset) else {
        return 0;
    };
    if let Some(want_conn) = unsafe { GO_DIALERS.get(&key(tgid, dialer)) } {
        let want_conn = *want_conn;
        let _ = GO_DIALS.insert(&key(tgid, goid), &want_conn, 0);
    }
    0
}

/// At a connect, in the connecting task: the request site's stack id, or
/// [`go::NOT_PROBED`] / [`go::UNJOINED`].
#[inline(always)]
pub fn request_stack_id() -> StackId {
    if HOOKS.load().go_requests == 0 {
        return go::NOT_PROBED;
    }
    let tgid = tgid();
    let Some(cookie) = (unsafe { GO_PROCESSES.get(&tgid) }) else {
        return go::NOT_PROBED;
    };
    let (goid_offset, parent_offset) = (*cookie as u32, (*cookie >> 32) as u32);
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    // The current goroutine: Go keeps `g` in the TLS word below fs base.
    let Ok(fsbase) = (unsafe { read::<u64>(task, offsets().task_fsbase) }) else {
        return go::UNJOINED;
    };
    let Ok(g) = (unsafe { bpf_probe_read_user((fsbase - 8) as *const u64) }) else {
        return go::UNJOINED;
    };
    let Some(goid) = read_id(g, goid_offset) else {
        return go::UNJOINED;
    };
    let want_conn = match unsafe { GO_DIALS.get(&key(tgid, goid)) } {
        Some(want_conn) => want_conn,
        // A Happy Eyeballs racer (Go 1.21+): its parent is the dial
        // goroutine.
        None if parent_offset != 0 => {
            let Some(parent) = read_id(g, parent_offset) else {
                return go::UNJOINED;
            };
            match unsafe { GO_DIALS.get(&key(tgid, parent)) } {
                Some(want_conn) => want_conn,
                None => return go::UNJOINED,
            }
        }
        None => return go::UNJOINED,
    };
    match unsafe { GO_REQUESTS.get(&key(tgid, *want_conn)) } {
        Some(stack) => *stack,
        None => go::UNJOINED,
    }
}

/// A process ended: a later process with its pid is not this Go binary.
#[inline(always)]
pub fn forget_process(tgid: u32) {
    if HOOKS.load().go_requests != 0 {
        let _ = GO_PROCESSES.remove(&tgid);
    }
}

/// `sched:sched_process_exec`: the process now runs another binary. Its old
/// binary's layout no longer applies, and user space looks at the new one
/// at once (before its first request, with luck) instead of at its first
/// socket.
#[tracepoint]
pub fn go_process_exec(_ctx: TracePointContext) -> u32 {
    if HOOKS.load().go_requests == 0 {
        return 0;
    }
    forget_process(tgid());
    submit(ExecEvent {
        header: header(kind::EXEC, 0),
        task: current_task(),
    });
    0
}
