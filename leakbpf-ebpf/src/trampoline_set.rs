//! The hook set on tcp_connect, inet_csk_accept and tcp_close through BPF trampolines
//! (fentry/fexit, with BTF): each fires in the process doing the
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
    sock::{offsets, tcp_endpoints_btf},
};

/// `int tcp_connect(struct sock *sk)`: called from connect() once the socket
/// is in SYN_SENT with its source port chosen.
#[fentry(function = "tcp_connect")]
pub fn fentry_tcp_connect(ctx: FEntryContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    let off = offsets();
    if let Some(endpoints) = unsafe { tcp_endpoints_btf(sk as u64, &off) } {
        let cookie = unsafe { bpf_get_socket_cookie(sk) };
        submit_open(&ctx, cookie, endpoints, direction::CONNECT, -1, true, true);
    }
    0
}

/// `struct sock *inet_csk_accept(struct sock *sk, struct proto_accept_arg
/// *arg)` (Linux 6.10+) returns the accepted socket, in the accepting process
/// (accept(), accept4() and io_uring alike). A fexit program finds the return
/// value after the parameters, at a fixed context offset: one program per
/// signature, user space loads the one the kernel's BTF matches (a single
/// program choosing the offset at run time becomes a computed context access,
/// which the verifier refuses).
#[fexit(function = "inet_csk_accept")]
pub fn fexit_inet_csk_accept(ctx: FExitContext) -> i32 {
    accepted(&ctx, ctx.arg(2));
    0
}

/// `struct sock *inet_csk_accept(struct sock *sk, int flags, int *err, bool
/// kern)`: before Linux 6.10.
#[fexit(function = "inet_csk_accept")]
pub fn fexit_inet_csk_accept_4args(ctx: FExitContext) -> i32 {
    accepted(&ctx, ctx.arg(4));
    0
}

#[inline(always)]
fn accepted(ctx: &FExitContext, sk: *mut c_void) {
    if sk.is_null() {
        return;
    }
    let off = offsets();
    if let Some(endpoints) = unsafe { tcp_endpoints_btf(sk as u64, &off) } {
        let cookie = unsafe { bpf_get_socket_cookie(sk) };
        // The fd is installed after inet_csk_accept returns: unknown here.
        submit_open(ctx, cookie, endpoints, direction::ACCEPT, -1, true, true);
    }
}

/// `void tcp_close(struct sock *sk, long timeout)`: the owner let go (last
/// reference to the file: close(), exit, last fd), in its own context.
#[fentry(function = "tcp_close")]
pub fn fentry_tcp_close(ctx: FEntryContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    let off = offsets();
    if let Some(endpoints) = unsafe { tcp_endpoints_btf(sk as u64, &off) } {
        let cookie = unsafe { bpf_get_socket_cookie(sk) };
        submit_close(cookie, endpoints.family, endpoints.state);
    }
    0
}
