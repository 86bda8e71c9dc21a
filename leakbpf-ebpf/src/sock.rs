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

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub unsafe fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }
}

/// True for an IPv4/IPv6 TCP socket.
#[inline(always)]
pub unsafe fn is_tcp(sk: u64, off: &KernelOffsets) -> bool {
    let protocol: u16 = unsafe { read(sk, off.sk_protocol) }.unwrap_or(0);
    let family: u16 = unsafe { read(sk, off.sk_family) }.unwrap_or(0);
    protocol == IPPROTO_TCP && (family == AF_INET || family == AF_INET6)
}

/// Addresses, ports and state of `struct sock *sk`.
#[inline(always)]
pub unsafe fn endpoints(sk: u64, off: &KernelOffsets) -> Result<Endpoints, i32> {
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
    Ok(ep)
}
