//! Maps and the helpers that fill them: the ring buffer of events, the stack
//! map, and the per-CPU counters of everything that had to be dropped.
use core::ffi::c_void;

use crate::shared::HOOKS;
use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task_btf, bpf_get_smp_processor_id,
            bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_user, bpf_task_pt_regs,
        },
    },
    macros::map,
    maps::{PerCpuArray, RingBuf, StackTrace},
    programs::tracing::StackIdContext,
};
use aya_log_ebpf::warn;
use leakbpf_common::{
    CloseEvent, DEFAULT_RING_BYTES, Endpoints, EventHeader, MAX_STACK_DEPTH, OpenEvent,
    STACK_INLINE, STACK_NOT_TAKEN, StackEvent, StackId, Task, USER_STACK_TOP_WORDS, kind, lost,
};

/// Default size; user space may resize it before load (`--ring-bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// User and kernel stacks of open events. Without BPF_F_REUSE_STACKID a hash
/// collision fails instead of silently replacing an older stack that an
/// outstanding socket still points to; the user stack then travels in the
/// ring instead ([`inline_user_stack`]).
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::COUNT, 0);

#[inline(always)]
pub fn count_lost(counter: u32) {
    if let Some(slot) = LOST.get_ptr_mut(counter) {
        // Per-CPU slot: no other writer while this program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn header(kind: u32, cookie: u64) -> EventHeader {
    EventHeader {
        kind,
        cpu: unsafe { bpf_get_smp_processor_id() },
        time_ns: unsafe { bpf_ktime_get_ns() },
        cookie,
    }
}

/// The current task. Only meaningful in process context (syscalls, connect(),
/// release), never in softirq.
#[inline(always)]
pub fn current_task() -> Task {
    let pid_tgid = bpf_get_current_pid_tgid();
    Task {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or_default(),
        start_ns: process_start_ns(),
    }
}

/// The current process's start time (its leader's `start_boottime`); 0 if
/// unreadable (user space then falls back to the pid alone).
#[inline(always)]
fn process_start_ns() -> u64 {
    let off = crate::sock::offsets();
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    let Ok(leader) = (unsafe { crate::sock::read::<u64>(task, off.task_group_leader) }) else {
        return 0;
    };
    unsafe { crate::sock::read::<u64>(leader, off.task_start_boottime) }.unwrap_or(0)
}

/// (user stack id, kernel stack id); a failure is kept as `-errno`,
/// counted and logged (`--log-kernel`). A user stack the map cannot take (a
/// hash collision: EEXIST, or a full map: ENOMEM) is copied whole into the
/// ring just before the open event, so no stack is lost to the map.
/// Without `kernel`, the kernel stack
/// is [`STACK_NOT_TAKEN`].
#[inline(always)]
pub fn stack_ids<C: StackIdContext>(ctx: &C, kernel: bool, cookie: u64) -> (StackId, StackId) {
    let user = match ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)) {
        Ok(id) => id as StackId,
        Err(err) if (err == -17 || err == -12) && inline_user_stack(ctx, cookie) => STACK_INLINE,
        Err(err) => {
            count_lost(lost::USER_STACK);
            warn!(
                ctx,
                "user stack of pid {} not recorded: error {}",
                (bpf_get_current_pid_tgid() >> 32) as u32,
                err
            );
            err
        }
    };
    if !kernel {
        return (user, STACK_NOT_TAKEN);
    }
    let kernel = match ctx.get_stackid(&STACKS, 0) {
        Ok(id) => id as StackId,
        Err(err) => {
            count_lost(lost::KERNEL_STACK);
            warn!(
                ctx,
                "kernel stack of pid {} not recorded: error {}",
                (bpf_get_current_pid_tgid() >> 32) as u32,
                err
            );
            err
        }
    };
    (user, kernel)
}

/// Copies the current user stack into a [`StackEvent`] record; false if
/// the ring is full or the stack cannot be read.
#[inline(always)]
fn inline_user_stack<C: StackIdContext>(ctx: &C, cookie: u64) -> bool {
    let Some(mut entry) = EVENTS.reserve::<StackEvent>(0) else {
        return false;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring entry;
    // the header and the byte count are written before submit, `ips` up to
    // the byte count by the helper.
    let copied = unsafe {
        (*event).header = header(kind::STACK, cookie);
        (*event)._pad = 0;
        bpf_get_stack(
            ctx.as_ptr(),
            (&raw mut (*event).ips).cast::<c_void>(),
            (MAX_STACK_DEPTH * 8) as u32,
            u64::from(BPF_F_USER_STACK),
        )
    };
    if copied <= 0 {
        entry.discard(0);
        return false;
    }
    // SAFETY: as above.
    unsafe { (*event).bytes = copied as u32 };
    entry.submit(wakeup());
    true
}

/// Writes an open event straight into the ring (it is too big to build on
/// the 512-byte BPF stack first): who, which socket, and where in the code,
/// with the user stack pointer and the words above it so user space can
/// recover a caller that frame-pointer unwinding skipped.
#[inline(always)]
pub fn submit_open<C: StackIdContext>(
    ctx: &C,
    cookie: u64,
    endpoints: Endpoints,
    direction: u8,
    fd: i32,
    sp_offset: u32,
    kernel_stack: bool,
) {
    // Stacks first: an inline user stack must precede its open in the ring.
    let kernel_stack = kernel_stack && HOOKS.load().kernel_stacks != 0;
    let (user_stack_id, kernel_stack_id) = stack_ids(ctx, kernel_stack, cookie);
    let request_stack_id = if direction == leakbpf_common::direction::CONNECT {
        crate::go_request::request_stack_id()
    } else {
        leakbpf_common::go::NOT_PROBED
    };
    let Some(mut entry) = EVENTS.reserve::<OpenEvent>(0) else {
        count_lost(lost::RINGBUF_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring entry;
    // every field is written before submit.
    unsafe {
        (*event).header = header(kind::OPEN, cookie);
        (*event).task = current_task();
        (*event).endpoints = endpoints;
        (*event).direction = direction;
        (*event)._pad = [0; 3];
        (*event).fd = fd;
        (*event).user_stack_id = user_stack_id;
        (*event).kernel_stack_id = kernel_stack_id;
        (*event).request_stack_id = request_stack_id;
        (*event)._pad2 = 0;
        (*event).user_sp = 0;
        let top = &raw mut (*event).user_stack_top;
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as u64;
        let sp = if regs == 0 {
            Err(-1)
        } else {
            bpf_probe_read_kernel((regs + u64::from(sp_offset)) as *const u64)
        };
        let copied = match sp {
            Ok(sp) => {
                (*event).user_sp = sp;
                bpf_probe_read_user(
                    top.cast::<c_void>(),
                    (USER_STACK_TOP_WORDS * 8) as u32,
                    sp as *const c_void,
                ) == 0
            }
            Err(_) => false,
        };
        if !copied {
            (*top) = [0; USER_STACK_TOP_WORDS];
        }
    }
    entry.submit(wakeup());
}

/// Submit flags: wake the reader only when enough data waits (see
/// `HookConfig::wakeup_bytes`); it also drains on a timer.
#[inline(always)]
fn wakeup() -> u64 {
    let threshold = u64::from(HOOKS.load().wakeup_bytes);
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= threshold {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Copies `event` into the ring buffer, or counts it as lost.
#[inline(always)]
pub fn submit<T: 'static>(event: T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(wakeup());
        }
        None => count_lost(lost::RINGBUF_FULL),
    }
}

/// A release of socket `cookie` by the current task.
#[inline(always)]
pub fn submit_close(cookie: u64, family: u16, state: u8) {
    let task = if HOOKS.load().lean != 0 {
        // The reports need only who released it.
        let pid_tgid = bpf_get_current_pid_tgid();
        Task {
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            ..Task::default()
        }
    } else {
        current_task()
    };
    submit(CloseEvent {
        header: header(kind::CLOSE, cookie),
        task,
        family,
        state,
        _pad: [0; 5],
    });
}
