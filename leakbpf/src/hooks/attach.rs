//! Loading and attaching each hook set's programs (see
//! `leakbpf-ebpf/src/*_set.rs` and `shared.rs`).
use std::fs;

use anyhow::{Context as _, Result, bail};
use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSock, FEntry, FExit, KProbe, Program, ProgramError,
        TracePoint,
    },
};

use super::Capabilities;

/// State changes, destruction, process ends: every set.
pub(super) fn shared(ebpf: &mut Ebpf, btf: &Btf) -> Result<()> {
    let program: &mut BtfTracePoint = program_mut(ebpf, "inet_sock_set_state")?;
    program
        .load("inet_sock_set_state", btf)
        .context("loading tp_btf/inet_sock_set_state")?;
    program
        .attach()
        .context("attaching tp_btf/inet_sock_set_state")?;
    let program: &mut BtfTracePoint = program_mut(ebpf, "sched_process_free")?;
    program
        .load("sched_process_free", btf)
        .context("loading tp_btf/sched_process_free")?;
    program
        .attach()
        .context("attaching tp_btf/sched_process_free")?;
    attach_tracepoint(ebpf, "tcp_destroy_sock", "tcp", &["tcp_destroy_sock"])
}

pub(super) fn tracepoint_set(ebpf: &mut Ebpf, caps: &Capabilities) -> Result<()> {
    tracepoint_set_accept(ebpf)?;
    let path = caps
        .cgroup2
        .as_ref()
        .context("no cgroup v2 mount found in /proc/self/mountinfo")?;
    let cgroup =
        fs::File::open(path).with_context(|| format!("opening cgroup {}", path.display()))?;
    let program: &mut CgroupSock = program_mut(ebpf, "sock_release")?;
    program.load().context("loading cgroup/sock_release")?;
    program
        // A link (kernel >= 5.7) never excludes other programs, whatever the mode.
        .attach(&cgroup, CgroupAttachMode::Single)
        .context("attaching cgroup/sock_release to the cgroup v2 root")?;
    Ok(())
}

fn tracepoint_set_accept(ebpf: &mut Ebpf) -> Result<()> {
    attach_tracepoint(
        ebpf,
        "sys_exit_accept",
        "syscalls",
        &["sys_exit_accept", "sys_exit_accept4"],
    )
}

pub(super) fn fentry_set(ebpf: &mut Ebpf, btf: &Btf, accept_arity: u32) -> Result<()> {
    for (name, function) in [
        ("fentry_tcp_connect", "tcp_connect"),
        ("fentry_tcp_close", "tcp_close"),
    ] {
        let program: &mut FEntry = program_mut(ebpf, name)?;
        program
            .load(function, btf)
            .with_context(|| format!("loading fentry/{function}"))?;
        program
            .attach()
            .with_context(|| format!("attaching fentry/{function}"))?;
    }
    // One program per inet_csk_accept signature (see trampoline_set.rs).
    let name = match accept_arity {
        2 => "fexit_inet_csk_accept",
        4 => "fexit_inet_csk_accept_4args",
        other => {
            bail!("inet_csk_accept takes {other} parameters on this kernel; leakbpf knows 2 and 4")
        }
    };
    let program: &mut FExit = program_mut(ebpf, name)?;
    program
        .load("inet_csk_accept", btf)
        .context("loading fexit/inet_csk_accept")?;
    program
        .attach()
        .context("attaching fexit/inet_csk_accept")?;
    Ok(())
}

pub(super) fn kprobe_set(ebpf: &mut Ebpf) -> Result<()> {
    for (name, function) in [
        ("kprobe_tcp_connect", "tcp_connect"),
        ("kretprobe_inet_csk_accept", "inet_csk_accept"),
        ("kprobe_tcp_close", "tcp_close"),
    ] {
        let program: &mut KProbe = program_mut(ebpf, name)?;
        program.load().with_context(|| format!("loading {name}"))?;
        program
            .attach(function, 0)
            .with_context(|| format!("attaching {name} to {function}"))?;
    }
    Ok(())
}

/// Loads program `name` and attaches it to each `system:event`.
fn attach_tracepoint(ebpf: &mut Ebpf, name: &str, system: &str, events: &[&str]) -> Result<()> {
    let program: &mut TracePoint = program_mut(ebpf, name)?;
    program
        .load()
        .with_context(|| format!("loading the {name} program"))?;
    for event in events {
        program
            .attach(system, event)
            .with_context(|| format!("attaching tracepoint {system}:{event}"))?;
    }
    Ok(())
}

pub(super) fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}
