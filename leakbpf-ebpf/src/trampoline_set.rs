//! The hook set on the design card's functions through BPF trampolines
//! (fentry/fexit, Linux 5.5+ with BTF): each fires in the process doing the
//! work, with a typed `struct sock *`, so the cookie comes straight from the
//! helper. State changes, destruction and exits come from [`crate::shared`].
use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie,
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use leakbpf_common::direction;

use crate::{
    emit::{submit_close, submit_open},
    sock::{endpoints, is_tcp, offsets, read},
};

/// `int tcp_connect(struct sock *sk)`: called from connect() once the socket
/// is in SYN_SENT with its source port chosen.
#[fentry(function = "tcp_connect")]
pub fn fentry_tcp_connect(ctx: FEntryContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    let off = offsets();
    if unsafe { is_tcp(sk as u64, &off) }
        && let Ok(endpoints) = unsafe { endpoints(sk as u64, &off) }
    {
        let cookie = unsafe { bpf_get_socket_cookie(sk) };
        submit_open(
            &ctx,
            cookie,
            endpoints,
            direction::CONNECT,
            -1,
            off.pt_regs_sp,
        );
    }
    0
}

/// `struct sock *inet_csk_accept(...)` returns the accepted socket, in the
/// accepting process (accept(), accept4() and io_uring alike). Its
/// parameters changed in 6.10; the return value sits right after them.
#[fexit(function = "inet_csk_accept")]
pub fn fexit_inet_csk_accept(ctx: FExitContext) -> i32 {
    let off = offsets();
    // Constant per kernel: the verifier only walks the branch that applies.
    let sk: *mut c_void = if off.accept_arity == 2 {
        ctx.arg(2)
    } else {
        ctx.arg(4)
    };
    if sk.is_null() {
        return 0;
    }
    if unsafe { is_tcp(sk as u64, &off) }
        && let Ok(endpoints) = unsafe { endpoints(sk as u64, &off) }
    {
        let cookie = unsafe { bpf_get_socket_cookie(sk) };
        // The fd is installed after inet_csk_accept returns: unknown here.
        submit_open(
            &ctx,
            cookie,
            endpoints,
            direction::ACCEPT,
            -1,
            off.pt_regs_sp,
        );
    }
    0
}

/// `void tcp_close(struct sock *sk, long timeout)`: the owner let go (last
/// reference to the file: close(), exit, last fd), in its own context.
#[fentry(function = "tcp_close")]
pub fn fentry_tcp_close(ctx: FEntryContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    let off = offsets();
    if unsafe { is_tcp(sk as u64, &off) } {
        let cookie = unsafe { bpf_get_socket_cookie(sk) };
        let family: u16 = unsafe { read(sk as u64, off.sk_family) }.unwrap_or(0);
        let state: u8 = unsafe { read(sk as u64, off.sk_state) }.unwrap_or(0);
        submit_close(cookie, family, state);
    }
    0
}
