//! Reads of kernel structures at offsets user space found in BTF at start-up.
use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};
use leakbpf_common::{Endpoints, KernelOffsets};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// Filled in by user space before load (see `leakbpf::kernel::offsets`).
#[unsafe(no_mangle)]
pub static OFFSETS: Global<KernelOffsets> = Global::new(unsafe { core::mem::zeroed() });

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    OFFSETS.load()
}

/// Loads a `T` at `base + offset` through a BTF-typed kernel pointer
/// (`bpf_get_current_task_btf`, `bpf_task_pt_regs`, or a struct pointer
/// loaded through one): a plain load the verifier checks against BTF and
/// the JIT guards against faults, where [`read`] is a helper call. The
/// offsets come from the frozen `.rodata`, so the verifier sees constants.
#[inline(always)]
pub unsafe fn load<T: Copy>(base: u64, offset: u32) -> T {
    unsafe { core::ptr::read_volatile((base + u64::from(offset)) as *const T) }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub unsafe fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }
}

/// Addresses, ports and state of an IPv4/IPv6 TCP `struct sock *sk` that
/// the program holds as a BTF-typed pointer (a `tp_btf` or fentry/fexit
/// argument): plain loads, each checked by the verifier against `struct
/// sock`, where [`tcp_socket`] makes helper calls (tens of ns each, and the
/// state program runs on every transition of both ends). `None` for any
/// other socket.
#[inline(always)]
pub unsafe fn tcp_endpoints_btf(sk: u64, off: &KernelOffsets) -> Option<Endpoints> {
    // SAFETY: `sk` is a BTF-typed `struct sock *`; the offsets are its
    // members' (from BTF), and the JIT guards each load against faults.
    unsafe {
        if load::<u16>(sk, off.sk_protocol) != IPPROTO_TCP {
            return None;
        }
        let family: u16 = load(sk, off.sk_family);
        let mut ep = Endpoints {
            family,
            local_port: load(sk, off.sk_num),
            remote_port: u16::from_be(load(sk, off.sk_dport)),
            state: load(sk, off.sk_state),
            ..Endpoints::default()
        };
        match family {
            AF_INET => {
                ep.local_addr[..4]
                    .copy_from_slice(&load::<u32>(sk, off.sk_rcv_saddr).to_ne_bytes());
                ep.remote_addr[..4].copy_from_slice(&load::<u32>(sk, off.sk_daddr).to_ne_bytes());
            }
            AF_INET6 => {
                ep.local_addr = load_in6(sk, off.sk_v6_rcv_saddr);
                ep.remote_addr = load_in6(sk, off.sk_v6_daddr);
            }
            _ => return None,
        }
        Some(ep)
    }
}

/// A `struct in6_addr` member, as two 8-byte loads.
#[inline(always)]
unsafe fn load_in6(sk: u64, offset: u32) -> [u8; 16] {
    let (high, low): (u64, u64) = unsafe { (load(sk, offset), load(sk, offset + 8)) };
    let mut addr = [0; 16];
    addr[..8].copy_from_slice(&high.to_ne_bytes());
    addr[8..].copy_from_slice(&low.to_ne_bytes());
    addr
}

/// Addresses, ports, state and cookie of an IPv4/IPv6 TCP `struct sock
/// *sk` known only as an address (a kprobe argument, a pointer read from
/// memory): helper reads. `None` for any other socket or one that cannot
/// be read.
#[inline(always)]
pub unsafe fn tcp_socket(sk: u64, off: &KernelOffsets) -> Option<(Endpoints, u64)> {
    let protocol: u16 = unsafe { read(sk, off.sk_protocol) }.ok()?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let (ep, cookie) = unsafe { sock_common(sk, off) }.ok()?;
    (ep.family == AF_INET || ep.family == AF_INET6).then_some((ep, cookie))
}

/// Bytes of `struct sock_common` read at once for [`sock_common`].
const WINDOW: usize = 32;

/// Addresses, ports, state and cookie of `struct sock *sk`. The IPv4
/// addresses, ports, family and state sit together at the start of
/// `sock_common`: one read of [`WINDOW`] bytes instead of six (a read is a
/// helper call of tens of ns, and every open pays it; a window reaching the
/// cookie, 96 bytes, does not fit on the BPF stack beside an open's). The
/// offsets come from the frozen .rodata, so the verifier sees the window's
/// indices as constants; a layout where they do not fit in it takes one
/// read per field.
#[inline(always)]
unsafe fn sock_common(sk: u64, off: &KernelOffsets) -> Result<(Endpoints, u64), i32> {
    let base = off
        .sk_daddr
        .min(off.sk_rcv_saddr)
        .min(off.sk_dport)
        .min(off.sk_num)
        .min(off.sk_family)
        .min(off.sk_state);
    let end = (off.sk_daddr + 4)
        .max(off.sk_rcv_saddr + 4)
        .max(off.sk_dport + 2)
        .max(off.sk_num + 2)
        .max(off.sk_family + 2)
        .max(off.sk_state + 1);
    if end - base > WINDOW as u32 {
        return unsafe { sock_common_field_by_field(sk, off) };
    }
    let window: [u8; WINDOW] = unsafe { read(sk, base)? };
    let at = |field: u32| (field - base) as usize & (WINDOW - 1);
    let byte = |field: u32, i: usize| window.get(at(field) + i).copied().unwrap_or(0);
    let u16_at = |field: u32| u16::from_ne_bytes([byte(field, 0), byte(field, 1)]);
    let family = u16_at(off.sk_family);
    let mut ep = Endpoints {
        family,
        local_port: u16_at(off.sk_num),
        remote_port: u16::from_be(u16_at(off.sk_dport)),
        state: byte(off.sk_state, 0),
        ..Endpoints::default()
    };
    if family == AF_INET6 {
        ep.local_addr = unsafe { read(sk, off.sk_v6_rcv_saddr)? };
        ep.remote_addr = unsafe { read(sk, off.sk_v6_daddr)? };
    } else {
        for i in 0..4 {
            ep.local_addr[i] = byte(off.sk_rcv_saddr, i);
            ep.remote_addr[i] = byte(off.sk_daddr, i);
        }
    }
    let cookie = unsafe { read(sk, off.sk_cookie)? };
    Ok((ep, cookie))
}

#[inline(always)]
unsafe fn sock_common_field_by_field(
    sk: u64,
    off: &KernelOffsets,
) -> Result<(Endpoints, u64), i32> {
    let family: u16 = unsafe { read(sk, off.sk_family)? };
    let mut ep = Endpoints {
        family,
        local_port: unsafe { read::<u16>(sk, off.sk_num)? },
        remote_port: u16::from_be(unsafe { read::<u16>(sk, off.sk_dport)? }),
        state: unsafe { read::<u8>(sk, off.sk_state)? },
        ..Endpoints::default()
    };
    if family == AF_INET6 {
        ep.local_addr = unsafe { read(sk, off.sk_v6_rcv_saddr)? };
        ep.remote_addr = unsafe { read(sk, off.sk_v6_daddr)? };
    } else {
        let local: [u8; 4] = unsafe { read(sk, off.sk_rcv_saddr)? };
        let remote: [u8; 4] = unsafe { read(sk, off.sk_daddr)? };
        ep.local_addr[..4].copy_from_slice(&local);
        ep.remote_addr[..4].copy_from_slice(&remote);
    }
    let cookie = unsafe { read(sk, off.sk_cookie)? };
    Ok((ep, cookie))
}
