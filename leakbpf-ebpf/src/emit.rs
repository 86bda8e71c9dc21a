//! Maps and the helpers that fill them: the ring buffer of events, the stack
//! map, and the per-CPU counters of everything that had to be dropped.
use core::ffi::c_void;

use crate::shared::HOOKS;
use aya_ebpf::{
    bindings::{
        BPF_F_USER_STACK, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    helpers::{
        bpf_get_current_comm as current_comm, bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task_btf, bpf_get_smp_processor_id,
            bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_user, bpf_task_pt_regs,
        },
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::tracing::StackIdContext,
};
use aya_log_ebpf::warn;
use leakbpf_common::{
    CloseEvent, DEFAULT_RING_BYTES, Endpoints, EventHeader, MAX_STACK_DEPTH, OpenEvent,
    STACK_INLINE, STACK_NOT_TAKEN, StackEvent, StackId, StateEvent, Task, USER_STACK_ID_BIT,
    USER_STACK_TOP_WORDS, UserStack, kind, lost,
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

/// User stacks walked here ([`walk_user_stack`]), by id: 30 bits of a
/// hash of the frames. An open shares an entry only if the entry's 64-bit
/// hash and depth are its stack's; a stack whose id another holds travels
/// in the ring instead.
#[map]
pub static USER_STACKS: HashMap<u32, UserStack> = HashMap::with_max_entries(16384, 0);

/// Bumped by user space before it deletes entries of [`USER_STACKS`]:
/// a [`Walk`]'s memory of the stacks it kept holds only within one
/// generation.
#[map]
pub static USER_STACKS_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// A CPU's stack under construction (too big for the BPF stack), and the
/// last few stacks this CPU found or put in [`USER_STACKS`]. Opens come
/// from a few call paths over and over (a client's connect, a server's
/// accept), and the map's entry is a cache miss away: looking it up cost
/// about 140 ns an open (paired bench, tenth session), where comparing
/// with a remembered one costs a few loads from lines this CPU wrote.
#[repr(C)]
pub struct Walk {
    stack: UserStack,
    /// Direct-mapped by two bits of the stack's hash.
    kept: [Kept; KEPT],
}

const KEPT: usize = 4;

/// A stack [`USER_STACKS`] holds under `id`.
#[repr(C)]
struct Kept {
    /// The [`USER_STACKS_GENERATION`] this holds for.
    generation: u64,
    hash: u64,
    depth: u32,
    /// 0: nothing kept (a kept id always has [`USER_STACK_ID_BIT`]).
    id: u32,
}

#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

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

/// The header of a close or a state change: without a time when lean.
/// No report reads those times (they only order `events`' output and
/// give its lifetimes), and the clock read was about 65 ns a record here,
/// 6% of the programs' sampled time (perf, eighth session).
#[inline(always)]
fn lean_header(kind: u32, cookie: u64) -> EventHeader {
    if HOOKS.load().lean != 0 {
        EventHeader {
            kind,
            cpu: unsafe { bpf_get_smp_processor_id() },
            time_ns: 0,
            cookie,
        }
    } else {
        header(kind, cookie)
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
        comm: current_comm().unwrap_or_default(),
        start_ns: process_start_ns(),
    }
}

/// Ring entries are 8-byte aligned, and so is `comm` in the records that
/// carry a task: it is written as two words.
const _: () = assert!(
    core::mem::offset_of!(Task, comm) % 8 == 0
        && core::mem::offset_of!(OpenEvent, task) % 8 == 0
        && core::mem::offset_of!(CloseEvent, task) % 8 == 0
);

/// Writes the current task into `dst` (a ring entry) in place.
#[inline(always)]
unsafe fn write_current_task(dst: *mut Task) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let off = crate::sock::offsets();
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    // SAFETY: `dst` is a reserved, exclusively owned ring entry's field;
    // `comm` is 8-byte aligned in it (asserted above). The task's `comm`
    // is read with two plain loads
    // checked against BTF, where `bpf_get_current_comm` cost about 80 ns
    // an open (perf, eighth session): the kernel keeps it NUL-padded
    // (`__set_task_comm` pads), and a rename racing with the read tears it
    // the same way with either.
    unsafe {
        (*dst).pid = (pid_tgid >> 32) as u32;
        (*dst).tid = pid_tgid as u32;
        (*dst).cgroup_id = current_cgroup_id(task, &off);
        // Aligned: asserted above (an unaligned write would be 8 byte stores).
        #[allow(clippy::cast_ptr_alignment)]
        let comm = (&raw mut (*dst).comm).cast::<u64>();
        comm.write(crate::sock::load(task, off.task_comm));
        comm.add(1)
            .write(crate::sock::load(task, off.task_comm + 8));
        (*dst).start_ns = process_start_ns();
    }
}

/// `bpf_get_current_cgroup_id()` by four plain loads from the current task
/// (`task` from `bpf_get_current_task_btf`), each checked against BTF:
/// task -> css_set -> its cgroup on the v2 hierarchy -> kernfs node -> id.
/// The helper cost about 50 ns an open (perf, eighth session).
#[inline(always)]
unsafe fn current_cgroup_id(task: u64, off: &leakbpf_common::KernelOffsets) -> u64 {
    // SAFETY: BTF-typed pointers from the current task down; the JIT
    // guards each load against faults. A task always has a css_set, its
    // set a default-hierarchy cgroup, a cgroup its kernfs node.
    unsafe {
        let css_set: u64 = crate::sock::load(task, off.task_cgroups);
        let cgroup: u64 = crate::sock::load(css_set, off.css_set_dfl_cgrp);
        let kn: u64 = crate::sock::load(cgroup, off.cgroup_kn);
        crate::sock::load(kn, off.kernfs_node_id)
    }
}

/// Zeroes `N` bytes, a store each. Assigning `[0; N]` to a byte array
/// compiles to a call to the object's `memset`, a byte loop in a BPF
/// subprogram; those calls were 8% of the programs' sampled time (perf,
/// seventh session), for 3 to 16 bytes of padding and names.
#[inline(always)]
unsafe fn zero<const N: usize>(dst: *mut [u8; N]) {
    for i in 0..N {
        // SAFETY: within `dst`; volatile so the stores stay stores.
        unsafe { core::ptr::write_volatile(dst.cast::<u8>().add(i), 0) };
    }
}

/// The current process's start time (its leader's `start_boottime`); 0 if
/// unreadable (user space then falls back to the pid alone).
#[inline(always)]
fn process_start_ns() -> u64 {
    let off = crate::sock::offsets();
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    // SAFETY: BTF-checked loads from the current task and its leader.
    let leader: u64 = unsafe { crate::sock::load(task, off.task_group_leader) };
    if leader == 0 {
        return 0;
    }
    unsafe { crate::sock::load(leader, off.task_start_boottime) }
}

/// The user registers saved at syscall entry: where the user stack is.
#[derive(Clone, Copy)]
pub struct UserRegs {
    pub ip: u64,
    pub bp: u64,
    pub sp: u64,
}

/// The current task's user registers, if readable (process context only).
#[inline(always)]
pub fn user_regs() -> Option<UserRegs> {
    let off = crate::sock::offsets();
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return None;
    }
    // SAFETY: BTF-checked loads of the kernel's saved registers.
    unsafe {
        Some(UserRegs {
            ip: crate::sock::load(regs, off.pt_regs_ip),
            bp: crate::sock::load(regs, off.pt_regs_bp),
            sp: crate::sock::load(regs, off.pt_regs_sp),
        })
    }
}

/// (user stack id, kernel stack id); a failure is kept as `-errno`,
/// counted and logged (`--log-kernel`). The user stack is walked here
/// ([`walk_user_stack`]) and kept in [`USER_STACKS`]; one that cannot be
/// kept there is copied whole into the ring just before the open event,
/// so no stack is lost to the map. Without `kernel`, the kernel stack is
/// [`STACK_NOT_TAKEN`].
#[inline(always)]
pub fn stack_ids<C: StackIdContext>(
    ctx: &C,
    regs: Option<UserRegs>,
    kernel: bool,
    cookie: u64,
    preemptible: bool,
) -> (StackId, StackId) {
    // The walk builds the stack in a per-CPU buffer: a program that can be
    // preempted (fentry/fexit: migration disabled, preemption not) could
    // have it overwritten by another open on its CPU, and leaves the walk
    // to the kernel's walker. Tracepoint, raw tracepoint and kprobe
    // programs run with preemption disabled.
    let walked = regs
        .filter(|_| !preemptible)
        .and_then(|regs| walk_user_stack(&regs));
    let user = match walked {
        Some(walk) => keep_user_stack(ctx, walk, cookie),
        None => kernel_user_stack_id(ctx, cookie),
    };
    if !kernel {
        return (user, STACK_NOT_TAKEN);
    }
    let kernel = match ctx.get_stackid(&STACKS, 0) {
        Ok(id) => id as StackId,
        Err(err) => stack_lost(ctx, lost::KERNEL_STACK, "kernel", err),
    };
    (user, kernel)
}

/// The user stack by the kernel's own walker (`bpf_get_stackid`), for a
/// task whose registers do not look like a 64-bit process's.
#[inline(always)]
fn kernel_user_stack_id<C: StackIdContext>(ctx: &C, cookie: u64) -> StackId {
    match ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)) {
        Ok(id) => id as StackId,
        Err(err) if (err == -17 || err == -12) && inline_user_stack(ctx, cookie) => STACK_INLINE,
        Err(err) => user_stack_lost(ctx, err),
    }
}

/// Counts (in `counter`) and logs (`--log-kernel`) a `which` ("user" or
/// "kernel") stack that could not be kept; the open carries `err`.
#[inline(always)]
fn stack_lost<C: StackIdContext>(ctx: &C, counter: u32, which: &str, err: StackId) -> StackId {
    count_lost(counter);
    warn!(
        ctx,
        "{} stack of pid {} not recorded: error {}",
        which,
        (bpf_get_current_pid_tgid() >> 32) as u32,
        err
    );
    err
}

/// [`stack_lost`] for the user stack.
#[inline(always)]
fn user_stack_lost<C: StackIdContext>(ctx: &C, err: StackId) -> StackId {
    stack_lost(ctx, lost::USER_STACK, "user", err)
}

/// A frame this far above the last one ends the walk: no stack frame is
/// that big, and the main thread's stack is 8 MiB by default.
const MAX_FRAME_SPAN: u64 = 8 << 20;

/// Walks the user stack along its frame pointers into this CPU's [`WALK`]
/// buffer: the instruction pointer, then each frame's return address.
///
/// The kernel's walker (`bpf_get_stackid` with `BPF_F_USER_STACK`) stops
/// only when a read faults, and nearly every walk ends that way: the
/// outermost frame's saved pointer is 0, or code built without frame
/// pointers left another value in rbp. The fault and its fixup cost more
/// than the rest of the walk. This walk stops before reading a frame that
/// cannot be the caller's: a caller's frame lies above its callee's (the
/// stack grows down), 8-byte aligned, within [`MAX_FRAME_SPAN`]. Along a
/// real chain it returns the frames the kernel's walker returns; after
/// it, it leaves out what the kernel's walker would read from garbage.
/// None for a task whose registers are not a 64-bit process's (a 32-bit
/// task's frames are 8 bytes; the kernel's walker knows them).
#[inline(always)]
// A plain counted loop: the shape every supported verifier bounds.
#[allow(clippy::needless_range_loop)]
fn walk_user_stack(regs: &UserRegs) -> Option<&'static mut Walk> {
    if regs.sp >> 32 == 0 && regs.ip >> 32 == 0 {
        return None;
    }
    // SAFETY: this CPU's slot; no other program runs on this CPU meanwhile
    // (BPF programs do not nest on one CPU for these hooks).
    let walk = unsafe { &mut *WALK.get_ptr_mut(0)? };
    let stack = &mut walk.stack;
    stack.ips[0] = regs.ip;
    let mut hash = mix(0xcbf2_9ce4_8422_2325, regs.ip);
    let mut depth = 1;
    let mut fp = regs.bp;
    let mut low = regs.sp;
    for slot in 1..MAX_STACK_DEPTH {
        if fp < low || fp & 7 != 0 || fp - low > MAX_FRAME_SPAN {
            break;
        }
        // [saved frame pointer, return address]
        let Ok(frame) = (unsafe { aya_ebpf::helpers::bpf_probe_read_user(fp as *const [u64; 2]) })
        else {
            break;
        };
        if frame[1] == 0 {
            break;
        }
        stack.ips[slot] = frame[1];
        hash = mix(hash, frame[1]);
        depth = slot + 1;
        low = fp + 16;
        fp = frame[0];
    }
    stack.depth = depth as u32;
    stack.hash = hash;
    Some(walk)
}

/// Folds one frame into a stack's hash.
#[inline(always)]
fn mix(hash: u64, ip: u64) -> u64 {
    let hash = (hash ^ ip).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    hash ^ (hash >> 29)
}

/// The id of a walked stack: 30 bits of its hash, marked with
/// [`USER_STACK_ID_BIT`].
#[inline(always)]
fn user_stack_id(stack: &UserStack) -> u32 {
    ((stack.hash >> 32) as u32 ^ stack.hash as u32) & (USER_STACK_ID_BIT - 1) | USER_STACK_ID_BIT
}

/// True if `a` and `b` hold the same frames, as far as a 64-bit hash and
/// the depth tell: two different stacks pass with odds of about 2^-64 per
/// pair. (A frame-by-frame comparison is a loop bounded by a depth read
/// from a map, which 6.1's verifier cannot bound.)
#[inline(always)]
fn same_stack(a: &UserStack, b: &UserStack) -> bool {
    a.depth == b.depth && a.hash == b.hash
}

/// The id under which [`USER_STACKS`] holds the stack `walk` holds,
/// adding it if new. An id another stack holds (30 bits collide) or a full
/// map sends the stack through the ring instead ([`STACK_INLINE`]).
#[inline(always)]
fn keep_user_stack<C: StackIdContext>(ctx: &C, walk: &mut Walk, cookie: u64) -> StackId {
    let walked = &walk.stack;
    // A stack this CPU kept before, its entry not deleted since (user
    // space bumps the generation first): the same id.
    let generation = USER_STACKS_GENERATION.get(0).copied().unwrap_or(0);
    let memo = &mut walk.kept[(walked.hash >> 32) as usize & (KEPT - 1)];
    if memo.id != 0
        && memo.generation == generation
        && memo.hash == walked.hash
        && memo.depth == walked.depth
    {
        return memo.id as StackId;
    }
    let id = user_stack_id(walked);
    // SAFETY: a map value read only here, compared before use.
    let known = unsafe { USER_STACKS.get(&id) };
    let kept = match known {
        Some(known) => same_stack(known, walked),
        None => match USER_STACKS.insert(&id, walked, u64::from(BPF_NOEXIST)) {
            Ok(()) => true,
            // Another CPU added it just now: the same stack, or a collision.
            Err(-17) => {
                unsafe { USER_STACKS.get(&id) }.is_some_and(|known| same_stack(known, walked))
            }
            Err(_) => false,
        },
    };
    if kept {
        *memo = Kept {
            generation,
            hash: walked.hash,
            depth: walked.depth,
            id,
        };
        return id as StackId;
    }
    if send_walked_stack(walked, cookie) {
        return STACK_INLINE;
    }
    // ENOSPC: neither the map nor the ring had room.
    user_stack_lost(ctx, -28)
}

/// Sends a user stack as a [`StackEvent`] record for the open of `cookie`
/// that follows it. `fill` writes the frames into the entry and returns
/// their size in bytes, or None if it could not. False if the ring is
/// full or `fill` failed.
#[inline(always)]
fn send_stack(cookie: u64, fill: impl FnOnce(*mut [u64; MAX_STACK_DEPTH]) -> Option<u32>) -> bool {
    let Some(mut entry) = EVENTS.reserve::<StackEvent>(0) else {
        return false;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring entry;
    // the header and the byte count are written before submit, `ips` up to
    // the byte count by `fill`.
    let bytes = unsafe {
        (*event).header = header(kind::STACK, cookie);
        (*event)._pad = 0;
        fill(&raw mut (*event).ips)
    };
    let Some(bytes) = bytes else {
        entry.discard(0);
        return false;
    };
    // SAFETY: as above.
    unsafe { (*event).bytes = bytes };
    entry.submit(wakeup());
    true
}

/// Sends a walked stack (a map value) through the ring.
#[inline(always)]
fn send_walked_stack(walked: &UserStack, cookie: u64) -> bool {
    send_stack(cookie, |ips| {
        // SAFETY: both are MAX_STACK_DEPTH frames: the ring entry's and
        // the map value's.
        let copied = unsafe {
            bpf_probe_read_kernel_buf(ips.cast::<u8>(), (&raw const walked.ips).cast::<u8>())
        };
        copied.then_some(walked.depth * 8)
    })
}

/// Copies the frames of a walked stack (a map value) into a ring entry.
#[inline(always)]
unsafe fn bpf_probe_read_kernel_buf(dst: *mut u8, src: *const u8) -> bool {
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            dst.cast::<c_void>(),
            (MAX_STACK_DEPTH * 8) as u32,
            src.cast::<c_void>(),
        ) == 0
    }
}

/// Sends the current user stack, by the kernel's walker, through the ring.
#[inline(always)]
fn inline_user_stack<C: StackIdContext>(ctx: &C, cookie: u64) -> bool {
    send_stack(cookie, |ips| {
        // SAFETY: the helper writes at most MAX_STACK_DEPTH frames.
        let copied = unsafe {
            bpf_get_stack(
                ctx.as_ptr(),
                ips.cast::<c_void>(),
                (MAX_STACK_DEPTH * 8) as u32,
                u64::from(BPF_F_USER_STACK),
            )
        };
        (copied > 0).then_some(copied as u32)
    })
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
    kernel_stack: bool,
    preemptible: bool,
) {
    // Stacks first: an inline user stack must precede its open in the ring.
    let kernel_stack = kernel_stack && HOOKS.load().kernel_stacks != 0;
    let regs = user_regs();
    let (user_stack_id, kernel_stack_id) = stack_ids(ctx, regs, kernel_stack, cookie, preemptible);
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
        write_current_task(&raw mut (*event).task);
        (*event).endpoints = endpoints;
        (*event).direction = direction;
        zero(&raw mut (*event)._pad);
        (*event).fd = fd;
        (*event).user_stack_id = user_stack_id;
        (*event).kernel_stack_id = kernel_stack_id;
        (*event).request_stack_id = request_stack_id;
        (*event)._pad2 = 0;
        (*event).user_sp = 0;
        let top = &raw mut (*event).user_stack_top;
        let copied = match regs {
            Some(UserRegs { sp, .. }) => {
                (*event).user_sp = sp;
                bpf_probe_read_user(
                    top.cast::<c_void>(),
                    (USER_STACK_TOP_WORDS * 8) as u32,
                    sp as *const c_void,
                ) == 0
            }
            None => false,
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

/// A state change of socket `cookie` (no task: it may run in softirq).
#[inline(always)]
pub fn submit_state(cookie: u64, endpoints: Endpoints, old_state: u8) {
    let Some(mut entry) = EVENTS.reserve::<StateEvent>(0) else {
        count_lost(lost::RINGBUF_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring entry;
    // every field is written before submit.
    unsafe {
        (*event).header = lean_header(kind::STATE, cookie);
        (*event).endpoints = endpoints;
        (*event).old_state = old_state;
        zero(&raw mut (*event)._pad);
    }
    entry.submit(wakeup());
}

/// A release of socket `cookie` by the current task.
#[inline(always)]
pub fn submit_close(cookie: u64, family: u16, state: u8) {
    let Some(mut entry) = EVENTS.reserve::<CloseEvent>(0) else {
        count_lost(lost::RINGBUF_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring entry;
    // every field is written before submit.
    unsafe {
        (*event).header = lean_header(kind::CLOSE, cookie);
        let task = &raw mut (*event).task;
        if HOOKS.load().lean != 0 {
            // The reports need only who released it.
            let pid_tgid = bpf_get_current_pid_tgid();
            (*task).pid = (pid_tgid >> 32) as u32;
            (*task).tid = pid_tgid as u32;
            (*task).cgroup_id = 0;
            zero(&raw mut (*task).comm);
            (*task).start_ns = 0;
        } else {
            write_current_task(task);
        }
        (*event).family = family;
        (*event).state = state;
        zero(&raw mut (*event)._pad);
    }
    entry.submit(wakeup());
}
