//! leakbpf's kernel side. Each program stamps facts about a TCP socket (who,
//! when, which socket, which stack) into the `EVENTS` ring buffer; deciding
//! what is a leak is user space's job.
//!
//! Hook sets (user space picks one per kernel; which program attaches where,
//! and since which kernel, is declared in `leakbpf/src/hooks/sets.rs`), each
//! with [`shared`] for state changes, destruction and exits:
//! - [`trampoline_set`]: fentry/fexit on tcp_connect, inet_csk_accept,
//!   tcp_close;
//! - [`kprobe_set`]: kprobes on the same functions;
//! - [`tracepoint_set`]: stable tracepoints + a cgroup socket hook; needs
//!   neither kprobes nor BPF trampolines.
//!
//! and, with any set, [`go_request`]: uprobes that find the Go request site
//! of a connect.
//!
//! Rare failure paths log through aya-log (user space shows them with
//! `--log-kernel` and otherwise sets the level to off before load).
#![no_std]
#![no_main]
// Helpers are inlined into each program on purpose: BPF-to-BPF calls mix
// badly with tail positions and older verifiers, and the programs are small.
#![allow(clippy::inline_always)]
// aya's program macros hand every program its context by value.
#![allow(clippy::needless_pass_by_value)]

mod emit;
mod go_request;
mod kprobe_set;
mod shared;
mod sock;
mod tracepoint_set;
mod trampoline_set;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves programs cannot panic; this is never reached.
    loop {}
}

// bpf_probe_read_kernel, bpf_get_current_task_btf and bpf_task_pt_regs are
// GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
