//! Fills [`KernelOffsets`], the layout table the eBPF programs read kernel
//! memory with, from BTF and tracefs.
//!
//! Each entry is also checked for the size the eBPF side reads: a member that
//! changed type (say a port widened to 4 bytes) must stop leakbpf at start-up
//! rather than make it read garbage.

use std::path::Path;

use anyhow::{Context as _, bail};
use leakbpf_common::KernelOffsets;

use super::btf::{Btf, BtfError};
use super::tracefs::Tracefs;

/// Bytes in a kernel pointer; leakbpf supports 64-bit kernels only.
const POINTER: u32 = 8;

/// One struct member the eBPF side reads.
struct StructMember {
    /// Name of the [`KernelOffsets`] field, for messages.
    field: &'static str,
    struct_name: &'static str,
    path: &'static str,
    /// Bytes the eBPF side reads there.
    size: u32,
    slot: fn(&mut KernelOffsets) -> &mut u32,
    /// Said instead of the generic error when the member is a bitfield on
    /// this kernel: for members that used to be one.
    bitfield_hint: Option<&'static str>,
}

/// A [`StructMember`] filling the [`KernelOffsets`] field of the same name.
macro_rules! member {
    ($field:ident: $struct_name:literal . $path:literal, $size:expr) => {
        StructMember {
            field: stringify!($field),
            struct_name: $struct_name,
            path: $path,
            size: $size,
            slot: |o| &mut o.$field,
            bitfield_hint: None,
        }
    };
}

const STRUCT_MEMBERS: &[StructMember] = &[
    member!(sk_family: "sock"."__sk_common.skc_family", 2),
    member!(sk_state: "sock"."__sk_common.skc_state", 1),
    member!(sk_num: "sock"."__sk_common.skc_num", 2),
    member!(sk_dport: "sock"."__sk_common.skc_dport", 2),
    member!(sk_rcv_saddr: "sock"."__sk_common.skc_rcv_saddr", 4),
    member!(sk_daddr: "sock"."__sk_common.skc_daddr", 4),
    member!(sk_v6_rcv_saddr: "sock"."__sk_common.skc_v6_rcv_saddr", 16),
    member!(sk_v6_daddr: "sock"."__sk_common.skc_v6_daddr", 16),
    // atomic64_t: a typedef'd struct holding one s64.
    member!(sk_cookie: "sock"."__sk_common.skc_cookie", 8),
    // Linux 5.6 widened `sk_protocol:8` to a plain u16 (for MPTCP).
    StructMember {
        bitfield_hint: Some("sk_protocol is a bitfield on this kernel (before 5.6); unsupported"),
        ..member!(sk_protocol: "sock"."sk_protocol", 2)
    },
    member!(task_files: "task_struct"."files", POINTER),
    member!(files_fdt: "files_struct"."fdt", POINTER),
    member!(fdt_max_fds: "fdtable"."max_fds", 4),
    member!(fdt_fd: "fdtable"."fd", POINTER),
    member!(file_private_data: "file"."private_data", POINTER),
    member!(socket_sk: "socket"."sk", POINTER),
    member!(sk_socket: "sock"."sk_socket", POINTER),
    // The user registers at syscall entry (x86_64 `struct pt_regs`).
    member!(pt_regs_sp: "pt_regs"."sp", 8),
    member!(pt_regs_bp: "pt_regs"."bp", 8),
    member!(pt_regs_ip: "pt_regs"."ip", 8),
    member!(task_pid: "task_struct"."pid", 4),
    member!(task_tgid: "task_struct"."tgid", 4),
    member!(task_comm: "task_struct"."comm", 16),
    member!(task_group_leader: "task_struct"."group_leader", POINTER),
    member!(task_start_boottime: "task_struct"."start_boottime", 8),
    // x86-64's user TLS base: a Go thread keeps its current goroutine there.
    member!(task_fsbase: "task_struct"."thread.fsbase", 8),
    // The task's cgroup id (see `bpf_get_current_cgroup_id`).
    member!(task_cgroups: "task_struct"."cgroups", POINTER),
    member!(css_set_dfl_cgrp: "css_set"."dfl_cgrp", POINTER),
    member!(cgroup_kn: "cgroup"."kn", POINTER),
    member!(kernfs_node_id: "kernfs_node"."id", 8),
];

/// Reads every offset from the running kernel: BTF from
/// `/sys/kernel/btf/vmlinux`, tracepoint formats from the mounted tracefs.
pub fn read_offsets() -> anyhow::Result<KernelOffsets> {
    let btf = Btf::vmlinux()?;
    let tracefs = Tracefs::find()?;
    read_offsets_from(&btf, tracefs.root())
}

/// [`read_offsets`] with explicit sources: `tracefs_root` is the directory
/// holding `events/` (a tracefs mount, or a copy of its format files).
pub fn read_offsets_from(btf: &Btf, tracefs_root: &Path) -> anyhow::Result<KernelOffsets> {
    let mut offsets = KernelOffsets::default();
    fill_struct_offsets(btf, &mut offsets)?;
    fill_tracepoint_offsets(&Tracefs::at(tracefs_root), &mut offsets)?;
    Ok(offsets)
}

/// Fills the struct member fields of `offsets` (everything but the
/// tracepoint record fields) from `btf`.
pub fn fill_struct_offsets(btf: &Btf, offsets: &mut KernelOffsets) -> anyhow::Result<()> {
    STRUCT_MEMBERS
        .iter()
        .try_for_each(|wanted| fill_member(btf, wanted, offsets))?;
    // 0 when the kernel has no such function: the sets that hook it say so.
    offsets.accept_arity = btf
        .function_arity("inet_csk_accept")
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    Ok(())
}

fn fill_member(
    btf: &Btf,
    wanted: &StructMember,
    offsets: &mut KernelOffsets,
) -> anyhow::Result<()> {
    let found = match (
        btf.member(wanted.struct_name, wanted.path),
        wanted.bitfield_hint,
    ) {
        (Ok(found), _) => found,
        (Err(BtfError::Bitfield { .. }), Some(hint)) => bail!("{hint}"),
        (Err(e), _) => {
            return Err(e).with_context(|| format!("finding the offset of {}", wanted.field));
        }
    };
    if found.size != wanted.size {
        bail!(
            "struct {} member {} is {} bytes in {}, leakbpf reads {} ({})",
            wanted.struct_name,
            wanted.path,
            found.size,
            btf.origin(),
            wanted.size,
            wanted.field,
        );
    }
    *(wanted.slot)(offsets) = found.offset;
    Ok(())
}

/// Fills the tracepoint record fields of `offsets` from the format files
/// under `tracefs`.
pub fn fill_tracepoint_offsets(
    tracefs: &Tracefs,
    offsets: &mut KernelOffsets,
) -> anyhow::Result<()> {
    // One eBPF program serves both accept exits, so `ret` must sit at the
    // same place in both records (it does: both are syscall exit records).
    let accept4 = tracepoint_field(tracefs, "syscalls", "sys_exit_accept4", "ret", 8)?;
    let accept = tracepoint_field(tracefs, "syscalls", "sys_exit_accept", "ret", 8)?;
    if accept != accept4 {
        bail!(
            "ret is at offset {} in {} but at {} in {}; leakbpf expects one offset for both",
            accept4,
            tracefs
                .format_path("syscalls", "sys_exit_accept4")
                .display(),
            accept,
            tracefs.format_path("syscalls", "sys_exit_accept").display(),
        );
    }
    offsets.accept_exit_ret = accept4;
    offsets.destroy_cookie =
        tracepoint_field(tracefs, "tcp", "tcp_destroy_sock", "sock_cookie", 8)?;
    Ok(())
}

/// Offset of `field` in `system:event`, checked to be `size` bytes.
fn tracepoint_field(
    tracefs: &Tracefs,
    system: &str,
    event: &str,
    field: &str,
    size: u32,
) -> anyhow::Result<u32> {
    let found = tracefs.field(system, event, field)?;
    if found.size != size {
        bail!(
            "field {field} is {} bytes in {}, leakbpf reads {size}",
            found.size,
            tracefs.format_path(system, event).display(),
        );
    }
    Ok(found.offset)
}

/// Every offset as `name=value` pairs, one per line: `leakbpf check` prints
/// them, for bug reports.
pub fn describe(offsets: &KernelOffsets) -> String {
    let mut copy = *offsets;
    let mut lines: Vec<String> = STRUCT_MEMBERS
        .iter()
        .map(|m| {
            format!(
                "{}={} (struct {}.{})",
                m.field,
                *(m.slot)(&mut copy),
                m.struct_name,
                m.path
            )
        })
        .collect();
    lines.push(format!(
        "accept_exit_ret={} (syscalls:sys_exit_accept{{,4}} ret)",
        offsets.accept_exit_ret
    ));
    lines.push(format!(
        "destroy_cookie={} (tcp:tcp_destroy_sock sock_cookie)",
        offsets.destroy_cookie
    ));
    lines.join("\n")
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::kernel::btf::tests::{BtfBuilder, vmlinux};
    use crate::kernel::tracefs::tests::{SYS_EXIT_ACCEPT, SYS_EXIT_ACCEPT4, TCP_DESTROY_SOCK};

    /// A throw-away directory shaped like tracefs, holding the given
    /// `(system, event, format text)` files. Removed on drop.
    struct FakeTracefs(tempfile::TempDir);

    impl FakeTracefs {
        fn new(name: &str, events: &[(&str, &str, &str)]) -> Self {
            let root = tempfile::Builder::new()
                .prefix(&format!("leakbpf-offsets-{name}-"))
                .tempdir()
                .unwrap();
            for (system, event, text) in events {
                let dir = root.path().join("events").join(system).join(event);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("format"), text).unwrap();
            }
            Self(root)
        }

        fn path(&self) -> &std::path::Path {
            self.0.path()
        }
    }

    fn real_formats(name: &str) -> FakeTracefs {
        FakeTracefs::new(
            name,
            &[
                ("syscalls", "sys_exit_accept4", SYS_EXIT_ACCEPT4),
                ("syscalls", "sys_exit_accept", SYS_EXIT_ACCEPT),
                ("tcp", "tcp_destroy_sock", TCP_DESTROY_SOCK),
            ],
        )
    }

    #[test]
    #[ignore = "host: reads this kernel's BTF (/sys/kernel/btf/vmlinux); `./x test` runs it"]
    fn struct_offsets_from_vmlinux() {
        let btf = vmlinux();
        let mut offsets = KernelOffsets::default();
        fill_struct_offsets(btf, &mut offsets).unwrap();
        // Each slot holds what the BTF lookup says.
        for m in STRUCT_MEMBERS {
            let expected = btf.member(m.struct_name, m.path).unwrap().offset;
            assert_eq!(*(m.slot)(&mut offsets), expected, "{}", m.field);
        }
        // Facts independent of the kernel build.
        assert_eq!(offsets.sk_num, offsets.sk_dport + 2);
        assert_eq!(offsets.sk_rcv_saddr, offsets.sk_daddr + 4);
        assert_ne!(offsets.sk_protocol, 0);
        assert_ne!(offsets.task_files, 0);
        // The tracepoint fields are left alone.
        assert_eq!(offsets.accept_exit_ret, 0);
        assert_eq!(offsets.destroy_cookie, 0);
        // Every slot is distinct, so none was forgotten in the table.
        let mut slots: Vec<usize> = STRUCT_MEMBERS
            .iter()
            .map(|m| {
                let mut probe = KernelOffsets::default();
                let base = &raw const probe as usize;
                std::ptr::from_mut::<u32>((m.slot)(&mut probe)) as usize - base
            })
            .collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), STRUCT_MEMBERS.len());
        // Plus the two tracepoint fields and inet_csk_accept's arity.
        assert_eq!(
            (slots.len() + 3) * size_of::<u32>(),
            size_of::<KernelOffsets>(),
            "every KernelOffsets field is filled"
        );
        assert!(
            matches!(offsets.accept_arity, 2 | 4),
            "{}",
            offsets.accept_arity
        );
    }

    #[test]
    #[ignore = "host: reads this kernel's BTF (/sys/kernel/btf/vmlinux); `./x test` runs it"]
    fn all_offsets_with_copied_formats() {
        let fake = real_formats("all");
        let offsets = read_offsets_from(vmlinux(), fake.path()).unwrap();
        assert_eq!(offsets.accept_exit_ret, 16);
        assert_eq!(offsets.destroy_cookie, 64);
        let text = describe(&offsets);
        assert_eq!(text.lines().count(), STRUCT_MEMBERS.len() + 2);
        assert!(text.contains("destroy_cookie=64 "), "{text}");
        assert!(
            text.contains(&format!(
                "sk_protocol={} (struct sock.sk_protocol)",
                offsets.sk_protocol
            )),
            "{text}"
        );
    }

    #[test]
    fn accept_offsets_must_agree() {
        let moved = SYS_EXIT_ACCEPT.replace("offset:16;", "offset:24;");
        let fake = FakeTracefs::new(
            "disagree",
            &[
                ("syscalls", "sys_exit_accept4", SYS_EXIT_ACCEPT4),
                ("syscalls", "sys_exit_accept", &moved),
                ("tcp", "tcp_destroy_sock", TCP_DESTROY_SOCK),
            ],
        );
        let e = fill_tracepoint_offsets(&Tracefs::at(fake.path()), &mut KernelOffsets::default())
            .unwrap_err();
        assert!(e.to_string().starts_with("ret is at offset 16 in "), "{e}");
    }

    #[test]
    fn tracepoint_sizes_are_checked() {
        let narrow = TCP_DESTROY_SOCK.replace(
            "sock_cookie;\toffset:64;\tsize:8",
            "sock_cookie;\toffset:64;\tsize:4",
        );
        let fake = FakeTracefs::new(
            "narrow",
            &[
                ("syscalls", "sys_exit_accept4", SYS_EXIT_ACCEPT4),
                ("syscalls", "sys_exit_accept", SYS_EXIT_ACCEPT),
                ("tcp", "tcp_destroy_sock", &narrow),
            ],
        );
        let e = fill_tracepoint_offsets(&Tracefs::at(fake.path()), &mut KernelOffsets::default())
            .unwrap_err();
        let path = fake.path().join("events/tcp/tcp_destroy_sock/format");
        assert_eq!(
            e.to_string(),
            format!(
                "field sock_cookie is 4 bytes in {}, leakbpf reads 8",
                path.display()
            )
        );
    }

    #[test]
    fn missing_tracepoint_is_named() {
        let fake = FakeTracefs::new(
            "missing",
            &[("syscalls", "sys_exit_accept4", SYS_EXIT_ACCEPT4)],
        );
        let e = fill_tracepoint_offsets(&Tracefs::at(fake.path()), &mut KernelOffsets::default())
            .unwrap_err();
        let path = fake.path().join("events/syscalls/sys_exit_accept/format");
        assert!(
            e.to_string()
                .starts_with(&format!("reading {}: ", path.display())),
            "{e}"
        );
    }

    /// `struct sock` as before Linux 5.6: sk_protocol an 8-bit bitfield.
    #[test]
    fn old_sk_protocol_bitfield_is_refused() {
        let mut b = BtfBuilder::new();
        let uint = b.int("unsigned int", 4, 32);
        b.aggregate(
            false,
            "sock",
            8,
            true,
            &[
                ("sk_padding", uint, 1 << 24),
                ("sk_protocol", uint, 8 << 24 | 8),
                ("sk_type", uint, 16 << 24 | 16),
            ],
        );
        let btf = b.build("old BTF");
        let e = btf.member("sock", "sk_protocol").unwrap_err();
        assert!(matches!(e, BtfError::Bitfield { .. }));

        // The table entry for sk_protocol turns that into the 5.6 hint.
        let entry = STRUCT_MEMBERS
            .iter()
            .find(|m| m.field == "sk_protocol")
            .unwrap();
        let mut offsets = KernelOffsets::default();
        let e = fill_member(&btf, entry, &mut offsets).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sk_protocol is a bitfield on this kernel (before 5.6); unsupported"
        );
    }

    #[test]
    fn struct_sizes_are_checked() {
        let mut b = BtfBuilder::new();
        let u32_t = b.int("unsigned int", 4, 32);
        let common = b.aggregate(false, "sock_common", 4, false, &[("skc_family", u32_t, 0)]);
        b.aggregate(false, "sock", 4, false, &[("__sk_common", common, 0)]);
        let btf = b.build("odd BTF");
        let e = fill_struct_offsets(&btf, &mut KernelOffsets::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "struct sock member __sk_common.skc_family is 4 bytes in odd BTF, leakbpf reads 2 (sk_family)"
        );
    }

    #[test]
    fn missing_member_names_the_field() {
        let mut b = BtfBuilder::new();
        let u16_t = b.int("short unsigned int", 2, 16);
        let common = b.aggregate(false, "sock_common", 2, false, &[("skc_family", u16_t, 0)]);
        b.aggregate(false, "sock", 2, false, &[("__sk_common", common, 0)]);
        let btf = b.build("small BTF");
        let e = fill_struct_offsets(&btf, &mut KernelOffsets::default()).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "finding the offset of sk_state: \
             struct sock has no member __sk_common.skc_state in small BTF"
        );
    }
}
