//! What leakbpf needs to know about the running kernel's memory layouts.
//!
//! Rust eBPF programs cannot emit CO-RE relocations, so the eBPF side cannot
//! ask the loader to patch struct member offsets the way libbpf C programs
//! do. Instead user space reads every offset it needs at start-up — struct
//! members from the kernel's BTF ([`btf`]), tracepoint record fields from
//! tracefs format files ([`tracefs`]) — and hands them to the programs as a
//! [`leakbpf_common::KernelOffsets`] global ([`offsets`]). Nothing here is a
//! compile-time constant, so one binary works across kernel builds.

pub mod btf;
pub mod cgroup;
pub mod offsets;
pub mod tracefs;
pub mod verifier;

pub use offsets::{describe, read_offsets, read_offsets_from};
