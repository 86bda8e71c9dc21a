//! The hook set on tcp_connect, inet_csk_accept and tcp_close through kprobes, for kernels
//! with CONFIG_KPROBES but no BPF trampolines. Arguments are plain pointers
//! here, so the cookie is read from `sk_cookie`, which the state tracepoint
//! ([`crate::shared`]) generated when the socket first changed state (or,
//! when that run was skipped, user space resolves through sock_diag).
use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use leakbpf_common::direction;

use crate::{
    emit::{submit_close, submit_open},
    sock::{offsets, tcp_socket},
};

/// `int tcp_connect(struct sock *sk)`, in connect().
#[kprobe(function = "tcp_connect")]
pub fn kprobe_tcp_connect(ctx: ProbeContext) -> u32 {
    let Some(sk) = ctx.arg::<u64>(0) else {
        return 0;
    };
    open(&ctx, sk, direction::CONNECT);
    0
}

/// `struct sock *inet_csk_accept(...)` returns the accepted socket, in the
/// accepting process.
#[kretprobe(function = "inet_csk_accept")]
pub fn kretprobe_inet_csk_accept(ctx: RetProbeContext) -> u32 {
    let sk: u64 = ctx.ret();
    if sk != 0 {
        open(&ctx, sk, direction::ACCEPT);
    }
    0
}

#[inline(always)]
fn open<C: aya_ebpf::programs::tracing::StackIdContext>(ctx: &C, sk: u64, direction: u8) {
    let off = offsets();
    if let Some((endpoints, cookie)) = unsafe { tcp_socket(sk, &off) } {
        // 0 when the state tracepoint's run for this socket was skipped
        // (nested on one CPU): user space asks sock_diag for it.
        submit_open(ctx, cookie, endpoints, direction, -1, true, false);
    }
}

/// `void tcp_close(struct sock *sk, long timeout)`, in the releasing task.
#[kprobe(function = "tcp_close")]
pub fn kprobe_tcp_close(ctx: ProbeContext) -> u32 {
    let Some(sk) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let off = offsets();
    if let Some((endpoints, cookie)) = unsafe { tcp_socket(sk, &off) }
        && cookie != 0
    {
        submit_close(cookie, endpoints.family, endpoints.state);
    }
    0
}
